//! @file lasp_attention.hpp
//! lasp_attention<Policy, Comm, T>: a LASP linear-attention layer over sequence shards, with one
//! constant decay per head or data-dependent log-gates per token (scalar or per key dim). Forward
//! returns a context holding what backward needs (the fp32 state KV_r, and views of q, k, v and
//! the gates); backward takes it, as ulysses_attention's does.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/call.hpp>
#include <seqpar/detail/document_agreement.hpp>
#include <seqpar/detail/layer_skeleton.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/memory_resource.hpp>

#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! How a gated layer's log-gates are shaped: one per head and token (Mamba-2, gated RetNet), or one
//! per head, token and key dim (GLA).
enum class gate_kind {
  scalar,  //!< g [B, S_r, H, 1]
  vector,  //!< g [B, S_r, H, D]
};

//! Name of a gate kind ("scalar", "vector").
inline constexpr const char* to_string(gate_kind k) noexcept { return k == gate_kind::scalar ? "scalar" : "vector"; }

//! A LASP layer of one rank, planned once for fixed shapes and one element type T: q, k
//! [B, S_r, H, D]; v, o [B, S_r, H, E]; one decay lambda in (0, 1] per head (a
//! linear_attention_policy), or fp32 log-gates g <= 0 per token passed with each forward (a
//! gated_linear_attention_policy, the gate_kind fixed at construction; backward also returns dg).
//! It keeps only its primitive, policy and decays: each forward returns a `context`, so any number
//! of forwards may be in flight. Memory comes from `Resource` in the communicator's memory, or from
//! a workspace the call's arguments carry. Every call runs the checks can_run runs and, with
//! call_checks::group (the default), the group agrees before any rank writes an output or moves a
//! byte.
template <class Policy, communicator Comm, element T, memory_resource Resource = default_memory_resource>
  requires linear_attention_policy<Policy> || gated_linear_attention_policy<Policy>
class lasp_attention {
 public:
  //! True for a gated layer (its policy a gated_linear_attention_policy): forward takes log-gates.
  static constexpr bool gated = gated_linear_attention_policy<Policy>;
  using element_type = T;                          //!< the element type of every view
  using forward_args = linear_forward_args<T>;    //!< what forward takes (g: gated layers only)
  using backward_args = linear_backward_args<T>;  //!< what backward takes (dg: gated layers only)

  //! What forward saves for backward: the fp32 state KV_r of every token before this rank's chunk
  //! (owned), and views of the forward's q, k, v and gates (not copies: keep them alive and unchanged until
  //! backward, as autograd keeps saved tensors). Move-only.
  class context : public detail::layer_context {
   public:
    //! Bytes it owns (the state).
    std::size_t bytes() const { return state_.span().size(); }
    //! KV_r, the fp32 state [B, H, D, E] of every token before this rank's chunk.
    const_state_view state() const {
      return const_state_view(reinterpret_cast<const float*>(state_.span().data()), shape_[0], shape_[1], shape_[2],
                              shape_[3]);
    }

   private:
    friend class lasp_attention;
    owned_bytes<Resource> state_;
    detail::erased_views<4> inputs_;  // q, k, v, g
    document_layout docs_;
    std::array<std::int64_t, 4> shape_{};
  };

