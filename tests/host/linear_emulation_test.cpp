// linear_cuda's kernels on the host, under an emulated warp (one std::thread per CUDA
// thread, mma.sync from the PTX fragment tables), operation by operation against linear_reference
// in float: the segment states and their scan, the decayed causal products forwards and
// backwards, the hi + lo state products, ragged sub-blocks, padded D and E, several E tiles.
// The CUDA-core kernels (float, and D beyond the tensor cores) with linear_cuda's launch shapes.
// Tolerances: 1e-5 (float), 3e-3 (half) and 2.5e-2 (bfloat16) of the largest reference magnitude.
#include <seqpar_test/warp_emulation.hpp>  // first: the kernel headers below compile as host code

#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/detail/linear_operations.hpp>
#include <seqpar/policy/detail/linear_tensor_core.cuh>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar_test/host_tensor.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

SEQPAR_KERNEL_NAMESPACE_BEGIN
namespace linear_kernels {
alignas(16) unsigned char linear_shared[1 << 17];  // what linear_shared_base() names
alignas(16) float smem[1 << 15];                    // what the CUDA-core kernels' extern smem names
}
SEQPAR_KERNEL_NAMESPACE_END

namespace {
namespace lk = seqpar::linear_kernels;
using seqpar::const_state_view;
using seqpar::device::rows_are_vectorizable;
using seqpar::state_view;
using seqpar::tensor_view;
using seqpar_test::host_tensor;
using seqpar_test::relative_gap;

// linear_cuda with its kernels run under the emulated warp: the same mapping from operations to
// kernels (linear_operations); the tensor-core path with segments of a fixed length, so that short
// chunks still span several, or the CUDA-core path with linear_cuda's launch shapes.
struct emulated_linear : seqpar::detail::linear_operations<emulated_linear> {
  using policy_concept = seqpar::linear_attention_policy_tag;
  std::int64_t segment_length;
  bool cuda_cores = false;
  mutable bool within_shared = true;  // every launch stayed inside its declared shared memory

  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
  bool supports(seqpar::dtype, std::int64_t, std::int64_t) const { return true; }
  void state_update(std::span<const float> decay, std::int64_t n, const_state_view in, const_state_view m,
                    state_view out, seqpar::stream_t = nullptr) const {
    seqpar::linear_reference{}.state_update(decay, n, in, m, out);
  }

  template <class T>
  void product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
               std::span<const float> decay, bool reverse, seqpar::stream_t) const {
    if (!on_tensor_cores<T>())
      return on_cuda_cores(lk::causal_decay_product_shape(a, out.head_dim()),
                           [&] { lk::causal_decay_product<T>(a, b, v, out, table(decay), reverse); });
    if constexpr (seqpar::mma::input<T>) {
      const auto p = plan(a.seq());
      const unsigned BH = static_cast<unsigned>(a.batch() * a.heads());
      std::vector<float> states(p.count * BH * a.head_dim() * v.head_dim(), NAN);
      const dim3 grid(tiles(out.head_dim()), p.count, BH);
      const bool vec = rows_are_vectorizable(a) && rows_are_vectorizable(b) && rows_are_vectorizable(v);
      if (p.count > 1) {
        chunk(grid, a, b, v, out, states.data(), p, decay, reverse, true, vec);
        scan(states.data(), p, a, a.head_dim() * v.head_dim(), decay, nullptr, false);
      }
      chunk(grid, a, b, v, out, p.count > 1 ? states.data() : nullptr, p, decay, reverse, false, vec);
    }
  }

