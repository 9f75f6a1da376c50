// The gated_linear_cuda policy on the host, its kernels under an emulated warp (one std::thread per
// CUDA thread), operation by operation against gated_linear_reference in float with the policy's
// own launch planning: the gated walk forwards and backwards, gates on the contracted or the output
// columns, given states read as they are or transposed, ragged sub-blocks, several output tiles,
// chunks cut into segments (ragged last segment), scalar and vector gates, gates near 0 and near 1,
// on CUDA cores and (fp16 and bf16; scalar gates, vector gates on the contracted or the output
// columns) on tensor cores; whole gated LASP layers with these kernels as their policy; and, under
// the recording launcher, no launch CUDA refuses for an empty batch, no heads or no tokens.
// Tolerances: 2e-5 (float) and 2.5e-2 (bfloat16) of the largest reference magnitude; in float,
// 4e-6 for the gates' gradient, which is made of the weights between different tokens only: with
// gates near 0 an error in those weights (log-gates summed without compensation) shows there.
#include <seqpar_test/warp_emulation.hpp>  // first: the kernel headers below compile as host code

#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/gated_linear_cuda.cuh>
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar_test/gated_lasp_cases.hpp>
#include <seqpar_test/host_tensor.hpp>
#include <seqpar_test/stream_recording.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace {
using seqpar_test::host_tensor;
using seqpar_test::relative_gap;
using seqpar_test::state;
using seqpar_test::state_gap;
using seqpar_test::widened;

using emulated_gated = seqpar::basic_gated_linear_cuda<seqpar_emulation::launcher>;
static_assert(seqpar::gated_linear_attention_policy<emulated_gated>);

struct gated_case {
  std::int64_t B, C;
  int H, D, E;
  std::int64_t pad;
  bool vector_gate;
  double lo, hi;  // exp(g) drawn log-uniformly from [lo, hi]
  int sms = 1;    // the emulated device's multiprocessors: more of them cut long chunks into segments
  int major = 7;  // its compute capability: from 8, fp16 and bf16 with scalar gates take tensor cores
};

// Log-gates [B, C, H, 1 or D], packed.
host_tensor<float> log_gates(const gated_case& c) {
  host_tensor<float> g(c.B, c.C, c.H, c.vector_gate ? c.D : 1, 0, 0);
  for (auto& x : g.data) x = seqpar_test::random_log_gate(c.lo, c.hi);
  return g;
}

