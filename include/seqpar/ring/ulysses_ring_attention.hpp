//! @file ulysses_ring_attention.hpp
//! ulysses_ring_attention<Policy, Comm, T>: the 2-D layer. P = u * r ranks: Ulysses groups of u
//! contiguous ranks (meant to share a node) exchange sequence shards for head shards; ring groups of
//! r ranks, one rank of each Ulysses group, then run ring attention on those heads; the Ulysses
//! inverse brings the outputs back. u = 1 is pure ring, r = 1 pure Ulysses. Host or device memory.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/call.hpp>
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/view_overlap.hpp>
#include <seqpar/detail/layer_skeleton.hpp>
#include <seqpar/detail/workspace_layout.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/mesh.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar/ulysses/detail/seq_side_checks.hpp>

#include <memory>
#include <sstream>
#include <string>
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
//! of elements T with this rank's n = layout.size(rank) tokens of token_layout_2d, in the
//! communicator's memory (device memory needs the calling file compiled by nvcc). forward returns a
//! context owning this rank's head-sharded q, k, v, o over its ring group's tokens and their fp32
//! lse. Every call runs the checks can_run runs and, with call_checks::group (the default), agrees
//! across the world group before anything moves.
template <block_attention_policy Policy, communicator Comm, element T, memory_resource Resource = default_memory_resource>
class ulysses_ring_attention {
 public:
  using element_type = T;                             //!< the element type of every view
  using forward_args = attention_forward_args<T>;    //!< what forward takes
  using backward_args = attention_backward_args<T>;  //!< what backward takes

  //! What forward saves for backward.
  class context : public detail::layer_context {
   private:
    friend class ulysses_ring_attention;
    owned_bytes<Resource> q_, k_, v_, o_, lse_;
    detail::call_documents<Resource> docs_;
  };

