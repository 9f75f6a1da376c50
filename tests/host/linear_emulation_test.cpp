// The linear_cuda policy on the host, its kernels under an emulated warp (one std::thread per
// CUDA thread, mma.sync from the PTX fragment tables), operation by operation against
// linear_reference in float: the policy's own launch planning (segment plans, grids, the choice of
// kernels for the device it is told of), the segment states and their scan, the decayed causal
// products forwards and backwards, the hi + lo state products, ragged sub-blocks, padded D and E,
// several E tiles, and the CUDA-core kernels (float, D beyond the tensor cores, older GPUs); a
// whole LASP layer over packed documents with these kernels as its policy; and, under the
// recording launcher, the stream order of the fused forward on every path.
// Tolerances: 1e-5 (float), 3e-3 (half) and 2.5e-2 (bfloat16) of the largest reference magnitude.
#include <seqpar_test/warp_emulation.hpp>  // first: the kernel headers below compile as host code

#include <seqpar/policy/linear_cuda.cuh>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/documents.hpp>
#include <seqpar_test/host_tensor.hpp>
#include <seqpar_test/lasp_cases.hpp>
#include <seqpar_test/recording_layer.hpp>
#include <seqpar_test/stream_recording.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

namespace lk = seqpar::detail::linear_kernels;
// linear_cuda's kernel parameters that hold no pointer, for the recording launcher.
template <>
inline constexpr bool seqpar_test::pointer_free<lk::decay_table> = true;
template <>
inline constexpr bool seqpar_test::pointer_free<lk::constant_weights> = true;
template <>
inline constexpr bool seqpar_test::pointer_free<lk::scan_mode> = true;

