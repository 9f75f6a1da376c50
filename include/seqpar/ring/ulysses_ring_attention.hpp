//! @file ulysses_ring_attention.hpp
//! ulysses_ring_attention<Policy, Comm>: the 2-D layer. P = u * r ranks: Ulysses groups of u
//! contiguous ranks (meant to share a node) exchange sequence shards for head shards; ring groups of
//! r ranks, one rank of each Ulysses group, then run ring attention on those heads; the Ulysses
//! inverse brings the outputs back. u = 1 is pure ring, r = 1 pure Ulysses. Host or device memory.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/context_stamp.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/mesh.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>

#include <memory>
#include <optional>
#include <sstream>
#include <type_traits>
#include <utility>

SEQPAR_NAMESPACE_BEGIN

//! The token layout of the 2-D layer, which keeps causal work balanced at every ring step: the
//! sequence in 2r equal blocks, ring group j owns blocks j and 2r-1-j (zigzag over the ring), in
//! that order, and the u ranks of the group hold consecutive parts of that list (the first ones a
//! token more when it does not split evenly).
struct token_layout_2d {
  std::int64_t tokens = 0;  //!< S
  mesh_2d mesh;             //!< the arrangement of the ranks

  //! The ring groups' tokens: zigzag over r ranks.
  seq_partition ring_partition() const { return {tokens, mesh.ring, shard_strategy::zigzag}; }
  //! A ring group's list of tokens over the u ranks of a Ulysses group: contiguous parts.
  seq_partition group_partition() const {
    return {mesh.ring ? tokens / mesh.ring : 0, mesh.ulysses, shard_strategy::contiguous};
  }
  //! Tokens rank `rank` holds.
  std::int64_t size(int rank) const { return group_partition().size(mesh.ulysses_index(rank)); }
  //! Global position of rank `rank`'s local token s.
  std::int64_t global(int rank, std::int64_t s) const {
    return ring_partition().global(mesh.ring_index(rank), group_partition().offset(mesh.ulysses_index(rank)) + s);
  }
};

//! A checked layout: ulysses, ring >= 1 and tokens divisible by 2 * ring.
inline token_layout_2d make_token_layout_2d(std::int64_t tokens, mesh_2d mesh) {
  SEQPAR_EXPECTS(mesh.ulysses >= 1 && mesh.ring >= 1,
                 "mesh: expected ulysses >= 1 and ring >= 1, got " << mesh.ulysses << " and " << mesh.ring);
  SEQPAR_EXPECTS(tokens >= 0 && tokens % (2 * mesh.ring) == 0,
                 "tokens: the 2-D layout deals 2 * ring = " << 2 * mesh.ring
                                                            << " equal blocks; expected a multiple, got " << tokens);
  return {tokens, mesh};
}

SEQPAR_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! The 2-D layer of one rank of `world` (P = u * r ranks): q [B, n, H, D], k and v [B, n, H_kv, D]
//! with this rank's n = layout.size(rank) tokens of token_layout_2d, in the communicator's memory
//! (device memory needs the calling file compiled by nvcc). forward returns a context owning this
//! rank's head-sharded q, k, v, o over its ring group's tokens and their fp32 lse. Every call agrees
//! across the world group before anything moves.
template <block_attention_policy Policy, communicator Comm, memory_resource Resource = default_memory_resource>
class ulysses_ring_attention {
 public:
  //! What forward saves for backward.
  class context {
   public:
    //! An empty context (what backward refuses).
    context() = default;
    //! True until a forward fills it.
    bool empty() const { return !stamp_.filled; }

   private:
    friend class ulysses_ring_attention;
    owned_bytes<Resource> q_, k_, v_, o_, lse_;
    detail::call_documents<Resource> docs_;
    detail::context_stamp stamp_;
  };

