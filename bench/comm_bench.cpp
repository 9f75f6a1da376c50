// Communicator throughput, reported like nccl-tests: size (bytes per rank), count, type, time,
// type (in the label), algbw = size / time and busbw (all_to_all: algbw * (P-1)/P; neighbor exchange: algbw).
// Host in-process backend: this is what CI can run; it measures memory copies between threads.
#include <seqpar/comm/in_process.hpp>

#include <benchmark/benchmark.h>

#include <atomic>
#include <vector>

namespace {

// Rank 0 drives the benchmark loop; the other ranks follow it collective by collective. Before
// each iteration every rank meets at a barrier and reads whether rank 0 has finished.
template <class Op>
void run_collective_loop(benchmark::State& state, int P, std::size_t bytes_per_rank, double bus_factor, Op op) {
  std::atomic<bool> done{false};
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& comm) {
    std::vector<float> send(bytes_per_rank / sizeof(float), 1.0f), recv(send.size());
    if (comm.rank() == 0) {
      for (auto _ : state) {
        comm.barrier();
        op(comm, send, recv);
      }
      done = true;
      comm.barrier();
      return;
    }
    for (;;) {
      comm.barrier();
      if (done) return;
      op(comm, send, recv);
    }
  });
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_rank));
  state.counters["size"] = static_cast<double>(bytes_per_rank);
  state.counters["count"] = static_cast<double>(bytes_per_rank / sizeof(float));
  state.SetLabel("type=float32");
  state.counters["algbw"] = benchmark::Counter(static_cast<double>(bytes_per_rank),
                                               benchmark::Counter::kIsIterationInvariantRate);
  state.counters["busbw"] = benchmark::Counter(static_cast<double>(bytes_per_rank) * bus_factor,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void BM_in_process_all_to_all(benchmark::State& state) {
  const int P = static_cast<int>(state.range(0));
  const std::size_t bytes = static_cast<std::size_t>(state.range(1)) / (P * sizeof(float)) * P * sizeof(float);
  run_collective_loop(state, P, bytes, double(P - 1) / P,
                      [P](seqpar::in_process_communicator& c, std::vector<float>& s, std::vector<float>& r) {
                        c.all_to_all<float>(s, r, s.size() / P);
                      });
}

void BM_in_process_ring_exchange(benchmark::State& state) {
  const int P = static_cast<int>(state.range(0));
  run_collective_loop(state, P, static_cast<std::size_t>(state.range(1)), 1.0,
                      [P](seqpar::in_process_communicator& c, std::vector<float>& s, std::vector<float>& r) {
                        c.neighbor_exchange<float>(s, (c.rank() + 1) % P, r, (c.rank() + P - 1) % P);
                      });
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
BENCHMARK_MAIN();
