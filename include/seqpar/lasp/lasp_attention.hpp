//! @file lasp_attention.hpp
//! lasp_attention<Policy, Comm>: a LASP linear-attention layer over sequence shards, with one
//! constant decay per head or data-dependent log-gates per token (scalar or per key dim). Forward
//! returns a context holding what backward needs (the fp32 state KV_r, and views of q, k, v and
//! the gates); backward takes it, as ulysses_attention's does.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/context_stamp.hpp>
#include <seqpar/detail/document_agreement.hpp>
#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/memory_resource.hpp>

#include <optional>
#include <sstream>
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

//! A LASP layer of one rank, planned once for fixed shapes: q, k [B, S_r, H, D]; v, o
//! [B, S_r, H, E]; one decay lambda in (0, 1] per head (a linear_attention_policy), or fp32
//! log-gates g <= 0 per token passed with each forward (a gated_linear_attention_policy, the
//! gate_kind fixed at construction; backward also returns dg). It keeps only its primitive,
//! policy and decays: each forward returns a `context`, so any number of forwards may be in flight. Memory
//! comes from `Resource` in the communicator's memory, or from a workspace the caller passes.
//! Every call checks its arguments on every rank and, with call_checks::group (the default), the
//! group agrees before any rank writes an output or moves a byte.
template <class Policy, communicator Comm, memory_resource Resource = default_memory_resource>
  requires linear_attention_policy<Policy> || gated_linear_attention_policy<Policy>
class lasp_attention {
 public:
  //! True for a gated layer (its policy a gated_linear_attention_policy): forward takes log-gates.
  static constexpr bool gated = gated_linear_attention_policy<Policy>;

  //! What forward saves for backward: the fp32 state KV_r of every token before this rank's chunk
  //! (owned), and views of the forward's q, k, v and gates (not copies: keep them alive and unchanged until
  //! backward, as autograd keeps saved tensors). Move-only.
  class context {
   public:
    //! An empty context (what backward refuses).
    context() = default;
    //! True until a forward fills it.
    bool empty() const { return !stamp_.filled; }
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
    detail::context_stamp stamp_;
  };

