// Gated LASP against constant-decay LASP on the same shapes: the lasp_attention layer on P = 4
// in-process host ranks with the reference policies (linear_reference; gated_linear_reference
// with scalar or vector gates), forward and backward, chain strategy. tokens_per_s counts the
// global sequence's tokens per forward + backward. Host figures compare the two algebras' costs
// on a CPU; they say nothing about a GPU.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar/policy/linear_reference.hpp>

#include <benchmark/benchmark.h>

#include <vector>

namespace {

constexpr std::int64_t B = 1, H = 2, D = 16, E = 16;
constexpr int P = 4;

// Forward and backward of one layer on one rank's n tokens; gates of width W (0: constant decay).
template <class Layer>
void run_layer(Layer& layer, std::int64_t n, std::int64_t W) {
  std::vector<float> x(B * n * H * D, 0.25f), o(B * n * H * E), dq(x.size()), dk(x.size()), dv(o.size()),
      g(B * n * H * (W ? W : 1), -0.05f), dg(g.size());
  const auto in = seqpar::make_bshd<const float>(x.data(), B, n, H, D);
  auto out = [&](std::vector<float>& y, std::int64_t w) { return seqpar::make_bshd(y.data(), B, n, H, w); };
  if constexpr (Layer::gated) {
    const auto gates = seqpar::make_bshd<const float>(g.data(), B, n, H, W);
    const auto saved = layer.forward({.q = in, .k = in, .v = in, .g = gates, .o = out(o, E)}, {.stream = nullptr});
    layer.backward(saved, {.dout = in, .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E), .dg = out(dg, W)},
                   {.stream = nullptr});
  } else {
    const auto saved = layer.forward({.q = in, .k = in, .v = in, .o = out(o, E)}, {.stream = nullptr});
    layer.backward(saved, {.dout = in, .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E)}, {.stream = nullptr});
  }
}

void BM_lasp_host(benchmark::State& state) {
  const std::int64_t S = state.range(0), kind = state.range(1);  // kind: 0 constant, 1 scalar gates, 2 vector
  const auto part = seqpar::make_seq_partition(S, P);
  const seqpar::attention_shape shape{.batch = B, .heads = int(H), .head_dim = D, .value_dim = E};
  for (auto _ : state)
    seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const std::int64_t n = part.size(comm.rank());
      if (kind == 0) {
        seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, shape, seqpar::elements<float>,
                                     std::vector<float>(H, 0.95f));
        run_layer(layer, n, 0);
      } else {
        const auto gates = kind == 1 ? seqpar::gate_kind::scalar : seqpar::gate_kind::vector;
        seqpar::lasp_attention layer(seqpar::gated_linear_reference{}, comm, part, shape, seqpar::elements<float>,
                                     gates);
        run_layer(layer, n, kind == 1 ? 1 : D);
      }
    });
  state.SetLabel(kind == 0 ? "constant" : kind == 1 ? "scalar gates" : "vector gates");
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(S) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_lasp_host)
    ->ArgNames({"S", "gates"})
    ->ArgsProduct({{256, 1024}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
BENCHMARK_MAIN();
