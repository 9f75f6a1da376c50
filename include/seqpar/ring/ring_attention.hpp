//! @file ring_attention.hpp
//! ring_attention<Policy, Comm>: softmax attention over sequence shards with no limit from the head
//! count. Each rank keeps its queries; key/value shards travel around the ring with
//! neighbor_exchange, and each rank merges the partial outputs of its queries against every shard
//! (fp32 online softmax). Backward: dQ accumulates at home, dK/dV accumulate in fp32 as they travel
//! with their shard and come home after a full turn. With zigzag shards the causal work is the
//! same on every rank at every step. Host or device memory (the communicator's); on a device the
//! next shard's exchange runs on a side stream while the current block pairs compute.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/context_stamp.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>
#include <seqpar/shard.hpp>

#include <array>
#include <memory>
#include <sstream>
#include <type_traits>
#include <utility>
#include <vector>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! A ring attention layer of one rank: q [B, S_r, H, D], k and v [B, S_r, H_kv, D] of this rank's
//! tokens (contiguous or zigzag shards), any H and H_kv (only kv heads travel), in the
//! communicator's memory (device memory needs the calling file compiled by nvcc). forward returns a
//! context: the fp32 log-sum-exp of this rank's rows (owned) and views
//! of q, k, v and o (keep them alive and unchanged until backward). Every call agrees across the
//! group before any rank writes an output or moves a byte.
template <block_attention_policy Policy, communicator Comm, memory_resource Resource = default_memory_resource>
class ring_attention {
 public:
  //! What forward saves for backward.
  class context {
   public:
    //! An empty context (what backward refuses).
    context() = default;
    //! True until a forward fills it.
    bool empty() const { return !stamp_.filled; }

   private:
    friend class ring_attention;
    owned_bytes<Resource> lse_;
    detail::erased_views<4> views_;  // q, k, v, o
    detail::call_documents<Resource> docs_;
    detail::context_stamp stamp_;
  };

