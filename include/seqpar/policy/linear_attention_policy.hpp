//! @file linear_attention_policy.hpp
//! The linear-attention policy concept: the chunk-local terms of LASP, computed on one rank.
#pragma once

#include <seqpar/call.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/policy/linear_arguments.hpp>
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
concept computes_linear_forward = requires(const P& p, const linear_chunk<float>& c, tensor_view<float> out,
                                           std::span<const float> decay, state_view st, const_state_view cst,
                                           std::int64_t n, stream_ref s) {
  p.forward_intra(c, out, s);
  p.state_contribution(c, st, s);
  p.forward_inter(c, cst, out, s);
  p.state_update(decay, n, cst, cst, st, s);
};

template <class P>
concept computes_linear_backward = requires(const P& p, const linear_chunk<float>& c,
                                            const linear_gradients<float>& grads, state_view st, const_state_view cst,
                                            stream_ref s) {
  p.backward_intra(c, grads, s);
  p.backward_state_contribution(c, st, s);
  p.backward_inter(c, cst, cst, grads, s);
};
}  // namespace detail

//! Computes, per batch and head of a piece of one rank's chunk (a linear_chunk c: C tokens, local
//! index i from 0; lambda = c.decay[h]; M[i][j] = lambda^(i-j) for i >= j, else 0;
//! LQ = diag(lambda^(i+1)); LK = diag(lambda^(C-1-i)); states are fp32 [B, H, D, E]):
//! - forward_intra(c, o):                  o = ((Q K^T) * M) V
//! - state_contribution(c, m):             m = K^T LK V
//! - forward_inter(c, kv, o):              o += LQ Q KV
//! - state_update(decay, n, in, m, out):   out = lambda^n in + m (in may be empty = zero; may alias out)
//! - backward_intra(c, grads):             A = (dO V^T) * M; dq = A K; dk = A^T Q;
//!                                         dv = ((Q K^T) * M)^T dO (written)
//! - backward_state_contribution(c, g):    g = Q^T LQ dO
//! - backward_inter(c, kv, g, grads):      dq += LQ dO KV^T; dk += LK V G^T; dv += LK K G
//! plus memory() and supports(dtype, D, E). Every call takes its stream last, named by the caller
//! (a seqpar::stream_ref, ignored on the host).
template <class P>
concept linear_attention_policy = detail::opts_into_linear_attention_policy<P> && detail::describes_support<P> &&
                                  detail::computes_linear_forward<P> && detail::computes_linear_backward<P>;

//! A linear-attention policy that may also offer forward_intra_with_state(c, o, m, stream, side):
//! forward_intra into o on `stream` and state_contribution into m on `side` in one call that
//! shares their work; linear_attention_ring uses it when there.
template <class P>
concept fuses_forward_state = requires(const P& p, const linear_chunk<float>& c, tensor_view<float> out, state_view st,
                                       stream_ref s) {
  p.forward_intra_with_state(c, out, st, s, s);
};

SEQPAR_NAMESPACE_END
