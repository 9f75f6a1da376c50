//! @file linear_attention_ring.hpp
//! linear_attention_ring: LASP forward and backward. Ranks pass a small fp32 state along the
//! sequence (chain), or all-gather every rank's contribution (LASP-2); the chunk-local work is
//! the policy's. Traffic per rank does not depend on the sequence length.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/document_agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/detail/lasp_decay.hpp>
#include <seqpar/detail/stream_fork.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/error.hpp>
#include <seqpar/policy/linear_attention_policy.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/shard.hpp>
#include <seqpar/tensor.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

SEQPAR_NAMESPACE_BEGIN

//! How the states travel.
enum class lasp_strategy {
  chain,       //!< LASP: rank r receives KV_r from r-1 and sends KV_{r+1} to r+1 (P-1 hops)
  all_gather,  //!< LASP-2: all ranks all-gather their contributions, then each sums a decayed prefix
};

//! Name of a strategy ("chain", "all_gather").
inline constexpr const char* to_string(lasp_strategy s) noexcept { return s == lasp_strategy::chain ? "chain" : "all_gather"; }

namespace detail {
//! The element type of a LASP forward's views: q, k, v and a writable o share it.
template <class Q, class K, class V, class O>
struct lasp_forward_views {
  using element = std::remove_const_t<Q>;  //!< the shared element type
  static_assert(std::is_same_v<std::remove_const_t<K>, element> && std::is_same_v<std::remove_const_t<V>, element> &&
                    std::is_same_v<O, element>,
                "linear_attention_ring::forward: q, k, v and o must share one element type, and o must be writable");
};
//! The element type of a LASP backward's views: all share it, the gradients writable.
template <class Q, class K, class V, class DO, class G>
struct lasp_backward_views {
  using element = std::remove_const_t<Q>;  //!< the shared element type
  static_assert(std::is_same_v<std::remove_const_t<K>, element> && std::is_same_v<std::remove_const_t<V>, element> &&
                    std::is_same_v<std::remove_const_t<DO>, element> && std::is_same_v<G, element>,
                "linear_attention_ring::backward: all views must share one element type, and the gradients must be "
                "writable");
};
}  // namespace detail

//! The LASP primitive for one rank and fixed shapes: q, k [B, C, H, D] and v, o [B, C, H, E] with
//! C = S_r tokens of this rank's chunk, states fp32 [B, H, D, E]. The state decays by one constant
//! lambda per head (a linear_attention_policy) or by per-token log-gates passed with each call (a
//! gated_linear_attention_policy; backward then also gives the gates' gradient). With packed documents the state
//! resets at every document start: the incoming state reaches only the tokens before this rank's
//! first document start, and what a rank passes on holds only its last document's tokens when that
//! document continues past it (each piece of a document on the rank is its own intra-chunk call).
//! Forward writes this rank's output
//! and keeps the incoming state KV_r (needed by backward) in a state the caller owns; backward uses
//! it without communicating it again. Workspace: workspace_bytes(); nothing else is allocated
//! (on a GPU, one side stream and two events are made on first use and kept). Every call checks
//! its arguments on every rank and, with call_checks::group (the default), the group agrees before
//! any rank writes an output or moves a byte.
class linear_attention_ring {
 public:
  //! The primitive of rank `rank` over `seq` (contiguous shards) for q, k [B, S_r, H, D] and v, o
  //! [B, S_r, H, E], with `shape` = {.batch = B, .heads = H, .head_dim = D, .value_dim = E}.
  linear_attention_ring(int rank, const seq_partition& seq, const attention_shape& shape,
                        lasp_strategy strategy = lasp_strategy::chain)
      : rank_(rank), seq_(seq), batch_(shape.batch), heads_(shape.heads), dk_(shape.head_dim), dv_(shape.values()),
        strategy_(strategy), fork_(std::make_unique<detail::stream_fork>()) {
    check_attention_shape(shape);
    SEQPAR_EXPECTS(shape.kv() == shape.heads, "shape.kv_heads: LASP pairs every query head with its own key/value "
                                              "head; expected kv_heads = heads = " << shape.heads << ", got "
                                                                                   << shape.kv_heads);
    (void)make_seq_partition(seq.tokens, seq.ranks, seq.strategy);  // a hand-built partition is checked too
    SEQPAR_EXPECTS(rank >= 0 && rank < seq.ranks, "rank: expected a rank in [0, " << seq.ranks << "), got " << rank);
    SEQPAR_EXPECTS(seq.strategy == shard_strategy::contiguous,
                   "seq: LASP passes states along the sequence and needs contiguous shards, got "
                       << to_string(seq.strategy));
    SEQPAR_EXPECTS(strategy == lasp_strategy::chain || strategy == lasp_strategy::all_gather,
                   "strategy: expected lasp_strategy::chain or lasp_strategy::all_gather, got " << static_cast<int>(strategy));
  }

