//! @file ulysses_attention.hpp
//! ulysses_attention<Policy, Comm, T>: a softmax-attention layer over sequence shards. Forward:
//! all_to_all_heads (Q, K, V in one exchange), the policy on this rank's heads over the whole
//! sequence, the inverse exchange of O; it returns a context holding what backward needs. Backward:
//! the exchange of dO, the policy's backward, the inverse exchange of dQ, dK, dV (kv-head gradients
//! summed over the ranks that used them). With head groups (ulysses_options) each pass runs per
//! group, and on a device the exchanges of the next and previous groups run on a side stream while
//! the policy computes the current one.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/call.hpp>
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/view_overlap.hpp>
#include <seqpar/detail/layer_skeleton.hpp>
#include <seqpar/detail/stream_fork.hpp>
#include <seqpar/detail/workspace_layout.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar/ulysses/detail/seq_side_checks.hpp>

#include <algorithm>
#include <memory>
#include <sstream>
#include <string>
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

//! A Ulysses attention layer of one rank, planned once for fixed shapes and one element type T.
//! It keeps only its plan, policy and options: each forward returns a `context` owning what its
//! backward needs, so any number of forwards may be in flight (microbatches, activation
//! recomputation). Memory comes from `Resource` in the communicator's memory, or from a workspace
//! the call's arguments carry (and the caller may share between layers). Every call runs the
//! checks can_run runs and, with call_checks::group (the default), the group agrees before any rank
//! writes an output or moves a byte.
template <attention_policy Policy, communicator Comm, element T, memory_resource Resource = default_memory_resource>
class ulysses_attention {
 public:
  using element_type = T;                             //!< the element type of every view
  using forward_args = attention_forward_args<T>;    //!< what forward takes
  using backward_args = attention_backward_args<T>;  //!< what backward takes

  //! What forward saves for backward: this rank's head-sharded q, k, v [B, S, h_r | k_r, D], o and
  //! the fp32 log-sum-exp [B, h_r, S]. Move-only; pass it to backward of the layer that made it.
  class context : public detail::layer_context {
   public:
    //! Bytes it holds.
    std::size_t bytes() const {
      return q_.span().size() + k_.span().size() + v_.span().size() + o_.span().size() + lse_.span().size();
    }

   private:
    friend class ulysses_attention;
    owned_bytes<Resource> q_, k_, v_, o_, lse_;
    detail::call_documents<Resource> docs_;
  };

