//! @file attention_policy.hpp
//! The softmax-attention policy concept: what Ulysses runs on one rank's heads over the whole sequence.
#pragma once

#include <seqpar/call.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/error.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/policy/attention_arguments.hpp>
#include <seqpar/policy/attention_options.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

#include <concepts>
#include <cstdint>
#include <cstring>

SEQPAR_NAMESPACE_BEGIN

//! Tag an attention policy names as `using policy_concept = seqpar::attention_policy_tag;`.
struct attention_policy_tag {};

namespace detail {
template <class P>
concept opts_into_attention_policy = std::same_as<typename P::policy_concept, attention_policy_tag>;

template <class P>
concept states_attention_support = requires(const P& p, dtype t, std::int64_t d) {
  { p.memory() } -> std::same_as<memory_space>;
  { p.supports(t, d) } -> std::same_as<bool>;
  { p.supports_causal() } -> std::same_as<bool>;
};

template <class P>
concept computes_attention = requires(const P& p, const policy_forward_args<float>& fwd,
                                      const policy_backward_args<float>& bwd, stream_ref s) {
  p.forward(fwd, s);
  p.backward(bwd, s);
};
}  // namespace detail

//! A type that computes softmax attention on local heads over the whole sequence:
//! - forward(policy_forward_args<T>{q, k, v, o, lse, map, options}, stream):
//!   o = softmax(scale q k^T [+ causal mask]) v per query head, reading kv head map.kv_head(h);
//!   lse = log-sum-exp of each row's scaled scores;
//! - backward(policy_backward_args<T>{q, k, v, o, lse, dout, dq, dk, dv, map, options}, stream):
//!   the gradients; dk and dv sum over the query heads that read each kv head;
//! - memory(), supports(dtype, head_dim), supports_causal();
//! - and, optionally, supports_documents() (true: it masks by options.documents). A policy that
//!   does not declare it is never handed packed documents: the layers refuse them by name.
//! q, o, dO, dq: [B, S, h, D]; k, v, dk, dv: [B, S, k, D]. Every call takes its stream, named by
//! the caller (a seqpar::stream_ref: there is no default).
template <class P>
concept attention_policy = detail::opts_into_attention_policy<P> && detail::states_attention_support<P> &&
                           detail::computes_attention<P>;

namespace detail {
//! The options as one integer (causal flag and the scale's bits), for a layer's fingerprint.
inline std::int64_t options_key(const attention_options& options) {
  std::uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &options.scale, sizeof scale_bits);
  return static_cast<std::int64_t>(scale_bits) * 2 + (options.causal ? 1 : 0);
}

//! True when two views have equal extents.
template <class A, class B>
bool same_extents(const tensor_view<A>& a, const tensor_view<B>& b) {
  return a.batch() == b.batch() && a.seq() == b.seq() && a.heads() == b.heads() && a.head_dim() == b.head_dim();
}

//! Throws unless k and v have equal extents with q's batch, seq and head_dim, and o has q's
//! extents: what a policy checks of a whole-sequence call's views.
template <class Q, class K, class V, class O>
void check_attention_extents(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>& v,
                             const tensor_view<O>& o) {
  SEQPAR_EXPECTS(same_extents(k, v) && k.batch() == q.batch() && k.seq() == q.seq() && k.head_dim() == q.head_dim(),
                 "k, v: extents {" << k.batch() << ", " << k.seq() << ", " << k.heads() << ", " << k.head_dim()
                                   << "}; expected q's batch, seq and head_dim (" << q.batch() << ", " << q.seq()
                                   << ", " << q.head_dim() << ") and equal k and v");
  SEQPAR_EXPECTS(same_extents(o, q), "o: extents differ from q's; expected the same extents");
}

//! Throws unless k and v have equal extents with q's batch and head_dim: what a policy checks of a
//! block pair's views (its key block may hold any number of rows).
template <class Q, class K, class V>
void check_block_extents(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<V>& v) {
  SEQPAR_EXPECTS(same_extents(k, v) && k.batch() == q.batch() && k.head_dim() == q.head_dim(),
                 "k, v: extents {" << k.batch() << ", " << k.seq() << ", " << k.heads() << ", " << k.head_dim()
                                   << "}; expected q's batch and head_dim (" << q.batch() << ", " << q.head_dim()
                                   << ") and equal k and v");
}

//! Throws unless dout and dq have q's extents and dk and dv k's: what a policy's backward checks.
template <class Q, class K, class DO, class G>
void check_gradient_extents(const tensor_view<Q>& q, const tensor_view<K>& k, const tensor_view<DO>& dout,
                            const tensor_view<G>& dq, const tensor_view<G>& dk, const tensor_view<G>& dv) {
  SEQPAR_EXPECTS(same_extents(dout, q) && same_extents(dq, q) && same_extents(dk, k) && same_extents(dv, k),
                 "dout, dq, dk, dv: extents differ from q's and k's; expected dout and dq shaped like q, dk and dv "
                 "like k");
}

//! Throws unless `lse` (a log-sum-exp or row-dot view, named lse in the message) is q's
//! {batch, heads, seq} floats with data: what every policy checks of its fp32 row statistics.
template <class L, class T>
void check_lse_extents(const L& lse, const tensor_view<T>& q) {
  SEQPAR_EXPECTS(lse.extent(0) == q.batch() && lse.extent(1) == q.heads() && lse.extent(2) == q.seq() &&
                     (lse.data_handle() != nullptr || lse.size() == 0),
                 "lse: extents {" << lse.extent(0) << ", " << lse.extent(1) << ", " << lse.extent(2)
                                  << "}; expected q's {batch, heads, seq} = {" << q.batch() << ", " << q.heads() << ", "
                                  << q.seq() << "} floats");
}

//! A policy that says whether it serves packed documents.
template <class P>
concept declares_documents = requires(const P& p) {
  { p.supports_documents() } -> std::same_as<bool>;
};

//! True when `policy` declares that it masks by packed documents.
template <class P>
bool serves_documents(const P& policy) {
  if constexpr (declares_documents<P>) return policy.supports_documents();
  else return false;
}

//! Throws unless `policy` serves the documents of a call (none, or a policy that declares them).
template <class P>
void check_policy_serves_documents(const P& policy, const document_layout& docs) {
  SEQPAR_EXPECTS(!docs.split() || serves_documents(policy),
                 "documents: the policy does not declare packed documents (supports_documents() returning true); "
                 "expected no documents, or a policy that masks by them");
}

//! Throws unless `policy` works on `memory`, supports `type` with `head_dim`, and can apply the
//! causal mask when `options` asks for it: what every attention layer checks when it is built.
template <attention_policy P>
void check_policy_serves(const P& policy, memory_space memory, dtype type, std::int64_t head_dim,
                         const attention_options& options) {
  SEQPAR_EXPECTS(policy.memory() == memory, "policy: works on " << to_string(policy.memory()) << " memory; expected "
                                                                << to_string(memory));
  SEQPAR_EXPECTS(policy.supports(type, head_dim),
                 "policy: does not support element type " << to_string(type) << " with head_dim " << head_dim);
  SEQPAR_EXPECTS(!options.causal || policy.supports_causal(),
                 "options.causal: the policy cannot apply a causal mask; expected causal = false");
}
}  // namespace detail

SEQPAR_NAMESPACE_END