namespace {
using seqpar::state_view;
using seqpar_test::host_tensor;
using seqpar_test::relative_gap;
using seqpar_test::state;
using seqpar_test::state_gap;
using seqpar_test::widened;

// linear_cuda with its kernels run under the emulated warp.
using emulated_linear = seqpar::basic_linear_cuda<seqpar_emulation::launcher>;
static_assert(seqpar::linear_attention_policy<emulated_linear>);

struct linear_case {
  std::int64_t B, C;
  int H, D, E;
  std::int64_t pad;
  int multiprocessors;       // of the emulated device: with more, the planning cuts chunks into more segments
  std::vector<float> decay;  // one per head
  float q_amp = 0.5f, kv_amp = 0.5f;          // deviations of q and dO, of k and v
  float kv_state_amp = 1.0f, g_state_amp = 1.0f;  // deviations of the given states KV and G
};

template <class T>
void check_linear(const linear_case& c, int major = 8) {
  INFO("sm_" << major << "x with " << c.multiprocessors << " multiprocessors: B=" << c.B << " C=" << c.C << " H=" << c.H
             << " D=" << c.D << " E=" << c.E << " pad=" << c.pad);
  const host_tensor<T> q(c.B, c.C, c.H, c.D, c.pad, c.q_amp), k(c.B, c.C, c.H, c.D, c.pad, c.kv_amp),
      v(c.B, c.C, c.H, c.E, c.pad, c.kv_amp), dout(c.B, c.C, c.H, c.E, c.pad, c.q_amp);
  host_tensor<T> o(c.B, c.C, c.H, c.E, c.pad, 0), dq(c.B, c.C, c.H, c.D, c.pad, 0), dk(c.B, c.C, c.H, c.D, c.pad, 0),
      dv(c.B, c.C, c.H, c.E, c.pad, 0);
  const auto qf = widened(q), kf = widened(k), vf = widened(v), dof = widened(dout);
  host_tensor<float> o_ref(c.B, c.C, c.H, c.E, 0, 0), dq_ref(c.B, c.C, c.H, c.D, 0, 0),
      dk_ref(c.B, c.C, c.H, c.D, 0, 0), dv_ref(c.B, c.C, c.H, c.E, 0, 0);
  const state kv(c.B, c.H, c.D, c.E, c.kv_state_amp), g(c.B, c.H, c.D, c.E, c.g_state_amp);
  state m(c.B, c.H, c.D, c.E, 0), m_ref(c.B, c.H, c.D, c.E, 0), g_out(c.B, c.H, c.D, c.E, 0),
      g_ref(c.B, c.H, c.D, c.E, 0);
  const emulated_linear tc{{}, {c.multiprocessors, major}};
  const seqpar::linear_reference ref;
  const std::span<const float> decay(c.decay);
  const double tol = std::is_same_v<T, float> ? 1e-5 : std::is_same_v<T, __half> ? 3e-3 : 2.5e-2;

  tc.forward_intra(seqpar::linear_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .decay = decay}, o.view,
                   nullptr);
  ref.forward_intra(seqpar::linear_chunk<float>{.q = qf.cview(), .k = kf.cview(), .v = vf.cview(), .decay = decay},
                    o_ref.view, nullptr);
  CHECK(relative_gap(o.view, o_ref.view) <= tol);
  // The fused forward_intra and state_contribution give the bits of the two apart.
  host_tensor<T> o_fused(c.B, c.C, c.H, c.E, c.pad, 0);
  state m_fused(c.B, c.H, c.D, c.E, 0), m_apart(c.B, c.H, c.D, c.E, 0);
  tc.forward_intra_with_state(seqpar::linear_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .decay = decay},
                              o_fused.view, m_fused.view, nullptr, nullptr);
  tc.state_contribution(seqpar::linear_chunk<T>{.k = k.cview(), .v = v.cview(), .decay = decay}, m_apart.view, nullptr);
  CHECK(seqpar_test::first_mismatch(o_fused.data, o.data) == -1);
  CHECK(seqpar_test::first_mismatch(m_fused.data, m_apart.data) == -1);
  // forward_inter adds to what o holds: the reference starts from the same rounded values.
  const auto o_before = widened(o);
  for (std::size_t i = 0; i < o_ref.data.size(); ++i) o_ref.data[i] = o_before.data[i];
  tc.forward_inter(seqpar::linear_chunk<T>{.q = q.cview(), .decay = decay}, kv.view, o.view, nullptr);
  ref.forward_inter(seqpar::linear_chunk<float>{.q = qf.cview(), .decay = decay}, kv.view, o_ref.view, nullptr);
  CHECK(relative_gap(o.view, o_ref.view) <= tol);

  tc.state_contribution(seqpar::linear_chunk<T>{.k = k.cview(), .v = v.cview(), .decay = decay}, m.view, nullptr);
  ref.state_contribution(seqpar::linear_chunk<float>{.k = kf.cview(), .v = vf.cview(), .decay = decay}, m_ref.view,
                         nullptr);
  CHECK(state_gap(m, m_ref) <= tol);
  tc.backward_state_contribution(seqpar::linear_chunk<T>{.q = q.cview(), .dout = dout.cview(), .decay = decay},
                                 g_out.view, nullptr);
  ref.backward_state_contribution(seqpar::linear_chunk<float>{.q = qf.cview(), .dout = dof.cview(), .decay = decay},
                                  g_ref.view, nullptr);
  CHECK(state_gap(g_out, g_ref) <= tol);

  tc.backward_intra(
      seqpar::linear_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .dout = dout.cview(), .decay = decay},
      seqpar::linear_gradients<T>{.dq = dq.view, .dk = dk.view, .dv = dv.view}, nullptr);
  ref.backward_intra(
      seqpar::linear_chunk<float>{
          .q = qf.cview(), .k = kf.cview(), .v = vf.cview(), .dout = dof.cview(), .decay = decay},
      seqpar::linear_gradients<float>{.dq = dq_ref.view, .dk = dk_ref.view, .dv = dv_ref.view}, nullptr);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);
  const auto dq0 = widened(dq), dk0 = widened(dk), dv0 = widened(dv);
  dq_ref.data = dq0.data, dk_ref.data = dk0.data, dv_ref.data = dv0.data;
  tc.backward_inter(
      seqpar::linear_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .dout = dout.cview(), .decay = decay},
      kv.view, g.view, seqpar::linear_gradients<T>{.dq = dq.view, .dk = dk.view, .dv = dv.view}, nullptr);
  ref.backward_inter(
      seqpar::linear_chunk<float>{
          .q = qf.cview(), .k = kf.cview(), .v = vf.cview(), .dout = dof.cview(), .decay = decay},
      kv.view, g.view, seqpar::linear_gradients<float>{.dq = dq_ref.view, .dk = dk_ref.view, .dv = dv_ref.view},
      nullptr);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);

  CHECK(tc.launcher.within_shared);
  for (const auto* t : {&o, &dq, &dk, &dv}) CHECK(t->padding_untouched());
}
}  // namespace