  //! Elements of one state, B * H * D * E.
  std::size_t state_elements() const { return static_cast<std::size_t>(batch_ * heads_ * dk_ * dv_); }
  //! Workspace bytes forward and backward need, with constant decays or gates: three states
  //! (chain), or P + 2 (all-gather), the P + 1 contributions each with a chunk's log-decay [B, H, D].
  std::size_t workspace_bytes() const {
    const std::size_t n = state_elements(), w = n + detail::gate_decay::extra_floats(batch_, heads_, dk_);
    const std::size_t floats = strategy_ == lasp_strategy::chain ? w + 2 * n : w * (seq_.ranks + 1) + n;
    return floats * sizeof(float);
  }
  //! This rank's chunk length C = S_r.
  std::int64_t chunk() const { return seq_.size(rank_); }
  //! The strategy.
  lasp_strategy strategy() const { return strategy_; }
  //! The shape it was made for.
  attention_shape shape() const {
    return {.batch = batch_, .heads = static_cast<int>(heads_), .head_dim = dk_, .value_dim = dv_};
  }
  //! The sequence partition.
  const seq_partition& seq() const { return seq_; }

  //! LASP forward: o = this rank's outputs; `saved` receives KV_r, the state of all earlier tokens.
  template <linear_attention_policy Policy, communicator Comm, class Q, class K, class V, class O>
  void forward(const Policy& policy, Comm& comm, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
               std::span<const float> decay, tensor_view<O> o, state_view saved, std::span<std::byte> workspace,
               stream_t stream = nullptr, call_checks checks = call_checks::group) {
    forward(policy, comm, q, k, v, decay, document_layout{}, o, saved, workspace, stream, checks);
  }

  //! As forward above, over packed documents `docs` (the global layout, the same on every rank):
  //! `saved` receives the state of the earlier tokens of this rank's first document.
  template <linear_attention_policy Policy, communicator Comm, class Q, class K, class V, class O>
  void forward(const Policy& policy, Comm& comm, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
               std::span<const float> decay, const document_layout& docs, tensor_view<O> o, state_view saved,
               std::span<std::byte> workspace, stream_t stream = nullptr, call_checks checks = call_checks::group) {
    using T = typename detail::lasp_forward_views<Q, K, V, O>::element;
    agree(comm, checks, stream, docs, [&] { check_forward(policy, comm, q, k, v, decay, o, saved, workspace); });
    run_forward(policy, comm, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                detail::constant_decay{decay}, docs, o, saved, workspace, stream);
  }

  //! LASP backward: dq, dk, dv of this rank's chunk from dout and the `saved` KV_r of forward.
  template <linear_attention_policy Policy, communicator Comm, class Q, class K, class V, class DO, class G>
  void backward(const Policy& policy, Comm& comm, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
                tensor_view<DO> dout, std::span<const float> decay, const_state_view saved, tensor_view<G> dq,
                tensor_view<G> dk, tensor_view<G> dv, std::span<std::byte> workspace, stream_t stream = nullptr,
                call_checks checks = call_checks::group) {
    backward(policy, comm, q, k, v, dout, decay, document_layout{}, saved, dq, dk, dv, workspace, stream, checks);
  }