  //! The layer of rank comm.rank() over `seq` (contiguous shards of comm.size() ranks), with
  //! `shape` = {.batch = B, .heads = H, .head_dim = D, .value_dim = E}, on elements T
  //! (`seqpar::elements<T>`), with one decay per head. Collective: the ranks check the arguments
  //! and that every rank was built with the same shapes, and all throw if one fails.
  lasp_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, element_tag<T>,
                 std::vector<float> decay, lasp_strategy strategy = lasp_strategy::chain, Resource resource = {})
    requires(!gated)
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        decay_(std::move(decay)),
        ring_(agreed_ring(policy_, comm, seq, shape, [&] { check_decay(decay_, shape.heads); }, strategy)),
        skeleton_(comm, "lasp_attention", fingerprint_of(ring_, decay_, std::nullopt),
                  describe(seq, shape, strategy, std::nullopt)) {}

  //! The gated layer of rank comm.rank(): as above, the state decaying by diag(exp(g_t)) at every
  //! token, with log-gates shaped as `gates` says passed to each forward. Collective.
  lasp_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, element_tag<T>,
                 gate_kind gates, lasp_strategy strategy = lasp_strategy::chain, Resource resource = {})
    requires gated
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        gates_(gates),
        ring_(agreed_ring(
            policy_, comm, seq, shape,
            [&] {
              SEQPAR_EXPECTS(gates == gate_kind::scalar || gates == gate_kind::vector,
                             "gates: expected gate_kind::scalar or gate_kind::vector, got " << static_cast<int>(gates));
            },
            strategy)),
        skeleton_(comm, "lasp_attention", fingerprint_of(ring_, decay_, gates), describe(seq, shape, strategy, gates)) {}

  //! Bytes of the workspace a forward takes when its arguments carry one.
  std::size_t workspace_bytes(const forward_args&) const { return ring_.workspace_bytes(); }
  //! Bytes of the workspace a backward takes when its arguments carry one.
  std::size_t workspace_bytes(const backward_args&) const { return ring_.workspace_bytes(); }
  //! Bytes a context of this layer owns (one fp32 state).
  std::size_t context_bytes() const { return ring_.state_elements() * sizeof(float); }

  //! Whether forward(args, ...) would run, and if not why: the checks forward runs on this rank,
  //! but for the values of log-gates in device memory (reading them waits for a stream; a forward
  //! with call_checks::group reads them on its stream).
  call_status can_run(const forward_args& args) const {
    return call_status::of([&] { check_forward(args, shapes_only); });
  }
  //! Whether backward(saved, args, ...) would run, and if not why (device gates as can_run(args)).
  call_status can_run(const context& saved, const backward_args& args) const {
    return call_status::of([&] { check_backward(saved, args, shapes_only); });
  }

  //! o for this rank's tokens; returns the context backward needs. Gated layers take fp32
  //! log-gates args.g of this rank's tokens ([B, S_r, H, 1] or [B, S_r, H, D] as the layer's
  //! gate_kind says; finite, <= 0), and the context keeps a view of them. With args.documents the
  //! state resets at every document start (over the global sequence, the same on every rank), as a
  //! log-gate of minus infinity there would make it; the context keeps the documents.
  [[nodiscard]] context forward(const forward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    const document_layout& docs = detail::documents_of(args.documents);
    context saved;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    const auto s = ring_.shape();
    skeleton_.agree_on_call(exec, [&] {
      check_forward(args, exec);
      saved.state_ = owned_bytes<Resource>(context_bytes(), comm_.memory(), resource_);
      saved.shape_ = {s.batch, s.heads, s.head_dim, s.value_dim};
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), comm_.memory(), resource_, stream);
      saved.docs_ = docs;
    }, detail::documents_agreement(docs));
    // Checked and agreed above: the primitive repeats only its local checks.
    auto ring_args = ring_forward(args);
    ring_args.saved = state_of(saved), ring_args.workspace = ws;
    ring_.forward(policy_, comm_, ring_args, {.stream = stream, .checks = call_checks::local});
    saved.inputs_.keep(args.q, args.k, args.v, args.g);
    skeleton_.template stamp<T>(saved);
    return saved;
  }

  //! dq, dk, dv of this rank's tokens (and, gated, the log-gates' gradient args.dg: fp32, g's
  //! shape; a scalar gate's entry sums over the key dims) from dO and the context of a forward of
  //! this layer.
  void backward(const context& saved, const backward_args& args, const execution& exec) {
    const stream_t stream = exec.stream;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    skeleton_.agree_on_call(exec, [&] {
      check_backward(saved, args, exec);
      ws = detail::workspace_for(args.workspace, own, workspace_bytes(args), comm_.memory(), resource_, stream);
    });
    auto ring_args = ring_backward(saved, args);
    ring_args.workspace = ws;
    ring_.backward(policy_, comm_, ring_args, {.stream = stream, .checks = call_checks::local});
  }

  //! The primitive underneath.
  const linear_attention_ring& ring() const { return ring_; }

 private:
  // The ring, after every rank checked its arguments (and `check_decay`, the decays' or gates').
  template <class CheckDecay>
  static linear_attention_ring agreed_ring(const Policy& policy, Comm& comm, const seq_partition& seq,
                                           const attention_shape& shape, const CheckDecay& check_decay,
                                           lasp_strategy strategy) {
    return detail::layer_skeleton<Comm>::agreed(comm, [&] {
      SEQPAR_EXPECTS(seq.ranks == comm.size(), "seq: partition over " << seq.ranks << " ranks; expected the communicator's "
                                                                      << comm.size());
      linear_attention_ring ring(comm.rank(), seq, shape, strategy);
      check_decay();
      SEQPAR_EXPECTS(policy.memory() == comm.memory(), "policy: works on " << to_string(policy.memory())
                                                                           << " memory; expected the communicator's "
                                                                           << to_string(comm.memory()));
      return ring;
    });
  }

  static std::string describe(const seq_partition& seq, const attention_shape& shape, lasp_strategy strategy,
                              std::optional<gate_kind> gates) {
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens, " << to_string(dtype_of<T>) << ", "
                << to_string(strategy) << " strategy";
    if (gates) description << ", " << to_string(*gates) << " gates";
    return description.str();
  }

  static std::int64_t fingerprint_of(const linear_attention_ring& ring, const std::vector<float>& decay,
                                     std::optional<gate_kind> gates) {
    const auto s = ring.shape();
    fingerprint f;
    f.add(ring.seq().tokens).add(ring.seq().ranks).add(s.batch).add(s.heads).add(s.head_dim).add(s.value_dim);
    f.add(static_cast<int>(ring.strategy())).add(static_cast<int>(dtype_of<T>));
    f.add(gates ? static_cast<int>(*gates) + 1 : 0);
    for (float d : decay) f.add(static_cast<std::int64_t>(d * 16777216.0f));
    return f.value();
  }

  // Throws unless the gates' last extent is what the layer's gate kind says.
  void check_gate_kind(const char* name, std::int64_t width) const {
    const std::int64_t want = *gates_ == gate_kind::scalar ? 1 : ring_.shape().head_dim;
    SEQPAR_EXPECTS(width == want, name << ": last extent " << width << "; expected " << want << " for the layer's "
                                       << to_string(*gates_) << " gates");
  }
  // can_run's checks: no stream to wait for, so no device memory read.
  static constexpr execution shapes_only{.stream = nullptr, .checks = call_checks::local};
  void check_forward(const forward_args& args, const execution& exec) const {
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
    if constexpr (gated) check_gate_kind("g", args.g.head_dim());
    ring_.check_forward(policy_, comm_, ring_forward(args), exec);
  }
  void check_backward(const context& saved, const backward_args& args, const execution& exec) const {
    skeleton_.template check_stamp<T>(saved);
    detail::check_workspace(args.workspace, workspace_bytes(args), "workspace_bytes(args)");
    if constexpr (gated) check_gate_kind("dg", args.dg.head_dim());
    ring_.check_backward(policy_, comm_, ring_backward(saved, args), exec);
  }

  // The primitive's arguments of a call (without the state and workspace forward adds).
  lasp_ring_forward_args<T> ring_forward(const forward_args& a) const {
    return {.q = a.q, .k = a.k, .v = a.v, .decay = decay_, .g = a.g, .o = a.o, .documents = a.documents};
  }
  lasp_ring_backward_args<T> ring_backward(const context& saved, const backward_args& a) const {
    return {.q = saved.inputs_.template get<T>(0), .k = saved.inputs_.template get<T>(1),
            .v = saved.inputs_.template get<T>(2), .dout = a.dout, .decay = decay_, .g = gates_of(saved),
            .saved = saved.state(), .dq = a.dq, .dk = a.dk, .dv = a.dv, .dg = a.dg,
            .documents = saved.docs_.split() ? &saved.docs_ : nullptr};
  }

  static tensor_view<const float> gates_of(const context& c) { return c.inputs_.template get<float>(3); }
  state_view state_of(const context& c) const {
    return make_state(reinterpret_cast<float*>(c.state_.span().data()), c.shape_[0], c.shape_[1], c.shape_[2],
                      c.shape_[3]);
  }

  Policy policy_;
  Comm& comm_;
  Resource resource_;
  std::vector<float> decay_;         // constant decays
  std::optional<gate_kind> gates_;  // gated layers
  linear_attention_ring ring_;
  detail::layer_skeleton<Comm> skeleton_;
};

SEQPAR_NAMESPACE_END
