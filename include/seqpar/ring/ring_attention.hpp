//! @file ring_attention.hpp
//! ring_attention<Policy, Comm, T>: softmax attention over sequence shards with no limit from the head
//! count. Each rank keeps its queries; key/value shards travel around the ring with
//! neighbor_exchange, and each rank merges the partial outputs of its queries against every shard
//! (fp32 online softmax). Backward: dQ accumulates at home, dK/dV accumulate in fp32 as they travel
//! with their shard and come home after a full turn. With zigzag shards the causal work is the
//! same on every rank at every step. Host or device memory (the communicator's); on a device the
//! next shard's exchange runs on a side stream while the current block pairs compute.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/call.hpp>
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/detail/view_overlap.hpp>
#include <seqpar/detail/layer_skeleton.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/ring/ring_pass.hpp>
#include <seqpar/shard.hpp>

#include <array>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! A ring attention layer of one rank: q [B, S_r, H, D], k and v [B, S_r, H_kv, D] of elements T
//! of this rank's tokens (contiguous or zigzag shards), any H and H_kv (only kv heads travel), in
//! the communicator's memory. forward returns a context: the fp32 log-sum-exp of this rank's rows
//! (owned) and views of q, k, v and o (keep them alive and unchanged until backward). Every call
//! runs the checks can_run runs and, with call_checks::group (the default), agrees across the group
//! before any rank writes an output or moves a byte.
template <block_attention_policy Policy, communicator Comm, element T, memory_resource Resource = default_memory_resource>
class ring_attention {
 public:
  using element_type = T;                             //!< the element type of every view
  using forward_args = attention_forward_args<T>;    //!< what forward takes
  using backward_args = attention_backward_args<T>;  //!< what backward takes

  //! What forward saves for backward.
  class context : public detail::layer_context {
   private:
    friend class ring_attention;
    owned_bytes<Resource> lse_;
    detail::erased_views<4> views_;  // q, k, v, o
    detail::call_documents<Resource> docs_;
  };