template <class T>
void check_gated(const gated_case& c) {
  INFO("B=" << c.B << " C=" << c.C << " H=" << c.H << " D=" << c.D << " E=" << c.E << " pad=" << c.pad
            << (c.vector_gate ? " vector" : " scalar") << " gates in [" << c.lo << ", " << c.hi << "] sms=" << c.sms
            << " major=" << c.major);
  const host_tensor<T> q(c.B, c.C, c.H, c.D, c.pad, 0.5f), k(c.B, c.C, c.H, c.D, c.pad, 0.5f),
      v(c.B, c.C, c.H, c.E, c.pad, 0.5f), dout(c.B, c.C, c.H, c.E, c.pad, 0.5f);
  const auto g = log_gates(c);
  const auto qf = widened(q), kf = widened(k), vf = widened(v), dof = widened(dout);
  const std::int64_t W = g.view.head_dim();
  const state kv(c.B, c.H, c.D, c.E, 1.0f), gs(c.B, c.H, c.D, c.E, 1.0f);
  const emulated_gated policy{seqpar_emulation::launcher{c.sms, c.major}};
  const seqpar::gated_linear_reference ref;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 2.5e-2, dg_tol = std::is_same_v<T, float> ? 4e-6 : tol;

  host_tensor<T> o(c.B, c.C, c.H, c.E, c.pad, 0);
  host_tensor<float> o_ref(c.B, c.C, c.H, c.E, 0, 0);
  policy.forward_intra(seqpar::gated_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .g = g.cview()}, o.view,
                       nullptr);
  ref.forward_intra(seqpar::gated_chunk<float>{.q = qf.cview(), .k = kf.cview(), .v = vf.cview(), .g = g.cview()},
                    o_ref.view, nullptr);
  CHECK(relative_gap(o.view, o_ref.view) <= tol);
  auto same_values = [](const auto& from, host_tensor<float>& to) {  // keeps `to`'s view valid
    const auto wide = widened(from);
    std::copy(wide.data.begin(), wide.data.end(), to.data.begin());
  };
  same_values(o, o_ref);  // forward_inter adds to what o holds
  policy.forward_inter(seqpar::gated_chunk<T>{.q = q.cview(), .g = g.cview()}, kv.view, o.view, nullptr);
  ref.forward_inter(seqpar::gated_chunk<float>{.q = qf.cview(), .g = g.cview()}, kv.view, o_ref.view, nullptr);
  CHECK(relative_gap(o.view, o_ref.view) <= tol);

  state m(c.B, c.H, c.D, c.E, 0), m_ref(c.B, c.H, c.D, c.E, 0), g_out(c.B, c.H, c.D, c.E, 0),
      g_ref(c.B, c.H, c.D, c.E, 0);
  policy.state_contribution(seqpar::gated_chunk<T>{.k = k.cview(), .v = v.cview(), .g = g.cview()}, m.view, nullptr);
  ref.state_contribution(seqpar::gated_chunk<float>{.k = kf.cview(), .v = vf.cview(), .g = g.cview()}, m_ref.view,
                         nullptr);
  CHECK(state_gap(m, m_ref) <= tol);
  policy.backward_state_contribution(seqpar::gated_chunk<T>{.q = q.cview(), .dout = dout.cview(), .g = g.cview()},
                                     g_out.view, nullptr);
  ref.backward_state_contribution(seqpar::gated_chunk<float>{.q = qf.cview(), .dout = dof.cview(), .g = g.cview()},
                                  g_ref.view, nullptr);
  CHECK(state_gap(g_out, g_ref) <= tol);

  std::vector<float> total(c.B * c.H * c.D), total_ref(total.size());
  policy.chunk_decay(g.cview(), seqpar::chunk_decay_view(total.data(), c.B, c.H, c.D), nullptr);
  ref.chunk_decay(g.cview(), seqpar::chunk_decay_view(total_ref.data(), c.B, c.H, c.D), nullptr);
  for (std::size_t i = 0; i < total.size(); ++i) CHECK(total[i] == doctest::Approx(total_ref[i]).epsilon(1e-5));
  policy.state_update(seqpar::const_chunk_decay_view(total.data(), c.B, c.H, c.D), kv.view, m.view, g_out.view,
                      nullptr);
  ref.state_update(seqpar::const_chunk_decay_view(total.data(), c.B, c.H, c.D), kv.view, m.view, g_ref.view, nullptr);
  CHECK(state_gap(g_out, g_ref) <= 1e-6);

  // backward: the intra term written, then the inter and passed-on terms added
  host_tensor<T> dq(c.B, c.C, c.H, c.D, c.pad, 0), dk(c.B, c.C, c.H, c.D, c.pad, 0), dv(c.B, c.C, c.H, c.E, c.pad, 0);
  host_tensor<float> dg(c.B, c.C, c.H, W, 0, 0), dq_ref(c.B, c.C, c.H, c.D, 0, 0), dk_ref(c.B, c.C, c.H, c.D, 0, 0),
      dv_ref(c.B, c.C, c.H, c.E, 0, 0), dg_ref(c.B, c.C, c.H, W, 0, 0);
  policy.backward_intra(
      seqpar::gated_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .dout = dout.cview(), .g = g.cview()},
      seqpar::linear_gradients<T>{.dq = dq.view, .dk = dk.view, .dv = dv.view, .dg = dg.view}, nullptr);
  ref.backward_intra(
      seqpar::gated_chunk<float>{
          .q = qf.cview(), .k = kf.cview(), .v = vf.cview(), .dout = dof.cview(), .g = g.cview()},
      seqpar::linear_gradients<float>{.dq = dq_ref.view, .dk = dk_ref.view, .dv = dv_ref.view, .dg = dg_ref.view},
      nullptr);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);
  CHECK(relative_gap(dg.view, dg_ref.view) <= dg_tol);
  same_values(dq, dq_ref);
  same_values(dk, dk_ref);
  same_values(dv, dv_ref);
  same_values(dg, dg_ref);
  policy.backward_inter(
      seqpar::gated_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .dout = dout.cview(), .g = g.cview()},
      kv.view, gs.view, seqpar::linear_gradients<T>{.dq = dq.view, .dk = dk.view, .dv = dv.view, .dg = dg.view},
      nullptr);
  ref.backward_inter(
      seqpar::gated_chunk<float>{
          .q = qf.cview(), .k = kf.cview(), .v = vf.cview(), .dout = dof.cview(), .g = g.cview()},
      kv.view, gs.view,
      seqpar::linear_gradients<float>{.dq = dq_ref.view, .dk = dk_ref.view, .dv = dv_ref.view, .dg = dg_ref.view},
      nullptr);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);
  CHECK(relative_gap(dg.view, dg_ref.view) <= dg_tol);
  CHECK(o.padding_untouched());
  CHECK(dq.padding_untouched());
  CHECK(dv.padding_untouched());
  CHECK(policy.launcher.within_shared);
}
}  // namespace

