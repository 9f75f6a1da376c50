//! @file ulysses_attention.hpp
//! ulysses_attention<Policy, Comm>: a softmax-attention layer over sequence shards. Forward:
//! all_to_all_heads (Q, K, V in one exchange), the policy on this rank's heads over the whole
//! sequence, the inverse exchange of O. Backward: the exchange of dO, the policy's backward, the
//! inverse exchange of dQ, dK, dV (kv-head gradients summed over the ranks that used them).
#pragma once

#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>

#include <type_traits>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Plans once for fixed shapes (head split, GQA map, workspace) and owns the head-sharded
//! activations that backward needs, allocated from `Resource` in the communicator's memory.
template <attention_policy Policy, communicator Comm, memory_resource Resource = default_memory_resource>
class ulysses_attention {
 public:
  //! A layer of rank comm.rank(): q [B, S_r, H, D], k and v [B, S_r, H_kv, D] of element `type`.
  ulysses_attention(Policy policy, Comm& comm, const seq_partition& seq, int heads, int kv_heads, std::int64_t batch,
                    std::int64_t head_dim, dtype type, attention_options options, Resource resource = {})
      : policy_(std::move(policy)),
        comm_(comm),
        plan_(make_all_to_all_heads_plan(comm.rank(), seq, heads, kv_heads, batch, head_dim, type)),
        options_(options) {
    SEQPAR_EXPECTS(seq.ranks == comm.size(), "seq: partition over " << seq.ranks << " ranks; expected the communicator's "
                                                                    << comm.size());
    SEQPAR_EXPECTS(policy_.memory() == comm.memory(), "policy: works on " << to_string(policy_.memory())
                                                                          << " memory; expected the communicator's "
                                                                          << to_string(comm.memory()));
    SEQPAR_EXPECTS(policy_.supports(type, head_dim), "policy: does not support element type " << to_string(type)
                                                                                              << " with head_dim " << head_dim);
    SEQPAR_EXPECTS(!options.causal || policy_.supports_causal(),
                   "options.causal: the policy cannot apply a causal mask; expected causal = false");
    const auto& h = plan_.heads();
    const int r = comm.rank();
    map_ = gqa_map{h.first(r), h.group(), h.kv_first(r)};
    const std::size_t es = size_of(type), tokens = static_cast<std::size_t>(seq.tokens * batch * head_dim);
    const std::size_t q_bytes = tokens * h.count(r) * es, kv_bytes = tokens * h.kv_count(r) * es;
    const memory_space where = comm.memory();
    workspace_ = owned_bytes<Resource>(plan_.workspace_bytes(), where, resource);
    for (auto* b : {&q_, &o_, &do_, &dq_}) *b = owned_bytes<Resource>(q_bytes, where, resource);
    for (auto* b : {&k_, &v_, &dk_, &dv_}) *b = owned_bytes<Resource>(kv_bytes, where, resource);
    lse_ = owned_bytes<Resource>(static_cast<std::size_t>(batch * h.count(r) * seq.tokens) * sizeof(float), where, resource);
  }

  //! o = attention(q, k, v) for this rank's tokens; keeps what backward needs.
  template <class Q, class K, class V, class O>
  void forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o, stream_t stream = nullptr) {
    using T = std::remove_const_t<Q>;
    check_type<T>();
    all_to_all_heads(plan_, comm_, qkv_views{q, k, v}, qkv_views{heads<T>(q_, true), heads<T>(k_, false), heads<T>(v_, false)},
                     workspace_.span(), stream);
    policy_.forward(cheads<T>(q_, true), cheads<T>(k_, false), cheads<T>(v_, false), map_, options_, heads<T>(o_, true),
                    lse(), stream);
    all_to_all_heads_inverse(plan_, comm_, cheads<T>(o_, true), o, workspace_.span(), stream);
    has_state_ = true;
  }

  //! dq, dk, dv for this rank's tokens from dO, using what the last forward kept.
  template <class DO, class G>
  void backward(tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv, stream_t stream = nullptr) {
    using T = std::remove_const_t<DO>;
    SEQPAR_EXPECTS(has_state_, "backward: nothing saved; expected a forward call first");
    check_type<T>();
    all_to_all_heads(plan_, comm_, dout, heads<T>(do_, true), workspace_.span(), stream);
    policy_.backward(cheads<T>(q_, true), cheads<T>(k_, false), cheads<T>(v_, false), cheads<T>(o_, true),
                     const_lse_view(lse()), cheads<T>(do_, true), map_, options_, heads<T>(dq_, true),
                     heads<T>(dk_, false), heads<T>(dv_, false), stream);
    all_to_all_heads_inverse(plan_, comm_,
                             qkv_views{cheads<T>(dq_, true), cheads<T>(dk_, false), cheads<T>(dv_, false)},
                             qkv_views{dq, dk, dv}, workspace_.span(), stream);
  }

  //! The exchange plan (head split, shard sizes, workspace).
  const all_to_all_heads_plan& plan() const { return plan_; }
  //! Which local kv head each local query head reads.
  const gqa_map& map() const { return map_; }

 private:
  template <class T>
  void check_type() const {
    SEQPAR_EXPECTS(dtype_of<T> == plan_.type(), "views: element type " << to_string(dtype_of<T>)
                                                                       << "; expected the layer's " << to_string(plan_.type()));
  }
  template <class T>
  tensor_view<T> heads(const owned_bytes<Resource>& b, bool query) const {
    const auto& h = plan_.heads();
    const int n = query ? h.count(plan_.rank()) : h.kv_count(plan_.rank());
    return make_bshd(reinterpret_cast<T*>(b.span().data()), plan_.batch(), plan_.seq().tokens, n, plan_.head_dim());
  }
  template <class T>
  tensor_view<const T> cheads(const owned_bytes<Resource>& b, bool query) const {
    return heads<T>(b, query);
  }
  lse_view lse() const {
    return lse_view(reinterpret_cast<float*>(lse_.span().data()), plan_.batch(), plan_.heads().count(plan_.rank()),
                    plan_.seq().tokens);
  }

  Policy policy_;
  Comm& comm_;
  all_to_all_heads_plan plan_;
  attention_options options_;
  gqa_map map_;
  owned_bytes<Resource> workspace_, q_, k_, v_, o_, do_, dq_, dk_, dv_, lse_;
  bool has_state_ = false;
};

SEQPAR_KERNEL_NAMESPACE_END
