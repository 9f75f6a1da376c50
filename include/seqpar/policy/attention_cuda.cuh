//! @file attention_cuda.cuh
//! Simple CUDA attention policies (nvcc only): reference_attention_cuda and
//! block_sparse_attention_cuda. One thread per output row, fp32 accumulation, scores recomputed in
//! backward from the saved log-sum-exp; O(S^2) work without materialising S x S. They are the
//! device-side oracles and the block-sparse device path, not the fast path. They also compute one
//! block pair of ring attention (block_forward, block_backward) at the pair's global positions.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/detail/launcher.cuh>

#include <cmath>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace attention_kernels {

//! The largest head dim the row-per-thread kernels take (their accumulators live per thread).
inline constexpr int max_head_dim = 256;

//! Whether query row i may attend key row j of a block pair (a whole sequence: both at 0), at
//! positions q_first + i and kv_first + j: allowed by `mask`, in one document and, when causal,
//! key <= query.
template <class Mask>
__device__ inline bool visible(const Mask& mask, const attention_options& opt, const block_pair& pair, std::int64_t i,
                               std::int64_t j) {
  const std::int64_t qi = pair.q_first + i, kj = pair.kv_first + j;
  return !(opt.causal && kj > qi) && opt.documents.same(qi, kj) && mask.allowed(qi, kj);
}

//! Stores a gradient element: added to an fp32 accumulator for a block pair (Add), else written.
template <bool Add, class G>
__device__ inline void store(G& out, float value) {
  if constexpr (Add) out += value;
  else out = from_float<G>(value);
}

//! scale * (q_i . k_j) for batch b, query head h and its kv head kh, accumulated in fp32.
template <class T>
__device__ inline float score(const tensor_view<const T>& q, const tensor_view<const T>& k, std::int64_t b,
                              std::int64_t h, int kh, std::int64_t i, std::int64_t j, float scale) {
  float s = 0.0f;
  for (std::int64_t d = 0; d < q.head_dim(); ++d) s += to_float(q(b, i, h, d)) * to_float(k(b, j, kh, d));
  return scale * s;
}

//! One thread per (query row, head, batch): online softmax over the visible keys; o of the input
//! type, or an fp32 partial for a block pair.
template <class T, class Mask, class O>
__global__ void forward_rows(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map,
                             attention_options opt, Mask mask, block_pair pair, tensor_view<O> o, lse_view lse) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, S = k.seq(), D = q.head_dim();
  if (i >= q.seq()) return;
  const int kh = map.kv_head(static_cast<int>(h));
  float acc[max_head_dim];
  for (std::int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (std::int64_t j = 0; j < S; ++j) {
    if (!visible(mask, opt, pair, i, j)) continue;
    const float s = score(q, k, b, h, kh, i, j, opt.scale);
    const float m_new = fmaxf(m, s), correction = expf(m - m_new), p = expf(s - m_new);
    l = l * correction + p;
    for (std::int64_t d = 0; d < D; ++d) acc[d] = acc[d] * correction + p * to_float(v(b, j, kh, d));
    m = m_new;
  }
  for (std::int64_t d = 0; d < D; ++d) o(b, i, h, d) = from_float<O>(l > 0.0f ? acc[d] / l : 0.0f);
  lse(b, h, i) = l > 0.0f ? m + logf(l) : -INFINITY;
}

//! delta_i = dO_i . O_i for batch b, head h, row i: the softmax-backward correction term, in fp32.
template <class T>
__device__ inline float row_delta(const tensor_view<const T>& dout, const tensor_view<const T>& o, std::int64_t b,
                                  std::int64_t h, std::int64_t i) {
  float delta = 0.0f;
  for (std::int64_t d = 0; d < o.head_dim(); ++d) delta += to_float(dout(b, i, h, d)) * to_float(o(b, i, h, d));
  return delta;
}

//! The softmax-backward row term of row i: the given dots for a block pair (Add), else dO_i . O_i.
template <bool Add, class T>
__device__ inline float row_term(const const_lse_view& dots, const tensor_view<const T>& dout,
                                 const tensor_view<const T>& o, std::int64_t b, std::int64_t h, std::int64_t i) {
  if constexpr (Add) return dots(b, h, i);
  else return row_delta(dout, o, b, h, i);
}