  //! The layer of rank comm.rank() over `seq` (comm.size() ranks; zigzag balances causal work),
  //! with `shape` = {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}. Collective.
  ring_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, dtype type,
                 attention_options options = {}, Resource resource = {})
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        seq_(seq),
        shape_(shape),
        type_(type),
        options_(options.resolved(shape.head_dim)),
        pass_{seq,        shape.batch,    shape.heads,
              shape.kv(), shape.head_dim, gqa_map{0, shape.kv() > 0 ? shape.heads / shape.kv() : 1, 0},
              options_} {
    agree_on_arguments(comm, call_checks::group, nullptr, [&] {
      check_attention_shape(shape);
      SEQPAR_EXPECTS(shape.values() == shape.head_dim,
                     "shape.value_dim: expected head_dim = " << shape.head_dim << ", got " << shape.value_dim);
      (void)make_seq_partition(seq.tokens, seq.ranks, seq.strategy);
      SEQPAR_EXPECTS(seq.ranks == comm.size(),
                     "seq: partition over " << seq.ranks << " ranks; expected the communicator's " << comm.size());
      SEQPAR_EXPECTS(SEQPAR_CUDA_COMPILER || comm.memory() == memory_space::host,
                     "comm: device memory needs the calling file compiled by nvcc (the ring's element-wise steps "
                     "are CUDA)");
      detail::check_policy_serves(policy_, comm.memory(), type, shape.head_dim, options);
    });
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens (" << to_string(seq.strategy) << "), "
                << to_string(type) << ", causal = " << options_.causal;
    agree_on_fingerprint(comm, fingerprint_of(), "ring_attention", description.str());
  }

  //! o = attention(q, k, v) for this rank's tokens; returns what backward needs.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                stream_t stream = nullptr) {
    return forward(q, k, v, o, document_layout{}, stream);
  }

  //! As forward above, for a packed sequence: attention stays inside each document of `docs` (over
  //! the global sequence, the same on every rank), and block pairs with no document in common are
  //! skipped. The context keeps the documents for backward.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                const document_layout& docs, stream_t stream = nullptr) {
    using T = std::remove_const_t<Q>;
    static_assert(
        std::is_same_v<std::remove_const_t<K>, T> && std::is_same_v<std::remove_const_t<V>, T> && std::is_same_v<O, T>,
        "ring_attention::forward: q, k, v and o must share one element type, and o must be writable");
    context saved;
    agree_on_arguments(comm_, checks_, stream, [&] {
      check_views<T>({"q", "k", "v", "o"}, q, k, v, o);
      detail::check_documents(docs, seq_.tokens);
      saved.lse_ = owned_bytes<Resource>(lse_floats() * sizeof(float), comm_.memory(), resource_);
      saved.docs_ = detail::call_documents<Resource>(docs, comm_.memory(), resource_, stream);
    }, detail::documents_agreement(docs));
    pass_.forward(policy_, comm_, resource_, *fork_, saved.docs_, tensor_view<const T>(q),
                  tensor_view<const T>(k), tensor_view<const T>(v), o,
                  reinterpret_cast<float*>(saved.lse_.span().data()), stream);
    saved.views_.keep(q, k, v, o);
    saved.stamp_.set(fingerprint_of(), dtype_of<T>);
    return saved;
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer.
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                stream_t stream = nullptr) {
    using T = std::remove_const_t<DO>;
    static_assert(std::is_same_v<G, T>,
                  "ring_attention::backward: dout, dq, dk and dv must share one element type, "
                  "and the gradients must be writable");
    agree_on_arguments(comm_, checks_, stream, [&] {
      saved.stamp_.check(fingerprint_of(), dtype_of<T>);
      check_views<T>({"dq", "dk", "dv", "dout"}, dq, dk, dv, dout);
    });
    auto held = [&](int i) { return saved.views_.template get<T>(i); };
    pass_.backward(policy_, comm_, resource_, *fork_, saved.docs_, held(0), held(1), held(2), held(3),
                   tensor_view<const T>(dout), reinterpret_cast<const float*>(saved.lse_.span().data()), dq, dk, dv,
                   stream);
  }

  //! Sets what each call checks: call_checks::group (the default) or call_checks::local.
  void set_call_checks(call_checks checks) { checks_ = checks; }
  //! What each call checks.
  call_checks checks() const { return checks_; }
  //! The options the policy gets (the scale resolved).
  const attention_options& options() const { return options_; }

 private:
  int kv() const { return shape_.kv(); }
  std::size_t lse_floats() const { return pass_.lse_floats(comm_.rank()); }
  template <class T, class A, class B, class C, class D>
  void check_views(const std::array<const char*, 4>& names, const tensor_view<A>& a, const tensor_view<B>& b,
                   const tensor_view<C>& c, const tensor_view<D>& d) const {
    SEQPAR_EXPECTS(dtype_of<T> == type_, names[0] << ": element type " << to_string(dtype_of<T>)
                                                  << "; expected the layer's " << to_string(type_));
    const std::int64_t n = seq_.size(comm_.rank());
    const shape4 q_shape{shape_.batch, n, shape_.heads, shape_.head_dim},
        kv_shape{shape_.batch, n, kv(), shape_.head_dim};
    detail::check_extents(names[0], a, q_shape);
    detail::check_extents(names[1], b, kv_shape);
    detail::check_extents(names[2], c, kv_shape);
    detail::check_extents(names[3], d, q_shape);
  }
  std::int64_t fingerprint_of() const {
    return fingerprint{}
        .add(seq_.tokens)
        .add(seq_.ranks)
        .add(static_cast<int>(seq_.strategy))
        .add(shape_.batch)
        .add(shape_.heads)
        .add(kv())
        .add(shape_.head_dim)
        .add(static_cast<int>(type_))
        .add(detail::options_key(options_))
        .value();
  }

  Policy policy_;
  Comm& comm_;
  Resource resource_;
  seq_partition seq_;
  attention_shape shape_;
  dtype type_;
  attention_options options_;
  detail::ring_pass pass_;
  std::unique_ptr<detail::stream_fork> fork_ = std::make_unique<detail::stream_fork>();
  call_checks checks_ = call_checks::group;
};

SEQPAR_KERNEL_NAMESPACE_END