  //! The layer of rank world.rank() over `layout` (built by make_token_layout_2d), with `shape` =
  //! {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}. Collective over `world`: it checks
  //! the arguments everywhere and splits `world` into the Ulysses and ring groups.
  ulysses_ring_attention(Policy policy, Comm& world, const token_layout_2d& layout, const attention_shape& shape,
                         dtype type, attention_options options = {}, Resource resource = {})
      : policy_(std::move(policy)),
        world_(world),
        resource_(resource),
        layout_(layout),
        options_(options.resolved(shape.head_dim)),
        plan_(agreed_plan(policy_, world, layout, shape, type, options)),
        ulysses_(world.split(layout.mesh.ring_index(world.rank()), layout.mesh.ulysses_index(world.rank()))),
        ring_(world.split(layout.mesh.ulysses_index(world.rank()), layout.mesh.ring_index(world.rank()))) {
    const auto& h = plan_.heads();
    const int i = plan_.rank();
    pass_ = detail::ring_pass{layout.ring_partition(),
                              shape.batch,
                              h.count(i),
                              h.kv_count(i),
                              shape.head_dim,
                              gqa_map{h.first(i), h.group(), h.kv_first(i)},
                              options_};
    std::ostringstream description;
    description << "shape " << shape << ", " << layout.tokens << " tokens, mesh " << layout.mesh.ulysses << " x "
                << layout.mesh.ring << ", " << to_string(type) << ", causal = " << options_.causal;
    agree_on_fingerprint(world, fingerprint_of(), "ulysses_ring_attention", description.str());
  }