  //! As backward above, over the packed documents `docs` of the forward.
  template <linear_attention_policy Policy, communicator Comm, class Q, class K, class V, class DO, class G>
  void backward(const Policy& policy, Comm& comm, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
                tensor_view<DO> dout, std::span<const float> decay, const document_layout& docs,
                const_state_view saved, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv,
                std::span<std::byte> workspace, stream_t stream = nullptr, call_checks checks = call_checks::group) {
    using T = typename detail::lasp_backward_views<Q, K, V, DO, G>::element;
    agree(comm, checks, stream, docs,
          [&] { check_backward(policy, comm, q, k, v, dout, decay, saved, dq, dk, dv, workspace); });
    run_backward(policy, comm, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                 tensor_view<const T>(dout), detail::constant_decay{decay}, docs, saved, dq, dk, dv, workspace, stream);
  }

  //! Gated LASP forward (a gated_linear_attention_policy): as forward above, the state decaying
  //! by diag(exp(g_t)) at token t. g: fp32 log-gates of this rank's tokens, [B, S_r, H, 1] (one
  //! per head and token) or [B, S_r, H, D] (one per key dim), finite and <= 0. `saved` receives
  //! the state of the earlier tokens (of this rank's first document, with `docs`).
  template <gated_linear_attention_policy Policy, communicator Comm, class Q, class K, class V, class O>
  void forward(const Policy& policy, Comm& comm, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
               tensor_view<const float> g, const document_layout& docs, tensor_view<O> o, state_view saved,
               std::span<std::byte> workspace, stream_t stream = nullptr, call_checks checks = call_checks::group) {
    using T = typename detail::lasp_forward_views<Q, K, V, O>::element;
    agree(comm, checks, stream, docs, [&] { check_forward(policy, comm, q, k, v, g, o, saved, workspace, stream); });
    run_forward(policy, comm, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                detail::gate_decay{g, dk_}, docs, o, saved, workspace, stream);
  }

  //! Gated LASP backward: dq, dk, dv and the log-gates' gradient dg (fp32, g's shape; a scalar
  //! gate's entry sums over the key dims) from dout, the forward's g and its `saved` state.
  template <gated_linear_attention_policy Policy, communicator Comm, class Q, class K, class V, class DO, class G>
  void backward(const Policy& policy, Comm& comm, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v,
                tensor_view<DO> dout, tensor_view<const float> g, const document_layout& docs,
                const_state_view saved, tensor_view<G> dq, tensor_view<G> dk, tensor_view<G> dv, tensor_view<float> dg,
                std::span<std::byte> workspace, stream_t stream = nullptr, call_checks checks = call_checks::group) {
    using T = typename detail::lasp_backward_views<Q, K, V, DO, G>::element;
    agree(comm, checks, stream, docs,
          [&] { check_backward(policy, comm, q, k, v, dout, g, saved, dq, dk, dv, dg, workspace, stream); });
    run_backward(policy, comm, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                 tensor_view<const T>(dout), detail::gate_decay{g, dk_, dg}, docs, saved, dq, dk, dv, workspace,
                 stream);
  }

