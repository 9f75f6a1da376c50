// The communication sweeps with one MPI process per rank (host memory): P is the number of
// processes (run with -np 2, 4, 8 to vary it). Every process runs every benchmark with the same
// fixed iteration count, so their collectives line up; only rank 0 prints.
//   mpirun -np 4 build/bench/seqpar_traffic_bench_mpi --benchmark_out=traffic_mpi.csv --benchmark_out_format=csv
#include "traffic_methods.hpp"

#include <seqpar/comm/mpi.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank), MPI_Comm_size(MPI_COMM_WORLD, &size);
  using counted = seqpar::counting_communicator<seqpar::mpi_communicator>;
  for (const auto& m : seqpar_bench::methods<counted>())
    for (const auto& s : seqpar_bench::sweep_shapes(size, std::int64_t{1} << 18)) {
      if (s.P != size) continue;
      benchmark::RegisterBenchmark(seqpar_bench::bench_name(m.name, s).c_str(), [m, s](benchmark::State& state) {
        counted comm{seqpar::mpi_communicator(MPI_COMM_WORLD)};
        const auto step = m.setup(comm, s);
        step();  // one untimed iteration: its traffic is what is reported
        std::size_t per_link = 0;
        for (int j = 0; j < s.P; ++j) per_link = std::max(per_link, comm.bytes_sent_to(j));
        const std::size_t sent = comm.bytes_sent();
        for (auto _ : state) {
          comm.inner().barrier();
          step();
        }
        seqpar_bench::report(state, m, s, sent, per_link);
      })->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
    }
  // Only rank 0 prints and writes a result file: the others drop --benchmark_out, stdout and stderr.
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i)
    if (rank == 0 || std::string(argv[i]).rfind("--benchmark_out", 0) != 0) args.push_back(argv[i]);
  int count = static_cast<int>(args.size());
  if (rank != 0 && (!std::freopen("/dev/null", "w", stdout) || !std::freopen("/dev/null", "w", stderr))) return 1;
  benchmark::Initialize(&count, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