//! One thread per (query row, head, batch): dq_i = scale sum_j p_ij (dO_i . v_j - delta_i) k_j,
//! written (a whole sequence) or added to an fp32 accumulator (a block pair: Add, dots given).
template <class T, class Mask, class G, bool Add>
__global__ void backward_dq(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                            tensor_view<const T> o, const_lse_view lse, const_lse_view dots, tensor_view<const T> dout,
                            gqa_map map, attention_options opt, Mask mask, block_pair pair, tensor_view<G> dq) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, S = k.seq(), D = q.head_dim();
  if (i >= q.seq()) return;
  const int kh = map.kv_head(static_cast<int>(h));
  const float l = lse(b, h, i), delta = row_term<Add>(dots, dout, o, b, h, i);
  float acc[max_head_dim];
  for (std::int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
  for (std::int64_t j = 0; j < S && isfinite(l); ++j) {
    if (!visible(mask, opt, pair, i, j)) continue;
    const float p = expf(score(q, k, b, h, kh, i, j, opt.scale) - l);
    float dp = 0.0f;
    for (std::int64_t d = 0; d < D; ++d) dp += to_float(dout(b, i, h, d)) * to_float(v(b, j, kh, d));
    const float ds = p * (dp - delta);
    for (std::int64_t d = 0; d < D; ++d) acc[d] += ds * to_float(k(b, j, kh, d));
  }
  for (std::int64_t d = 0; d < D; ++d) store<Add>(dq(b, i, h, d), opt.scale * acc[d]);
}

//! One thread per (key row, kv head, batch): sums over every query head that reads this kv head;
//! written, or added to fp32 accumulators for a block pair (Add, dots given).
template <class T, class Mask, class G, bool Add>
__global__ void backward_dkdv(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v,
                              tensor_view<const T> o, const_lse_view lse, const_lse_view dots,
                              tensor_view<const T> dout, gqa_map map, attention_options opt, Mask mask, block_pair pair,
                              tensor_view<G> dk, tensor_view<G> dv) {
  const std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const int kh = static_cast<int>(blockIdx.y);
  const std::int64_t b = blockIdx.z, S = q.seq(), D = q.head_dim();
  if (j >= k.seq()) return;
  float gk[max_head_dim], gv[max_head_dim];
  for (std::int64_t d = 0; d < D; ++d) gk[d] = gv[d] = 0.0f;
  for (std::int64_t h = 0; h < q.heads(); ++h) {
    if (map.kv_head(static_cast<int>(h)) != kh) continue;
    for (std::int64_t i = 0; i < S; ++i) {
      const float l = lse(b, h, i);
      if (!visible(mask, opt, pair, i, j) || !isfinite(l)) continue;
      const float p = expf(score(q, k, b, h, kh, i, j, opt.scale) - l);
      float dp = 0.0f;
      for (std::int64_t d = 0; d < D; ++d) dp += to_float(dout(b, i, h, d)) * to_float(v(b, j, kh, d));
      const float ds = p * (dp - row_term<Add>(dots, dout, o, b, h, i));
      for (std::int64_t d = 0; d < D; ++d) {
        gk[d] += ds * to_float(q(b, i, h, d));
        gv[d] += p * to_float(dout(b, i, h, d));
      }
    }
  }
  for (std::int64_t d = 0; d < D; ++d) {
    store<Add>(dk(b, j, kh, d), opt.scale * gk[d]);
    store<Add>(dv(b, j, kh, d), gv[d]);
  }
}

}  // namespace attention_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Softmax attention on the device under `mask` (and the causal mask when asked), one thread per
//! output row: any element type, head dims up to 256, GQA. reference_attention_cuda and
//! block_sparse_attention_cuda are this with their masks.
template <class Mask>
struct device_masked_attention {
  //! Opts into seqpar::attention_policy.
  using policy_concept = attention_policy_tag;
  //! Which key tokens each query token may attend.
  Mask mask{};

  //! Device memory.
  memory_space memory() const { return memory_space::device; }
  //! Head dims up to 256.
  bool supports(dtype, std::int64_t d) const { return d >= 1 && d <= detail::attention_kernels::max_head_dim; }
  //! Causal masking is supported.
  bool supports_causal() const { return true; }
  //! Packed documents are served (options.documents masks across them).
  bool supports_documents() const { return true; }