  template <class T>
  void outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, std::span<const float> decay,
                 seqpar::detail::linear_weight w, seqpar::stream_t) const {
    if (!on_tensor_cores<T>())
      return on_cuda_cores(lk::weighted_outer_sum_shape(a, b.head_dim()),
                           [&] { lk::weighted_outer_sum<T>(a, b, m, table(decay), w); });
    if constexpr (seqpar::mma::input<T>) {
      const bool lq = w == seqpar::detail::linear_weight::lq;
      const auto p = plan(a.seq());
      const unsigned BH = static_cast<unsigned>(a.batch() * a.heads());
      std::vector<float> states(p.count * BH * a.head_dim() * b.head_dim(), NAN);
      const dim3 grid(tiles(b.head_dim()), p.count, BH);
      chunk(grid, a, a, b, tensor_view<T>{}, states.data(), p, decay, lq, true,
            rows_are_vectorizable(a) && rows_are_vectorizable(b));
      scan(states.data(), p, a, a.head_dim() * b.head_dim(), decay, m.data_handle(), lq);
    }
  }

  template <class T>
  void add_rows(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                std::span<const float> decay, seqpar::detail::linear_weight w, seqpar::stream_t) const {
    if (!on_tensor_cores<T>())
      return on_cuda_cores(lk::add_rows_times_state_shape(a, out.head_dim()),
                           [&] { lk::add_rows_times_state<T>(a, s, transposed, out, table(decay), w); });
    if constexpr (seqpar::mma::input<T>) {
      const dim3 grid(2, tiles(out.head_dim()), static_cast<unsigned>(a.batch() * a.heads()));  // 2: the token walk
      const std::size_t bytes = lk::rows_times_state_shared_bytes<T>(lk::tc_padded(a.head_dim()));
      within_shared &= seqpar_emulation::launch(grid, 128, lk::linear_shared, bytes, [&] {
        lk::rows_times_state<T>(a, s, transposed, out, table(decay), w,
                                rows_are_vectorizable(a) && rows_are_vectorizable(out));
      });
    }
  }

 private:
  template <class T>
  bool on_tensor_cores() const {
    return seqpar::mma::input<T> && !cuda_cores;
  }
  template <class Body>
  void on_cuda_cores(const lk::launch_shape& shape, Body&& body) const {
    const std::span<unsigned char> shared(reinterpret_cast<unsigned char*>(lk::smem), sizeof lk::smem);
    within_shared &= seqpar_emulation::launch(shape.grid, shape.threads, shared, shape.shared_bytes, body);
  }
  lk::segment_plan plan(std::int64_t C) const {
    return {segment_length, static_cast<int>(std::max<std::int64_t>((C + segment_length - 1) / segment_length, 1))};
  }
  static unsigned tiles(std::int64_t Y) { return static_cast<unsigned>((Y + lk::tc_y_tile - 1) / lk::tc_y_tile); }
  static lk::decay_table table(std::span<const float> decay) {
    lk::decay_table t{};
    std::copy(decay.begin(), decay.end(), t.lambda);
    return t;
  }
  template <class T>
  void chunk(dim3 grid, tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
             float* states, lk::segment_plan p, std::span<const float> decay, bool reverse, bool states_only,
             bool vec) const {
    const int Xp = lk::tc_padded(b.head_dim());
    within_shared &= seqpar_emulation::launch(grid, 128, lk::linear_shared, lk::chunk_scan_shared_bytes<T>(Xp), [&] {
      if (lk::tc_state_tiles(Xp) == 1)
        lk::chunk_scan<T, 1>(a, b, v, out, states, p.length, table(decay), reverse, states_only, vec);
      else
        lk::chunk_scan<T, 2>(a, b, v, out, states, p.length, table(decay), reverse, states_only, vec);
    });
  }
  template <class T>
  void scan(float* states, lk::segment_plan p, const tensor_view<T>& a, std::int64_t per_head,
            std::span<const float> decay, float* total, bool times_lambda) const {
    const std::int64_t BH = a.batch() * a.heads();
    seqpar_emulation::launch(dim3(1), 128, lk::linear_shared, 0, [&] {
      lk::scan_segment_states(states, p.count, p.length, a.seq(), BH, static_cast<int>(a.heads()), per_head,
                              table(decay), total, times_lambda);
    });
  }
};
static_assert(seqpar::linear_attention_policy<emulated_linear>);

// The same values in float, tokens packed.
template <class T>
host_tensor<float> widened(const host_tensor<T>& x) {
  const auto& v = x.view;
  host_tensor<float> out(v.batch(), v.seq(), v.heads(), v.head_dim(), 0, 0);
  for (std::int64_t b = 0; b < v.batch(); ++b)
    for (std::int64_t s = 0; s < v.seq(); ++s)
      for (std::int64_t h = 0; h < v.heads(); ++h)
        for (std::int64_t d = 0; d < v.head_dim(); ++d) out.view(b, s, h, d) = seqpar::to_float(v(b, s, h, d));
  return out;
}

struct state {
  std::vector<float> data;
  state_view view;
  state(std::int64_t B, std::int64_t H, std::int64_t X, std::int64_t Y, float amp) : data(B * H * X * Y, NAN) {
    std::normal_distribution<float> n(0.0f, amp);
    if (amp > 0)
      for (auto& x : data) x = n(seqpar_test::rng());
    view = seqpar::make_state(data.data(), B, H, X, Y);
  }
};

double state_gap(const state& got, const state& want) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < want.data.size(); ++i) {
    if (!std::isfinite(got.data[i])) return INFINITY;
    err = std::max(err, double(std::abs(got.data[i] - want.data[i])));
    scale = std::max(scale, double(std::abs(want.data[i])));
  }
  return err / scale;
}

struct linear_case {
  std::int64_t B, C;
  int H, D, E;
  std::int64_t pad, segment_length;
  std::vector<float> decay;  // one per head
  float q_amp = 0.5f, kv_amp = 0.5f;          // deviations of q and dO, of k and v
  float kv_state_amp = 1.0f, g_state_amp = 1.0f;  // deviations of the given states KV and G
};

