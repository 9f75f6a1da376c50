// The CUDA linear-attention policies on one rank: tokens per second of LASP forward and
// forward + backward (P = 1, so only the chunk work is timed), for S = 8K to 512K tokens, and the
// fraction of the memory-bound floor (minimal bytes moved / measured copy bandwidth) achieved;
// and the gated policy (scalar and vector log-gates, bf16, so on tensor cores) on the same shapes
// for S = 8K and 32K, against the constant-decay rows. Without a GPU it says so and exits 77.
#include "gpu_support.cuh"

#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/gated_linear_cuda.cuh>
#include <seqpar/policy/linear_cuda.cuh>

#include <benchmark/benchmark.h>


namespace {
using bf16 = __nv_bfloat16;
constexpr std::int64_t B = 1, H = 16, D = 64, E = 64;

using seqpar_bench::device_array;

double copy_bandwidth() {  // bytes read + written per second of a 1 GiB device copy
  static const double bw = [] {
    const std::size_t bytes = std::size_t{1} << 30;
    device_array<char> a(bytes), b(bytes);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    cudaMemcpy(b.p, a.p, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(start);
    for (int i = 0; i < 5; ++i) cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    return 5 * 2.0 * bytes / (ms / 1e3);
  }();
  return bw;
}

void BM_lasp_linear_cuda(benchmark::State& state, bool backward) {
  const std::int64_t S = state.range(0) << 10;
  const std::size_t qk = B * S * H * D * sizeof(bf16), vo = B * S * H * E * sizeof(bf16);
  const std::size_t nqk = qk / sizeof(bf16), nvo = vo / sizeof(bf16);
  device_array<bf16> q(nqk), k(nqk), v(nvo), o(nvo), dq(nqk), dk(nqk), dv(nvo), dout(nvo);
  cudaMemset(q.p, 0, qk), cudaMemset(k.p, 0, qk), cudaMemset(v.p, 0, vo), cudaMemset(dout.p, 0, vo);
  auto comms = seqpar::in_process_communicator::create_group(1, seqpar::memory_space::device);
  seqpar::lasp_attention layer(seqpar::linear_cuda{}, comms[0], seqpar::make_seq_partition(S, 1),
                               {.batch = B, .heads = H, .head_dim = D, .value_dim = E}, seqpar::elements<bf16>,
                               std::vector<float>(H, 0.99f));
  auto in = [&](device_array<bf16>& a, std::int64_t x) { return seqpar::make_bshd<const bf16>(a.p, B, S, H, x); };
  auto out = [&](device_array<bf16>& a, std::int64_t x) { return seqpar::make_bshd(a.p, B, S, H, x); };
  seqpar_bench::timed_on_gpu(state, [&] {
    const auto saved = layer.forward({.q = in(q, D), .k = in(k, D), .v = in(v, E), .o = out(o, E)}, {.stream = nullptr});
    if (backward)
      layer.backward(saved, {.dout = in(dout, E), .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E)},
                     {.stream = nullptr});
  });
  // Minimal bytes: forward reads q, k, v and writes o (2 qk + 2 vo); backward reads q, k, v, dO and
  // writes dq, dk, dv (4 qk + 3 vo).
  const double bytes = backward ? 6.0 * qk + 5.0 * vo : 2.0 * qk + 2.0 * vo;
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(S), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["floor_fraction"] = benchmark::Counter(bytes / copy_bandwidth(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["S"] = static_cast<double>(S);
}

// Gated LASP forward + backward: log-gates fp32 [B, S, H, W], W = 1 (scalar) or D (vector).
void BM_lasp_gated_cuda(benchmark::State& state, std::int64_t W) {
  const std::int64_t S = state.range(0) << 10;
  const std::size_t nqk = B * S * H * D, nvo = B * S * H * E, ng = B * S * H * W;
  device_array<bf16> q(nqk), k(nqk), v(nvo), o(nvo), dq(nqk), dk(nqk), dv(nvo), dout(nvo);
  device_array<float> g(ng), dg(ng);
  for (auto* a : {&q, &k}) cudaMemset(a->p, 0, nqk * sizeof(bf16));
  for (auto* a : {&v, &dout}) cudaMemset(a->p, 0, nvo * sizeof(bf16));
  cudaMemset(g.p, 0, ng * sizeof(float));  // log-gate 0: no decay, the work is the same
  auto comms = seqpar::in_process_communicator::create_group(1, seqpar::memory_space::device);
  seqpar::lasp_attention layer(seqpar::gated_linear_cuda{}, comms[0], seqpar::make_seq_partition(S, 1),
                               {.batch = B, .heads = H, .head_dim = D, .value_dim = E}, seqpar::elements<bf16>,
                               W == 1 ? seqpar::gate_kind::scalar : seqpar::gate_kind::vector);
  auto in = [&](device_array<bf16>& a, std::int64_t x) { return seqpar::make_bshd<const bf16>(a.p, B, S, H, x); };
  auto out = [&](device_array<bf16>& a, std::int64_t x) { return seqpar::make_bshd(a.p, B, S, H, x); };
  const auto gates = seqpar::make_bshd<const float>(g.p, B, S, H, W);
  seqpar_bench::timed_on_gpu(state, [&] {
    const auto saved =
        layer.forward({.q = in(q, D), .k = in(k, D), .v = in(v, E), .g = gates, .o = out(o, E)}, {.stream = nullptr});
    layer.backward(saved,
                   {.dout = in(dout, E), .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E),
                    .dg = seqpar::make_bshd(dg.p, B, S, H, W)},
                   {.stream = nullptr});
  });
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(S), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["S"] = static_cast<double>(S);
}

void sweep(benchmark::internal::Benchmark* b) {
  b->ArgName("Ktokens");
  for (std::int64_t s = 8; s <= 512; s *= 4) b->Arg(s);
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}
}  // namespace

BENCHMARK_CAPTURE(BM_lasp_linear_cuda, forward, false)->Apply(sweep);
BENCHMARK_CAPTURE(BM_lasp_linear_cuda, forward_backward, true)->Apply(sweep);
BENCHMARK_CAPTURE(BM_lasp_gated_cuda, scalar_forward_backward, 1)
    ->ArgName("Ktokens")->Arg(8)->Arg(32)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_lasp_gated_cuda, vector_forward_backward, D)
    ->ArgName("Ktokens")->Arg(8)->Arg(32)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) { return seqpar_bench::run_if_gpu(argc, argv); }