TEST_CASE("linear_cuda's tensor-core kernels under an emulated warp equal linear_reference") {
  // A GPU of 132 multiprocessors: three segments of 128, 128 and 44 tokens; decays 1 and 0.9 side by side.
  check_linear<__half>({1, 300, 2, 64, 64, 0, 132, {1.0f, 0.9f}});
  // One segment of two sub-blocks; padded D (12 -> 16) and E (40 of a 64 tile); strided tokens.
  check_linear<__nv_bfloat16>({2, 128, 1, 12, 40, 3, 1, {0.99f}});
  // D = 80: five state tiles over four warps; E = 70: two column tiles; segments of 128 and 22
  // tokens; two blocks walk three 64-token tiles of rows.
  check_linear<__half>({1, 150, 1, 80, 70, 0, 1, {0.95f}});
  // D = 128, the largest on tensor cores; E = 96; segments of 64 and 26 tokens.
  check_linear<__nv_bfloat16>({1, 90, 1, 128, 96, 0, 1, {0.9f}});
  // fp16 with states far beyond its range (large k and v with lambda = 1, a given KV of 1e6) and
  // outputs within it: the state's parts are scaled by a power of two.
  check_linear<__half>({1, 130, 1, 32, 16, 0, 1, {1.0f}, 2e-3f, 80.0f, 1e6f, 10.0f});
}

TEST_CASE("linear_cuda's CUDA-core kernels under an emulated warp equal linear_reference") {
  // float; ragged 16-token sub-blocks, 32-column tiles and 32-token row tiles; strided tokens.
  check_linear<float>({2, 70, 2, 5, 40, 1, 1, {1.0f, 0.9f}});
  // bf16 with D = 160: what contracts over D runs on CUDA cores, what contracts over E = 24 on tensor cores.
  check_linear<__nv_bfloat16>({1, 50, 1, 160, 24, 0, 1, {0.95f}});
  // fp16 on a GPU older than sm_80: everything on CUDA cores.
  check_linear<__half>({1, 40, 2, 16, 24, 0, 1, {0.9f, 1.0f}}, 7);
}

namespace {
// forward_intra_with_state's promise: the side stream's work runs after what `stream` held at the
// call, and `stream`'s later work after the side's, so the caller reads o and m and reuses the
// inputs on `stream` with no wait of its own. The inputs are written on `stream` first.
template <class T>
void check_fused_forward_order(std::int64_t C, int D, int E, int major) {
  INFO("sm_" << major << "x, D=" << D << " E=" << E);
  const host_tensor<T> q(1, C, 2, D, 0, 0.5f), k(1, C, 2, D, 0, 0.5f), v(1, C, 2, E, 0, 0.5f);
  host_tensor<T> o(1, C, 2, E, 0, 0);
  state m(1, 2, D, E, 0);
  const seqpar::basic_linear_cuda<seqpar_test::recording_launcher> policy{{}, {.info = {132, major}}};
  auto& log = *policy.launcher.log;
  const auto stream = log.stream("stream"), side = log.stream("side");
  const std::vector<float> decay{0.9f, 1.0f};
  const std::pair<seqpar::tensor_view<const T>, std::string> inputs[] = {
      {q.cview(), "q"}, {k.cview(), "k"}, {v.cview(), "v"}};
  for (const auto& [view, name] : inputs) {
    log.name(view, name);
    log.write(view, stream, name + "'s producer");
  }
  log.name(o.view, "o");
  log.name(m.view, "m");
  policy.forward_intra_with_state(
      seqpar::linear_chunk<T>{.q = q.cview(), .k = k.cview(), .v = v.cview(), .decay = decay}, o.view, m.view, stream,
      side);
  log.read(o.view, stream, "o's consumer");
  log.read(m.view, stream, "m's consumer");
  for (const auto& [view, name] : inputs) log.write(view, stream, "the next step");
  CHECK_MESSAGE(log.findings().empty(), log.report());
}

// Every operation on a chunk with no batch, no heads or no tokens launches nothing CUDA refuses.
template <class T>
void check_empty_launches(std::int64_t B, std::int64_t C, int H, int major) {
  INFO("sm_" << major << "x, B=" << B << " C=" << C << " H=" << H);
  constexpr int D = 16, E = 24;
  const host_tensor<T> q(B, C, H, D, 0, 0.5f), k(B, C, H, D, 0, 0.5f), v(B, C, H, E, 0, 0.5f),
      dout(B, C, H, E, 0, 0.5f);
  host_tensor<T> o(B, C, H, E, 0, 0), dq(B, C, H, D, 0, 0), dk(B, C, H, D, 0, 0), dv(B, C, H, E, 0, 0);
  state m(B, H, D, E, 0), kv(B, H, D, E, 0.5f), g(B, H, D, E, 0.5f);
  const seqpar::basic_linear_cuda<seqpar_test::recording_launcher> policy{{}, {.info = {132, major}}};
  const auto s = policy.launcher.log->stream("stream"), side = policy.launcher.log->stream("side");
  const std::vector<float> decay(static_cast<std::size_t>(H), 0.9f);
  const seqpar::linear_chunk<T> c{.q = q.cview(), .k = k.cview(), .v = v.cview(), .dout = dout.cview(), .decay = decay};
  const seqpar::linear_gradients<T> grads{.dq = dq.view, .dk = dk.view, .dv = dv.view};
  policy.forward_intra(c, o.view, s);
  policy.state_contribution(c, m.view, s);
  policy.forward_inter(c, kv.view, o.view, s);
  policy.forward_intra_with_state(c, o.view, m.view, s, side);
  policy.backward_intra(c, grads, s);
  policy.backward_state_contribution(c, m.view, s);
  policy.backward_inter(c, kv.view, g.view, grads, s);
  policy.state_update(decay, C, kv.view, g.view, m.view, s);
  CHECK_MESSAGE(policy.launcher.log->findings().empty(), policy.launcher.log->report());
}
}  // namespace

