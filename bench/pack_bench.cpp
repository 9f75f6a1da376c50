// Host pack and unpack of the Ulysses exchange against std::memcpy of the same bytes.
// Throughput = (bytes read + bytes written) / time. CI runs the smallest case as a smoke test.
#include "pack_bench_shapes.hpp"

#include <seqpar/ulysses/detail/heads_pack_host.hpp>

#include <chrono>
#include <cstring>
#include <vector>

namespace {
using bf16 = __nv_bfloat16;

template <class Step>
void timed(benchmark::State& state, Step&& step) {
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    step();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
}

// op 0: forward pack, 1: forward unpack, 2: inverse pack, 3: inverse unpack (with the GQA sum path).
void BM_host_pack(benchmark::State& state, int op) {
  const std::int64_t bytes = state.range(0) << 20, D = state.range(1);
  const auto plan = seqpar_bench::pack_plan(bytes, D);
  const auto& g = plan.geometry(seqpar::heads_payload::q);
  const std::int64_t S_r = plan.seq().size(0), S = plan.seq().tokens, h = plan.heads().count(0);
  std::vector<bf16> seq_side(S_r * seqpar_bench::heads * D), heads_side(S * h * D), buffer(seq_side.size());
  seqpar::detail::segment_views<bf16> v;  // in: what the op reads, out: what it writes
  v.in[0] = op == 0 ? seqpar::make_bshd<const bf16>(seq_side.data(), 1, S_r, seqpar_bench::heads, D)
                    : seqpar::make_bshd<const bf16>(heads_side.data(), 1, S, h, D);
  v.out[0] = op == 1 ? seqpar::make_bshd(heads_side.data(), 1, S, h, D)
                     : seqpar::make_bshd(seq_side.data(), 1, S_r, seqpar_bench::heads, D);
  timed(state, [&] {
    switch (op) {
      case 0: seqpar::detail::pack_seq_side(g, v, buffer.data()); break;
      case 1: seqpar::detail::unpack_heads_side(g, buffer.data(), v); break;
      case 2: seqpar::detail::pack_heads_side(g, v, buffer.data()); break;
      default: seqpar::detail::unpack_seq_side_sum(g, buffer.data(), v); break;
    }
    benchmark::ClobberMemory();
  });
  seqpar_bench::report(state, bytes);
}

void BM_host_copy(benchmark::State& state) {
  const std::int64_t bytes = state.range(0) << 20;
  std::vector<char> a(bytes, 1), b(bytes);
  timed(state, [&] {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::ClobberMemory();
  });
  seqpar_bench::report(state, bytes);
}

void sweep(benchmark::internal::Benchmark* b) { seqpar_bench::pack_sweep(b, 16, 1024); }
}  // namespace

BENCHMARK(BM_host_copy)->Apply(sweep);
BENCHMARK_CAPTURE(BM_host_pack, forward_pack, 0)->Apply(sweep);
BENCHMARK_CAPTURE(BM_host_pack, forward_unpack, 1)->Apply(sweep);
BENCHMARK_CAPTURE(BM_host_pack, inverse_pack, 2)->Apply(sweep);
BENCHMARK_CAPTURE(BM_host_pack, inverse_unpack, 3)->Apply(sweep);
BENCHMARK_MAIN();