  //! o = attention(q, k, v) for this rank's tokens; returns what backward needs.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                stream_t stream = nullptr) {
    return forward(q, k, v, o, document_layout{}, stream);
  }

  //! As forward above, for a packed sequence: attention stays inside each document of `docs` (over
  //! the global sequence, the same on every rank), and ring block pairs with no document in common
  //! are skipped. The context keeps the documents for backward.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                const document_layout& docs, stream_t stream = nullptr) {
    using T = std::remove_const_t<Q>;
    static_assert(detail::qkv_types_match<Q, K, V, O, O, O>,
                  "ulysses_ring_attention::forward: q, k, v and o must share one element type, and o must be writable");
    const memory_space where = world_.memory();
    context saved;
    agree_on_arguments(world_, checks_, stream, [&] {
      check_type<T>("q");
      detail::check_extents("q", q, detail::seq_side_extents(plan_, 0));
      detail::check_extents("k", k, detail::seq_side_extents(plan_, 1));
      detail::check_extents("v", v, detail::seq_side_extents(plan_, 2));
      detail::check_extents("o", o, detail::seq_side_extents(plan_, 0));
      saved.q_ = owned_bytes<Resource>(head_bytes(true), where, resource_);
      saved.k_ = owned_bytes<Resource>(head_bytes(false), where, resource_);
      saved.v_ = owned_bytes<Resource>(head_bytes(false), where, resource_);
      saved.o_ = owned_bytes<Resource>(head_bytes(true), where, resource_);
      saved.lse_ = owned_bytes<Resource>(pass_.lse_floats(ring_.rank()) * sizeof(float), where, resource_);
      detail::check_documents(docs, layout_.tokens);
      saved.docs_ = detail::call_documents<Resource>(docs, where, resource_, stream);
    }, detail::documents_agreement(docs));
    owned_bytes<Resource> ws(plan_.workspace_bytes(), where, resource_, stream);
    const tensor_view<T> hq = heads<T>(saved.q_, true), hk = heads<T>(saved.k_, false), hv = heads<T>(saved.v_, false),
                         ho = heads<T>(saved.o_, true);
    detail::run_qkv_exchange(plan_, ulysses_, detail::heads_direction::forward, qkv_views{q, k, v},
                             qkv_views{hq, hk, hv}, ws.span(), stream);
    pass_.forward(policy_, ring_, resource_, *fork_, saved.docs_, tensor_view<const T>(hq),
                  tensor_view<const T>(hk), tensor_view<const T>(hv), ho,
                  reinterpret_cast<float*>(saved.lse_.span().data()), stream);
    detail::run_one_exchange(plan_, ulysses_, detail::heads_direction::inverse, tensor_view<const T>(ho), o, ws.span(),
                             stream);
    saved.stamp_.set(fingerprint_of(), dtype_of<T>);
    return saved;
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer.
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                stream_t stream = nullptr) {
    using T = std::remove_const_t<DO>;
    static_assert(std::is_same_v<G, T>,
                  "ulysses_ring_attention::backward: dout, dq, dk and dv must share one "
                  "element type, and the gradients must be writable");
    agree_on_arguments(world_, checks_, stream, [&] {
      saved.stamp_.check(fingerprint_of(), dtype_of<T>);
      detail::check_extents("dout", dout, detail::seq_side_extents(plan_, 0));
      detail::check_extents("dq", dq, detail::seq_side_extents(plan_, 0));
      detail::check_extents("dk", dk, detail::seq_side_extents(plan_, 1));
      detail::check_extents("dv", dv, detail::seq_side_extents(plan_, 2));
    });
    auto scratch = [&, where = world_.memory()](std::size_t bytes) {
      return owned_bytes<Resource>(bytes, where, resource_, stream);
    };
    const owned_bytes<Resource> ws = scratch(plan_.workspace_bytes()), hdo = scratch(head_bytes(true)),
                                hdq = scratch(head_bytes(true)), hdk = scratch(head_bytes(false)),
                                hdv = scratch(head_bytes(false));
    auto held = [&](const owned_bytes<Resource>& b, bool query) { return tensor_view<const T>(heads<T>(b, query)); };
    detail::run_one_exchange(plan_, ulysses_, detail::heads_direction::forward, dout, heads<T>(hdo, true), ws.span(),
                             stream);
    pass_.backward(policy_, ring_, resource_, *fork_, saved.docs_, held(saved.q_, true),
                   held(saved.k_, false), held(saved.v_, false), held(saved.o_, true), held(hdo, true),
                   reinterpret_cast<const float*>(saved.lse_.span().data()), heads<T>(hdq, true), heads<T>(hdk, false),
                   heads<T>(hdv, false), stream);
    detail::run_qkv_exchange(plan_, ulysses_, detail::heads_direction::inverse,
                             qkv_views{held(hdq, true), held(hdk, false), held(hdv, false)}, qkv_views{dq, dk, dv},
                             ws.span(), stream);
  }

  //! Sets what each call checks: call_checks::group (the default) or call_checks::local.
  void set_call_checks(call_checks checks) { checks_ = checks; }
  //! The Ulysses exchange plan within this rank's Ulysses group.
  const all_to_all_heads_plan& plan() const { return plan_; }
  //! This rank's Ulysses group (split from the world group).
  const Comm& ulysses_group() const { return ulysses_; }
  //! This rank's ring group (split from the world group).
  const Comm& ring_group() const { return ring_; }

 private:
  static all_to_all_heads_plan agreed_plan(const Policy& policy, Comm& world, const token_layout_2d& layout,
                                           const attention_shape& shape, dtype type, const attention_options& options) {
    std::optional<all_to_all_heads_plan> plan;
    agree_on_arguments(world, call_checks::group, nullptr, [&] {
      const auto checked = make_token_layout_2d(layout.tokens, layout.mesh);
      SEQPAR_EXPECTS(checked.mesh.ulysses * checked.mesh.ring == world.size(),
                     "mesh: ulysses * ring = " << checked.mesh.ulysses * checked.mesh.ring
                                               << "; expected the world group's " << world.size() << " ranks");
      SEQPAR_EXPECTS(SEQPAR_CUDA_COMPILER || world.memory() == memory_space::host,
                     "world: device memory needs the calling file compiled by nvcc (the exchanges' kernels are "
                     "CUDA)");
      plan.emplace(
          make_all_to_all_heads_plan(checked.mesh.ulysses_index(world.rank()), checked.group_partition(), shape, type));
      detail::check_policy_serves(policy, world.memory(), type, shape.head_dim, options);
    });
    return std::move(*plan);
  }

  template <class T>
  void check_type(const char* name) const {
    SEQPAR_EXPECTS(dtype_of<T> == plan_.type(), name << ": element type " << to_string(dtype_of<T>)
                                                     << "; expected the layer's " << to_string(plan_.type()));
  }
  std::size_t head_bytes(bool query) const { return detail::heads_side_bytes(plan_, query ? 0 : 1); }
  template <class T>
  tensor_view<T> heads(const owned_bytes<Resource>& b, bool query) const {
    return detail::heads_side_view<T>(plan_, b.span(), query ? 0 : 1);
  }
  std::int64_t fingerprint_of() const {
    const auto& h = plan_.heads();
    return fingerprint{}
        .add(layout_.tokens)
        .add(layout_.mesh.ulysses)
        .add(layout_.mesh.ring)
        .add(plan_.batch())
        .add(h.heads)
        .add(h.kv_heads)
        .add(plan_.head_dim())
        .add(static_cast<int>(plan_.type()))
        .add(detail::options_key(options_))
        .value();
  }

  Policy policy_;
  Comm& world_;
  Resource resource_;
  token_layout_2d layout_;
  attention_options options_;
  all_to_all_heads_plan plan_;
  Comm ulysses_, ring_;
  detail::ring_pass pass_;
  std::unique_ptr<detail::stream_fork> fork_ = std::make_unique<detail::stream_fork>();
  call_checks checks_ = call_checks::group;
};

SEQPAR_KERNEL_NAMESPACE_END