TEST_CASE("linear_cuda launches nothing CUDA refuses for an empty batch, no heads or no tokens") {
  for (int major : {9, 7}) {
    check_empty_launches<__half>(0, 64, 2, major);
    check_empty_launches<__half>(1, 64, 0, major);
    check_empty_launches<__half>(1, 0, 2, major);
    check_empty_launches<float>(0, 64, 2, major);
    check_empty_launches<float>(2, 0, 1, major);
  }
}

TEST_CASE("linear_cuda's fused forward keeps its stream order on every path (recording launcher)") {
  check_fused_forward_order<__half>(300, 64, 64, 9);         // tensor cores, three segments
  check_fused_forward_order<float>(70, 16, 24, 9);           // float: CUDA cores
  check_fused_forward_order<__nv_bfloat16>(50, 160, 24, 9);  // D beyond the tensor cores
  check_fused_forward_order<__half>(40, 16, 24, 7);          // a GPU older than sm_80
}

TEST_CASE("plan_segments covers the chunk with sub-block multiples and fills one wave of the GPU") {
  for (std::int64_t C : {0, 1, 63, 64, 255, 256, 300, 1000, 4000, 4096, 1 << 19})
    for (std::int64_t blocks : {1, 8, 52, 64, 144, 500})
      for (int sms : {1, 132}) {
        INFO("C=" << C << " blocks=" << blocks << " sms=" << sms);
        const auto p = lk::plan_segments(C, blocks, sms);
        CHECK(p.count >= 1);
        CHECK(p.length % lk::tc_tokens == 0);
        CHECK(p.length * p.count >= C);
        CHECK(p.length > 0);
        CHECK(p.length * (p.count - 1) < std::max<std::int64_t>(C, 1));
        // One wave of resident blocks (two per multiprocessor) at most: no partial second wave...
        const std::int64_t wave = std::max<std::int64_t>(2 * sms / blocks, 1);
        CHECK(p.count <= wave);
        // ...and most of it: 3/4 of the segments it takes, or of those 256-token segments give.
        const std::int64_t most = std::min<std::int64_t>(wave, std::max<std::int64_t>((C + 255) / 256, 1));
        CHECK(4 * p.count >= 3 * most);
      }
}

namespace {
// linear_cuda's kernels under the emulated warp as a host-memory policy, for a whole LASP layer.
struct emulated_host_linear : seqpar::basic_linear_cuda<seqpar_emulation::serial_launcher> {
  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
};
static_assert(seqpar::linear_attention_policy<emulated_host_linear>);
}  // namespace

