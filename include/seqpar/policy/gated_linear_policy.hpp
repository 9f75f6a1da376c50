//! @file gated_linear_policy.hpp
//! The gated linear-attention policy concept: the chunk-local terms of LASP when the state decays
//! by a data-dependent gate per token (Mamba-2, gated RetNet: one log-gate per head and token; GLA:
//! one per key dimension), computed on one rank.
#pragma once

#include <seqpar/policy/linear_attention_policy.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>

#include <concepts>
#include <cstdint>

SEQPAR_NAMESPACE_BEGIN

//! Tag a gated policy names as `using policy_concept = seqpar::gated_linear_attention_policy_tag;`.
struct gated_linear_attention_policy_tag {};

namespace detail {
template <class P>
concept opts_into_gated_linear_attention_policy =
    std::same_as<typename P::policy_concept, gated_linear_attention_policy_tag>;

template <class P>
concept computes_gated_forward = requires(const P& p, const gated_chunk<float>& c, tensor_view<const float> g,
                                          tensor_view<float> out, state_view st, const_state_view cst,
                                          chunk_decay_view total, const_chunk_decay_view ctotal, stream_ref s) {
  p.forward_intra(c, out, s);
  p.state_contribution(c, st, s);
  p.forward_inter(c, cst, out, s);
  p.chunk_decay(g, total, s);
  p.state_update(ctotal, cst, cst, st, s);
};

template <class P>
concept computes_gated_backward = requires(const P& p, const gated_chunk<float>& c,
                                           const linear_gradients<float>& grads, state_view st, const_state_view cst,
                                           stream_ref s) {
  p.backward_intra(c, grads, s);
  p.backward_state_contribution(c, st, s);
  p.backward_inter(c, cst, cst, grads, s);
};
}  // namespace detail

//! Computes, per batch and head of a piece of one rank's chunk (a gated_chunk c: C tokens, local
//! index i from 0), with its fp32 log-gates g = c.g [B, C, H, 1] (a scalar per head and token) or
//! [B, C, H, D] (one per key dim), their cumulative sums G_i = g_0 + ... + g_i (per key dim d) and
//! fp32 states [B, H, D, E]:
//! - forward_intra(c, o):                 o_i  = sum_{j <= i} (sum_d q_i[d] k_j[d] e^(G_i[d] - G_j[d])) v_j
//! - state_contribution(c, m):            m    = sum_j diag(e^(G_{C-1} - G_j)) k_j v_j^T
//! - forward_inter(c, kv, o):             o_i += (q_i * e^(G_i))^T kv
//! - chunk_decay(g, total):               total[b, h, d] = G_{C-1}[d] (fp32 [B, H, D])
//! - state_update(total, in, m, out):     out  = diag(e^total) in + m (in may be empty = zero; may alias out)
//! - backward_intra(c, grads):            the intra term's gradients dq, dk, dv, dg (written)
//! - backward_state_contribution(c, gs):  gs = sum_i (q_i * e^(G_i)) dO_i^T, the incoming state's gradient
//! - backward_inter(c, kv, gs, grads):    ADDS the gradients of the inter term (incoming state kv)
//!   and of the state passed on (its gradient gs), the gate's share of diag(e^(G_{C-1})) kv included
//! grads.dg has the gate's shape and is fp32: a scalar gate's entry sums over d. memory() and
//! supports(dtype, D, E) as linear_attention_policy; every call takes its stream last, named by
//! the caller.
template <class P>
concept gated_linear_attention_policy = detail::opts_into_gated_linear_attention_policy<P> &&
                                        detail::describes_support<P> && detail::computes_gated_forward<P> &&
                                        detail::computes_gated_backward<P>;

SEQPAR_NAMESPACE_END
