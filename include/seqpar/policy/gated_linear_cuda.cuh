//! @file gated_linear_cuda.cuh
//! gated_linear_cuda: the CUDA policy of gated linear attention (nvcc only), scalar or per-key-dim
//! log-gates: every product is one walk over the chunk with a running fp32 state, so work grows
//! linearly with the chunk length; a long chunk with few heads is cut into segments that walk in
//! parallel. fp16 and bf16 with D up to 128 walk on tensor cores (linear_cuda's chunk_scan with
//! the weights of gated_tensor_core.cuh), the rest on CUDA cores (gated_linear_kernels.cuh). The
//! host code here plans every launch and hands it to a launcher (launcher.cuh), so the
//! kernel-emulation tests run it too.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/gated_linear_policy.hpp>
#include <seqpar/policy/detail/gated_linear_kernels.cuh>
#include <seqpar/policy/detail/gated_tensor_core.cuh>
#include <seqpar/policy/detail/launcher.cuh>

#include <algorithm>
#include <cstdint>
#include <vector>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! The CUDA gated linear-attention policy, its kernels started by Launcher (gated_linear_cuda: on
//! the current CUDA device): any element type, D and E up to 256, batch * heads up to 65535;
//! device memory, every operation on the stream it is given (backward allocates two fp32 [B, C, H, D]
//! scratch arrays there, and a walk cut into segments their states, stream-ordered).
template <class Launcher>
struct basic_gated_linear_cuda {
  //! Opts into seqpar::gated_linear_attention_policy.
  using policy_concept = gated_linear_attention_policy_tag;
  //! Starts the kernels (see launcher.cuh).
  Launcher launcher{};

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! D and E up to 256.
  bool supports(dtype, std::int64_t D, std::int64_t E) const {
    constexpr int max = detail::gated_kernels::max_dim;
    return D >= 1 && E >= 1 && D <= max && E <= max;
  }

  //! o_i = sum_{j <= i} (sum_d q_i[d] k_j[d] e^(G_i[d] - G_j[d])) v_j
  template <class T>
  void forward_intra(const gated_chunk<T>& c, tensor_view<T> o, stream_ref stream) const {
    walk(walk_args<T, T>{.a = c.q, .b = c.k, .c = c.v, .g = c.g, .out = o}, stream);
  }
  //! m = sum_j diag(e^(G_{C-1} - G_j)) k_j v_j^T
  template <class T>
  void state_contribution(const gated_chunk<T>& c, state_view m, stream_ref stream) const {
    walk(walk_args<T, T>{.a = c.k, .b = c.k, .c = c.v, .g = c.g, .state_out = m}, stream);
  }
  //! o_i += (q_i * e^(G_i))^T kv
  template <class T>
  void forward_inter(const gated_chunk<T>& c, const_state_view kv, tensor_view<T> o, stream_ref stream) const {
    walk(walk_args<T, T>{.a = c.q,
                         .b = c.q,
                         .c = c.q,
                         .g = c.g,
                         .out = o,
                         .state_in = kv,
                         .mode = {.intra = false, .accumulate = true}},
         stream);
  }
  //! total[b, h, d] = G_{C-1}[d]
  void chunk_decay(tensor_view<const float> g, chunk_decay_view total, stream_ref stream) const {
    if (total.size() == 0) return;
    launcher(detail::gated_kernels::gate_totals, dim3(blocks_for(total.size())), dim3(256), 0, stream, g, total);
  }
  //! out = diag(e^total) in + m (in empty: out = m; out may alias in)
  void state_update(const_chunk_decay_view total, const_state_view in, const_state_view m, state_view out,
                    stream_ref stream) const {
    if (out.size() == 0) return;
    launcher(detail::gated_kernels::gated_state_update, dim3(blocks_for(out.size())), dim3(256), 0, stream, total, in,
             m, out);
  }