  //! o and lse from q, k, v.
  template <class T>
  void forward(const policy_forward_args<T>& a, stream_ref stream) const {
    if (a.q.size() == 0) return;
    launch(detail::attention_kernels::forward_rows<T, Mask, T>, grid_of(a.q), stream, a.q, a.k, a.v, a.map,
           a.options.resolved(a.q.head_dim()), mask, block_pair{}, a.o, a.lse);
  }
  //! dq, dk, dv from dO; dk and dv sum over the query heads that read each kv head.
  template <class T>
  void backward(const policy_backward_args<T>& a, stream_ref stream) const {
    run_backward<false>(a.q, a.k, a.v, a.o, a.lse, const_lse_view{}, a.dout, a.map, a.options, block_pair{}, a.dq, a.dk,
                        a.dv, stream);
  }

  //! o_part and lse_part (fp32) of the query block q against the key/value block k, v alone, at
  //! the pair's positions (block_attention_policy).
  template <class T>
  void block_forward(const block_forward_args<T>& a, stream_ref stream) const {
    if (a.q.size() == 0) return;
    launch(detail::attention_kernels::forward_rows<T, Mask, float>, grid_of(a.q), stream, a.q, a.k, a.v, a.map,
           a.options.resolved(a.q.head_dim()), mask, a.pair, a.o_part, a.lse_part);
  }

  //! Adds the block pair's share of dq, dk, dv (fp32 accumulators) from the final lse and the row
  //! dots rowsum(dO * O) (block_attention_policy).
  template <class T>
  void block_backward(const block_backward_args<T>& a, stream_ref stream) const {
    run_backward<true>(a.q, a.k, a.v, tensor_view<const T>{}, a.lse, a.row_dots, a.dout, a.map, a.options, a.pair, a.dq,
                       a.dk, a.dv, stream);
  }

 private:
  // The two backward kernels: gradients written, or (Add) added to fp32 accumulators.
  template <bool Add, class T, class G>
  void run_backward(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                    const tensor_view<const T>& o, const_lse_view lse, const_lse_view dots,
                    const tensor_view<const T>& dout, gqa_map map, attention_options opt, block_pair pair,
                    const tensor_view<G>& dq, const tensor_view<G>& dk, const tensor_view<G>& dv,
                    stream_t stream) const {
    namespace ak = detail::attention_kernels;
    opt = opt.resolved(q.head_dim());
    const dim3 q_grid = grid_of(q), k_grid = grid_of(k);  // both refused before either kernel writes
    if (q.size() != 0)
      launch(ak::backward_dq<T, Mask, G, Add>, q_grid, stream, q, k, v, o, lse, dots, dout, map, opt, mask, pair, dq);
    if (k.size() != 0)
      launch(ak::backward_dkdv<T, Mask, G, Add>, k_grid, stream, q, k, v, o, lse, dots, dout, map, opt, mask, pair, dk,
             dv);
  }

  // A thread per token row of `rows`: blocks of 128, one block row per head and batch (each at most 65535).
  template <class T>
  static dim3 grid_of(const tensor_view<T>& rows) {
    SEQPAR_EXPECTS(rows.heads() <= 65535 && rows.batch() <= 65535,
                   "views: " << rows.heads() << " heads and batch " << rows.batch() << "; expected at most 65535 of each");
    return dim3(static_cast<unsigned>((rows.seq() + 127) / 128), static_cast<unsigned>(rows.heads()),
                static_cast<unsigned>(rows.batch()));
  }
  template <class Kernel, class... Args>
  static void launch(Kernel kernel, dim3 grid, stream_t stream, const Args&... args) {
    detail::cuda_launcher{}(kernel, grid, dim3(128), 0, stream, args...);
  }
};

//! Dense softmax attention on the device, row by row (the device oracle).
using reference_attention_cuda = device_masked_attention<no_mask>;
static_assert(block_attention_policy<reference_attention_cuda>);

//! Block-sparse softmax attention on the device (the block_mask of block_sparse_attention).
using block_sparse_attention_cuda = device_masked_attention<block_mask>;
static_assert(block_attention_policy<block_sparse_attention_cuda>);

SEQPAR_KERNEL_NAMESPACE_END