  //! The checks forward makes on this rank (it throws what forward would), without running it:
  //! for layers that agree on all their arguments in one step.
  template <class Policy, class Comm, class Q, class K, class V, class O>
  void check_forward(const Policy& policy, const Comm& comm, const tensor_view<Q>& q, const tensor_view<K>& k,
                     const tensor_view<V>& v, std::span<const float> decay, const tensor_view<O>& o,
                     const state_view& saved, std::span<std::byte> workspace) const {
    check_call<std::remove_const_t<Q>>(policy, comm, workspace);
    check_decay(decay, heads_);
    check_views({"q", "k", "v", "o"}, q, k, v, o);
    check_state("saved", saved);
  }
  //! The checks of a call's documents: the default layout, or one over the partition's tokens
  //! with at least one token on every rank.
  void check_documents(const document_layout& docs) const {
    if (!docs.split()) return;
    SEQPAR_EXPECTS(docs.tokens() == seq_.tokens,
                   "docs: the layout covers " << docs.tokens() << " tokens; expected the partition's " << seq_.tokens);
    SEQPAR_EXPECTS(seq_.tokens >= seq_.ranks, "docs: packed documents need a token on every rank; "
                                                  << seq_.tokens << " tokens over " << seq_.ranks << " ranks");
  }
  //! The checks backward makes on this rank, without running it.
  template <class Policy, class Comm, class Q, class K, class V, class DO, class G>
  void check_backward(const Policy& policy, const Comm& comm, const tensor_view<Q>& q, const tensor_view<K>& k,
                      const tensor_view<V>& v, const tensor_view<DO>& dout, std::span<const float> decay,
                      const const_state_view& saved, const tensor_view<G>& dq, const tensor_view<G>& dk,
                      const tensor_view<G>& dv, std::span<std::byte> workspace) const {
    check_call<std::remove_const_t<Q>>(policy, comm, workspace);
    check_decay(decay, heads_);
    check_views({"q", "k", "v", "dout"}, q, k, v, dout);
    check_views({"dq", "dk", "dv", "dout"}, dq, dk, dv, dout);
    check_state("saved", saved);
  }

  //! The checks the gated forward makes on this rank, without running it (gates in host memory
  //! are read; a device policy may check its memory's through check_gates(g, stream)).
  template <class Policy, class Comm, class Q, class K, class V, class O>
  void check_forward(const Policy& policy, const Comm& comm, const tensor_view<Q>& q, const tensor_view<K>& k,
                     const tensor_view<V>& v, const tensor_view<const float>& g, const tensor_view<O>& o,
                     const state_view& saved, std::span<std::byte> workspace, stream_t stream) const {
    check_call<std::remove_const_t<Q>>(policy, comm, workspace);
    check_views({"q", "k", "v", "o"}, q, k, v, o);
    check_gates(policy, g, comm.memory(), stream);
    check_state("saved", saved);
  }
  //! The checks the gated backward makes on this rank, without running it.
  template <class Policy, class Comm, class Q, class K, class V, class DO, class G>
  void check_backward(const Policy& policy, const Comm& comm, const tensor_view<Q>& q, const tensor_view<K>& k,
                      const tensor_view<V>& v, const tensor_view<DO>& dout, const tensor_view<const float>& g,
                      const const_state_view& saved, const tensor_view<G>& dq, const tensor_view<G>& dk,
                      const tensor_view<G>& dv, const tensor_view<float>& dg, std::span<std::byte> workspace,
                      stream_t stream) const {
    check_call<std::remove_const_t<Q>>(policy, comm, workspace);
    check_views({"q", "k", "v", "dout"}, q, k, v, dout);
    check_views({"dq", "dk", "dv", "dout"}, dq, dk, dv, dout);
    check_gates(policy, g, comm.memory(), stream);
    detail::check_extents("dg", dg, {batch_, chunk(), heads_, g.head_dim()});
    check_state("saved", saved);
  }

 private:
  // Runs `check` and the documents' checks on this rank, and the group agrees (with
  // call_checks::group) before anything is written or sent.
  template <class Comm, class Check>
  void agree(Comm& comm, call_checks checks, stream_t stream, const document_layout& docs, const Check& check) const {
    agree_on_arguments(
        comm, checks, stream,
        [&] {
          check();
          check_documents(docs);
        },
        detail::documents_agreement(docs));
  }