  //! The layer of rank comm.rank() over `seq` (contiguous shards of comm.size() ranks), with
  //! `shape` = {.batch = B, .heads = H, .head_dim = D, .value_dim = E}. Collective: the ranks check
  //! the arguments and that every rank was built with the same shapes, and all throw if one fails.
  lasp_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape,
                 std::vector<float> decay, lasp_strategy strategy = lasp_strategy::chain, Resource resource = {})
    requires(!gated_linear_attention_policy<Policy>)
      : policy_(std::move(policy)),
        comm_(comm),
        resource_(resource),
        decay_(std::move(decay)),
        ring_(agreed_ring(policy_, comm, seq, shape, [&] { check_decay(decay_, shape.heads); }, strategy)) {
    agree_on_layer(seq, shape, strategy);
  }

  //! The gated layer of rank comm.rank(): as above, the state decaying by diag(exp(g_t)) at every
  //! token, with log-gates shaped as `gates` says passed to each forward. Collective.
  lasp_attention(Policy policy, Comm& comm, const seq_partition& seq, const attention_shape& shape, gate_kind gates,
                 lasp_strategy strategy = lasp_strategy::chain, Resource resource = {})
    requires gated_linear_attention_policy<Policy>
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
            strategy)) {
    agree_on_layer(seq, shape, strategy);
  }

  //! Bytes of the workspace forward and backward need when the caller passes one.
  std::size_t workspace_bytes() const { return ring_.workspace_bytes(); }
  //! Bytes a context of this layer owns (one fp32 state).
  std::size_t context_bytes() const { return ring_.state_elements() * sizeof(float); }

  //! o for this rank's tokens; returns the context backward needs. The workspace comes from the
  //! layer's resource.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                stream_t stream = nullptr)
    requires(!gated_linear_attention_policy<Policy>)
  {
    return forward_impl(q, k, v, o, document_layout{}, std::nullopt, stream);
  }
  //! As forward above, for a packed sequence: the state resets at every document start of `docs`
  //! (over the global sequence, the same on every rank). The context keeps the documents.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                const document_layout& docs, stream_t stream = nullptr)
    requires(!gated_linear_attention_policy<Policy>)
  {
    return forward_impl(q, k, v, o, docs, std::nullopt, stream);
  }
  //! As forward above, with the workspace the caller passes (workspace_bytes(), 16-byte aligned).
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                                std::span<std::byte> workspace, stream_t stream = nullptr)
    requires(!gated_linear_attention_policy<Policy>)
  {
    return forward_impl(q, k, v, o, document_layout{}, std::optional(workspace), stream);
  }

  //! Gated: o for this rank's tokens, with fp32 log-gates g of this rank's tokens ([B, S_r, H, 1]
  //! or [B, S_r, H, D] as the layer's gate_kind says; finite, <= 0). The context keeps a view of g.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<const float> g,
                                tensor_view<O> o, stream_t stream = nullptr)
    requires gated_linear_attention_policy<Policy>
  {
    return forward_impl(q, k, v, o, document_layout{}, std::nullopt, stream, g);
  }
  //! Gated, over packed documents `docs`: the state resets at every document start, as a log-gate
  //! of minus infinity there would make it.
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<const float> g,
                                tensor_view<O> o, const document_layout& docs, stream_t stream = nullptr)
    requires gated_linear_attention_policy<Policy>
  {
    return forward_impl(q, k, v, o, docs, std::nullopt, stream, g);
  }
  //! Gated, with the workspace the caller passes (workspace_bytes(), 16-byte aligned).
  template <class Q, class K, class V, class O>
  [[nodiscard]] context forward(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<const float> g,
                                tensor_view<O> o, std::span<std::byte> workspace, stream_t stream = nullptr)
    requires gated_linear_attention_policy<Policy>
  {
    return forward_impl(q, k, v, o, document_layout{}, std::optional(workspace), stream, g);
  }

  //! dq, dk, dv of this rank's tokens from dO and the context of a forward of this layer.
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                stream_t stream = nullptr)
    requires(!gated_linear_attention_policy<Policy>)
  {
    backward_impl(saved, dout, dq, dk, dv, tensor_view<float>(), std::nullopt, stream);
  }
  //! As backward above, with the workspace the caller passes (workspace_bytes(), 16-byte aligned).
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                std::span<std::byte> workspace, stream_t stream = nullptr)
    requires(!gated_linear_attention_policy<Policy>)
  {
    backward_impl(saved, dout, dq, dk, dv, tensor_view<float>(), std::optional(workspace), stream);
  }
  //! Gated: dq, dk, dv and the log-gates' gradient dg (fp32, g's shape; a scalar gate's entry sums
  //! over the key dims) from dO and the context of a forward of this layer.
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                tensor_view<float> dg, stream_t stream = nullptr)
    requires gated_linear_attention_policy<Policy>
  {
    backward_impl(saved, dout, dq, dk, dv, dg, std::nullopt, stream);
  }
  //! Gated, with the workspace the caller passes (workspace_bytes(), 16-byte aligned).
  template <class DO, class G>
  void backward(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                tensor_view<float> dg, std::span<std::byte> workspace, stream_t stream = nullptr)
    requires gated_linear_attention_policy<Policy>
  {
    backward_impl(saved, dout, dq, dk, dv, dg, std::optional(workspace), stream);
  }

  //! Sets what each call checks: call_checks::group (the default) or call_checks::local.
  void set_call_checks(call_checks checks) { checks_ = checks; }
  //! What each call checks.
  call_checks checks() const { return checks_; }
  //! The primitive underneath.
  const linear_attention_ring& ring() const { return ring_; }

 private:
  // The ring, after every rank checked its arguments (and `check_decay`, the decays' or gates').
  template <class CheckDecay>
  static linear_attention_ring agreed_ring(const Policy& policy, Comm& comm, const seq_partition& seq,
                                           const attention_shape& shape, const CheckDecay& check_decay,
                                           lasp_strategy strategy) {
    std::optional<linear_attention_ring> ring;
    agree_on_arguments(comm, call_checks::group, nullptr, [&] {
      SEQPAR_EXPECTS(seq.ranks == comm.size(), "seq: partition over " << seq.ranks << " ranks; expected the communicator's "
                                                                      << comm.size());
      ring.emplace(comm.rank(), seq, shape, strategy);
      check_decay();
      SEQPAR_EXPECTS(policy.memory() == comm.memory(), "policy: works on " << to_string(policy.memory())
                                                                           << " memory; expected the communicator's "
                                                                           << to_string(comm.memory()));
    });
    return std::move(*ring);
  }

  // Every rank built the same layer.
  void agree_on_layer(const seq_partition& seq, const attention_shape& shape, lasp_strategy strategy) {
    std::ostringstream description;
    description << "shape " << shape << ", " << seq.tokens << " tokens, " << to_string(strategy) << " strategy";
    if (gates_) description << ", " << to_string(*gates_) << " gates";
    agree_on_fingerprint(comm_, fingerprint_of(), "lasp_attention", description.str());
  }

  std::int64_t fingerprint_of() const {
    const auto s = ring_.shape();
    fingerprint f;
    f.add(ring_.seq().tokens).add(ring_.seq().ranks).add(s.batch).add(s.heads).add(s.head_dim).add(s.value_dim);
    f.add(static_cast<int>(ring_.strategy()));
    f.add(gates_ ? static_cast<int>(*gates_) + 1 : 0);
    for (float d : decay_) f.add(static_cast<std::int64_t>(d * 16777216.0f));
    return f.value();
  }

  // Throws unless the gates' last extent is what the layer's gate kind says.
  void check_gate_kind(const char* name, std::int64_t width) const {
    const std::int64_t want = *gates_ == gate_kind::scalar ? 1 : ring_.shape().head_dim;
    SEQPAR_EXPECTS(width == want, name << ": last extent " << width << "; expected " << want << " for the layer's "
                                       << to_string(*gates_) << " gates");
  }

  template <class Q, class K, class V, class O>
  context forward_impl(tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> o,
                       const document_layout& docs, const detail::optional_workspace& workspace, stream_t stream,
                       tensor_view<const float> g = {}) {
    using T = std::remove_const_t<Q>;
    context saved;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    const auto s = ring_.shape();
    agree_on_arguments(comm_, checks_, stream, [&] {
      detail::check_workspace(workspace, workspace_bytes(), "workspace_bytes()");
      saved.state_ = owned_bytes<Resource>(context_bytes(), comm_.memory(), resource_);
      saved.shape_ = {s.batch, s.heads, s.head_dim, s.value_dim};
      ws = detail::workspace_for(workspace, own, workspace_bytes(), comm_.memory(), resource_, stream);
      if constexpr (gated) {
        check_gate_kind("g", g.head_dim());
        ring_.check_forward(policy_, comm_, q, k, v, g, o, state_of(saved), ws, stream);
      } else {
        ring_.check_forward(policy_, comm_, q, k, v, decay_, o, state_of(saved), ws);
      }
      ring_.check_documents(docs);
      saved.docs_ = docs;
    }, detail::documents_agreement(docs));
    // Checked and agreed above: the primitive repeats only its local checks.
    if constexpr (gated)
      ring_.forward(policy_, comm_, q, k, v, g, docs, o, state_of(saved), ws, stream, call_checks::local);
    else
      ring_.forward(policy_, comm_, q, k, v, decay_, docs, o, state_of(saved), ws, stream, call_checks::local);
    saved.inputs_.keep(q, k, v, g);
    saved.stamp_.set(fingerprint_of(), dtype_of<T>);
    return saved;
  }

  template <class DO, class G>
  void backward_impl(const context& saved, tensor_view<DO> dout, tensor_view<G> dq, tensor_view<G> dk,
                     tensor_view<G> dv, tensor_view<float> dg, const detail::optional_workspace& workspace,
                     stream_t stream) {
    using T = std::remove_const_t<DO>;
    owned_bytes<Resource> own;
    std::span<std::byte> ws;
    const auto q = saved.inputs_.template get<T>(0), k = saved.inputs_.template get<T>(1),
               v = saved.inputs_.template get<T>(2);
    const auto g = saved.inputs_.template get<float>(3);
    agree_on_arguments(comm_, checks_, stream, [&] {
      saved.stamp_.check(fingerprint_of(), dtype_of<T>);
      detail::check_workspace(workspace, workspace_bytes(), "workspace_bytes()");
      ws = detail::workspace_for(workspace, own, workspace_bytes(), comm_.memory(), resource_, stream);
      if constexpr (gated) {
        check_gate_kind("dg", dg.head_dim());
        ring_.check_backward(policy_, comm_, q, k, v, dout, g, saved.state(), dq, dk, dv, dg, ws, stream);
      } else {
        ring_.check_backward(policy_, comm_, q, k, v, dout, decay_, saved.state(), dq, dk, dv, ws);
      }
    });
    if constexpr (gated)
      ring_.backward(policy_, comm_, q, k, v, dout, g, saved.docs_, saved.state(), dq, dk, dv, dg, ws, stream,
                     call_checks::local);
    else
      ring_.backward(policy_, comm_, q, k, v, dout, decay_, saved.docs_, saved.state(), dq, dk, dv, ws, stream,
                     call_checks::local);
  }

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
  call_checks checks_ = call_checks::group;
};

SEQPAR_NAMESPACE_END
