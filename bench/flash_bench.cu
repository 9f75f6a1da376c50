// The flash_attention policy on one GPU: forward and backward TFLOP/s for S = 1K to 32K tokens,
// head dims 64 and 128, causal or not, bf16. Hidden size 2048 (H = 2048 / D) and B * S = 32K
// tokens, the shapes bench/sdpa_bench.py times for PyTorch's scaled_dot_product_attention.
// FLOPs: forward 4 B H S^2 D (half when causal), backward 2.5 times forward.
// BM_flash_documents: one causal sequence of 32K tokens (D = 128) packed with a long-tailed
// document mix (document_mix.hpp) against one document: tiles of other documents are skipped, so
// time falls with the work fraction; TFLOP/s counts the useful pairs only.
// BM_cudnn_attention: cudnn_attention on the same shapes, when the build found the cuDNN frontend.
// Without a GPU it says so and exits 77.
#include "document_mix.hpp"
#include "gpu_support.cuh"

#include <seqpar/policy/flash_attention.cuh>
#if SEQPAR_HAS_CUDNN
#include <seqpar/policy/cudnn_attention.hpp>
#endif

#include <benchmark/benchmark.h>

#include <cmath>

namespace {
using bf16 = __nv_bfloat16;
using seqpar_bench::device_array;

constexpr std::int64_t hidden = 2048, tokens = 32 * 1024;

// Times `policy` forward (or backward) on zero-filled [B, S, H, D] tensors under `opt` and
// reports TFLOP/s for `pairs` query-key pairs per head and batch row.
template <class Policy>
void time_policy(benchmark::State& state, const Policy& policy, bool backward, std::int64_t B, std::int64_t S,
                 std::int64_t H, std::int64_t D, const seqpar::attention_options& opt, double pairs) {
  const std::size_t n = static_cast<std::size_t>(B * S * H * D);
  device_array<bf16> q(n), k(n), v(n), o(n), dout(n), dq(n), dk(n), dv(n);
  device_array<float> lse(static_cast<std::size_t>(B * H * S));
  for (auto* a : {&q, &k, &v, &dout}) SEQPAR_CUDA_TRY(cudaMemset(a->p, 0, n * sizeof(bf16)));
  auto in = [&](device_array<bf16>& a) { return seqpar::make_bshd<const bf16>(a.p, B, S, H, D); };
  auto out = [&](device_array<bf16>& a) { return seqpar::make_bshd(a.p, B, S, H, D); };
  const seqpar::gqa_map map{};
  const seqpar::lse_view l(lse.p, B, H, S);
  const seqpar::policy_forward_args<bf16> fwd{
      .q = in(q), .k = in(k), .v = in(v), .o = out(o), .lse = l, .map = map, .options = opt};
  const seqpar::policy_backward_args<bf16> bwd{.q = in(q),
                                               .k = in(k),
                                               .v = in(v),
                                               .o = in(o),
                                               .lse = seqpar::const_lse_view(l),
                                               .dout = in(dout),
                                               .dq = out(dq),
                                               .dk = out(dk),
                                               .dv = out(dv),
                                               .map = map,
                                               .options = opt};
  policy.forward(fwd, nullptr);
  seqpar_bench::timed_on_gpu(state, [&] {
    if (backward)
      policy.backward(bwd, nullptr);
    else
      policy.forward(fwd, nullptr);
  });
  state.counters["TFLOP/s"] = benchmark::Counter((backward ? 2.5 : 1.0) * 4.0 * B * H * pairs * D / 1e12,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

template <class Policy>
void time_shape(benchmark::State& state, const Policy& policy, bool backward) {
  const std::int64_t S = state.range(0) << 10, D = state.range(1), B = tokens / S, H = hidden / D;
  const bool causal = state.range(2) != 0;
  const seqpar::attention_options opt{static_cast<float>(1.0 / std::sqrt(double(D))), causal};
  time_policy(state, policy, backward, B, S, H, D, opt, double(S) * S * (causal ? 0.5 : 1.0));
}

void BM_flash_attention(benchmark::State& state, bool backward) { time_shape(state, seqpar::flash_attention{}, backward); }

#if SEQPAR_HAS_CUDNN
// cuDNN's fused attention on the same shapes (its graphs are built by the warm-up call).
void BM_cudnn_attention(benchmark::State& state, bool backward) {
  static const seqpar::cudnn_attention cudnn;  // one graph cache across the shapes
  time_shape(state, cudnn, backward);
}
#endif

void BM_flash_documents(benchmark::State& state, bool backward) {
  const std::int64_t S = tokens, D = 128, H = hidden / D;
  const bool packed = state.range(0) != 0;
  const auto docs = packed ? seqpar_bench::long_tailed_documents(S) : seqpar::document_layout{};
  device_array<std::int32_t> ids(static_cast<std::size_t>(S));
  if (packed)
    SEQPAR_CUDA_TRY(cudaMemcpy(ids.p, docs.token_ids().data(), S * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  const seqpar::attention_options opt{static_cast<float>(1.0 / std::sqrt(double(D))), true,
                                      {packed ? ids.p : nullptr}};
  const double pairs = seqpar_bench::score_pairs(docs, S, true);
  time_policy(state, seqpar::flash_attention{}, backward, 1, S, H, D, opt, pairs);
  state.counters["documents"] = docs.count();
  state.counters["work_fraction"] = pairs / seqpar_bench::score_pairs({}, S, true);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"Ktokens", "D", "causal"});
  for (std::int64_t causal : {0, 1})
    for (std::int64_t D : {64, 128})
      for (std::int64_t s = 1; s <= 32; s *= 2) b->Args({s, D, causal});
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}
}  // namespace

BENCHMARK_CAPTURE(BM_flash_attention, forward, false)->Apply(shapes);
BENCHMARK_CAPTURE(BM_flash_attention, backward, true)->Apply(shapes);
#if SEQPAR_HAS_CUDNN
BENCHMARK_CAPTURE(BM_cudnn_attention, forward, false)->Apply(shapes);
BENCHMARK_CAPTURE(BM_cudnn_attention, backward, true)->Apply(shapes);
#endif
BENCHMARK_CAPTURE(BM_flash_documents, forward, false)->ArgName("packed")->Arg(0)->Arg(1)->UseManualTime();
BENCHMARK_CAPTURE(BM_flash_documents, backward, true)->ArgName("packed")->Arg(0)->Arg(1)->UseManualTime();

int main(int argc, char** argv) { return seqpar_bench::run_if_gpu(argc, argv); }