TEST_CASE_TEMPLATE("gated_linear_cuda under an emulated warp equals gated_linear_reference, operation by operation", T,
                   float, __nv_bfloat16) {
  for (bool vector_gate : {false, true})
    for (auto [lo, hi] : {std::pair{0.5, 1.0}, std::pair{1e-6, 1e-5}, std::pair{1.0 - 1e-6, 1.0}}) {
      check_gated<T>({1, 37, 2, 5, 7, 0, vector_gate, lo, hi});  // ragged last sub-block, D != E
      check_gated<T>({2, 20, 1, 9, 40, 3, vector_gate, lo, hi});  // two output tiles of E, padded tokens
    }
  check_gated<T>({1, 33, 1, 40, 6, 0, true, 0.5, 1.0});  // two output tiles of D (dq, dk), vector gates
}

TEST_CASE_TEMPLATE("gated_linear_cuda cuts long chunks into segments that equal one walk", T, float, __nv_bfloat16) {
  namespace gk = seqpar::detail::gated_kernels;
  // the cases below take 4 segments (the last of 8 tokens) and 3 (the last of 22)
  CHECK(gk::plan_walk_segments(200, 2, 64).count == 4);
  CHECK(gk::plan_walk_segments(200, 2, 64).length == 64);
  CHECK(gk::plan_walk_segments(150, 4, 64).count == 3);
  CHECK(gk::plan_walk_segments(150, 4, 1).count == 1);  // one multiprocessor: one walk
  for (bool vector_gate : {false, true})
    for (auto [lo, hi] : {std::pair{0.5, 1.0}, std::pair{1e-6, 1e-5}, std::pair{1.0 - 1e-6, 1.0}}) {
      check_gated<T>({1, 200, 2, 5, 7, 0, vector_gate, lo, hi, 64});
      check_gated<T>({2, 150, 1, 9, 40, 3, vector_gate, lo, hi, 64});  // two output tiles, padded tokens
    }
}

TEST_CASE_TEMPLATE("gated_linear_cuda runs gates on tensor cores, in segments, equal to gated_linear_reference", T,
                   __half, __nv_bfloat16) {
  namespace lk = seqpar::detail::linear_kernels;
  CHECK(lk::plan_segments(600, 2, 64).count == 3);  // the first cases below: 3 segments, the last of 88 tokens
  // scalar and vector gates (on the contracted or the output columns): every walk with D, E <= 128 on tensor cores
  for (bool vector_gate : {false, true}) {
    // [0.97, 1]: about a third of the state lives through a 64-token sub-block
    for (auto [lo, hi] : {std::pair{0.5, 1.0}, std::pair{1e-6, 1e-5}, std::pair{1.0 - 1e-6, 1.0}, std::pair{0.97, 1.0}})
      check_gated<T>({1, 600, 2, 5, 7, 0, vector_gate, lo, hi, 64, 8});
    check_gated<T>({2, 70, 1, 80, 72, 3, vector_gate, 0.5, 1.0, 1, 8});  // two state and output tiles, padded tokens
    check_gated<T>({1, 50, 1, 160, 24, 0, vector_gate, 0.5, 1.0, 1, 8});  // D = 160: walks over D on CUDA cores
  }
}

namespace gk = seqpar::detail::gated_kernels;
// gated_linear_cuda's kernel parameters that hold no pointer, for the recording launcher.
template <>
inline constexpr bool seqpar_test::pointer_free<gk::walk_mode> = true;
template <>
inline constexpr bool seqpar_test::pointer_free<seqpar::detail::linear_kernels::scan_mode> = true;

