//! @file block_attention.hpp
//! Block attention: softmax attention of one query block against one key/value block, as ring
//! attention needs it. The policy computes a partial output and its fp32 log-sum-exp per block
//! pair, and the backward of a pair given the final lse; merging partials is fp32 online-softmax
//! algebra written once here.
#pragma once

#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/block_pair.hpp>

#include <cuda/std/limits>

#include <cmath>
#include <concepts>
#include <cstdint>

SEQPAR_NAMESPACE_BEGIN

//! The weights of merging two partials of the same query row with log-sum-exps a and b:
//! lse = max(a, b) + log1p(exp(-|a - b|)), O = exp(a - lse) O_a + exp(b - lse) O_b. A row that saw
//! nothing has lse = -inf and weight 0; two such rows stay -inf with both weights 0.
struct softmax_merge {
  float lse;       //!< the merged log-sum-exp
  float weight_a;  //!< exp(a - lse)
  float weight_b;  //!< exp(b - lse)
};

//! Merges log-sum-exps a and b (fp32, -inf allowed) into their weights.
SEQPAR_HOST_DEVICE softmax_merge merge_lse(float a, float b) {
  const float inf = cuda::std::numeric_limits<float>::infinity();
  if (a == -inf && b == -inf) return {-inf, 0.0f, 0.0f};
  if (a == -inf) return {b, 0.0f, 1.0f};
  if (b == -inf) return {a, 1.0f, 0.0f};
  const float hi = a > b ? a : b, lse = hi + log1pf(expf(-fabsf(a - b)));
  return {lse, expf(a - lse), expf(b - lse)};
}

//! Merges rows of a block pair's partial (o_part, lse_part) into the running (o_acc, lse_acc), all
//! fp32; views [B, S_q, h, D] and lse [B, h, S_q]. One call per row, row = (b * h + head) * S_q + i:
//! a host loop (merge_partial) or a device launch runs the same body.
struct merge_partial_rows {
  tensor_view<float> o_acc;         //!< the running output
  lse_view lse_acc;                 //!< the running log-sum-exp
  tensor_view<const float> o_part;  //!< the pair's partial output
  const_lse_view lse_part;          //!< the pair's log-sum-exp
  //! Rows to merge: B * h * S_q.
  SEQPAR_HOST_DEVICE std::int64_t rows() const { return o_acc.batch() * o_acc.heads() * o_acc.seq(); }
  //! Merges one row.
  SEQPAR_HOST_DEVICE void operator()(std::int64_t row) const {
    const std::int64_t i = row % o_acc.seq(), h = row / o_acc.seq() % o_acc.heads(),
                       b = row / o_acc.seq() / o_acc.heads();
    const softmax_merge m = merge_lse(lse_acc(b, h, i), lse_part(b, h, i));
    for (std::int64_t d = 0; d < o_acc.head_dim(); ++d)
      o_acc(b, i, h, d) = m.weight_a * o_acc(b, i, h, d) + m.weight_b * o_part(b, i, h, d);
    lse_acc(b, h, i) = m.lse;
  }
};

//! Merges a block pair's partial (o_part, lse_part) into the running (o_acc, lse_acc), all fp32,
//! on the host; views [B, S_q, h, D] and lse [B, h, S_q].
inline void merge_partial(tensor_view<float> o_acc, lse_view lse_acc, tensor_view<const float> o_part,
                          const_lse_view lse_part) {
  const merge_partial_rows merge{o_acc, lse_acc, o_part, lse_part};
  for (std::int64_t row = 0; row < merge.rows(); ++row) merge(row);
}

namespace detail {
//! Throws unless o_part has q's extents and lse_part is q's {batch, heads, seq}: what a policy's
//! block_forward checks of its outputs.
template <class T>
void check_partial_extents(const tensor_view<T>& q, const tensor_view<float>& o_part, const lse_view& lse_part) {
  SEQPAR_EXPECTS(same_extents(o_part, q), "o_part: extents differ from q's; expected the same extents");
  check_lse_extents(lse_part, q);
}

//! The policy computes a block pair's partial output (block_forward).
template <class P>
concept computes_block_forward = requires(const P& p, const block_forward_args<float>& a, stream_ref s) {
  p.block_forward(a, s);
};

//! The policy's block backward reads the row dots rowsum(dO * O) (block_backward).
template <class P>
concept block_backward_reads_row_dots = requires(const P& p, const block_backward_args<float>& a, stream_ref s) {
  p.block_backward(a, s);
};

//! The policy's block backward reads the final output O of the query rows instead of their row
//! dots (block_backward_from_output), as libraries that compute the row dots themselves do.
template <class P>
concept block_backward_reads_output = requires(const P& p, const block_backward_args<float>& a, stream_ref s) {
  p.block_backward_from_output(a, s);
};

template <class P>
concept computes_block_attention =
    computes_block_forward<P> && (block_backward_reads_row_dots<P> || block_backward_reads_output<P>);
}  // namespace detail

//! An attention policy that also computes one block pair at a time (what ring attention runs):
//! - block_forward(block_forward_args<T>{q, k, v, o_part, lse_part, map, options, pair}, stream):
//!   o_part (fp32) and lse_part (fp32) of the query block against this key/value block alone,
//!   under the pair's positions; rows that see nothing get o = 0 and lse = -inf;
//! - block_backward(block_backward_args<T>{q, k, v, dout, lse, row_dots, ..., dq, dk, dv, map,
//!   options, pair}, stream): with the FINAL lse of each query row and row_dots = rowsum(dO * O),
//!   P = exp(s q k^T - lse), ADDS
//!   s (P * (dO v^T - row_dots)) k to dq, its transpose times q (times s) to dk and P^T dO to dv; the
//!   three are fp32 accumulators, dk and dv summed over the query heads that read each kv head;
//! - or instead block_backward_from_output(args, stream): the same sums from the FINAL output
//!   args.o of the query rows, whose row dots the policy computes.
//! q, o, dout [B, S_q, h, D]; k, v [B, S_kv, k, D]; lse, row_dots [B, h, S_q]. A policy without these
//! is refused by name: detail::computes_block_attention.
template <class P>
concept block_attention_policy = attention_policy<P> && detail::computes_block_attention<P>;

SEQPAR_NAMESPACE_END
