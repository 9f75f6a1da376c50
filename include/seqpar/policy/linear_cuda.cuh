//! @file linear_cuda.cuh
//! linear_cuda: the CUDA linear-attention policy (nvcc only). A chunk is processed in sub-blocks
//! with a running fp32 D x E state, so work grows linearly with the chunk length. fp16 and bf16
//! with D up to 128 run on tensor cores (sm_80 and newer), the chunk cut into segments that run in
//! parallel (linear_tensor_core.cuh); float, larger D and older GPUs on CUDA cores
//! (linear_cuda_core.cuh). The host code here plans every launch and hands it to a launcher
//! (launcher.cuh), so the kernel-emulation tests run it too.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/linear_attention_policy.hpp>
#include <seqpar/policy/detail/launcher.cuh>
#include <seqpar/policy/detail/linear_cuda_core.cuh>
#include <seqpar/policy/detail/linear_operations.hpp>
#include <seqpar/policy/detail/linear_tensor_core.cuh>

#include <algorithm>
#include <cstdint>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! The CUDA linear-attention policy, its kernels started by Launcher (linear_cuda: on the current
//! CUDA device): any element type, D and E up to 256, up to 256 heads and batch * heads up to 65535;
//! device memory, every operation on the stream it is given (the tensor-core path allocates its
//! segment states there, stream-ordered).
template <class Launcher>
struct basic_linear_cuda : detail::linear_operations<basic_linear_cuda<Launcher>> {
  //! Opts into seqpar::linear_attention_policy.
  using policy_concept = linear_attention_policy_tag;
  //! Starts the kernels (see launcher.cuh).
  Launcher launcher{};

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! D and E up to 256.
  bool supports(dtype, std::int64_t D, std::int64_t E) const {
    return D >= 1 && E >= 1 && D <= detail::linear_kernels::max_dim && E <= detail::linear_kernels::max_dim;
  }