TEST_CASE("lasp_attention with linear_cuda under an emulated warp: packed documents, chain and LASP-2") {
  // S = 150 over 3 ranks (50 each): a document across all three, one ending on a rank boundary,
  // short ones inside a rank; decays 1 and 0.9; D = 16, E = 16 on tensor cores.
  const std::vector<std::int32_t> lengths{30, 70, 1, 19, 30};
  const auto docs = seqpar::documents_of_lengths(lengths);
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    seqpar_test::check_lasp<__half>({3, 1, 150, 2, 16, 16, 1.0f, strategy}, seqpar::memory_space::host,
                                    emulated_host_linear{}, docs);
}

namespace {
// A LASP layer's whole device path on rank `rank` of `P`, recorded: forward, the caller reading o
// and writing the inputs anew on its stream, then backward and the gradients read. Returns the log.
template <class T>
std::shared_ptr<seqpar_test::stream_order_log> record_lasp(int rank, int P, seqpar::lasp_strategy strategy,
                                                           bool documents, bool joins = true) {
  constexpr std::int64_t B = 1, S = 192;
  constexpr int H = 2, D = 16, E = 16;
  using policy_type = seqpar::basic_linear_cuda<seqpar_test::recording_launcher>;
  policy_type policy{};
  policy.launcher.joins = joins;
  const auto log = policy.launcher.log;
  seqpar_test::recording_communicator comm(log, rank, P);
  const auto seq = seqpar::make_seq_partition(S, P);
  const std::int64_t C = seq.size(rank);
  seqpar::lasp_attention<policy_type, seqpar_test::recording_communicator, T, seqpar_test::recording_resource> layer(
      policy, comm, seq, {.batch = B, .heads = H, .head_dim = D, .value_dim = E}, seqpar::elements<T>, {0.9f, 1.0f},
      strategy, {log});
  const host_tensor<T> q(B, C, H, D, 0, 0.5f), k(B, C, H, D, 0, 0.5f), v(B, C, H, E, 0, 0.5f),
      dout(B, C, H, E, 0, 0.5f);
  host_tensor<T> o(B, C, H, E, 0, 0), dq(B, C, H, D, 0, 0), dk(B, C, H, D, 0, 0), dv(B, C, H, E, 0, 0);
  const auto stream = log->stream("stream");
  const std::vector<std::int32_t> lengths{70, 50, 72};
  const auto docs = seqpar::documents_of_lengths(lengths);
  const seqpar::execution exec{.stream = stream, .checks = seqpar::call_checks::local};
  seqpar_test::record_step<T>(
      *log, stream, {{q.cview(), "q"}, {k.cview(), "k"}, {v.cview(), "v"}, {dout.cview(), "dout"}},
      {{o.view, "o"}, {dq.view, "dq"}, {dk.view, "dk"}, {dv.view, "dv"}},
      [&] {
        return layer.forward(
            {.q = q.cview(), .k = k.cview(), .v = v.cview(), .o = o.view, .documents = documents ? &docs : nullptr},
            exec);
      },
      [&](const auto& saved) {
        layer.backward(saved, {.dout = dout.cview(), .dq = dq.view, .dk = dk.view, .dv = dv.view}, exec);
      });
  return log;
}
}  // namespace

TEST_CASE("lasp_attention keeps its stream order on every rank (recording launcher and communicator)") {
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    for (bool documents : {false, true})
      for (int rank = 0; rank < 3; ++rank) {
        INFO(seqpar::to_string(strategy) << (documents ? " with documents" : "") << ", rank " << rank << " of 3");
        const auto half = record_lasp<__half>(rank, 3, strategy, documents);
        CHECK_MESSAGE(half->findings().empty(), half->report());
        const auto single = record_lasp<float>(rank, 3, strategy, documents);  // CUDA cores
        CHECK_MESSAGE(single->findings().empty(), single->report());
      }
}

TEST_CASE("the recording finds a LASP layer whose side stream is never joined") {
  const auto log = record_lasp<__half>(1, 3, seqpar::lasp_strategy::chain, false, /*joins=*/false);
  CHECK(!log->findings().empty());
  CHECK_MESSAGE(log->report().find("not ordered after") != std::string::npos, log->report());
}
