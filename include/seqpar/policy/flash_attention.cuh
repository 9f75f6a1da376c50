//! @file flash_attention.cuh
//! flash_attention: the tensor-core attention policy (nvcc only, sm_80 and newer). FlashAttention-2
//! tiling with mma.sync m16n8k16: fp16 or bf16 in, fp32 accumulation and softmax statistics, head
//! dims 64 and 128, causal or not, GQA; forward and backward never materialise S x S.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/detail/flash_backward.cuh>
#include <seqpar/policy/detail/flash_forward.cuh>

#include <cstdint>
#include <type_traits>
#include <utility>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Tiled softmax attention on tensor cores for device memory: half and bfloat16, head dims 64 and
//! 128. Backward recomputes the probabilities from the saved log-sum-exp in two deterministic
//! kernels (dQ by query tiles; dK and dV by key tiles, summed over each kv head's query heads).
struct flash_attention {
  //! Opts into seqpar::attention_policy.
  using policy_concept = attention_policy_tag;

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! float16 and bfloat16 with head_dim 64 or 128.
  bool supports(dtype t, std::int64_t head_dim) const {
    return (t == dtype::float16 || t == dtype::bfloat16) && (head_dim == 64 || head_dim == 128);
  }
  //! Causal masking is supported.
  bool supports_causal() const { return true; }

  //! o and lse from q, k, v.
  template <class T>
  void forward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map,
               attention_options opt, tensor_view<T> o, lse_view lse, stream_t stream = nullptr) const {
    check<T>(q, k, v, o);
    check_lse(lse, q);
    if constexpr (mma::input<T>) {
      if (q.size() == 0) return;
      const bool vec = device::rows_are_vectorizable(q) && device::rows_are_vectorizable(k) &&
                       device::rows_are_vectorizable(v);
      with_head_dim(q.head_dim(), [&]<int D>() {
        launch(flash_kernels::forward<T, D>, flash_kernels::forward_shared_bytes<T, D>, grid(q), stream, q, k, v, map,
               opt, o, lse, vec);
      });
    }
  }

  //! dq, dk, dv from dO; dk and dv sum over the query heads that read each kv head.
  template <class T>
  void backward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> o,
                const_lse_view lse, tensor_view<const T> dout, gqa_map map, attention_options opt, tensor_view<T> dq,
                tensor_view<T> dk, tensor_view<T> dv, stream_t stream = nullptr) const {
    check<T>(q, k, v, o);
    check_lse(lse, q);
    SEQPAR_EXPECTS(same_shape(dout, q) && same_shape(dq, q) && same_shape(dk, k) && same_shape(dv, k),
                   "dout, dq, dk, dv: extents differ from q's and k's; expected dout and dq shaped like q, dk and dv "
                   "like k");
    if constexpr (mma::input<T>) {
      const bool vec = device::rows_are_vectorizable(q) && device::rows_are_vectorizable(k) &&
                       device::rows_are_vectorizable(v) && device::rows_are_vectorizable(o) &&
                       device::rows_are_vectorizable(dout);
      with_head_dim(q.head_dim(), [&]<int D>() {
        if (q.size() != 0)
          launch(flash_kernels::backward_dq<T, D>, flash_kernels::dq_shared_bytes<T, D>, grid(q), stream, q, k, v, o,
                 lse, dout, map, opt, dq, vec);
        if (k.size() != 0)
          launch(flash_kernels::backward_dkdv<T, D>, flash_kernels::dkdv_shared_bytes<T, D>, grid(k), stream, q, k, v,
                 o, lse, dout, map, opt, dk, dv, vec);
      });
    }
  }

 private:
  template <class A, class B>
  static bool same_shape(const tensor_view<A>& a, const tensor_view<B>& b) {
    return a.batch() == b.batch() && a.seq() == b.seq() && a.heads() == b.heads() && a.head_dim() == b.head_dim();
  }

  // Checks what the policy needs of the views, so that a direct call fails as clearly as a layer.
  template <class T, class O>
  void check(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
             const tensor_view<O>& o) const {
    SEQPAR_EXPECTS(supports(dtype_of<T>, q.head_dim()),
                   "flash_attention: element type " << to_string(dtype_of<T>) << " with head_dim " << q.head_dim()
                                                    << "; expected float16 or bfloat16 with head_dim 64 or 128");
    SEQPAR_EXPECTS(same_shape(k, v) && k.batch() == q.batch() && k.seq() == q.seq() && k.head_dim() == q.head_dim(),
                   "k, v: extents {" << k.batch() << ", " << k.seq() << ", " << k.heads() << ", " << k.head_dim()
                                     << "}; expected q's batch, seq and head_dim (" << q.batch() << ", " << q.seq()
                                     << ", " << q.head_dim() << ") and equal k and v");
    SEQPAR_EXPECTS(same_shape(o, q), "o: extents differ from q's; expected the same extents");
  }

  template <class L, class T>
  static void check_lse(const L& lse, const tensor_view<T>& q) {
    SEQPAR_EXPECTS(lse.extent(0) == q.batch() && lse.extent(1) == q.heads() && lse.extent(2) == q.seq() &&
                       (lse.data_handle() != nullptr || lse.size() == 0),
                   "lse: extents {" << lse.extent(0) << ", " << lse.extent(1) << ", " << lse.extent(2)
                                    << "}; expected q's {batch, heads, seq} = {" << q.batch() << ", " << q.heads()
                                    << ", " << q.seq() << "} floats");
  }

  template <class F>
  static void with_head_dim(std::int64_t d, F&& f) {
    if (d == 64) f.template operator()<64>();
    else f.template operator()<128>();
  }

  template <class T>
  static dim3 grid(const tensor_view<T>& t) {  // one block per 64 rows, per head and batch
    const std::int64_t tiles = (t.seq() + flash_kernels::block_rows - 1) / flash_kernels::block_rows;
    SEQPAR_EXPECTS(t.heads() <= 65535 && t.batch() <= 65535,
                   "views: " << t.heads() << " heads and batch " << t.batch() << "; expected at most 65535 of each");
    return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(t.heads()), static_cast<unsigned>(t.batch()));
  }

  template <class... Params, class... Args>
  static void launch(void (*kernel)(Params...), int shared, dim3 blocks, stream_t stream, Args&&... args) {
    SEQPAR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared));
    kernel<<<blocks, flash_kernels::threads, shared, stream>>>(std::forward<Args>(args)...);
    SEQPAR_CUDA_TRY(cudaGetLastError());
  }
};

static_assert(attention_policy<flash_attention>);

SEQPAR_KERNEL_NAMESPACE_END