  //! Throws seqpar::error naming the first entry of g (device memory, read by a kernel) that is
  //! not a finite log-gate <= 0; waits for `stream`. linear_attention_ring calls it on device gates
  //! before anything moves.
  void check_gates(tensor_view<const float> g, stream_ref stream) const {
    if (g.size() == 0) return;
    constexpr unsigned threads = 128;
    const unsigned blocks = static_cast<unsigned>(std::clamp<std::int64_t>((g.size() + threads - 1) / threads, 1, 64));
    const std::int64_t floats = 3 * std::int64_t{blocks} * threads;
    auto found = launcher.workspace(floats, stream);
    launcher(detail::gated_kernels::find_bad_gate, dim3(blocks), dim3(threads), 0, stream, g, found.data());
    std::vector<float> host(static_cast<std::size_t>(floats));
    launcher.to_host(host.data(), found.data(), floats, stream);
    std::int64_t first = -1;
    float value = 0.0f;
    for (std::size_t m = 0; m < host.size(); m += 3) {
      if (host[m] < 0) continue;
      const std::int64_t n = (static_cast<std::int64_t>(host[m]) << 24) + static_cast<std::int64_t>(host[m + 1]);
      if (first < 0 || n < first) first = n, value = host[m + 2];
    }
    if (first < 0) return;
    const std::int64_t W = g.head_dim(), H = g.heads(), C = g.seq();
    SEQPAR_FAIL(errc::invalid_argument, "g(" << first / W / H / C << ", " << first / W / H % C << ", "
                                             << first / W % H << ", " << first % W << ") = " << value
                                             << "; expected a finite log-gate <= 0 (a decay exp(g) in (0, 1])");
  }

  //! dq, dk, dv and dg of the intra term (written)
  template <class T>
  void backward_intra(const gated_chunk<T>& c, const linear_gradients<T>& grads, stream_ref stream) const {
    const auto &q = c.q, &k = c.k, &v = c.v, &dout = c.dout;
    const auto& g = c.g;
    if (q.size() == 0) return;
    auto scratch = launcher.workspace(2 * q.size(), stream);
    const auto pq = like(q, scratch.data()), pk = like(q, scratch.data() + q.size());
    // dq_i: pairs j < i, dk_j: pairs i > j (gate_gradient adds the pairs j = i), dv_j: pairs i >= j
    walk(
        walk_args<T, float>{
            .a = dout, .b = v, .c = k, .g = g, .out = pq, .mode = {.gate_on_output = true, .strict = true}},
        stream);
    walk(walk_args<T, float>{.a = v,
                             .b = dout,
                             .c = q,
                             .g = g,
                             .out = pk,
                             .mode = {.reverse = true, .gate_on_output = true, .strict = true}},
         stream);
    walk(walk_args<T, T>{.a = k, .b = q, .c = dout, .g = g, .out = grads.dv, .mode = {.reverse = true}}, stream);
    gate_gradient(q, k, dout, v, pq, pk, g, {}, {}, grads.dq, grads.dk, grads.dg, false, stream);
  }
  //! gs = sum_i (q_i * e^(G_i)) dO_i^T
  template <class T>
  void backward_state_contribution(const gated_chunk<T>& c, state_view gs, stream_ref stream) const {
    walk(walk_args<T, T>{.a = c.q, .b = c.q, .c = c.dout, .g = c.g, .state_out = gs, .mode = {.reverse = true}},
         stream);
  }
  //! Adds the gradients of the inter term (incoming state kv) and of the state passed on (its
  //! gradient gs) to dq, dk, dv and dg
  template <class T>
  void backward_inter(const gated_chunk<T>& c, const_state_view kv, const_state_view gs,
                      const linear_gradients<T>& grads, stream_ref stream) const {
    const auto &q = c.q, &k = c.k, &v = c.v, &dout = c.dout;
    const auto& g = c.g;
    if (q.size() == 0) return;
    auto scratch = launcher.workspace(2 * q.size(), stream);
    const auto pq = like(q, scratch.data()), pk = like(q, scratch.data() + q.size());
    // dq_i = e^(G_i) * (kv dO_i); dk_j = e^(G_{C-1} - G_j) * (gs v_j); dv_j += (k_j * e^(G_{C-1} - G_j))^T gs
    walk(walk_args<T, float>{.a = dout,
                             .b = dout,
                             .c = dout,
                             .g = g,
                             .out = pq,
                             .state_in = kv,
                             .mode = {.gate_on_output = true, .intra = false, .transposed_in = true}},
         stream);
    walk(walk_args<T, float>{.a = v,
                             .b = v,
                             .c = v,
                             .g = g,
                             .out = pk,
                             .state_in = gs,
                             .mode = {.reverse = true, .gate_on_output = true, .intra = false, .transposed_in = true}},
         stream);
    walk(walk_args<T, T>{.a = k,
                         .b = k,
                         .c = k,
                         .g = g,
                         .out = grads.dv,
                         .state_in = gs,
                         .mode = {.reverse = true, .intra = false, .accumulate = true}},
         stream);
    gate_gradient(q, k, dout, v, pq, pk, g, kv, gs, grads.dq, grads.dk, grads.dg, true, stream);
  }

