// Four ranks (threads of this process) exchange uneven blocks, pass a ring message and sum a
// vector through seqpar's in-process communicator wrapped in the counting decorator; every result
// is checked and each rank's traffic is printed.
#include <seqpar/seqpar.hpp>

#include <cstdio>
#include <numeric>
#include <vector>

namespace {
constexpr int P = 4;
// Tokens rank src sends to rank dst: uneven on purpose.
std::size_t tokens(int src, int dst) { return static_cast<std::size_t>(1000 * (1 + (src + 2 * dst) % 3)); }
float value(int src, int dst, std::size_t i) { return static_cast<float>(src * 1'000'000 + dst * 10'000 + i % 10'000); }
}  // namespace

int main() {
  std::vector<seqpar::traffic_record> totals(P);
  std::vector<std::vector<seqpar::traffic_record>> by_operation(P);
  std::vector<int> errors(P, 0);
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& inner) {
    seqpar::counting_communicator comm(inner);
    const int r = comm.rank();

    std::vector<std::size_t> sc(P), sd(P), rc(P), rd(P);
    for (int j = 0; j < P; ++j) {
      sc[j] = tokens(r, j), rc[j] = tokens(j, r);
      sd[j] = j ? sd[j - 1] + sc[j - 1] : 0, rd[j] = j ? rd[j - 1] + rc[j - 1] : 0;
    }
    std::vector<float> send(sd[P - 1] + sc[P - 1]), recv(rd[P - 1] + rc[P - 1]);
    for (int j = 0; j < P; ++j)
      for (std::size_t i = 0; i < sc[j]; ++i) send[sd[j] + i] = value(r, j, i);
    comm.all_to_all_v<float>(send, sc, sd, recv, rc, rd, nullptr);
    for (int j = 0; j < P; ++j)
      for (std::size_t i = 0; i < rc[j]; ++i) errors[r] += recv[rd[j] + i] != value(j, r, i);

    std::vector<float> state(4096, static_cast<float>(r)), incoming(4096);
    comm.neighbor_exchange<float>(state, (r + 1) % P, incoming, (r + P - 1) % P, nullptr);
    errors[r] += incoming[0] != static_cast<float>((r + P - 1) % P);

    std::vector<float> sum(1024, static_cast<float>(r + 1));
    comm.all_reduce<float>(sum, sum, nullptr);
    errors[r] += sum[1023] != static_cast<float>(P * (P + 1) / 2);

    by_operation[r] = comm.records();
    totals[r] = {"all", std::vector<std::size_t>(P, 0)};
    for (int j = 0; j < P; ++j) totals[r].bytes_to_peer[j] = comm.bytes_sent_to(j);
  });

  std::printf("seqpar %d.%d.%d: %d in-process ranks, all_to_all_v + ring neighbor_exchange + all_reduce\n\n",
              SEQPAR_VERSION_MAJOR, SEQPAR_VERSION_MINOR, SEQPAR_VERSION_PATCH, P);
  std::printf("%6s", "rank");
  for (int j = 0; j < P; ++j) std::printf("  %10s%d", "bytes->", j);
  std::printf("  %12s  %s\n", "total", "check");
  for (int r = 0; r < P; ++r) {
    std::printf("%6d", r);
    for (int j = 0; j < P; ++j) std::printf("  %11zu", totals[r].bytes_to_peer[j]);
    std::printf("  %12zu  %s\n", totals[r].total(), errors[r] ? "WRONG" : "ok");
  }
  std::printf("\nbytes each rank sent, by operation\n%6s", "rank");
  for (const auto& rec : by_operation[0]) std::printf("  %18s", rec.operation.c_str());
  std::printf("\n");
  for (int r = 0; r < P; ++r) {
    std::printf("%6d", r);
    for (const auto& rec : by_operation[r]) std::printf("  %18zu", rec.total());
    std::printf("\n");
  }
  const int wrong = std::accumulate(errors.begin(), errors.end(), 0);
  std::printf("\n%s\n", wrong ? "some received values were wrong" : "every received value matched its sender");
  return wrong ? 1 : 0;
}
