// Shapes of the pack/unpack benchmarks: one rank (rank 0 of P = 8) of a Ulysses exchange of one
// query-headed bf16 tensor with H = 32 heads, B = 1, sized so each side holds `bytes` bytes.
#pragma once

#include <seqpar/ulysses/all_to_all_heads_plan.hpp>

#include <benchmark/benchmark.h>

#include <cstdint>

namespace seqpar_bench {

inline constexpr int ranks = 8, heads = 32;

//! The plan of rank 0 for a tensor of `bytes` bytes per side with head dim `D`.
inline seqpar::all_to_all_heads_plan pack_plan(std::int64_t bytes, std::int64_t D) {
  const std::int64_t tokens_per_rank = bytes / (heads * D * 2);
  return seqpar::make_all_to_all_heads_plan(0, seqpar::make_seq_partition(tokens_per_rank * ranks, ranks),
                                            {.batch = 1, .heads = heads, .kv_heads = heads, .head_dim = D},
                                            seqpar::dtype::bfloat16);
}

//! Arguments: bytes per side from `min_mib` to `max_mib` MiB (x4 steps), head dim 64 and 128.
inline void pack_sweep(benchmark::internal::Benchmark* b, std::int64_t min_mib, std::int64_t max_mib) {
  b->ArgNames({"MiB", "D"});
  for (std::int64_t mib = min_mib; mib <= max_mib; mib *= 4)
    for (std::int64_t D : {64, 128}) b->Args({mib, D});
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

//! Reports bytes read + written per iteration as the throughput, like the copy baseline.
inline void report(benchmark::State& state, std::int64_t bytes_per_side) {
  state.SetBytesProcessed(state.iterations() * 2 * bytes_per_side);
  state.counters["size"] = static_cast<double>(bytes_per_side);
}

}  // namespace seqpar_bench