 private:
  // One gated walk's operands (gated_walk in gated_linear_kernels.cuh): the rows a, b and c, the
  // log-gates, and the output rows and states it reads and writes (empty: none).
  template <class T, class O>
  struct walk_args {
    tensor_view<const T> a, b, c;
    tensor_view<const float> g;
    tensor_view<O> out{};
    const_state_view state_in{};
    state_view state_out{};
    detail::gated_kernels::walk_mode mode{};
  };

  static unsigned blocks_for(std::int64_t n) {
    return static_cast<unsigned>(std::clamp<std::int64_t>((n + 255) / 256, 1, 4096));
  }

  // A packed fp32 [B, C, H, D] view shaped like x over `data`.
  template <class T>
  static tensor_view<float> like(const tensor_view<T>& x, float* data) {
    return make_bshd(data, x.batch(), x.seq(), x.heads(), x.head_dim());
  }

  // One gated walk. fp16 and bf16 with a contracted dim up to 128 run on tensor cores
  // (tensor_walk); the rest (fp32, larger dims, before sm_80) on CUDA cores, where a block per (y
  // tile, segment, batch x head) walks. When the blocks of one segment leave the GPU idle, the
  // chunk is cut into segments: a states pass, scan_walk_states, and (for an output) the output
  // pass from each segment's prefix.
  template <class T, class O>
  void walk(const walk_args<T, O>& w, stream_t stream) const {
    namespace gk = detail::gated_kernels;
    const auto& [a, b, c, g, out, state_in, state_out, mode] = w;
    if (out.size() == 0 && state_out.size() == 0) return;
    const std::int64_t Y = out.size() ? out.head_dim() : state_out.extent(3), H = a.heads(), BH = a.batch() * H;
    if (BH > 65535)
      SEQPAR_FAIL(errc::unsupported, "batch * heads: gated_linear_cuda takes up to 65535, got " << a.batch() << " * "
                                                                                                << H);
    const detail::device_info info = launcher.device();
    if constexpr (detail::mma::input<T>) {
      if (a.head_dim() <= detail::linear_kernels::tc_max_x && info.major >= 8)
        return tensor_walk(a, b, c, g, out, state_in, state_out, mode, info.multiprocessors, stream);
    }
    const auto plan = gk::plan_walk_segments(a.seq(), (Y + gk::y_tile - 1) / gk::y_tile * BH, info.multiprocessors);
    if (plan.count == 1) return core_walk(a, b, c, g, out, state_in, state_out, mode, 1, {}, stream);
    const std::int64_t SB = plan.count * a.batch(), X = a.head_dim();
    auto scratch = launcher.workspace(SB * H * (X * Y + g.head_dim()), stream);
    const state_view states(scratch.data(), SB, H, X, Y);
    const chunk_decay_view totals(scratch.data() + states.size(), SB, H, g.head_dim());
    core_walk(a, b, c, g, tensor_view<O>{}, {}, states, mode, plan.count,
              {.length = plan.length, .states_pass = true, .totals = totals}, stream);
    fold_segments(states, totals, plan.count, state_in, g, state_out, mode, stream);
    if (out.size())
      core_walk(a, b, c, g, out, states, {}, mode, plan.count, {.length = plan.length, .from_prefixes = true}, stream);
  }

  // One gated_walk launch on CUDA cores, a block per (y tile, segment, batch x head).
  template <class T, class O>
  void core_walk(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> c, tensor_view<const float> g,
                 tensor_view<O> out, const_state_view state_in, state_view state_out,
                 detail::gated_kernels::walk_mode mode, int segments, detail::gated_kernels::walk_segments seg,
                 stream_t stream) const {
    namespace gk = detail::gated_kernels;
    const std::int64_t Y = out.size() ? out.head_dim() : state_out.extent(3);
    const int X = static_cast<int>(a.head_dim());
    const std::size_t bytes =
        detail::shared_bytes<gk::walk_shared>(X, gk::walk_gate_columns(g.head_dim(), X, mode.gate_on_output));
    const dim3 grid(static_cast<unsigned>((Y + gk::y_tile - 1) / gk::y_tile), static_cast<unsigned>(segments),
                    static_cast<unsigned>(a.batch() * a.heads()));
    launcher(gk::gated_walk<T, O>, grid, dim3(128), bytes, stream, a, b, c, g, out, state_in, state_out, mode, seg);
  }

  // The segments' own states and log-decays into the states they start from, and the state after
  // the chunk into state_out (see scan_walk_states).
  void fold_segments(state_view states, chunk_decay_view totals, int segments, const_state_view state_in,
                     tensor_view<const float> g, state_view state_out, detail::gated_kernels::walk_mode mode,
                     stream_t stream) const {
    const std::int64_t n = states.size() / segments;
    launcher(detail::gated_kernels::scan_walk_states, dim3(blocks_for(n)), dim3(256), 0, stream, states,
             const_chunk_decay_view(totals), segments, state_in, g, state_out, mode);
  }

