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
concept computes_gated_forward = requires(const P& p, tensor_view<const float> in, tensor_view<float> out,
                                          state_view st, const_state_view cst, chunk_decay_view total,
                                          const_chunk_decay_view ctotal, stream_t s) {
  p.forward_intra(in, in, in, in, out, s);
  p.state_contribution(in, in, in, st, s);
  p.forward_inter(in, in, cst, out, s);
  p.chunk_decay(in, total, s);
  p.state_update(ctotal, cst, cst, st, s);
};

template <class P>
concept computes_gated_backward = requires(const P& p, tensor_view<const float> in, tensor_view<float> out,
                                           state_view st, const_state_view cst, stream_t s) {
  p.backward_intra(in, in, in, in, in, out, out, out, out, s);
  p.backward_state_contribution(in, in, in, st, s);
  p.backward_inter(in, in, in, in, in, cst, cst, out, out, out, out, s);
};
}  // namespace detail

//! Computes, per batch and head of one rank's chunk (C tokens, local index i from 0), with fp32
//! log-gates g [B, C, H, 1] (a scalar per head and token) or [B, C, H, D] (one per key dim), their
//! cumulative sums G_i = g_0 + ... + g_i (per key dim d) and fp32 states [B, H, D, E]:
//! - forward_intra(q, k, v, g, o):           o_i  = sum_{j <= i} (sum_d q_i[d] k_j[d] e^(G_i[d] - G_j[d])) v_j
//! - state_contribution(k, v, g, m):         m    = sum_j diag(e^(G_{C-1} - G_j)) k_j v_j^T
//! - forward_inter(q, g, kv, o):             o_i += (q_i * e^(G_i))^T kv
//! - chunk_decay(g, total):                  total[b, h, d] = G_{C-1}[d] (fp32 [B, H, D])
//! - state_update(total, in, m, out):        out  = diag(e^total) in + m (in may be empty = zero; may alias out)
//! - backward_intra(q, k, v, do, g, dq, dk, dv, dg): the intra term's gradients (written)
//! - backward_state_contribution(q, do, g, gs): gs = sum_i (q_i * e^(G_i)) dO_i^T, the incoming state's gradient
//! - backward_inter(q, k, v, do, g, kv, gs, dq, dk, dv, dg): ADDS the gradients of the inter term
//!   (incoming state kv) and of the state passed on (its gradient gs), the gate's share of
//!   diag(e^(G_{C-1})) kv included
//! dg has the gate's shape and is fp32: a scalar gate's entry sums over d. memory() and
//! supports(dtype, D, E) as linear_attention_policy; every call takes a stream last.
template <class P>
concept gated_linear_attention_policy = detail::opts_into_gated_linear_attention_policy<P> &&
                                        detail::describes_support<P> && detail::computes_gated_forward<P> &&
                                        detail::computes_gated_backward<P>;

SEQPAR_NAMESPACE_END