  // What this rank holds of the documents: its pieces (one, the whole chunk, without documents),
  // whether the first continues a document from earlier ranks and the last one past this rank,
  // and the ranks where those documents begin and end (what LASP-2 folds over).
  struct pieces_plan {
    std::vector<document_piece> pieces;
    bool first_continues = true, last_continues = true;
    int first_rank = 0, last_rank = 0;
  };
  pieces_plan plan_of(const document_layout& docs) const {
    pieces_plan plan;
    const int P = seq_.ranks;
    plan.last_rank = P - 1;
    if (!docs.split()) {
      plan.pieces = {whole_chunk()};
      return plan;
    }
    plan.pieces = documents_of_rank(docs, seq_, rank_).pieces;
    const document_piece &first = plan.pieces.front(), &last = plan.pieces.back();
    plan.first_continues = first.global > docs.begin(first.document);
    plan.last_continues = last.global + last.length < docs.end(last.document);
    auto owner = [&](std::int64_t token) {
      int r = 0;
      while (r + 1 < P && seq_.offset(r + 1) <= token) ++r;
      return r;
    };
    plan.first_rank = owner(docs.begin(first.document));
    plan.last_rank = owner(docs.end(last.document) - 1);
    return plan;
  }
  // The rows of a piece.
  template <class T>
  static tensor_view<T> rows(const tensor_view<T>& v, const document_piece& piece) {
    return detail::rows(v, piece.local, piece.length);
  }
  // `scratch` zeroed on `stream`, as a state: the missing side of an inter-chunk term.
  const_state_view zero(const state_view& scratch, memory_space where, stream_t stream) const {
    detail::zero_state(scratch, where, stream);
    return scratch;
  }
  state_view state(float* p) const { return make_state(p, batch_, heads_, dk_, dv_); }
  std::span<const float> span_of(const state_view& s) const { return {s.data_handle(), state_elements()}; }
  std::span<float> span_if(bool active, const state_view& s) const {
    return active ? std::span<float>(s.data_handle(), state_elements()) : std::span<float>();
  }

  // Runs forward on checked arguments, the state decaying as `decay` says.
  template <class Policy, class Comm, class T, class Decay>
  void run_forward(const Policy& policy, Comm& comm, const tensor_view<const T>& cq, const tensor_view<const T>& ck,
                   const tensor_view<const T>& cv, const Decay& decay, const document_layout& docs,
                   const tensor_view<T>& o, state_view saved, std::span<std::byte> workspace, stream_t stream) {
    const memory_space where = comm.memory();
    const pieces_plan plan = plan_of(docs);
    float* ws = reinterpret_cast<float*>(workspace.data());
    // A contribution is m, then (gated) the log of this chunk's decay, which an all-gather carries.
    const std::size_t n = state_elements(), w = n + decay.extra_floats(batch_, heads_, dk_);
    const state_view m = state(ws), next = state(ws + w);
    float *const total = ws + n, *const gathered = ws + w;
    // Fork first, so the side stream's state work does not queue behind the intra-chunk product;
    // that product needs no message and runs on `stream` meanwhile.
    const stream_t side = fork_->fork(where, stream);
    const document_piece& last = plan.pieces.back();
    if constexpr (std::same_as<Decay, detail::constant_decay> && fuses_forward_state<Policy>) {
      // the last piece's state first, so the chain starts early
      policy.forward_intra_with_state(rows(cq, last), rows(ck, last), rows(cv, last), decay.lambda, rows(o, last), m,
                                      stream, side);
      for (std::size_t i = 0; i + 1 < plan.pieces.size(); ++i) {
        const document_piece& piece = plan.pieces[i];
        policy.forward_intra(rows(cq, piece), rows(ck, piece), rows(cv, piece), decay.lambda, rows(o, piece), stream);
      }
    } else {
      for (const document_piece& piece : plan.pieces)
        policy.forward_intra(rows(cq, piece), rows(ck, piece), rows(cv, piece), decay.of(piece), rows(o, piece),
                             stream);
      policy.state_contribution(rows(ck, last), rows(cv, last), decay.of(last), m, side);
    }
    decay.chunk_decay(policy, whole_chunk(), total, side);
    // The state passed on: the incoming one decayed through the chunk when one document runs
    // through it, plus the last piece's tokens.
    const bool carry = rank_ > 0 && plan.pieces.size() == 1 && plan.first_continues;
    if (strategy_ == lasp_strategy::chain) {
      if (rank_ == 0) detail::zero_state(saved, where, side);
      for (int s = 0; s + 1 < seq_.ranks; ++s) {  // hop s: rank s sends KV_{s+1} to rank s+1
        if (rank_ == s)
          decay.update(policy, total, chunk(), carry ? const_state_view(saved) : const_state_view(), m, next, side);
        comm.template neighbor_exchange<float>(span_if(rank_ == s, next), rank_ == s ? s + 1 : no_rank,
                                               span_if(rank_ == s + 1, saved), rank_ == s + 1 ? s : no_rank, side);
      }
    } else {
      comm.all_gather(std::span<const float>(ws, w), std::span<float>(gathered, w * seq_.ranks), side);
      prefix_of_gathered(policy, decay, gathered, w, saved, plan.first_rank, where, side, /*forward=*/true);
    }
    fork_->join(where, stream);
    const document_piece& first = plan.pieces.front();
    if (rank_ > 0 && plan.first_continues)
      policy.forward_inter(rows(cq, first), decay.of(first), saved, rows(o, first), stream);
  }

