//! @file flash_attention.cuh
//! flash_attention: the tensor-core attention policy (nvcc only, sm_80 and newer). FlashAttention-2
//! tiling with mma.sync m16n8k16: fp16 or bf16 in, fp32 accumulation and softmax statistics, head
//! dims 64 and 128, causal or not, GQA; forward and backward never materialise S x S. The same
//! kernels compute one block pair of ring attention (block_forward, block_backward). The host code
//! here plans every launch and hands it to a launcher (launcher.cuh), so the kernel-emulation tests
//! run it too.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/policy/detail/flash_backward.cuh>
#include <seqpar/policy/detail/flash_forward.cuh>
#include <seqpar/policy/detail/launcher.cuh>

#include <cstdint>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Tiled softmax attention on tensor cores for device memory, its kernels started by Launcher
//! (flash_attention: on the current CUDA device): half and bfloat16, head dims 64 and 128. Backward
//! recomputes the probabilities from the saved log-sum-exp in two deterministic kernels (dQ by query
//! tiles; dK and dV by key tiles, summed over each kv head's query heads).
template <class Launcher>
struct basic_flash_attention {
  //! Opts into seqpar::attention_policy.
  using policy_concept = attention_policy_tag;
  //! Starts the kernels (see launcher.cuh).
  Launcher launcher{};

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! float16 and bfloat16 with head_dim 64 or 128.
  bool supports(dtype t, std::int64_t head_dim) const {
    return (t == dtype::float16 || t == dtype::bfloat16) && (head_dim == 64 || head_dim == 128);
  }
  //! Causal masking is supported.
  bool supports_causal() const { return true; }
  //! Packed documents are served (options.documents masks across them).
  bool supports_documents() const { return true; }

  //! o and lse from q, k, v.
  template <class T>
  void forward(const policy_forward_args<T>& a, stream_ref stream) const {
    check<T>(a.q, a.k, a.v, a.o);
    detail::check_lse_extents(a.lse, a.q);
    run_forward(a.q, a.k, a.v, a.map, a.options, whole_sequence(a.options), a.o, a.lse, stream);
  }

  //! dq, dk, dv from dO; dk and dv sum over the query heads that read each kv head.
  template <class T>
  void backward(const policy_backward_args<T>& a, stream_ref stream) const {
    check<T>(a.q, a.k, a.v, a.o);
    detail::check_lse_extents(a.lse, a.q);
    detail::check_gradient_extents(a.q, a.k, a.dout, a.dq, a.dk, a.dv);
    run_backward(a.q, a.k, a.v, a.o, a.lse, const_lse_view{}, a.dout, a.map, a.options, whole_sequence(a.options), a.dq,
                 a.dk, a.dv, stream);
  }

  //! o_part and lse_part (fp32) of the query block q against the key/value block k, v alone, at
  //! the pair's positions (block_attention_policy); the causal mask is applied to diagonal pairs.
  template <class T>
  void block_forward(const block_forward_args<T>& a, stream_ref stream) const {
    check_block<T>(a.q, a.k, a.v);
    detail::check_partial_extents(a.q, a.o_part, a.lse_part);
    run_forward(a.q, a.k, a.v, a.map, a.options, a.pair, a.o_part, a.lse_part, stream);
  }

  //! Adds the block pair's share of dq, dk, dv (fp32 accumulators) from the final lse and the row
  //! dots rowsum(dO * O) (block_attention_policy).
  template <class T>
  void block_backward(const block_backward_args<T>& a, stream_ref stream) const {
    check_block<T>(a.q, a.k, a.v);
    detail::check_lse_extents(a.lse, a.q);
    detail::check_lse_extents(a.row_dots, a.q);
    detail::check_gradient_extents(a.q, a.k, a.dout, a.dq, a.dk, a.dv);
    run_backward(a.q, a.k, a.v, tensor_view<const T>{}, a.lse, a.row_dots, a.dout, a.map, a.options, a.pair, a.dq, a.dk,
                 a.dv, stream);
  }

 private:
  // The whole sequence as one block pair: both blocks start at 0, diagonal when causal.
  static block_pair whole_sequence(attention_options opt) {
    return {0, 0, opt.causal ? block_relation::diagonal : block_relation::visible};
  }

  // Where the rows of q and k sit: a whole sequence or a block pair, whose causal mask only a
  // diagonal pair needs.
  template <class T>
  static detail::flash_kernels::score_positions positions(const tensor_view<T>& q, const tensor_view<T>& k,
                                                          attention_options opt, block_pair pair) {
    return {q.seq(), k.seq(), pair.q_first, pair.kv_first, opt.causal && pair.relation != block_relation::visible,
            opt.documents};
  }