  //! out = lambda^n in + m
  void state_update(std::span<const float> decay, std::int64_t n, const_state_view in, const_state_view m,
                    state_view out, stream_ref stream) const {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>((out.size() + 255) / 256, 4096));
    launcher(detail::linear_kernels::state_update_kernel, dim3(blocks), dim3(256), 0, stream, table, n, in, m, out);
  }

  //! forward_intra into o on `stream` and state_contribution into m on `side`, the two sharing one
  //! pass over K and V on the tensor-core path: its per-segment states, scanned once, give both the
  //! segment prefixes o's pass starts from and their total m. On `side` the states pass and the
  //! scan run first (after what `stream` holds now), so m is ready before o's pass ends; `stream`
  //! waits for them. Same values as the two operations called apart.
  template <class T>
  void forward_intra_with_state(const linear_chunk<T>& c, tensor_view<T> o, state_view m, stream_ref stream,
                                stream_ref side) const {
    const auto &q = c.q, &k = c.k, &v = c.v;
    const auto table = make_table(c.decay);
    const unsigned BH = batch_heads(q);
    if (BH == 0) return;  // no state and no output: nothing to launch
    this->template dispatch<T>(
        q.head_dim(),
        [&](auto sms) {
          const unsigned tiles = y_tiles(v.head_dim());
          const auto plan = detail::linear_kernels::plan_segments(q.seq(), std::int64_t{tiles} * BH, sms);
          const std::int64_t per_head = q.head_dim() * v.head_dim();
          auto states = launcher.workspace(plan.count * BH * per_head, stream);  // freed on `stream`, after o's pass
          const dim3 grid(tiles, static_cast<unsigned>(plan.count), BH);
          launcher.order(side, stream);
          launch_chunk_scan<T>(grid, k, k, v, tensor_view<T>{}, states.data(), plan.length, table, false, true,
                               detail::device::all_rows_are_vectorizable(k, v), side);
          scan_states(states.data(), plan, q.seq(), BH, static_cast<int>(q.heads()), per_head, table, m.data_handle(),
                      false, side);
          launcher.order(stream, side);
          if (o.size() != 0)
            launch_chunk_scan<T>(grid, q, k, v, o, plan.count > 1 ? states.data() : nullptr, plan.length, table, false,
                                 false, detail::device::all_rows_are_vectorizable(q, k, v), stream);
        },
        [&] {
          launcher.order(side, stream);
          this->state_contribution(c, m, side);
          this->forward_intra(c, o, stream);
          launcher.order(stream, side);
        });
  }

 private:
  friend detail::linear_operations<basic_linear_cuda>;
  using decay_table = detail::linear_kernels::decay_table;

  static decay_table make_table(std::span<const float> decay) {
    constexpr int max_heads = detail::linear_kernels::max_heads;
    if (decay.size() > static_cast<std::size_t>(max_heads))
      SEQPAR_FAIL(errc::unsupported, "decay: linear_cuda takes up to " << max_heads << " heads, got " << decay.size());
    decay_table t{};
    for (std::size_t h = 0; h < decay.size(); ++h) t.lambda[h] = decay[h];
    return t;
  }

  //! batch * heads, one grid z index each: at most 65535.
  template <class T>
  static unsigned batch_heads(const tensor_view<T>& x) {
    const std::int64_t bh = x.batch() * x.heads();
    if (bh > 65535)
      SEQPAR_FAIL(errc::unsupported, "batch * heads: linear_cuda takes up to 65535, got " << x.batch() << " * "
                                                                                          << x.heads());
    return static_cast<unsigned>(bh);
  }

  static unsigned y_tiles(std::int64_t Y) {
    constexpr int tile = detail::linear_kernels::tc_y_tile;
    return static_cast<unsigned>((Y + tile - 1) / tile);
  }

  //! One chunk_scan launch (see linear_tensor_core.cuh) with lambda's decay weights.
  template <class T>
  void launch_chunk_scan(dim3 grid, tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v,
                         tensor_view<T> out, float* states, std::int64_t segment_length, const decay_table& table,
                         bool reverse, bool states_only, bool vec, stream_t stream) const {
    namespace lk = detail::linear_kernels;
    lk::launch_chunk_scan(launcher, grid, a, b, v, out, states, segment_length, lk::constant_weights{table},
                          {.reverse = reverse, .states_only = states_only}, vec, stream);
  }

  //! The segment states of chunk_scan(states_only) into prefixes; `total` (may be null) the whole sum.
  void scan_states(float* states, const detail::segment_plan& plan, std::int64_t C, unsigned BH, int H,
                   std::int64_t per_head, const decay_table& table, float* total, bool times_lambda,
                   stream_t stream) const {
    const std::int64_t n = std::int64_t{BH} * per_head;
    launcher(detail::linear_kernels::scan_segment_states, dim3(static_cast<unsigned>((n + 255) / 256)), dim3(256), 0,
             stream, states, plan.count, plan.length, C, BH, H, per_head, table, total, times_lambda);
  }

  //! Runs on_tensor_cores(sms) for fp16 and bf16 when a product contracting over `contracted`
  //! columns fits the tensor-core kernels on this device, else on_cuda_cores().
  template <class T, class TensorCores, class CudaCores>
  void dispatch(std::int64_t contracted, TensorCores on_tensor_cores, CudaCores on_cuda_cores) const {
    if constexpr (detail::mma::input<T>) {
      const detail::device_info info = launcher.device();
      if (contracted <= detail::linear_kernels::tc_max_x && info.major >= 8) return on_tensor_cores(info.multiprocessors);
    }
    on_cuda_cores();
  }

  //! out_i = sum_{j <= i} w (a_i . b_j) v_j (j >= i with `reverse`).
  template <class T>
  void product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
               std::span<const float> decay, bool reverse, stream_t stream) const {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned BH = batch_heads(a);
    dispatch<T>(a.head_dim(), [&](auto sms) {
      const unsigned tiles = y_tiles(out.head_dim());
      const auto plan = detail::linear_kernels::plan_segments(a.seq(), std::int64_t{tiles} * BH, sms);
      const std::int64_t per_head = a.head_dim() * v.head_dim();
      auto states = launcher.workspace(plan.count > 1 ? plan.count * BH * per_head : 0, stream);
      float* const prefixes = plan.count > 1 ? states.data() : nullptr;  // null: every segment starts from zero
      const bool vec = detail::device::all_rows_are_vectorizable(a, b, v);
      const dim3 grid(tiles, static_cast<unsigned>(plan.count), BH);
      if (plan.count > 1) {
        launch_chunk_scan<T>(grid, a, b, v, out, prefixes, plan.length, table, reverse, true, vec, stream);
        scan_states(prefixes, plan, a.seq(), BH, static_cast<int>(a.heads()), per_head, table, nullptr, false, stream);
      }
      launch_chunk_scan<T>(grid, a, b, v, out, prefixes, plan.length, table, reverse, false, vec, stream);
    }, [&] { core_product(a, b, v, out, table, reverse, stream); });
  }

  //! m[x][y] = sum_i w(i) a_i[x] b_i[y]
  template <class T>
  void outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, std::span<const float> decay,
                 detail::linear_weight w, stream_t stream) const {
    if (m.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned BH = batch_heads(a);
    dispatch<T>(a.head_dim(), [&](auto sms) {
      // lk: a running state in time order is sum lambda^(C-1-i) a_i b_i^T; lq: in reverse order it
      // is sum lambda^i a_i b_i^T, times lambda.
      const bool lq = w == detail::linear_weight::lq;
      const unsigned tiles = y_tiles(b.head_dim());
      const auto plan = detail::linear_kernels::plan_segments(a.seq(), std::int64_t{tiles} * BH, sms);
      const std::int64_t per_head = a.head_dim() * b.head_dim();
      auto states = launcher.workspace(plan.count * BH * per_head, stream);
      const dim3 grid(tiles, static_cast<unsigned>(plan.count), BH);
      launch_chunk_scan<T>(grid, a, a, b, tensor_view<T>{}, states.data(), plan.length, table, lq, true,
                           detail::device::all_rows_are_vectorizable(a, b), stream);
      scan_states(states.data(), plan, a.seq(), BH, static_cast<int>(a.heads()), per_head, table, m.data_handle(), lq,
                  stream);
    }, [&] { core_outer_sum(a, b, m, table, w, stream); });
  }

  //! out_i += w(i) a_i S (S transposed with `transposed`)
  template <class T>
  void add_rows(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                std::span<const float> decay, detail::linear_weight w, stream_t stream) const {
    if (out.size() == 0) return;
    const auto table = make_table(decay);
    const unsigned BH = batch_heads(a);
    dispatch<T>(a.head_dim(), [&](auto sms) {
      namespace lk = detail::linear_kernels;
      const unsigned tiles = y_tiles(out.head_dim());
      const std::int64_t token_tiles = (a.seq() + lk::tc_tokens - 1) / lk::tc_tokens;
      const std::int64_t fill = (4 * std::int64_t{sms} + std::int64_t{tiles} * BH - 1) / (std::int64_t{tiles} * BH);
      const dim3 grid(static_cast<unsigned>(std::clamp<std::int64_t>(std::min(token_tiles, fill), 1, 1 << 30)), tiles, BH);
      const std::size_t bytes = detail::shared_bytes<lk::rows_times_state_shared<T>>(lk::tc_padded(a.head_dim()));
      launcher(lk::rows_times_state<T>, grid, dim3(128), bytes, stream, a, s, transposed, out, table, w,
               detail::device::all_rows_are_vectorizable(a, out));
    }, [&] { core_add_rows(a, s, transposed, out, table, w, stream); });
  }

  // The CUDA-core kernels (linear_cuda_core.cuh).
  template <class Kernel, class... Args>
  void launch(Kernel kernel, const detail::linear_kernels::launch_shape& shape, stream_t stream,
              const Args&... args) const {
    launcher(kernel, shape.grid, dim3(shape.threads), shape.shared_bytes, stream, args...);
  }
  template <class T>
  void core_product(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> v, tensor_view<T> out,
                    const decay_table& table, bool reverse, stream_t stream) const {
    namespace lk = detail::linear_kernels;
    launch(lk::causal_decay_product<T>, lk::causal_decay_product_shape(a, out.head_dim()), stream, a, b, v, out,
           table, reverse);
  }
  template <class T>
  void core_outer_sum(tensor_view<const T> a, tensor_view<const T> b, state_view m, const decay_table& table,
                      detail::linear_weight w, stream_t stream) const {
    namespace lk = detail::linear_kernels;
    launch(lk::weighted_outer_sum<T>, lk::weighted_outer_sum_shape(a, b.head_dim()), stream, a, b, m, table, w);
  }
  template <class T>
  void core_add_rows(tensor_view<const T> a, const_state_view s, bool transposed, tensor_view<T> out,
                     const decay_table& table, detail::linear_weight w, stream_t stream) const {
    namespace lk = detail::linear_kernels;
    launch(lk::add_rows_times_state<T>, lk::add_rows_times_state_shape(a, out.head_dim()), stream, a, s, transposed,
           out, table, w);
  }
};

#if SEQPAR_CUDA_COMPILER
//! The CUDA linear-attention policy (basic_linear_cuda on the current CUDA device).
using linear_cuda = basic_linear_cuda<detail::cuda_launcher>;
static_assert(linear_attention_policy<linear_cuda>);
#endif

SEQPAR_KERNEL_NAMESPACE_END