  // Runs backward on checked arguments, the state decaying as `decay` says.
  template <class Policy, class Comm, class T, class Decay, class G>
  void run_backward(const Policy& policy, Comm& comm, const tensor_view<const T>& cq, const tensor_view<const T>& ck,
                    const tensor_view<const T>& cv, const tensor_view<const T>& cdo, const Decay& decay,
                    const document_layout& docs, const_state_view saved, const tensor_view<G>& dq,
                    const tensor_view<G>& dk, const tensor_view<G>& dv, std::span<std::byte> workspace,
                    stream_t stream) {
    const memory_space where = comm.memory();
    const pieces_plan plan = plan_of(docs);
    const document_piece &first = plan.pieces.front(), &last = plan.pieces.back();
    const bool single = plan.pieces.size() == 1;

    float* ws = reinterpret_cast<float*>(workspace.data());
    const std::size_t n = state_elements(), w = n + decay.extra_floats(batch_, heads_, dk_);
    const state_view gq = state(ws), g_in = state(ws + w), g_out = state(ws + w + n);
    float *const total = ws + n, *const gathered = ws + w;
    const stream_t side = fork_->fork(where, stream);  // before the intra-chunk work, as in forward
    for (const document_piece& piece : plan.pieces)
      decay.backward_intra(policy, piece, rows(cq, piece), rows(ck, piece), rows(cv, piece), rows(cdo, piece),
                           rows(dq, piece), rows(dk, piece), rows(dv, piece), stream);
    // gq: the gradient of the incoming state from the first piece, the only one that reads it.
    if (plan.first_continues)
      policy.backward_state_contribution(rows(cq, first), rows(cdo, first), decay.of(first), gq, side);
    else
      detail::zero_state(gq, where, side);
    decay.chunk_decay(policy, whole_chunk(), total, side);
    state_view g = g_in;  // G_r: gradient of the state this rank sent forward
    if (strategy_ == lasp_strategy::chain) {
      const int last_rank = seq_.ranks - 1;
      if (rank_ == last_rank) detail::zero_state(g_in, where, side);
      for (int s = last_rank; s > 0; --s) {  // hop s: rank s sends G_{s-1} to rank s-1
        if (rank_ == s)
          decay.update(policy, total, chunk(),
                       single && plan.first_continues ? const_state_view(g_in) : const_state_view(), gq, g_out, side);
        comm.template neighbor_exchange<float>(span_if(rank_ == s, g_out), rank_ == s ? s - 1 : no_rank,
                                               span_if(rank_ == s - 1, g_in), rank_ == s - 1 ? s : no_rank, side);
      }
    } else {
      comm.all_gather(std::span<const float>(ws, w), std::span<float>(gathered, w * seq_.ranks), side);
      g = state(ws + w * (seq_.ranks + 1));
      prefix_of_gathered(policy, decay, gathered, w, g, plan.last_rank, where, side, /*forward=*/false);
    }
    fork_->join(where, stream);
    if (single) {
      decay.backward_inter(policy, first, cq, ck, cv, cdo, plan.first_continues ? saved : zero(gq, where, stream),
                           plan.last_continues ? const_state_view(g) : zero(gq, where, stream), dq, dk, dv, stream);
      return;
    }
    // Several pieces: the incoming state reaches the first, the state passed on holds the last.
    if (plan.first_continues)
      decay.backward_inter(policy, first, rows(cq, first), rows(ck, first), rows(cv, first), rows(cdo, first), saved,
                           zero(gq, where, stream), rows(dq, first), rows(dk, first), rows(dv, first), stream);
    if (plan.last_continues)
      decay.backward_inter(policy, last, rows(cq, last), rows(ck, last), rows(cv, last), rows(cdo, last),
                           zero(gq, where, stream), g, rows(dq, last), rows(dk, last), rows(dv, last), stream);
  }

