//! @file ulysses_attention.hpp
//! ulysses_attention<Policy, Comm>: a softmax-attention layer over sequence shards. Forward:
//! all_to_all_heads (Q, K, V in one exchange), the policy on this rank's heads over the whole
//! sequence, the inverse exchange of O; it returns a context holding what backward needs. Backward:
//! the exchange of dO, the policy's backward, the inverse exchange of dQ, dK, dV (kv-head gradients
//! summed over the ranks that used them). With head groups (ulysses_options) each pass runs per
//! group, and on a device the exchanges of the next and previous groups run on a side stream while
//! the policy computes the current one.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/context_stamp.hpp>
#include <seqpar/detail/stream_fork.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>

#include <algorithm>
#include <memory>
#include <optional>
#include <sstream>
#include <type_traits>
#include <vector>

SEQPAR_NAMESPACE_BEGIN
//! Options of a Ulysses layer beyond the policy's.
struct ulysses_options {
  //! Head groups each pass is split into, so that on a device the exchange of group g + 1 (and the
  //! inverse of group g - 1) runs on a side stream while the policy computes group g. A group is a
  //! balanced share of each rank's kv heads with the query heads that read them, so 1 to the fewest
  //! kv heads a rank holds. 1 (the default): one exchange each way, no side stream. Results and
  //! bytes moved are the same for every count.
  int head_groups = 1;
};
SEQPAR_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! A Ulysses attention layer of one rank, planned once for fixed shapes. It keeps only its plan,
//! policy and options: each forward returns a `context` owning what its backward needs, so any
//! number of forwards may be in flight (microbatches, activation recomputation). Memory comes from
//! `Resource` in the communicator's memory, or from a workspace the caller passes (and may share
//! between layers). Every call checks its arguments on every rank and, with call_checks::group
//! (the default), the group agrees before any rank writes an output or moves a byte.
template <attention_policy Policy, communicator Comm, memory_resource Resource = default_memory_resource>
class ulysses_attention {
 public:
  //! What forward saves for backward: this rank's head-sharded q, k, v [B, S, h_r | k_r, D], o and
  //! the fp32 log-sum-exp [B, h_r, S]. Move-only; pass it to backward of the layer that made it.
  class context {
   public:
    //! An empty context (what backward refuses).
    context() = default;
    //! True until a forward fills it.
    bool empty() const { return !stamp_.filled; }
    //! Bytes it holds.
    std::size_t bytes() const {
      return q_.span().size() + k_.span().size() + v_.span().size() + o_.span().size() + lse_.span().size();
    }

   private:
    friend class ulysses_attention;
    owned_bytes<Resource> q_, k_, v_, o_, lse_;
    detail::call_documents<Resource> docs_;
    detail::context_stamp stamp_;
  };