  //! The layer of rank world.rank() over `layout` (built by make_token_layout_2d), with `shape` =
  //! {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, on elements T (`seqpar::elements<T>`).
  //! Collective over `world`: it checks the arguments everywhere and splits `world` into the
  //! Ulysses and ring groups.
  ulysses_ring_attention(Policy policy, Comm& world, const token_layout_2d& layout, const attention_shape& shape,
                         element_tag<T>, attention_options options = {}, Resource resource = {})
      : policy_(std::move(policy)),
        world_(world),
        resource_(resource),
        layout_(layout),
        options_(options.resolved(shape.head_dim)),
        plan_(detail::layer_skeleton<Comm>::agreed(world, [&] { return make_plan(policy_, world, layout, shape, options); })),
        skeleton_(world, "ulysses_ring_attention", fingerprint_of(layout, shape, options_),
                  describe(layout, shape, options_)),
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
  }

  //! Bytes of the workspace a forward takes when its arguments carry one (the exchange buffers and
  //! the ring's).
  std::size_t workspace_bytes(const forward_args&) const { return forward_layout().bytes(); }
  //! Bytes of the workspace a backward takes when its arguments carry one (the exchange buffers,
  //! this rank's head-sharded dO, dQ, dK, dV and the ring's).
  std::size_t workspace_bytes(const backward_args&) const { return backward_layout().bytes(); }

  //! Whether forward(args, ...) would run, and if not why: the checks forward runs on this rank.
  call_status can_run(const forward_args& args) const {
    return call_status::of([&] { check_forward(args); });
  }
  //! Whether backward(saved, args, ...) would run, and if not why.
  call_status can_run(const context& saved, const backward_args& args) const {
    return call_status::of([&] { check_backward(saved, args); });
  }

  //! o = attention(q, k, v) for this rank's tokens; returns what backward needs. With
  //! args.documents attention stays inside each document (over the global sequence, the same on
  //! every rank), and ring block pairs with no document in common are skipped.
  [[nodiscard]] context forward(const forward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    const document_layout& docs = detail::documents_of(args.documents);
    const memory_space where = world_.memory();
    context saved;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    skeleton_.agree_on_call(exec, [&] {
      check_forward(args);
      saved.q_ = owned_bytes<Resource>(head_bytes(true), where, resource_);
      saved.k_ = owned_bytes<Resource>(head_bytes(false), where, resource_);
      saved.v_ = owned_bytes<Resource>(head_bytes(false), where, resource_);
      saved.o_ = owned_bytes<Resource>(head_bytes(true), where, resource_);
      saved.lse_ = owned_bytes<Resource>(pass_.lse_floats(ring_.rank()) * sizeof(float), where, resource_);
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), where, resource_, stream);
      saved.docs_ = detail::call_documents<Resource>(docs, where, resource_, stream);
    }, detail::documents_agreement(docs));
    const auto layout = forward_layout();
    const std::span<std::byte> exchange = layout.part(ws, 0);
    const tensor_view<T> hq = heads(saved.q_.span(), true), hk = heads(saved.k_.span(), false),
                         hv = heads(saved.v_.span(), false), ho = heads(saved.o_.span(), true);
    detail::run_qkv_exchange(plan_, ulysses_, detail::heads_direction::forward, qkv_views{args.q, args.k, args.v},
                             qkv_views{hq, hk, hv}, exchange, stream, detail::launcher_of(policy_));
    pass_.forward(policy_, ring_, layout.part(ws, 1), *fork_, saved.docs_, tensor_view<const T>(hq),
                  tensor_view<const T>(hk), tensor_view<const T>(hv), ho,
                  reinterpret_cast<float*>(saved.lse_.span().data()), stream);
    detail::run_one_exchange(plan_, ulysses_, detail::heads_direction::inverse, tensor_view<const T>(ho), args.o,
                             exchange, stream, detail::launcher_of(policy_));
    skeleton_.template stamp<T>(saved);
    return saved;
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer.
  void backward(const context& saved, const backward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    skeleton_.agree_on_call(exec, [&] {
      check_backward(saved, args);
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), world_.memory(), resource_, stream);
    });
    const auto layout = backward_layout();
    const std::span<std::byte> exchange = layout.part(ws, 0);
    const tensor_view<T> hdo = heads(layout.part(ws, 1), true), hdq = heads(layout.part(ws, 2), true),
                         hdk = heads(layout.part(ws, 3), false), hdv = heads(layout.part(ws, 4), false);
    auto held = [&](const owned_bytes<Resource>& b, bool query) { return tensor_view<const T>(heads(b.span(), query)); };
    detail::run_one_exchange(plan_, ulysses_, detail::heads_direction::forward, args.dout, hdo, exchange, stream,
                             detail::launcher_of(policy_));
    pass_.backward(policy_, ring_, layout.part(ws, 5), *fork_, saved.docs_, held(saved.q_, true),
                   held(saved.k_, false), held(saved.v_, false), held(saved.o_, true), tensor_view<const T>(hdo),
                   reinterpret_cast<const float*>(saved.lse_.span().data()), hdq, hdk, hdv, stream);
    detail::run_qkv_exchange(plan_, ulysses_, detail::heads_direction::inverse,
                             qkv_views{tensor_view<const T>(hdq), tensor_view<const T>(hdk), tensor_view<const T>(hdv)},
                             qkv_views{args.dq, args.dk, args.dv}, exchange, stream, detail::launcher_of(policy_));
  }

  //! The Ulysses exchange plan within this rank's Ulysses group.
  const all_to_all_heads_plan& plan() const { return plan_; }
  //! This rank's Ulysses group (split from the world group).
  const Comm& ulysses_group() const { return ulysses_; }
  //! This rank's ring group (split from the world group).
  const Comm& ring_group() const { return ring_; }

 private:
  static all_to_all_heads_plan make_plan(const Policy& policy, Comm& world, const token_layout_2d& layout,
                                         const attention_shape& shape, const attention_options& options) {
    const auto checked = make_token_layout_2d(layout.tokens, layout.mesh);
    SEQPAR_EXPECTS(checked.mesh.ulysses * checked.mesh.ring == world.size(),
                   "mesh: ulysses * ring = " << checked.mesh.ulysses * checked.mesh.ring
                                             << "; expected the world group's " << world.size() << " ranks");
    SEQPAR_EXPECTS(
        detail::starts_kernels<decltype(detail::launcher_of(policy))> || world.memory() == memory_space::host,
        "world: device memory needs the calling file compiled by nvcc (the exchanges' kernels are "
        "CUDA)");
    auto plan = make_all_to_all_heads_plan(checked.mesh.ulysses_index(world.rank()), checked.group_partition(), shape,
                                           dtype_of<T>);
    detail::check_policy_serves(policy, world.memory(), dtype_of<T>, shape.head_dim, options);
    return plan;
  }
  static std::int64_t fingerprint_of(const token_layout_2d& layout, const attention_shape& shape,
                                     const attention_options& options) {
    return fingerprint{}
        .add(layout.tokens).add(layout.mesh.ulysses).add(layout.mesh.ring)
        .add(shape.batch).add(shape.heads).add(shape.kv()).add(shape.head_dim)
        .add(static_cast<int>(dtype_of<T>)).add(detail::options_key(options))
        .value();
  }
  static std::string describe(const token_layout_2d& layout, const attention_shape& shape,
                              const attention_options& options) {
    std::ostringstream description;
    description << "shape " << shape << ", " << layout.tokens << " tokens, mesh " << layout.mesh.ulysses << " x "
                << layout.mesh.ring << ", " << to_string(dtype_of<T>) << ", causal = " << options.causal;
    return description.str();
  }

  void check_forward(const forward_args& args) const {
    detail::check_seq_side_views(plan_, args);
    detail::check_outputs_apart(args);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
    detail::check_call_documents(policy_, args.documents, layout_.tokens);
  }
  void check_backward(const context& saved, const backward_args& args) const {
    skeleton_.template check_stamp<T>(saved);
    detail::check_seq_side_views(plan_, args);
    detail::check_outputs_apart(args);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
  }

  // Forward's workspace: the exchange buffers, then the ring's.
  detail::workspace_layout<2> forward_layout() const {
    return detail::workspace_layout<2>({plan_.workspace_bytes(), pass_.forward_layout<T>(ring_.rank()).bytes()});
  }
  // Backward's workspace: the exchange buffers, dO, dQ, dK, dV of this rank's heads, then the ring's.
  detail::workspace_layout<6> backward_layout() const {
    return detail::workspace_layout<6>({plan_.workspace_bytes(), head_bytes(true), head_bytes(true), head_bytes(false),
                                        head_bytes(false), pass_.backward_layout<T>(ring_.rank()).bytes()});
  }
  std::size_t head_bytes(bool query) const { return detail::heads_side_bytes(plan_, query ? 0 : 1); }
  tensor_view<T> heads(std::span<std::byte> bytes, bool query) const {
    return detail::heads_side_view<T>(plan_, bytes, query ? 0 : 1);
  }

  Policy policy_;
  Comm& world_;
  Resource resource_;
  token_layout_2d layout_;
  attention_options options_;
  all_to_all_heads_plan plan_;
  detail::layer_skeleton<Comm> skeleton_;
  Comm ulysses_, ring_;
  detail::ring_pass pass_;
  std::unique_ptr<detail::stream_fork> fork_ = detail::stream_fork_for(policy_);
};

SEQPAR_KERNEL_NAMESPACE_END