  // This rank's whole chunk as one piece.
  document_piece whole_chunk() const { return {0, 0, seq_.offset(rank_), chunk()}; }

  // LASP-2: the decayed sum of the gathered contributions (w floats apart) of earlier ranks
  // (forward: KV_r = sum_{j<r} D_{j+1} ... D_{r-1} m_j) or of later ranks (backward: G_r =
  // sum_{j>r} D_{r+1} ... D_{j-1} g_j), D_j the decay through rank j's chunk, folded one
  // contribution at a time.
  template <class Policy, class Decay>
  void prefix_of_gathered(const Policy& policy, const Decay& decay, float* gathered, std::size_t w, state_view out,
                          int bound, memory_space where, stream_t side, bool forward) const {
    const std::size_t n = state_elements();
    auto part = [&](int j) { return const_state_view(state(gathered + w * j)); };
    auto total = [&](int j) { return gathered + w * j + n; };
    // Contributions fold from `bound` (the rank where this rank's first document begins, forward;
    // where its last one ends, backward) up to this rank, exclusive.
    if (forward ? bound >= rank_ : bound <= rank_) {
      detail::zero_state(out, where, side);
      return;
    }
    const int first = bound, end = rank_;
    decay.update(policy, total(first), 0, const_state_view(), part(first), out, side);
    if (forward)
      for (int j = first + 1; j < end; ++j) decay.update(policy, total(j), seq_.size(j), out, part(j), out, side);
    else
      for (int j = first - 1; j > end; --j) decay.update(policy, total(j), seq_.size(j), out, part(j), out, side);
  }