  //! The layer of rank comm.rank(): q [B, S_r, H, D], k and v [B, S_r, H_kv, D] of element `type`,
  //! with `shape` = {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}. The options' scale
  //! defaults to 1 / sqrt(D). Collective: the ranks check the arguments and that every rank was
  //! built with the same shapes, and all throw if one fails.
  ulysses_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, dtype type,
                    attention_options options = {}, Resource resource = {})
      : ulysses_attention(std::move(policy), comm, seq, shape, type, options, ulysses_options{}, resource) {}

  //! As above, with the layer's own options (head groups).
  ulysses_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, dtype type,
                    attention_options options, ulysses_options layer_options, Resource resource = {})
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        options_(options.resolved(shape.head_dim)),
        layer_options_(layer_options),
        plan_(agreed_plan(policy_, comm, seq, shape, type, options, layer_options, group_plans_)) {
    const auto& h = plan_.heads();
    const int r = comm.rank();
    map_ = gqa_map{h.first(r), h.group(), h.kv_first(r)};
    for (int g = 0; g < groups(); ++g) {
      const all_to_all_heads_plan& p = group_plan(g);
      const int q_first = p.local_first(false), kv_first = p.local_first(true);
      slices_.push_back({q_first, p.local_heads(false), kv_first, p.local_heads(true),
                         gqa_map{h.first(r) + q_first, h.group(), h.kv_first(r) + kv_first}});
    }
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens (" << to_string(seq.strategy) << "), "
                << to_string(type) << ", causal = " << options_.causal << ", scale = " << options_.scale
                << ", head groups = " << groups();
    agree_on_fingerprint(comm, fingerprint_of(), "ulysses_attention", description.str());
  }

  //! Bytes of the workspace a forward needs when the caller passes one (the exchange buffers).
  std::size_t forward_workspace_bytes() const { return exchange_bytes(); }
  //! Bytes of the workspace a backward needs when the caller passes one (exchange buffers, dO, dQ,
  //! dK and dV of this rank's heads); enough for a forward too.
  std::size_t workspace_bytes() const {
    return scratch_offset(4) + kv_bytes();
  }
  //! Bytes a context of this layer holds (q, k, v, o and lse of this rank's heads over all S tokens).
  std::size_t context_bytes() const { return 2 * q_bytes() + 2 * kv_bytes() + lse_bytes(); }

  //! o = attention(q, k, v) for this rank's tokens; returns what backward needs. Temporary
  //! exchange buffers come from the layer's resource.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                stream_t stream = nullptr) {
    return forward_impl(q, k, v, o, document_layout{}, std::nullopt, stream);
  }
  //! As forward above, with the exchange buffers in `workspace` (forward_workspace_bytes(), 16-byte aligned).
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                std::span<std::byte> workspace, stream_t stream = nullptr) {
    return forward_impl(q, k, v, o, document_layout{}, std::optional(workspace), stream);
  }
  //! As forward above, for a packed sequence: attention stays inside each document of `docs` (over
  //! the global sequence, the same on every rank). The context keeps the documents for backward.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                const document_layout& docs, stream_t stream = nullptr) {
    return forward_impl(q, k, v, o, docs, std::nullopt, stream);
  }
  //! As the forward with documents, with the exchange buffers in `workspace`.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                const document_layout& docs, std::span<std::byte> workspace,
                                stream_t stream = nullptr) {
    return forward_impl(q, k, v, o, docs, std::optional(workspace), stream);
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer. Scratch
  //! comes from the layer's resource and is released on return.
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                stream_t stream = nullptr) {
    backward_impl(saved, dout, dq, dk, dv, std::nullopt, stream);
  }
  //! As backward above, with the scratch in `workspace` (workspace_bytes(), 16-byte aligned).
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                std::span<std::byte> workspace, stream_t stream = nullptr) {
    backward_impl(saved, dout, dq, dk, dv, std::optional(workspace), stream);
  }

  //! Sets what each call checks: call_checks::group (the default) or call_checks::local.
  void set_call_checks(call_checks checks) { checks_ = checks; }
  //! What each call checks.
  call_checks checks() const { return checks_; }
  //! The exchange plan of all heads (head split, shard sizes, workspace).
  const all_to_all_heads_plan& plan() const { return plan_; }
  //! Head groups each pass runs in (ulysses_options::head_groups).
  int groups() const { return layer_options_.head_groups; }
  //! The exchange plan of head group g (plan() when there is one group).
  const all_to_all_heads_plan& group_plan(int g) const { return groups() == 1 ? plan_ : group_plans_.at(g); }
  //! Which local kv head each local query head reads.
  const gqa_map& map() const { return map_; }
  //! The options the policy gets (the scale resolved).
  const attention_options& options() const { return options_; }

 private:
  // The plan of all heads; with several head groups, also one plan per group in `group_plans`.
  static all_to_all_heads_plan agreed_plan(const Policy& policy, Comm& comm, const seq_partition& seq,
                                           const attention_shape& shape, dtype type, const attention_options& options,
                                           const ulysses_options& layer_options,
                                           std::vector<all_to_all_heads_plan>& group_plans) {
    std::optional<all_to_all_heads_plan> plan;
    agree_on_arguments(comm, call_checks::group, nullptr, [&] {
      SEQPAR_EXPECTS(seq.ranks == comm.size(),
                     "seq: partition over " << seq.ranks << " ranks; expected the communicator's " << comm.size());
      plan.emplace(make_all_to_all_heads_plan(comm.rank(), seq, shape, type));
      const int groups = layer_options.head_groups;
      if (groups != 1)
        for (int g = 0; g < std::max(groups, 1); ++g)
          group_plans.push_back(make_all_to_all_heads_plan(comm.rank(), seq, shape, type, {groups, g}));
      detail::check_policy_serves(policy, comm.memory(), type, shape.head_dim, options);
    });
    return std::move(*plan);
  }

  std::int64_t fingerprint_of() const {
    const auto& s = plan_.seq();
    const auto& h = plan_.heads();
    return fingerprint{}
        .add(s.tokens).add(s.ranks).add(static_cast<int>(s.strategy))
        .add(plan_.batch()).add(h.heads).add(h.kv_heads).add(plan_.head_dim())
        .add(static_cast<int>(plan_.type())).add(detail::options_key(options_)).add(groups())
        .value();
  }

  // This rank's heads of one group: local query heads [q_first, q_first + q_count), local kv heads
  // [kv_first, kv_first + kv_count), and the policy's map for them.
  struct head_slice {
    int q_first, q_count, kv_first, kv_count;
    gqa_map map;
  };

  // Bytes of the exchange buffers (the largest group's, all pass through them in turn).
  std::size_t exchange_bytes() const {
    std::size_t most = 0;
    for (int g = 0; g < groups(); ++g) most = std::max(most, group_plan(g).workspace_bytes());
    return most;
  }

  std::size_t q_bytes() const { return detail::heads_side_bytes(plan_, 0); }
  std::size_t kv_bytes() const { return detail::heads_side_bytes(plan_, 1); }
  std::size_t lse_bytes() const {
    return static_cast<std::size_t>(plan_.batch() * plan_.heads().count(plan_.rank()) * plan_.seq().tokens) *
           sizeof(float);
  }
  static std::size_t aligned(std::size_t n) {
    constexpr std::size_t a = all_to_all_heads_plan::workspace_alignment;
    return (n + a - 1) / a * a;
  }
  // Backward's scratch after the exchange buffers: dO, dQ, dK, dV; offset of part i.
  std::size_t scratch_offset(int i) const {
    const std::size_t sizes[] = {q_bytes(), q_bytes(), kv_bytes(), kv_bytes()};
    std::size_t at = aligned(exchange_bytes());
    for (int j = 0; j < i; ++j) at += aligned(sizes[j]);
    return at;
  }

  // A view of this rank's heads over the whole sequence, over `bytes`.
  template <class T>
  tensor_view<T> heads_view(std::span<std::byte> bytes, bool query) const {
    return detail::heads_side_view<T>(plan_, bytes, query ? 0 : 1);
  }
  // A group's query heads or kv heads in a view of this rank's.
  template <class T>
  static tensor_view<T> query_heads(const tensor_view<T>& v, const head_slice& h) {
    return detail::slice(v, axis::heads, h.q_first, h.q_count);
  }
  template <class T>
  static tensor_view<T> kv_heads(const tensor_view<T>& v, const head_slice& h) {
    return detail::slice(v, axis::heads, h.kv_first, h.kv_count);
  }

  // The log-sum-exp of a group's query heads: the groups' [B, h, S] blocks lie one after another.
  lse_view lse_of(std::span<std::byte> bytes, const head_slice& slice) const {
    const std::int64_t B = plan_.batch(), S = plan_.seq().tokens;
    return lse_view(reinterpret_cast<float*>(bytes.data()) + B * slice.q_first * S, B, slice.q_count, S);
  }

  template <class T, class U>
  void check_type(const char* name) const {
    detail::check_same_type<T, U>(name);
    SEQPAR_EXPECTS(dtype_of<T> == plan_.type(), name << ": element type " << to_string(dtype_of<T>)
                                                     << "; expected the layer's " << to_string(plan_.type()));
  }
  template <class Q, class K, class V, class O>
  context forward_impl(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                       const document_layout& docs, const detail::optional_workspace& workspace, stream_t stream) {
    using T = std::remove_const_t<Q>;
    static_assert(!std::is_const_v<O>, "ulysses_attention::forward: o must be writable (tensor_view<T>)");
    context saved;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    agree_on_arguments(comm_, checks_, stream, [&] {
      check_type<T, Q>("q");
      check_type<T, K>("k");
      check_type<T, V>("v");
      check_type<T, O>("o");
      detail::check_extents("q", q, detail::seq_side_extents(plan_, 0));
      detail::check_extents("k", k, detail::seq_side_extents(plan_, 1));
      detail::check_extents("v", v, detail::seq_side_extents(plan_, 2));
      detail::check_extents("o", o, detail::seq_side_extents(plan_, 0));
      detail::check_workspace(workspace, forward_workspace_bytes(), "forward_workspace_bytes()");
      detail::check_documents(docs, plan_.seq().tokens);
      const memory_space where = comm_.memory();
      // Plain allocations: a context may outlive the stream of the forward that made it.
      saved.q_ = owned_bytes<Resource>(q_bytes(), where, resource_);
      saved.k_ = owned_bytes<Resource>(kv_bytes(), where, resource_);
      saved.v_ = owned_bytes<Resource>(kv_bytes(), where, resource_);
      saved.o_ = owned_bytes<Resource>(q_bytes(), where, resource_);
      saved.lse_ = owned_bytes<Resource>(lse_bytes(), where, resource_);
      ws = detail::workspace_for(workspace, own, forward_workspace_bytes(), where, resource_, stream);
      saved.docs_ = detail::call_documents<Resource>(docs, where, resource_, stream);
    }, detail::documents_agreement(docs));
    if constexpr (detail::qkv_types_match<Q, K, V, O, O, O>) {
      const tensor_view<T> hq = heads_view<T>(saved.q_.span(), true), hk = heads_view<T>(saved.k_.span(), false),
                           hv = heads_view<T>(saved.v_.span(), false), ho = heads_view<T>(saved.o_.span(), true);
      const attention_options opt = options_.with_documents(saved.docs_.ids());
      in_groups(
          stream,
          [&](int g, stream_t side) {
            const head_slice& h = slices_[g];
            detail::run_qkv_exchange(group_plan(g), comm_, detail::heads_direction::forward, qkv_views{q, k, v},
                                     qkv_views{query_heads(hq, h), kv_heads(hk, h), kv_heads(hv, h)}, ws, side);
          },
          [&](int g) {
            const head_slice& h = slices_[g];
            policy_.forward(tensor_view<const T>(query_heads(hq, h)), tensor_view<const T>(kv_heads(hk, h)),
                            tensor_view<const T>(kv_heads(hv, h)), h.map, opt, query_heads(ho, h),
                            lse_of(saved.lse_.span(), h), stream);
          },
          [&](int g, stream_t side) {
            detail::run_one_exchange(group_plan(g), comm_, detail::heads_direction::inverse,
                                     tensor_view<const T>(query_heads(ho, slices_[g])), o, ws, side);
          });
      saved.stamp_.set(fingerprint_of(), dtype_of<T>);
    }
    return saved;
  }

  // Runs a pass group by group: exchange(g, stream), compute(g) on `stream`, inverse(g, stream).
  // On a device with several groups the exchanges and inverses run in that order on a side stream,
  // exchange g + 1 enqueued before inverse g - 1, so both overlap compute(g); compute(g) waits for
  // exchange g only and inverse g for compute g. Every rank enqueues the collectives in one order.
  template <class Exchange, class Compute, class Inverse>
  void in_groups(stream_t stream, Exchange&& exchange, Compute&& compute, Inverse&& inverse) {
    const memory_space where = comm_.memory();
    const bool overlap = groups() > 1 && where == memory_space::device;
    const stream_t side = overlap ? fork_->fork(where, stream) : stream;
    exchange(0, side);
    if (overlap) fork_->mark(where);
    for (int g = 0; g < groups(); ++g) {
      if (overlap) fork_->wait_for_mark(where, stream);
      if (g + 1 < groups()) {
        exchange(g + 1, side);
        if (overlap) fork_->mark(where);
      }
      compute(g);
      if (overlap) (void)fork_->fork(where, stream);  // the side stream waits for compute(g)
      inverse(g, side);
    }
    if (overlap) fork_->join(where, stream);
  }

  template <class DO, class G>
  void backward_impl(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk,
                     tensor_view<G> dv, const detail::optional_workspace& workspace, stream_t stream) {
    using T = std::remove_const_t<DO>;
    static_assert(!std::is_const_v<G>, "ulysses_attention::backward: dq, dk and dv must be writable (tensor_view<T>)");
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    agree_on_arguments(comm_, checks_, stream, [&] {
      saved.stamp_.check(fingerprint_of(), dtype_of<T>);
      check_type<T, DO>("dout");
      check_type<T, G>("dq");
      detail::check_extents("dout", dout, detail::seq_side_extents(plan_, 0));
      detail::check_extents("dq", dq, detail::seq_side_extents(plan_, 0));
      detail::check_extents("dk", dk, detail::seq_side_extents(plan_, 1));
      detail::check_extents("dv", dv, detail::seq_side_extents(plan_, 2));
      detail::check_workspace(workspace, workspace_bytes(), "workspace_bytes()");
      ws = detail::workspace_for(workspace, own, workspace_bytes(), comm_.memory(), resource_, stream);
    });
    if constexpr (std::is_same_v<G, T>) {
      auto part = [&](int i, std::size_t bytes) { return ws.subspan(scratch_offset(i), bytes); };
      const tensor_view<T> hdo = heads_view<T>(part(0, q_bytes()), true), hdq = heads_view<T>(part(1, q_bytes()), true),
                           hdk = heads_view<T>(part(2, kv_bytes()), false),
                           hdv = heads_view<T>(part(3, kv_bytes()), false);
      auto held = [&](const owned_bytes<Resource>& b, bool query) {
        return tensor_view<const T>(heads_view<T>(b.span(), query));
      };
      const std::span<std::byte> exchange = ws.first(exchange_bytes());
      const attention_options opt = options_.with_documents(saved.docs_.ids());
      using cview = tensor_view<const T>;
      in_groups(
          stream,
          [&](int g, stream_t side) {
            detail::run_one_exchange(group_plan(g), comm_, detail::heads_direction::forward, dout,
                                     query_heads(hdo, slices_[g]), exchange, side);
          },
          [&](int g) {
            const head_slice& h = slices_[g];
            policy_.backward(query_heads(held(saved.q_, true), h), kv_heads(held(saved.k_, false), h),
                             kv_heads(held(saved.v_, false), h), query_heads(held(saved.o_, true), h),
                             const_lse_view(lse_of(saved.lse_.span(), h)), query_heads(cview(hdo), h), h.map, opt,
                             query_heads(hdq, h), kv_heads(hdk, h), kv_heads(hdv, h), stream);
          },
          [&](int g, stream_t side) {
            const head_slice& h = slices_[g];
            detail::run_qkv_exchange(
                group_plan(g), comm_, detail::heads_direction::inverse,
                qkv_views{query_heads(cview(hdq), h), kv_heads(cview(hdk), h), kv_heads(cview(hdv), h)},
                qkv_views{dq, dk, dv}, exchange, side);
          });
    }
  }

  Policy policy_;
  Comm& comm_;
  Resource resource_;
  attention_options options_;
  ulysses_options layer_options_;
  std::vector<all_to_all_heads_plan> group_plans_;  // one per head group; empty with one group
  all_to_all_heads_plan plan_;
  gqa_map map_;
  std::vector<head_slice> slices_;
  std::unique_ptr<detail::stream_fork> fork_ = std::make_unique<detail::stream_fork>();
  call_checks checks_ = call_checks::group;
};

SEQPAR_KERNEL_NAMESPACE_END
