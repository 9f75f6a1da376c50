// Host code built by g++ alone against seqpar (installed, or added as a subdirectory): two ranks
// gather their ranks. The backends are there exactly when their components were linked.
#include <seqpar/seqpar.hpp>

static_assert(SEQPAR_HAS_NCCL == CONSUMER_EXPECTS_NCCL, "seqpar::nccl (and only it) gives the NCCL backend");
static_assert(SEQPAR_HAS_MPI == CONSUMER_EXPECTS_MPI, "seqpar::mpi (and only it) gives the MPI backend");

#include <cstdio>
#include <vector>

int main() {
  std::vector<std::vector<float>> got(2);
  seqpar::run_in_process(2, seqpar::memory_space::host, [&](seqpar::in_process_communicator& comm) {
    std::vector<float> mine{float(comm.rank())}, all(2, -1.0f);
    comm.all_gather<float>(mine, all, nullptr);
    got[comm.rank()] = all;
  });
  const bool ok = got[0] == std::vector<float>{0, 1} && got[1] == std::vector<float>{0, 1};
  std::printf("seqpar %d.%d.%d consumer (g++): %s\n", SEQPAR_VERSION_MAJOR, SEQPAR_VERSION_MINOR,
              SEQPAR_VERSION_PATCH, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