  // A walk on tensor cores: linear_tensor_core.cuh's chunk_scan with gate_weights (scalar gates),
  // column_gate_weights (vector gates on the contracted dim) or output_gate_weights (on the output
  // columns), cut into segments as linear_cuda's; a given state and the segments' states are folded
  // by scan_walk_states, so the scan always starts from its prefixes.
  template <class T, class O>
  void tensor_walk(tensor_view<const T> a, tensor_view<const T> b, tensor_view<const T> c, tensor_view<const float> g,
                   tensor_view<O> out, const_state_view state_in, state_view state_out,
                   detail::gated_kernels::walk_mode mode, int sms, stream_t stream) const {
    namespace lk = detail::linear_kernels;
    const std::int64_t Y = out.size() ? out.head_dim() : state_out.extent(3), H = a.heads(), BH = a.batch() * H;
    const std::int64_t X = a.head_dim();
    const unsigned tiles = static_cast<unsigned>((Y + lk::tc_y_tile - 1) / lk::tc_y_tile);
    const auto plan = lk::plan_segments(a.seq(), std::int64_t{tiles} * BH, sms);
    const bool fold = plan.count > 1 || state_in.size() || state_out.size();
    const std::int64_t SB = plan.count * a.batch();
    const std::int64_t W = g.head_dim();
    auto scratch = launcher.workspace(fold ? SB * H * (X * Y + W) : 0, stream);
    const state_view states(scratch.data(), SB, H, X, Y);
    const chunk_decay_view totals(scratch.data() + states.size(), SB, H, W);
    const bool vec = detail::device::all_rows_are_vectorizable(a, b, c);
    auto scan = [&](tensor_view<O> o, float* st, bool states_only) {
      const lk::scan_mode m{.reverse = mode.reverse, .states_only = states_only, .strict = mode.strict,
                            .accumulate = mode.accumulate, .intra = mode.intra};
      const dim3 grid(tiles, static_cast<unsigned>(plan.count), static_cast<unsigned>(BH));
      auto launch = [&](auto weights) {
        lk::launch_chunk_scan(launcher, grid, a, b, c, o, st, plan.length, weights, m, vec, stream);
      };
      if (W == 1) launch(lk::gate_weights{g, totals});
      else if (mode.gate_on_output) launch(lk::output_gate_weights{g, totals});
      else launch(lk::column_gate_weights{g, totals});
    };
    if (fold) {
      if (mode.intra) scan({}, states.data_handle(), true);
      else  // no pairs: the segments' own states are zeros, and only their log-gates are summed
        core_walk(a, b, c, g, tensor_view<O>{}, {}, states, mode, plan.count,
                  {.length = plan.length, .states_pass = true, .totals = totals}, stream);
      fold_segments(states, totals, plan.count, state_in, g, state_out, mode, stream);
    }
    if (out.size()) scan(out, fold ? states.data_handle() : nullptr, false);
  }

  // dq, dk and dg from the parts pq and pk (see gate_gradient_rows and gate_gradient_scan).
  template <class T>
  void gate_gradient(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> dout, tensor_view<const T> v,
                     tensor_view<float> pq, tensor_view<float> pk, tensor_view<const float> g, const_state_view kv,
                     const_state_view gs, tensor_view<T> dq, tensor_view<T> dk, tensor_view<float> dg, bool inter,
                     stream_t stream) const {
    namespace gk = detail::gated_kernels;
    const std::int64_t tokens = q.batch() * q.seq() * q.heads(), columns = q.batch() * q.heads() * g.head_dim();
    launcher(gk::gate_gradient_rows<T>, dim3(blocks_for(tokens)), dim3(256), 0, stream, q, k, dout, v, pq, pk,
             g.head_dim(), dq, dk, inter);
    constexpr int threads = 128;
    launcher(gk::gate_gradient_scan, dim3(static_cast<unsigned>(columns)), dim3(threads),
             detail::shared_bytes<gk::gate_scan_shared>(threads), stream, tensor_view<const float>(pq),
             tensor_view<const float>(pk), g, kv, gs, dg, inter);
  }
};

#if SEQPAR_CUDA_COMPILER
//! The CUDA gated linear-attention policy (basic_gated_linear_cuda on the current CUDA device).
using gated_linear_cuda = basic_gated_linear_cuda<detail::cuda_launcher>;
static_assert(gated_linear_attention_policy<gated_linear_cuda>);
#endif

SEQPAR_KERNEL_NAMESPACE_END
