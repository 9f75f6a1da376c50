// Communication sweeps on the in-process host backend (CI runs a small filter), reported like
// nccl-tests: size (bytes of the rank's buffer one iteration moves), count, type, time, algbw =
// size / time, busbw (all-to-all and all-gather: algbw (P-1)/P; send/recv chains: algbw), plus the
// bytes each rank sent and the most it sent over one link, measured by the counting decorator.
// `scripts/plot_traffic.sh` turns the JSON output (--benchmark_out=traffic.json
// --benchmark_out_format=json) into docs/traffic_vs_S.png and traffic_vs_P.png.
#include "traffic_methods.hpp"

int main(int argc, char** argv) {
  seqpar_bench::register_in_process(seqpar::memory_space::host, std::int64_t{1} << 18);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
