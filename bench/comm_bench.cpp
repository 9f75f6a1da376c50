// Communicator throughput, reported like nccl-tests: size (bytes per rank), count, type, time,
// type (in the label), algbw = size / time and busbw (all_to_all: algbw * (P-1)/P; neighbor exchange: algbw).
// Host in-process backend: this is what CI can run; it measures memory copies between threads.
#include "lockstep.hpp"

#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/in_process.hpp>

#include <benchmark/benchmark.h>

#include <memory>
#include <span>
#include <vector>

namespace {

template <class Op>
void run_collective_loop(benchmark::State& state, int P, std::size_t bytes_per_rank, double bus_factor, Op op) {
  seqpar_bench::lockstep(state, P, [&](seqpar::in_process_communicator& comm) {
    auto buffers = std::make_shared<std::vector<float>>(2 * (bytes_per_rank / sizeof(float)), 1.0f);
    return [&comm, buffers, op] {
      const std::size_t n = buffers->size() / 2;
      std::span<float> all(*buffers);
      op(comm, all.first(n), all.last(n));
    };
  });
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_rank));
  seqpar_bench::report_bandwidth(state, bytes_per_rank, sizeof(float), "float32", bus_factor);
}

void BM_in_process_all_to_all(benchmark::State& state) {
  const int P = static_cast<int>(state.range(0));
  const std::size_t bytes = static_cast<std::size_t>(state.range(1)) / (P * sizeof(float)) * P * sizeof(float);
  run_collective_loop(state, P, bytes, double(P - 1) / P,
                      [P](seqpar::in_process_communicator& c, std::span<float> s, std::span<float> r) {
                        c.all_to_all<float>(s, r, s.size() / P, nullptr);
                      });
}

void BM_in_process_ring_exchange(benchmark::State& state) {
  const int P = static_cast<int>(state.range(0));
  run_collective_loop(state, P, static_cast<std::size_t>(state.range(1)), 1.0,
                      [P](seqpar::in_process_communicator& c, std::span<float> s, std::span<float> r) {
                        c.neighbor_exchange<float>(s, (c.rank() + 1) % P, r, (c.rank() + P - 1) % P, nullptr);
                      });
}

// The per-call cost of call_checks::group: every rank's checks pass, then one all_gather_value.
void BM_in_process_group_check(benchmark::State& state) {
  const int P = static_cast<int>(state.range(0));
  seqpar_bench::lockstep(state, P, [&](seqpar::in_process_communicator& comm) {
    return [&comm] { seqpar::agree_on_arguments(comm, seqpar::call_checks::group, nullptr, [] {}); };
  });
  state.counters["P"] = P;
}

void sweep(benchmark::internal::Benchmark* b) {
  b->ArgNames({"P", "bytes"});
  for (int P : {2, 4, 8})
    for (std::int64_t bytes = 1 << 12; bytes <= (1 << 24); bytes <<= 4) b->Args({P, bytes});
  b->UseRealTime();
}

}  // namespace

BENCHMARK(BM_in_process_all_to_all)->Apply(sweep);
BENCHMARK(BM_in_process_ring_exchange)->Apply(sweep);
BENCHMARK(BM_in_process_group_check)->ArgName("P")->Arg(2)->Arg(4)->Arg(8)->UseRealTime();
BENCHMARK_MAIN();