  //! The layer of rank comm.rank() over `seq` (comm.size() ranks; zigzag balances causal work),
  //! with `shape` = {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, on elements T
  //! (`seqpar::elements<T>`). Collective.
  ring_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, element_tag<T>,
                 attention_options options = {}, Resource resource = {})
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        seq_(detail::layer_skeleton<Comm>::agreed(comm, [&] { return check(policy_, comm, seq, shape, options); })),
        shape_(shape),
        options_(options.resolved(shape.head_dim)),
        pass_{seq,        shape.batch,    shape.heads,
              shape.kv(), shape.head_dim, gqa_map{0, shape.kv() > 0 ? shape.heads / shape.kv() : 1, 0},
              options_},
        skeleton_(comm, "ring_attention", fingerprint_of(seq, shape, options_), describe(seq, shape, options_)) {}

  //! Bytes of the workspace a forward takes when its arguments carry one.
  std::size_t workspace_bytes(const forward_args&) const { return pass_.forward_layout<T>(comm_.rank()).bytes(); }
  //! Bytes of the workspace a backward takes when its arguments carry one.
  std::size_t workspace_bytes(const backward_args&) const { return pass_.backward_layout<T>(comm_.rank()).bytes(); }

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
  //! every rank), and block pairs with no document in common are skipped; the context keeps them.
  [[nodiscard]] context forward(const forward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    const document_layout& docs = detail::documents_of(args.documents);
    context saved;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    skeleton_.agree_on_call(exec, [&] {
      check_forward(args);
      saved.lse_ = owned_bytes<Resource>(lse_floats() * sizeof(float), comm_.memory(), resource_);
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), comm_.memory(), resource_, stream);
      saved.docs_ = detail::call_documents<Resource>(docs, comm_.memory(), resource_, stream);
    }, detail::documents_agreement(docs));
    pass_.forward(policy_, comm_, ws, *fork_, saved.docs_, args.q, args.k, args.v, args.o,
                  reinterpret_cast<float*>(saved.lse_.span().data()), stream);
    saved.views_.keep(args.q, args.k, args.v, args.o);
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
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), comm_.memory(), resource_, stream);
    });
    auto held = [&](int i) { return saved.views_.template get<T>(i); };
    pass_.backward(policy_, comm_, ws, *fork_, saved.docs_, held(0), held(1), held(2), held(3), args.dout,
                   reinterpret_cast<const float*>(saved.lse_.span().data()), args.dq, args.dk, args.dv, stream);
  }

  //! The options the policy gets (the scale resolved).
  const attention_options& options() const { return options_; }

 private:
  // The construction's checks; returns the partition.
  static seq_partition check(const Policy& policy, const Comm& comm, const seq_partition& seq,
                             const attention_shape& shape, const attention_options& options) {
    check_attention_shape(shape);
    SEQPAR_EXPECTS(shape.values() == shape.head_dim,
                   "shape.value_dim: expected head_dim = " << shape.head_dim << ", got " << shape.value_dim);
    (void)make_seq_partition(seq.tokens, seq.ranks, seq.strategy);
    SEQPAR_EXPECTS(seq.ranks == comm.size(),
                   "seq: partition over " << seq.ranks << " ranks; expected the communicator's " << comm.size());
    SEQPAR_EXPECTS(detail::starts_kernels<decltype(detail::launcher_of(policy))> || comm.memory() == memory_space::host,
                   "comm: device memory needs the calling file compiled by nvcc (the ring's element-wise steps "
                   "are CUDA)");
    detail::check_policy_serves(policy, comm.memory(), dtype_of<T>, shape.head_dim, options);
    return seq;
  }
  static std::int64_t fingerprint_of(const seq_partition& seq, const attention_shape& shape,
                                     const attention_options& options) {
    return fingerprint{}
        .add(seq.tokens).add(seq.ranks).add(static_cast<int>(seq.strategy))
        .add(shape.batch).add(shape.heads).add(shape.kv()).add(shape.head_dim)
        .add(static_cast<int>(dtype_of<T>)).add(detail::options_key(options))
        .value();
  }
  static std::string describe(const seq_partition& seq, const attention_shape& shape,
                              const attention_options& options) {
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens (" << to_string(seq.strategy) << "), "
                << to_string(dtype_of<T>) << ", causal = " << options.causal;
    return description.str();
  }

  void check_forward(const forward_args& args) const {
    check_views({"q", "k", "v", "o"}, args.q, args.k, args.v, args.o);
    detail::check_outputs_apart(args);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
    detail::check_call_documents(policy_, args.documents, seq_.tokens);
  }
  void check_backward(const context& saved, const backward_args& args) const {
    skeleton_.template check_stamp<T>(saved);
    check_views({"dq", "dk", "dv", "dout"}, args.dq, args.dk, args.dv, args.dout);
    detail::check_outputs_apart(args);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
  }

  int kv() const { return shape_.kv(); }
  std::size_t lse_floats() const { return pass_.lse_floats(comm_.rank()); }
  template <class A, class B, class C, class D>
  void check_views(const std::array<const char*, 4>& names, const tensor_view<A>& a, const tensor_view<B>& b,
                   const tensor_view<C>& c, const tensor_view<D>& d) const {
    const std::int64_t n = seq_.size(comm_.rank());
    const shape4 q_shape{shape_.batch, n, shape_.heads, shape_.head_dim},
        kv_shape{shape_.batch, n, kv(), shape_.head_dim};
    detail::check_extents(names[0], a, q_shape);
    detail::check_extents(names[1], b, kv_shape);
    detail::check_extents(names[2], c, kv_shape);
    detail::check_extents(names[3], d, q_shape);
  }

  Policy policy_;
  Comm& comm_;
  Resource resource_;
  seq_partition seq_;
  attention_shape shape_;
  attention_options options_;
  detail::ring_pass pass_;
  detail::layer_skeleton<Comm> skeleton_;
  std::unique_ptr<detail::stream_fork> fork_ = detail::stream_fork_for(policy_);
};

SEQPAR_KERNEL_NAMESPACE_END