  template <class T, class Policy, class Comm>
  void check_call(const Policy& policy, const Comm& comm, std::span<std::byte> workspace) const {
    SEQPAR_EXPECTS(comm.size() == seq_.ranks, "comm: a group of " << comm.size() << " ranks; expected the partition's "
                                                                  << seq_.ranks);
    SEQPAR_EXPECTS(comm.rank() == rank_, "comm: rank " << comm.rank() << "; expected " << rank_);
    SEQPAR_EXPECTS(policy.memory() == comm.memory(), "policy: works on " << to_string(policy.memory())
                                                                         << " memory; expected the communicator's "
                                                                         << to_string(comm.memory()));
    SEQPAR_EXPECTS(policy.supports(dtype_of<T>, dk_, dv_), "policy: does not support element type "
                                                               << to_string(dtype_of<T>) << " with D = " << dk_
                                                               << ", E = " << dv_);
    SEQPAR_EXPECTS(workspace.size() >= workspace_bytes(), "workspace: expected at least workspace_bytes() = "
                                                              << workspace_bytes() << " bytes, got " << workspace.size());
    SEQPAR_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace.data()) % 16 == 0, "workspace: expected 16-byte alignment");
  }

  // Checks log-gates: [B, S_r, H, 1 or D], and in host memory every entry finite and <= 0 (a
  // decay exp(g) in (0, 1]); a policy may check device memory through check_gates(g, stream).
  template <class Policy>
  void check_gates(const Policy& policy, const tensor_view<const float>& g, memory_space where,
                   stream_t stream) const {
    SEQPAR_EXPECTS(g.head_dim() == 1 || g.head_dim() == dk_,
                   "g: last extent " << g.head_dim() << "; expected 1 (a log-gate per head and token) or D = " << dk_
                                     << " (one per key dim)");
    detail::check_extents("g", g, {batch_, chunk(), heads_, g.head_dim()});
    SEQPAR_EXPECTS(g.data() != nullptr || g.size() == 0, "g: null data; expected " << g.size() << " floats");
    if (where == memory_space::host) {
      for (std::int64_t b = 0; b < g.batch(); ++b)
        for (std::int64_t i = 0; i < g.seq(); ++i)
          for (std::int64_t h = 0; h < g.heads(); ++h)
            for (std::int64_t d = 0; d < g.head_dim(); ++d) {
              const float x = g(b, i, h, d);
              SEQPAR_EXPECTS(x <= 0.0f && x > -std::numeric_limits<float>::infinity(),
                             "g(" << b << ", " << i << ", " << h << ", " << d << ") = " << x
                                  << "; expected a finite log-gate <= 0 (a decay exp(g) in (0, 1])");
            }
    } else if constexpr (requires { policy.check_gates(g, stream); }) {
      policy.check_gates(g, stream);
    }
  }

  // Checks four views of D, D, E and E elements per head, named as the caller knows them.
  template <class A, class B, class C, class D>
  void check_views(const std::array<const char*, 4>& names, const tensor_view<A>& q, const tensor_view<B>& k,
                   const tensor_view<C>& v, const tensor_view<D>& o) const {
    const std::int64_t C_r = chunk();
    check_view(names[0], q, dk_, C_r);
    check_view(names[1], k, dk_, C_r);
    check_view(names[2], v, dv_, C_r);
    check_view(names[3], o, dv_, C_r);
  }
  template <class A>
  void check_view(const char* name, const tensor_view<A>& t, std::int64_t dim, std::int64_t tokens) const {
    detail::check_extents(name, t, {batch_, tokens, heads_, dim});
  }
  template <class S>
  void check_state(const char* name, const S& s) const {
    SEQPAR_EXPECTS(s.extent(0) == batch_ && s.extent(1) == heads_ && s.extent(2) == dk_ && s.extent(3) == dv_,
                   name << ": expected state extents {batch, heads, D, E} = {" << batch_ << ", " << heads_ << ", " << dk_
                        << ", " << dv_ << "}, got {" << s.extent(0) << ", " << s.extent(1) << ", " << s.extent(2) << ", "
                        << s.extent(3) << "}");
    SEQPAR_EXPECTS(s.data_handle() != nullptr, name << ": null state; expected " << state_elements() << " floats");
  }

  int rank_;
  seq_partition seq_;
  std::int64_t batch_, heads_, dk_, dv_;
  lasp_strategy strategy_;
  std::unique_ptr<detail::stream_fork> fork_;
};

SEQPAR_NAMESPACE_END
