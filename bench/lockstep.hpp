// Benchmarks of collectives on P in-process ranks: rank 0 runs Google Benchmark's loop and the
// other ranks follow it, iteration by iteration; results are reported like nccl-tests.
#pragma once

#include <seqpar/comm/in_process.hpp>

#include <benchmark/benchmark.h>

#include <atomic>
#include <cstddef>
#include <string>

namespace seqpar_bench {

//! Runs setup(comm) once on each of P ranks (host or device memory), then the step it returns once per benchmark
//! iteration on every rank; the ranks meet at a barrier before each iteration.
template <class Setup>
void lockstep(benchmark::State& state, int P, Setup&& setup, seqpar::memory_space where = seqpar::memory_space::host) {
  std::atomic<bool> done{false};
  seqpar::run_in_process(P, where, [&](seqpar::in_process_communicator& comm) {
    auto step = setup(comm);
    if (comm.rank() == 0) {
      for (auto _ : state) {
        comm.barrier(nullptr);
        step();
      }
      done = true;
      comm.barrier(nullptr);
      return;
    }
    for (;;) {
      comm.barrier(nullptr);
      if (done) return;
      step();
    }
  });
}

//! The nccl-tests columns: size (bytes), count (elements), type (label), algbw = size / time and
//! busbw = algbw * bus_factor ((P-1)/P for all-to-all and all-gather, 1 for send/recv).
inline void report_bandwidth(benchmark::State& state, std::size_t size_bytes, std::size_t element_bytes,
                             const std::string& type, double bus_factor) {
  state.counters["size"] = static_cast<double>(size_bytes);
  state.counters["count"] = static_cast<double>(size_bytes / element_bytes);
  state.counters["algbw"] = benchmark::Counter(static_cast<double>(size_bytes), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["busbw"] =
      benchmark::Counter(static_cast<double>(size_bytes) * bus_factor, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("type=" + type);
}

}  // namespace seqpar_bench