namespace {
template <class T>
void check_empty_launches(std::int64_t B, std::int64_t C, int H, int W, int major) {
  INFO("sm_" << major << "x, B=" << B << " C=" << C << " H=" << H << " W=" << W);
  constexpr int D = 16, E = 24;
  const host_tensor<T> q(B, C, H, D, 0, 0.5f), k(B, C, H, D, 0, 0.5f), v(B, C, H, E, 0, 0.5f),
      dout(B, C, H, E, 0, 0.5f);
  const host_tensor<float> g(B, C, H, W, 0, 0);
  host_tensor<T> o(B, C, H, E, 0, 0), dq(B, C, H, D, 0, 0), dk(B, C, H, D, 0, 0), dv(B, C, H, E, 0, 0);
  host_tensor<float> dg(B, C, H, W, 0, 0);
  state m(B, H, D, E, 0), kv(B, H, D, E, 0.5f), gs(B, H, D, E, 0.5f);
  std::vector<float> total(static_cast<std::size_t>(B * H * W));
  const seqpar::basic_gated_linear_cuda<seqpar_test::recording_launcher> policy{{.info = {132, major}}};
  const auto s = policy.launcher.log->stream("stream");
  const seqpar::gated_chunk<T> c{.q = q.cview(), .k = k.cview(), .v = v.cview(), .dout = dout.cview(), .g = g.cview()};
  const seqpar::linear_gradients<T> grads{.dq = dq.view, .dk = dk.view, .dv = dv.view, .dg = dg.view};
  policy.forward_intra(c, o.view, s);
  policy.state_contribution(c, m.view, s);
  policy.forward_inter(c, kv.view, o.view, s);
  policy.backward_intra(c, grads, s);
  policy.backward_state_contribution(c, m.view, s);
  policy.backward_inter(c, kv.view, gs.view, grads, s);
  policy.chunk_decay(g.cview(), seqpar::chunk_decay_view(total.data(), B, H, W), s);
  policy.state_update(seqpar::const_chunk_decay_view(total.data(), B, H, W), kv.view, gs.view, m.view, s);
  policy.check_gates(g.cview(), s);
  CHECK_MESSAGE(policy.launcher.log->findings().empty(), policy.launcher.log->report());
}
}  // namespace

TEST_CASE("gated_linear_cuda launches nothing CUDA refuses for an empty batch, no heads or no tokens") {
  for (int major : {9, 7})
    for (int W : {1, 16}) {
      check_empty_launches<__half>(0, 64, 2, W, major);
      check_empty_launches<__half>(1, 64, 0, W, major);
      check_empty_launches<__half>(1, 0, 2, W, major);
      check_empty_launches<float>(0, 64, 2, W, major);
      check_empty_launches<float>(2, 0, 1, W, major);
    }
}

namespace {
// gated_linear_cuda's kernels under the emulated warp as a host-memory policy, for whole layers.
struct emulated_host_gated : seqpar::basic_gated_linear_cuda<seqpar_emulation::serial_launcher> {
  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
};
static_assert(seqpar::gated_linear_attention_policy<emulated_host_gated>);
}  // namespace

TEST_CASE("gated lasp_attention with gated_linear_cuda under an emulated warp: documents, chain and LASP-2") {
  // S = 50 over 3 ranks: a document across two ranks, one starting on a rank's first token, short ones
  const std::vector<std::int32_t> cu{0, 3, 17, 20, 34, 50};
  const auto docs = seqpar::make_document_layout(cu, 50);
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    for (auto gates : {seqpar::gate_kind::scalar, seqpar::gate_kind::vector}) {
      seqpar_test::check_gated_lasp<__nv_bfloat16>({.P = 3, .B = 1, .S = 50, .H = 2, .D = 8, .E = 8, .gates = gates,
                                                     .strategy = strategy},
                                                    docs, seqpar::memory_space::host, emulated_host_gated{});
      seqpar_test::check_gated_lasp<float>({.P = 2, .S = 37, .gates = gates, .lo = 1e-6, .hi = 1e-5,
                                            .strategy = strategy},
                                           {}, seqpar::memory_space::host, emulated_host_gated{});
    }
}

TEST_CASE("gated_linear_cuda.check_gates under an emulated warp names the first bad log-gate") {
  const emulated_gated policy;
  host_tensor<float> g(2, 300, 3, 4, 1, 0);  // padded tokens: the kernel must walk the view's strides
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t t = 0; t < 300; ++t)
      for (std::int64_t h = 0; h < 3; ++h)
        for (std::int64_t d = 0; d < 4; ++d) g.view(b, t, h, d) = -0.25f;
  CHECK_NOTHROW(policy.check_gates(g.cview(), nullptr));
  g.view(1, 7, 2, 1) = 0.5f;
  g.view(1, 250, 0, 3) = NAN;  // later: the first one is named
  CHECK_THROWS_WITH_AS(policy.check_gates(g.cview(), nullptr),
                       doctest::Contains("g(1, 7, 2, 1) = 0.5; expected a finite log-gate <= 0"), seqpar::error);
  g.view(0, 299, 1, 0) = -INFINITY;
  CHECK_THROWS_WITH_AS(policy.check_gates(g.cview(), nullptr),
                       doctest::Contains("g(0, 299, 1, 0) = -inf; expected a finite log-gate <= 0"), seqpar::error);
}
