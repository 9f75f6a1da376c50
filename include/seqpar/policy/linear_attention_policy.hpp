//! @file linear_attention_policy.hpp
//! The linear-attention policy concept: the chunk-local terms of LASP, computed on one rank.
#pragma once

#include <seqpar/memory_space.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>

#include <concepts>
#include <cstdint>
#include <span>

SEQPAR_NAMESPACE_BEGIN

//! Tag a linear-attention policy names as `using policy_concept = seqpar::linear_attention_policy_tag;`.
struct linear_attention_policy_tag {};

namespace detail {
template <class P>
concept opts_into_linear_attention_policy = std::same_as<typename P::policy_concept, linear_attention_policy_tag>;

template <class P>
concept describes_support = requires(const P& p, dtype t, std::int64_t n) {
  { p.memory() } -> std::same_as<memory_space>;
  { p.supports(t, n, n) } -> std::same_as<bool>;
};

template <class P>
concept computes_linear_forward = requires(const P& p, tensor_view<const float> in, tensor_view<float> out,
                                           std::span<const float> decay, state_view st, const_state_view cst,
                                           std::int64_t n, stream_t s) {
  p.forward_intra(in, in, in, decay, out, s);
  p.state_contribution(in, in, decay, st, s);
  p.forward_inter(in, decay, cst, out, s);
  p.state_update(decay, n, cst, cst, st, s);
};

template <class P>
concept computes_linear_backward = requires(const P& p, tensor_view<const float> in, tensor_view<float> out,
                                            std::span<const float> decay, state_view st, const_state_view cst,
                                            stream_t s) {
  p.backward_intra(in, in, in, in, decay, out, out, out, s);
  p.backward_state_contribution(in, in, decay, st, s);
  p.backward_inter(in, in, in, in, decay, cst, cst, out, out, out, s);
};
}  // namespace detail

//! Computes, per batch and head of one rank's chunk (C tokens, local index i from 0; lambda the
//! head's decay; M[i][j] = lambda^(i-j) for i >= j, else 0; LQ = diag(lambda^(i+1));
//! LK = diag(lambda^(C-1-i)); states are fp32 [B, H, D, E]):
//! - forward_intra(q, k, v, decay, o):           o = ((Q K^T) * M) V
//! - state_contribution(k, v, decay, m):         m = K^T LK V
//! - forward_inter(q, decay, kv, o):             o += LQ Q KV
//! - state_update(decay, n, in, m, out):         out = lambda^n in + m (in may be empty = zero; may alias out)
//! - backward_intra(q, k, v, do, decay, dq, dk, dv): A = (dO V^T) * M; dq = A K; dk = A^T Q;
//!                                               dv = ((Q K^T) * M)^T dO
//! - backward_state_contribution(q, do, decay, g): g = Q^T LQ dO
//! - backward_inter(q, k, v, do, decay, kv, g, dq, dk, dv): dq += LQ dO KV^T; dk += LK V G^T; dv += LK K G
//! plus memory() and supports(dtype, D, E). Every call takes a stream last (ignored on the host).
template <class P>
concept linear_attention_policy = detail::opts_into_linear_attention_policy<P> && detail::describes_support<P> &&
                                  detail::computes_linear_forward<P> && detail::computes_linear_backward<P>;

//! A linear-attention policy that may also offer forward_intra_with_state(q, k, v, decay, o, m,
//! stream, side): forward_intra into o on `stream` and state_contribution into m on `side` in one
//! call that shares their work; linear_attention_ring uses it when there.
template <class P>
concept fuses_forward_state = requires(const P& p, tensor_view<const float> in, tensor_view<float> out,
                                       std::span<const float> decay, state_view st, stream_t s) {
  p.forward_intra_with_state(in, in, in, decay, out, st, s, s);
};

SEQPAR_NAMESPACE_END