template <class T>
void check_linear(const linear_case& c, bool cuda_cores = false) {
  INFO((cuda_cores ? "CUDA cores" : "tensor cores") << " B=" << c.B << " C=" << c.C << " H=" << c.H << " D=" << c.D << " E=" << c.E << " pad=" << c.pad
            << " segment=" << c.segment_length);
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
  const emulated_linear tc{{}, c.segment_length, cuda_cores};
  const seqpar::linear_reference ref;
  const std::span<const float> decay(c.decay);
  const double tol = std::is_same_v<T, float> ? 1e-5 : std::is_same_v<T, __half> ? 3e-3 : 2.5e-2;

  tc.forward_intra(q.cview(), k.cview(), v.cview(), decay, o.view);
  ref.forward_intra(qf.cview(), kf.cview(), vf.cview(), decay, o_ref.view);
  CHECK(relative_gap(o.view, o_ref.view) <= tol);
  // forward_inter adds to what o holds: the reference starts from the same rounded values.
  const auto o_before = widened(o);
  for (std::size_t i = 0; i < o_ref.data.size(); ++i) o_ref.data[i] = o_before.data[i];
  tc.forward_inter(q.cview(), decay, kv.view, o.view);
  ref.forward_inter(qf.cview(), decay, kv.view, o_ref.view);
  CHECK(relative_gap(o.view, o_ref.view) <= tol);

  tc.state_contribution(k.cview(), v.cview(), decay, m.view);
  ref.state_contribution(kf.cview(), vf.cview(), decay, m_ref.view);
  CHECK(state_gap(m, m_ref) <= tol);
  tc.backward_state_contribution(q.cview(), dout.cview(), decay, g_out.view);
  ref.backward_state_contribution(qf.cview(), dof.cview(), decay, g_ref.view);
  CHECK(state_gap(g_out, g_ref) <= tol);

  tc.backward_intra(q.cview(), k.cview(), v.cview(), dout.cview(), decay, dq.view, dk.view, dv.view);
  ref.backward_intra(qf.cview(), kf.cview(), vf.cview(), dof.cview(), decay, dq_ref.view, dk_ref.view, dv_ref.view);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);
  const auto dq0 = widened(dq), dk0 = widened(dk), dv0 = widened(dv);
  dq_ref.data = dq0.data, dk_ref.data = dk0.data, dv_ref.data = dv0.data;
  tc.backward_inter(q.cview(), k.cview(), v.cview(), dout.cview(), decay, kv.view, g.view, dq.view, dk.view, dv.view);
  ref.backward_inter(qf.cview(), kf.cview(), vf.cview(), dof.cview(), decay, kv.view, g.view, dq_ref.view, dk_ref.view,
                     dv_ref.view);
  CHECK(relative_gap(dq.view, dq_ref.view) <= tol);
  CHECK(relative_gap(dk.view, dk_ref.view) <= tol);
  CHECK(relative_gap(dv.view, dv_ref.view) <= tol);

  CHECK(tc.within_shared);
  for (const auto* t : {&o, &dq, &dk, &dv}) CHECK(t->padding_untouched());
}
}  // namespace

TEST_CASE("linear_cuda's tensor-core kernels under an emulated warp equal linear_reference") {
  // Four segments with a ragged last sub-block; decays 1 and 0.9 side by side.
  check_linear<__half>({1, 200, 2, 64, 64, 0, 64, {1.0f, 0.9f}});
  // One segment of two sub-blocks; padded D (12 -> 16) and E (40 of a 64 tile); strided tokens.
  check_linear<__nv_bfloat16>({2, 100, 1, 12, 40, 3, 1 << 20, {0.99f}});
  // D = 80: five state tiles over four warps; E = 70: two column tiles; segments of 128.
  check_linear<__half>({1, 150, 1, 80, 70, 0, 128, {0.95f}});
  // D = 128, the largest on tensor cores; E = 96.
  check_linear<__nv_bfloat16>({1, 90, 1, 128, 96, 0, 64, {0.9f}});
  // fp16 with states far beyond its range (large k and v with lambda = 1, a given KV of 1e6) and
  // outputs within it: the state's parts are scaled by a power of two.
  check_linear<__half>({1, 130, 1, 32, 16, 0, 64, {1.0f}, 2e-3f, 80.0f, 1e6f, 10.0f});
}

TEST_CASE("linear_cuda's CUDA-core kernels under an emulated warp equal linear_reference") {
  // float; ragged 16-token sub-blocks, 32-column tiles and 32-token row tiles; strided tokens.
  check_linear<float>({2, 70, 2, 5, 40, 1, 0, {1.0f, 0.9f}}, true);
  // bf16 with D = 160, beyond the tensor-core kernels.
  check_linear<__nv_bfloat16>({1, 50, 1, 160, 24, 0, 0, {0.95f}}, true);
}

TEST_CASE("plan_segments covers the chunk with sub-block multiples and fills the GPU") {
  for (std::int64_t C : {0, 1, 63, 64, 255, 256, 1000, 4096, 1 << 19})
    for (std::int64_t blocks : {1, 8, 64, 500})
      for (int sms : {1, 132}) {
        INFO("C=" << C << " blocks=" << blocks << " sms=" << sms);
        const auto p = lk::plan_segments(C, blocks, sms);
        CHECK(p.count >= 1);
        CHECK(p.length % lk::tc_tokens == 0);
        CHECK(p.length * p.count >= C);
        CHECK(p.length > 0);
        CHECK(p.length * (p.count - 1) < std::max<std::int64_t>(C, 1));
        // Enough blocks to fill the GPU twice, or as many segments as 256 tokens each allow.
        CHECK((p.count * blocks >= 2 * sms || p.count * 256 >= C));
      }
}
