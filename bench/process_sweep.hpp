// The communication sweeps with one process per rank (MPI, or NCCL bootstrapped by MPI): every
// process registers the shapes whose P is the process count and runs them with the same fixed
// iteration count, so their collectives line up; only rank 0 prints and writes a result file.
#pragma once

#include "traffic_methods.hpp"

#include <seqpar/comm/agreement.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace seqpar_bench {

//! Registers every family at every sweep shape whose P is `size`: make_comm() gives each its Inner
//! communicator, finish() waits for this rank's enqueued work; an iteration is timed from its barrier.
template <class Inner, class MakeComm, class Finish>
void register_process_sweep(int size, std::int64_t S_max, int iterations, MakeComm make_comm, Finish finish) {
  using counted = seqpar::counting_communicator<Inner>;
  for (const auto& m : methods<counted>())
    for (const shape& s : sweep_shapes(size, S_max)) {
      if (s.P != size || !m.runs_at(s)) continue;
      benchmark::RegisterBenchmark(bench_name(m.name, s).c_str(), [m, s, make_comm, finish](benchmark::State& state) {
        counted comm{make_comm()};
        const rank_run run = m.setup(comm, s);
        run.step();  // one untimed iteration: its traffic is what is reported
        finish();
        const traffic sent = run.sent();
        for (auto _ : state) {
          comm.inner().barrier(nullptr);
          const auto start = std::chrono::steady_clock::now();
          run.step();
          finish();
          state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
        report(state, m, s, sent);
      })->Iterations(iterations)->UseManualTime()->Unit(benchmark::kMillisecond);
    }
}

//! Registers the per-call cost of call_checks::group on this backend: every rank's checks pass,
//! then one all_gather_value (on NCCL: an ncclAllGather of one int64 and a wait for the stream).
template <class Inner, class MakeComm>
void register_group_check(int iterations, MakeComm make_comm) {
  benchmark::RegisterBenchmark("group_check", [make_comm](benchmark::State& state) {
    Inner comm{make_comm()};
    for (auto _ : state) seqpar::agree_on_arguments(comm, seqpar::call_checks::group, nullptr, [] {});
    state.counters["P"] = comm.size();
  })->Iterations(iterations)->Unit(benchmark::kMicrosecond);
}

//! Runs the registered benchmarks; only rank 0 prints and keeps --benchmark_out. Returns the exit code.
inline int run_process_sweep(int argc, char** argv, int rank) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i)
    if (rank == 0 || std::string(argv[i]).rfind("--benchmark_out", 0) != 0) args.push_back(argv[i]);
  int count = static_cast<int>(args.size());
  if (rank != 0 && (!std::freopen("/dev/null", "w", stdout) || !std::freopen("/dev/null", "w", stderr))) return 1;
  benchmark::Initialize(&count, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace seqpar_bench