  // Launches the forward kernel writing o (T, or fp32 for a partial).
  template <class T, class O>
  void run_forward(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                   gqa_map map, attention_options opt, block_pair pair, const tensor_view<O>& o, lse_view lse,
                   stream_t stream) const {
    opt = opt.resolved(q.head_dim());
    if constexpr (detail::mma::input<T>) {
      if (q.size() == 0) return;
      const bool vec = detail::device::all_rows_are_vectorizable(q, k, v);
      const auto pos = positions(q, k, opt, pair);
      with_head_dim(q.head_dim(), [&]<int D>() {
        namespace fk = detail::flash_kernels;
        launch<fk::forward_shared<T, D>>(fk::forward<T, D, O>, grid(q), stream, q, k, v, map, opt.scale, pos, o, lse,
                                         vec);
      });
    }
  }

  // Launches the backward kernels: gradients G = T written (the row dots first computed from dout
  // and o into fp32 scratch), or G = float added to (row dots given).
  template <class T, class G>
  void run_backward(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                    const tensor_view<const T>& o, const_lse_view lse, const_lse_view dots,
                    const tensor_view<const T>& dout, gqa_map map, attention_options opt, block_pair pair,
                    const tensor_view<G>& dq, const tensor_view<G>& dk, const tensor_view<G>& dv,
                    stream_t stream) const {
    opt = opt.resolved(q.head_dim());
    if constexpr (detail::mma::input<T>) {
      const bool vec = detail::device::all_rows_are_vectorizable(q, k, v, dout) &&
                       (o.data() == nullptr || detail::device::rows_are_vectorizable(o));
      const auto pos = positions(q, k, opt, pair);
      const std::int64_t rows = q.batch() * q.heads() * q.seq();
      auto scratch = launcher.workspace(o.data() != nullptr ? rows : 0, stream);
      with_head_dim(q.head_dim(), [&]<int D>() {
        namespace fk = detail::flash_kernels;
        if (o.data() != nullptr && rows != 0) {
          const lse_view computed(scratch.data(), q.batch(), q.heads(), q.seq());
          const std::int64_t per_block = fk::threads / fk::row_dot_lanes;
          launcher(fk::backward_row_dots<T, D>, dim3(static_cast<unsigned>((rows + per_block - 1) / per_block)),
                   dim3(fk::threads), 0, stream, o, dout, computed, vec);
          dots = const_lse_view(computed);
        }
        if (q.size() != 0)
          launch<fk::dq_shared<T, D>>(fk::backward_dq<T, D, G>, grid(q), stream, q, k, v, lse, dots, dout, map,
                                      opt.scale, pos, dq, vec);
        if (k.size() != 0)
          launch<fk::dkdv_shared<T, D>>(fk::backward_dkdv<T, D, G>, grid(k), stream, q, k, v, lse, dots, dout, map,
                                        opt.scale, pos, dk, dv, vec);
      });
    }
  }

  // Checks what the policy needs of the views, so that a direct call fails as clearly as a layer.
  template <class T, class O>
  void check(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
             const tensor_view<O>& o) const {
    check_supported<T>(q.head_dim());
    detail::check_attention_extents(q, k, v, o);
  }

  template <class T>
  void check_supported(std::int64_t head_dim) const {
    SEQPAR_EXPECTS(supports(dtype_of<T>, head_dim),
                   "flash_attention: element type " << to_string(dtype_of<T>) << " with head_dim " << head_dim
                                                    << "; expected float16 or bfloat16 with head_dim 64 or 128");
  }

  // A block pair's checks: its key block may hold any number of rows.
  template <class T>
  void check_block(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v) const {
    check_supported<T>(q.head_dim());
    detail::check_block_extents(q, k, v);
  }

  template <class F>
  static void with_head_dim(std::int64_t d, F&& f) {
    if (d == 64) f.template operator()<64>();
    else f.template operator()<128>();
  }

  template <class T>
  static dim3 grid(const tensor_view<T>& t) {  // one block per 64 rows, per head and batch
    constexpr int rows = detail::flash_kernels::block_rows;
    const std::int64_t tiles = (t.seq() + rows - 1) / rows;
    SEQPAR_EXPECTS(t.heads() <= 65535 && t.batch() <= 65535,
                   "views: " << t.heads() << " heads and batch " << t.batch() << "; expected at most 65535 of each");
    return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(t.heads()), static_cast<unsigned>(t.batch()));
  }

  // Launches a flash kernel whose shared memory is Layout (flash_forward.cuh, flash_backward.cuh).
  template <class Layout, class Kernel, class... Args>
  void launch(Kernel kernel, dim3 blocks, stream_t stream, const Args&... args) const {
    launcher(kernel, blocks, dim3(detail::flash_kernels::threads), detail::shared_bytes<Layout>(), stream, args...);
  }
};

#if SEQPAR_CUDA_COMPILER
//! Tiled softmax attention on tensor cores (basic_flash_attention on the current CUDA device).
using flash_attention = basic_flash_attention<detail::cuda_launcher>;
static_assert(block_attention_policy<flash_attention>);
#endif

SEQPAR_KERNEL_NAMESPACE_END