  //! The layer of rank comm.rank(): q [B, S_r, H, D], k and v [B, S_r, H_kv, D] of elements T
  //! (`seqpar::elements<T>`), with `shape` = {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}.
  //! The options' scale defaults to 1 / sqrt(D); `layer_options` sets head groups. Collective: the
  //! ranks check the arguments and that every rank was built with the same shapes, and all throw
  //! if one fails.
  ulysses_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, element_tag<T>,
                    attention_options options = {}, ulysses_options layer_options = {}, Resource resource = {})
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        options_(options.resolved(shape.head_dim)),
        layer_options_(layer_options),
        plans_(detail::layer_skeleton<Comm>::agreed(
            comm, [&] { return make_plans(policy_, comm, seq, shape, options, layer_options); })),
        skeleton_(comm, "ulysses_attention", fingerprint_of(seq, shape, options_, layer_options),
                  describe(seq, shape, options_, layer_options)) {
    const auto& h = plan().heads();
    const int r = comm.rank();
    map_ = gqa_map{h.first(r), h.group(), h.kv_first(r)};
    for (int g = 0; g < groups(); ++g) {
      const all_to_all_heads_plan& p = group_plan(g);
      const int q_first = p.local_first(false), kv_first = p.local_first(true);
      slices_.push_back({q_first, p.local_heads(false), kv_first, p.local_heads(true),
                         gqa_map{h.first(r) + q_first, h.group(), h.kv_first(r) + kv_first}});
    }
  }

  //! Bytes of the workspace a forward with `args` takes when they carry one (the exchange buffers).
  std::size_t workspace_bytes(const forward_args&) const { return exchange_bytes(); }
  //! Bytes of the workspace a backward takes when its arguments carry one (exchange buffers, dO,
  //! dQ, dK and dV of this rank's heads).
  std::size_t workspace_bytes(const backward_args&) const { return backward_layout().bytes(); }
  //! Bytes a context of this layer holds (q, k, v, o and lse of this rank's heads over all S tokens).
  std::size_t context_bytes() const { return 2 * q_bytes() + 2 * kv_bytes() + lse_bytes(); }

  //! Whether forward(args, ...) would run, and if not why: the checks forward runs on this rank.
  call_status can_run(const forward_args& args) const {
    return call_status::of([&] { check_forward(args); });
  }
  //! Whether backward(saved, args, ...) would run, and if not why.
  call_status can_run(const context& saved, const backward_args& args) const {
    return call_status::of([&] { check_backward(saved, args); });
  }

  //! o = attention(q, k, v) for this rank's tokens (attention stays inside each document of
  //! args.documents); returns what backward needs. Exchange buffers come from args.workspace or
  //! the layer's resource.
  [[nodiscard]] context forward(const forward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    const document_layout& docs = detail::documents_of(args.documents);
    context saved;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    skeleton_.agree_on_call(exec, [&] {
      check_forward(args);
      const memory_space where = comm_.memory();
      // Plain allocations: a context may outlive the stream of the forward that made it.
      saved.q_ = owned_bytes<Resource>(q_bytes(), where, resource_);
      saved.k_ = owned_bytes<Resource>(kv_bytes(), where, resource_);
      saved.v_ = owned_bytes<Resource>(kv_bytes(), where, resource_);
      saved.o_ = owned_bytes<Resource>(q_bytes(), where, resource_);
      saved.lse_ = owned_bytes<Resource>(lse_bytes(), where, resource_);
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), where, resource_, stream);
      saved.docs_ = detail::call_documents<Resource>(docs, where, resource_, stream);
    }, detail::documents_agreement(docs));
    const tensor_view<T> hq = heads_view(saved.q_.span(), true), hk = heads_view(saved.k_.span(), false),
                         hv = heads_view(saved.v_.span(), false), ho = heads_view(saved.o_.span(), true);
    const attention_options opt = options_.with_documents(saved.docs_.ids());
    in_groups(
        stream,
        [&](int g, stream_t side) {
          const head_slice& h = slices_[g];
          detail::run_qkv_exchange(
              group_plan(g), comm_, detail::heads_direction::forward, qkv_views{args.q, args.k, args.v},
              qkv_views{query_heads(hq, h), kv_heads(hk, h), kv_heads(hv, h)}, ws, side, detail::launcher_of(policy_));
        },
        [&](int g) {
          const head_slice& h = slices_[g];
          policy_.forward(policy_forward_args<T>{.q = tensor_view<const T>(query_heads(hq, h)),
                                                 .k = tensor_view<const T>(kv_heads(hk, h)),
                                                 .v = tensor_view<const T>(kv_heads(hv, h)),
                                                 .o = query_heads(ho, h),
                                                 .lse = lse_of(saved.lse_.span(), h),
                                                 .map = h.map,
                                                 .options = opt},
                          stream);
        },
        [&](int g, stream_t side) {
          detail::run_one_exchange(group_plan(g), comm_, detail::heads_direction::inverse,
                                   tensor_view<const T>(query_heads(ho, slices_[g])), args.o, ws, side,
                                   detail::launcher_of(policy_));
        });
    skeleton_.template stamp<T>(saved);
    return saved;
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer. Scratch
  //! comes from args.workspace or the layer's resource (released on return).
  void backward(const context& saved, const backward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    skeleton_.agree_on_call(exec, [&] {
      check_backward(saved, args);
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), comm_.memory(), resource_, stream);
    });
    const auto layout = backward_layout();
    const tensor_view<T> hdo = heads_view(layout.part(ws, 1), true), hdq = heads_view(layout.part(ws, 2), true),
                         hdk = heads_view(layout.part(ws, 3), false), hdv = heads_view(layout.part(ws, 4), false);
    auto held = [&](const owned_bytes<Resource>& b, bool query) {
      return tensor_view<const T>(heads_view(b.span(), query));
    };
    const std::span<std::byte> exchange = layout.part(ws, 0);
    const attention_options opt = options_.with_documents(saved.docs_.ids());
    using cview = tensor_view<const T>;
    in_groups(
        stream,
        [&](int g, stream_t side) {
          detail::run_one_exchange(group_plan(g), comm_, detail::heads_direction::forward, args.dout,
                                   query_heads(hdo, slices_[g]), exchange, side, detail::launcher_of(policy_));
        },
        [&](int g) {
          const head_slice& h = slices_[g];
          policy_.backward(policy_backward_args<T>{.q = query_heads(held(saved.q_, true), h),
                                                   .k = kv_heads(held(saved.k_, false), h),
                                                   .v = kv_heads(held(saved.v_, false), h),
                                                   .o = query_heads(held(saved.o_, true), h),
                                                   .lse = const_lse_view(lse_of(saved.lse_.span(), h)),
                                                   .dout = query_heads(cview(hdo), h),
                                                   .dq = query_heads(hdq, h),
                                                   .dk = kv_heads(hdk, h),
                                                   .dv = kv_heads(hdv, h),
                                                   .map = h.map,
                                                   .options = opt},
                           stream);
        },
        [&](int g, stream_t side) {
          const head_slice& h = slices_[g];
          detail::run_qkv_exchange(
              group_plan(g), comm_, detail::heads_direction::inverse,
              qkv_views{query_heads(cview(hdq), h), kv_heads(cview(hdk), h), kv_heads(cview(hdv), h)},
              qkv_views{args.dq, args.dk, args.dv}, exchange, side, detail::launcher_of(policy_));
        });
  }

  //! The exchange plan of all heads (head split, shard sizes, workspace).
  const all_to_all_heads_plan& plan() const { return plans_.whole; }
  //! Head groups each pass runs in (ulysses_options::head_groups).
  int groups() const { return layer_options_.head_groups; }
  //! The exchange plan of head group g (plan() when there is one group).
  const all_to_all_heads_plan& group_plan(int g) const { return groups() == 1 ? plans_.whole : plans_.groups.at(g); }
  //! Which local kv head each local query head reads.
  const gqa_map& map() const { return map_; }
  //! The options the policy gets (the scale resolved).
  const attention_options& options() const { return options_; }

 private:
  // The plan of all heads and, with several head groups, one plan per group.
  struct plans {
    all_to_all_heads_plan whole;
    std::vector<all_to_all_heads_plan> groups;
  };
  static plans make_plans(const Policy& policy, Comm& comm, const seq_partition& seq, const attention_shape& shape,
                    const attention_options& options, const ulysses_options& layer_options) {
    SEQPAR_EXPECTS(seq.ranks == comm.size(),
                   "seq: partition over " << seq.ranks << " ranks; expected the communicator's " << comm.size());
    plans made{make_all_to_all_heads_plan(comm.rank(), seq, shape, dtype_of<T>), {}};
    const int groups = layer_options.head_groups;
    if (groups != 1)
      for (int g = 0; g < std::max(groups, 1); ++g)
        made.groups.push_back(make_all_to_all_heads_plan(comm.rank(), seq, shape, dtype_of<T>, {groups, g}));
    detail::check_policy_serves(policy, comm.memory(), dtype_of<T>, shape.head_dim, options);
    return made;
  }

  static std::int64_t fingerprint_of(const seq_partition& s, const attention_shape& shape,
                                     const attention_options& options, const ulysses_options& layer_options) {
    return fingerprint{}
        .add(s.tokens).add(s.ranks).add(static_cast<int>(s.strategy))
        .add(shape.batch).add(shape.heads).add(shape.kv()).add(shape.head_dim)
        .add(static_cast<int>(dtype_of<T>)).add(detail::options_key(options)).add(layer_options.head_groups)
        .value();
  }
  static std::string describe(const seq_partition& seq, const attention_shape& shape, const attention_options& options,
                              const ulysses_options& layer_options) {
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens (" << to_string(seq.strategy) << "), "
                << to_string(dtype_of<T>) << ", causal = " << options.causal << ", scale = " << options.scale
                << ", head groups = " << layer_options.head_groups;
    return description.str();
  }

  void check_forward(const forward_args& args) const {
    detail::check_seq_side_views(plan(), args);
    detail::check_outputs_apart(args);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
    detail::check_call_documents(policy_, args.documents, plan().seq().tokens);
  }
  void check_backward(const context& saved, const backward_args& args) const {
    skeleton_.template check_stamp<T>(saved);
    detail::check_seq_side_views(plan(), args);
    detail::check_outputs_apart(args);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
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

  std::size_t q_bytes() const { return detail::heads_side_bytes(plan(), 0); }
  std::size_t kv_bytes() const { return detail::heads_side_bytes(plan(), 1); }
  std::size_t lse_bytes() const {
    return static_cast<std::size_t>(plan().batch() * plan().heads().count(plan().rank()) * plan().seq().tokens) *
           sizeof(float);
  }
  // Backward's workspace: the exchange buffers, then dO, dQ, dK, dV of this rank's heads.
  detail::workspace_layout<5> backward_layout() const {
    return detail::workspace_layout<5>({exchange_bytes(), q_bytes(), q_bytes(), kv_bytes(), kv_bytes()});
  }

  // A view of this rank's heads over the whole sequence, over `bytes`.
  tensor_view<T> heads_view(std::span<std::byte> bytes, bool query) const {
    return detail::heads_side_view<T>(plan(), bytes, query ? 0 : 1);
  }
  // A group's query heads or kv heads in a view of this rank's.
  template <class U>
  static tensor_view<U> query_heads(const tensor_view<U>& v, const head_slice& h) {
    return detail::slice(v, axis::heads, h.q_first, h.q_count);
  }
  template <class U>
  static tensor_view<U> kv_heads(const tensor_view<U>& v, const head_slice& h) {
    return detail::slice(v, axis::heads, h.kv_first, h.kv_count);
  }

  // The log-sum-exp of a group's query heads: the groups' [B, h, S] blocks lie one after another.
  lse_view lse_of(std::span<std::byte> bytes, const head_slice& slice) const {
    const std::int64_t B = plan().batch(), S = plan().seq().tokens;
    return lse_view(reinterpret_cast<float*>(bytes.data()) + B * slice.q_first * S, B, slice.q_count, S);
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

  Policy policy_;
  Comm& comm_;
  Resource resource_;
  attention_options options_;
  ulysses_options layer_options_;
  plans plans_;
  detail::layer_skeleton<Comm> skeleton_;
  gqa_map map_;
  std::vector<head_slice> slices_;
  std::unique_ptr<detail::stream_fork> fork_ = detail::stream_fork_for(policy_);
};

SEQPAR_KERNEL_NAMESPACE_END
