//! @file linear_attention_ring.hpp
//! linear_attention_ring: LASP forward and backward. Ranks pass a small fp32 state along the
//! sequence (chain), or all-gather every rank's contribution (LASP-2); the chunk-local work is
//! the policy's. Traffic per rank does not depend on the sequence length.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/call.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/detail/document_agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/detail/lasp_decay.hpp>
#include <seqpar/detail/stream_fork.hpp>
#include <seqpar/detail/view_overlap.hpp>
#include <seqpar/detail/workspace_layout.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/layer_arguments.hpp>
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

//! The arguments of linear_attention_ring::forward: this rank's chunk.
template <element T>
struct lasp_ring_forward_args {
  tensor_view<const T> q;                      //!< [B, C, H, D]
  tensor_view<const T> k;                      //!< [B, C, H, D]
  tensor_view<const T> v;                      //!< [B, C, H, E]
  std::span<const float> decay{};              //!< a linear_attention_policy's lambda per head in (0, 1]
  tensor_view<const float> g{};                //!< a gated policy's fp32 log-gates [B, C, H, 1 or D], <= 0
  tensor_view<T> o;                            //!< [B, C, H, E], written
  state_view saved{};                          //!< receives KV_r, fp32 [B, H, D, E]
  const document_layout* documents = nullptr;  //!< packed documents over the global sequence; none: one
  std::span<std::byte> workspace{};            //!< workspace_bytes(), 16-byte aligned
};

//! The arguments of linear_attention_ring::backward: this rank's chunk and what its forward had.
template <element T>
struct lasp_ring_backward_args {
  tensor_view<const T> q;                      //!< the forward's q
  tensor_view<const T> k;                      //!< the forward's k
  tensor_view<const T> v;                      //!< the forward's v
  tensor_view<const T> dout;                   //!< [B, C, H, E]
  std::span<const float> decay{};              //!< the forward's decays (constant-decay policies)
  tensor_view<const float> g{};                //!< the forward's log-gates (gated policies)
  const_state_view saved{};                    //!< the forward's KV_r
  tensor_view<T> dq;                           //!< [B, C, H, D], written
  tensor_view<T> dk;                           //!< [B, C, H, D], written
  tensor_view<T> dv;                           //!< [B, C, H, E], written
  tensor_view<float> dg{};                     //!< gated: the log-gates' gradient, g's shape, written
  const document_layout* documents = nullptr;  //!< the forward's documents
  std::span<std::byte> workspace{};            //!< workspace_bytes(), 16-byte aligned
};

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
        strategy_(strategy) {
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
  //! Workspace bytes forward and backward need, with constant decays or gates (workspace_layout_of
  //! with a gated chunk's log-decay, the larger).
  std::size_t workspace_bytes() const {
    return workspace_layout_of(detail::gate_decay::extra_floats(batch_, heads_, dk_)).bytes();
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

  //! LASP forward: args.o = this rank's outputs; args.saved receives KV_r, the state of the
  //! earlier tokens (of this rank's first document, with args.documents). A linear_attention_policy
  //! takes args.decay (lambda per head); a gated_linear_attention_policy takes args.g (the state
  //! decaying by diag(exp(g_t)) at token t). Runs check_forward and check_buffers on this rank and,
  //! with exec.checks == call_checks::group, the group agrees before anything is written or sent.
  template <class Policy, communicator Comm, element T>
    requires linear_attention_policy<Policy> || gated_linear_attention_policy<Policy>
  void forward(const Policy& policy, Comm& comm, const lasp_ring_forward_args<T>& args, const execution& exec) {
    const document_layout& docs = detail::documents_of(args.documents);
    agree(comm, exec.checks, exec.stream, docs, [&] {
      check_forward(policy, comm, args, exec);
      check_buffers(args.saved, args.workspace);
    });
    run_forward(policy, comm, args.q, args.k, args.v, decay_of<Policy>(args.decay, args.g), docs, args.o, args.saved,
                args.workspace, exec.stream);
  }

  //! LASP backward: args.dq, dk, dv (and, gated, the log-gates' gradient args.dg: fp32, g's shape;
  //! a scalar gate's entry sums over the key dims) of this rank's chunk from args.dout, the
  //! forward's q, k, v, decays or gates and documents, and its args.saved KV_r.
  template <class Policy, communicator Comm, element T>
    requires linear_attention_policy<Policy> || gated_linear_attention_policy<Policy>
  void backward(const Policy& policy, Comm& comm, const lasp_ring_backward_args<T>& args, const execution& exec) {
    const document_layout& docs = detail::documents_of(args.documents);
    agree(comm, exec.checks, exec.stream, docs, [&] {
      check_backward(policy, comm, args, exec);
      check_workspace(args.workspace);
    });
    run_backward(policy, comm, args.q, args.k, args.v, args.dout, decay_of<Policy>(args.decay, args.g, args.dg), docs,
                 args.saved, args.dq, args.dk, args.dv, args.workspace, exec.stream);
  }

  //! The checks forward makes on this rank of everything but args.saved and args.workspace (it
  //! throws what forward would), without running it: views, decays or gates, and documents. Gates
  //! in host memory are read; in device memory a policy may check them through check_gates(g,
  //! stream), which waits for the stream, so only with exec.checks == call_checks::group (on
  //! exec.stream): call_checks::local reads no device memory. For layers that agree on all their
  //! arguments in one step.
  template <class Policy, class Comm, element T>
  void check_forward(const Policy& policy, const Comm& comm, const lasp_ring_forward_args<T>& args,
                     const execution& exec) const {
    check_call<T>(policy, comm);
    check_decays(policy, args.decay, args.g, exec);
    check_views({"q", "k", "v", "o"}, args.q, args.k, args.v, args.o);
    detail::check_written_apart({detail::bytes_of("o", args.o)},
                                {detail::bytes_of("q", args.q), detail::bytes_of("k", args.k),
                                 detail::bytes_of("v", args.v), detail::bytes_of("g", args.g)});
    check_documents(detail::documents_of(args.documents));
  }
  //! The checks backward makes on this rank of everything but args.workspace, without running it
  //! (device gates as check_forward says).
  template <class Policy, class Comm, element T>
  void check_backward(const Policy& policy, const Comm& comm, const lasp_ring_backward_args<T>& args,
                      const execution& exec) const {
    check_call<T>(policy, comm);
    check_decays(policy, args.decay, args.g, exec);
    check_views({"q", "k", "v", "dout"}, args.q, args.k, args.v, args.dout);
    check_views({"dq", "dk", "dv", "dout"}, args.dq, args.dk, args.dv, args.dout);
    if constexpr (gated_linear_attention_policy<Policy>)
      detail::check_extents("dg", args.dg, {batch_, chunk(), heads_, args.g.head_dim()});
    else
      SEQPAR_EXPECTS(args.dg.data() == nullptr && args.dg.size() == 0,
                     "dg: given with a policy of constant decays; expected none (a gated_linear_attention_policy "
                     "gives the log-gates' gradient)");
    check_state("saved", args.saved);
    check_documents(detail::documents_of(args.documents));
    // The gradients are written piece by piece while q, k, v and dO are still read.
    detail::check_written_apart(
        {detail::bytes_of("dq", args.dq), detail::bytes_of("dk", args.dk), detail::bytes_of("dv", args.dv),
         detail::bytes_of("dg", args.dg)},
        {detail::bytes_of("q", args.q), detail::bytes_of("k", args.k), detail::bytes_of("v", args.v),
         detail::bytes_of("dout", args.dout), detail::bytes_of("g", args.g)});
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

 private:
  // How the state decays for `Policy`: its constant decays, or its log-gates (and, backward, their
  // gradient).
  template <class Policy>
  auto decay_of(std::span<const float> decay, const tensor_view<const float>& g, tensor_view<float> dg = {}) const {
    if constexpr (gated_linear_attention_policy<Policy>) return detail::gate_decay{g, dk_, dg};
    else return detail::constant_decay{decay};
  }
  // A linear_attention_policy's decays (lambda per head, no gates), or a gated policy's log-gates
  // ([B, S_r, H, 1 or D], finite and <= 0; no decays).
  template <class Policy>
  void check_decays(const Policy& policy, std::span<const float> decay, const tensor_view<const float>& g,
                    const execution& exec) const {
    if constexpr (gated_linear_attention_policy<Policy>) {
      SEQPAR_EXPECTS(decay.empty(), "decay: given with a gated policy; expected none (its log-gates g decay the "
                                    "state)");
      check_gates(policy, g, policy.memory(), exec);
    } else {
      SEQPAR_EXPECTS(g.data() == nullptr && g.size() == 0,
                     "g: given with a policy of constant decays; expected none (a gated_linear_attention_policy "
                     "takes log-gates)");
      check_decay(decay, heads_);
    }
  }
  // Runs `check` on this rank, and the group agrees (with call_checks::group, on the documents too)
  // before anything is written or sent.
  template <class Comm, class Check>
  void agree(Comm& comm, call_checks checks, stream_t stream, const document_layout& docs, const Check& check) const {
    agree_on_arguments(comm, checks, stream, check, detail::documents_agreement(docs));
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
  // The side stream and zero fills of calls with `policy`, made on the first call.
  template <class Policy>
  detail::stream_fork& fork_for(const Policy& policy) {
    if (!fork_) fork_ = detail::stream_fork_for(policy);
    return *fork_;
  }
  // `s` zeroed on `stream` (the fork exists: a call makes it before it zeroes a state).
  void zero_state(const state_view& s, memory_space where, stream_t stream) const {
    fork_->zero(s.data_handle(), s.size(), where, stream);
  }
  // `scratch` zeroed on `stream`, as a state: the missing side of an inter-chunk term.
  const_state_view zero(const state_view& scratch, memory_space where, stream_t stream) const {
    zero_state(scratch, where, stream);
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
    const std::size_t n = state_elements(), extra = decay.extra_floats(batch_, heads_, dk_), w = n + extra;
    const auto layout = workspace_layout_of(extra);
    float* const contribution = layout.template as<float>(workspace, 0).data();
    const state_view m = state(contribution), next = state(layout.template as<float>(workspace, 1).data());
    float *const total = contribution + n, *const gathered = layout.template as<float>(workspace, 1).data();
    // Fork first, so the side stream's state work does not queue behind the intra-chunk product;
    // that product needs no message and runs on `stream` meanwhile.
    const stream_t side = fork_for(policy).fork(where, stream);
    const document_piece& last = plan.pieces.back();
    auto chunk_of = [&](const document_piece& p) {
      return decay.chunk(rows(cq, p), rows(ck, p), rows(cv, p), tensor_view<const T>{}, p);
    };
    if constexpr (std::same_as<Decay, detail::constant_decay> && fuses_forward_state<Policy>) {
      // the last piece's state first, so the chain starts early
      policy.forward_intra_with_state(chunk_of(last), rows(o, last), m, stream, side);
      for (std::size_t i = 0; i + 1 < plan.pieces.size(); ++i)
        policy.forward_intra(chunk_of(plan.pieces[i]), rows(o, plan.pieces[i]), stream);
    } else {
      for (const document_piece& piece : plan.pieces) policy.forward_intra(chunk_of(piece), rows(o, piece), stream);
      policy.state_contribution(chunk_of(last), m, side);
    }
    decay.chunk_decay(policy, whole_chunk(), total, side);
    // The state passed on: the incoming one decayed through the chunk when one document runs
    // through it, plus the last piece's tokens.
    const bool carry = rank_ > 0 && plan.pieces.size() == 1 && plan.first_continues;
    if (strategy_ == lasp_strategy::chain) {
      if (rank_ == 0) zero_state(saved, where, side);
      for (int s = 0; s + 1 < seq_.ranks; ++s) {  // hop s: rank s sends KV_{s+1} to rank s+1
        if (rank_ == s)
          decay.update(policy, total, chunk(), carry ? const_state_view(saved) : const_state_view(), m, next, side);
        comm.template neighbor_exchange<float>(span_if(rank_ == s, next), rank_ == s ? s + 1 : no_rank,
                                               span_if(rank_ == s + 1, saved), rank_ == s + 1 ? s : no_rank, side);
      }
    } else {
      comm.all_gather(std::span<const float>(contribution, w), std::span<float>(gathered, w * seq_.ranks), side);
      prefix_of_gathered(policy, decay, gathered, w, saved, plan.first_rank, where, side, /*forward=*/true);
    }
    fork_->join(where, stream);
    const document_piece& first = plan.pieces.front();
    if (rank_ > 0 && plan.first_continues) policy.forward_inter(chunk_of(first), saved, rows(o, first), stream);
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

    const std::size_t n = state_elements(), extra = decay.extra_floats(batch_, heads_, dk_), w = n + extra;
    const auto layout = workspace_layout_of(extra);
    float* const contribution = layout.template as<float>(workspace, 0).data();
    const state_view gq = state(contribution), g_in = state(layout.template as<float>(workspace, 1).data()),
                     g_out = state(layout.template as<float>(workspace, 2).data());
    float *const total = contribution + n, *const gathered = layout.template as<float>(workspace, 1).data();
    const stream_t side = fork_for(policy).fork(where, stream);  // before the intra-chunk work, as in forward
    auto chunk_of = [&](const document_piece& p) {
      return decay.chunk(rows(cq, p), rows(ck, p), rows(cv, p), rows(cdo, p), p);
    };
    auto gradients_of = [&](const document_piece& p) {
      return decay.gradients(rows(dq, p), rows(dk, p), rows(dv, p), p);
    };
    for (const document_piece& piece : plan.pieces) policy.backward_intra(chunk_of(piece), gradients_of(piece), stream);
    // gq: the gradient of the incoming state from the first piece, the only one that reads it.
    if (plan.first_continues)
      policy.backward_state_contribution(chunk_of(first), gq, side);
    else
      zero_state(gq, where, side);
    decay.chunk_decay(policy, whole_chunk(), total, side);
    state_view g = g_in;  // G_r: gradient of the state this rank sent forward
    if (strategy_ == lasp_strategy::chain) {
      const int last_rank = seq_.ranks - 1;
      if (rank_ == last_rank) zero_state(g_in, where, side);
      for (int s = last_rank; s > 0; --s) {  // hop s: rank s sends G_{s-1} to rank s-1
        if (rank_ == s)
          decay.update(policy, total, chunk(),
                       single && plan.first_continues ? const_state_view(g_in) : const_state_view(), gq, g_out, side);
        comm.template neighbor_exchange<float>(span_if(rank_ == s, g_out), rank_ == s ? s - 1 : no_rank,
                                               span_if(rank_ == s - 1, g_in), rank_ == s - 1 ? s : no_rank, side);
      }
    } else {
      comm.all_gather(std::span<const float>(contribution, w), std::span<float>(gathered, w * seq_.ranks), side);
      g = g_out;
      prefix_of_gathered(policy, decay, gathered, w, g, plan.last_rank, where, side, /*forward=*/false);
    }
    fork_->join(where, stream);
    if (single) {  // the one piece is the whole chunk
      policy.backward_inter(chunk_of(first), plan.first_continues ? saved : zero(gq, where, stream),
                            plan.last_continues ? const_state_view(g) : zero(gq, where, stream), gradients_of(first),
                            stream);
      return;
    }
    // Several pieces: the incoming state reaches the first, the state passed on holds the last.
    if (plan.first_continues)
      policy.backward_inter(chunk_of(first), saved, zero(gq, where, stream), gradients_of(first), stream);
    if (plan.last_continues)
      policy.backward_inter(chunk_of(last), zero(gq, where, stream), g, gradients_of(last), stream);
  }

  // The workspace with `extra` floats of a chunk's log-decay: this rank's contribution (its state
  // term, then the log-decay: contiguous, as the all-gather sends it); then the chain's two states
  // (passed on, and backward's received and passed on), or every rank's contribution and the
  // folded state (all-gather).
  detail::workspace_layout<3> workspace_layout_of(std::size_t extra) const {
    const std::size_t n = state_elements() * sizeof(float), w = n + extra * sizeof(float);
    if (strategy_ == lasp_strategy::chain) return detail::workspace_layout<3>({w, n, n});
    return detail::workspace_layout<3>({w, w * static_cast<std::size_t>(seq_.ranks), n});
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
      zero_state(out, where, side);
      return;
    }
    const int first = bound, end = rank_;
    decay.update(policy, total(first), 0, const_state_view(), part(first), out, side);
    if (forward)
      for (int j = first + 1; j < end; ++j) decay.update(policy, total(j), seq_.size(j), out, part(j), out, side);
    else
      for (int j = first - 1; j > end; --j) decay.update(policy, total(j), seq_.size(j), out, part(j), out, side);
  }

  // Throws unless forward's `saved` state and `workspace` are what it writes.
  void check_buffers(const state_view& saved, std::span<std::byte> workspace) const {
    check_state("saved", saved);
    check_workspace(workspace);
  }
  void check_workspace(std::span<std::byte> workspace) const {
    SEQPAR_EXPECTS(workspace.size() >= workspace_bytes(), "workspace: expected at least workspace_bytes() = "
                                                              << workspace_bytes() << " bytes, got " << workspace.size());
    SEQPAR_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace.data()) % 16 == 0, "workspace: expected 16-byte alignment");
  }
  template <class T, class Policy, class Comm>
  void check_call(const Policy& policy, const Comm& comm) const {
    static_assert(detail::compiler_serves<Comm>,
                  "seqpar: linear_attention_ring on a device-only communicator (nccl_communicator) needs the calling "
                  "file compiled by nvcc: its state kernels are CUDA");
    SEQPAR_EXPECTS(comm.size() == seq_.ranks, "comm: a group of " << comm.size() << " ranks; expected the partition's "
                                                                  << seq_.ranks);
    SEQPAR_EXPECTS(comm.rank() == rank_, "comm: rank " << comm.rank() << "; expected " << rank_);
    SEQPAR_EXPECTS(policy.memory() == comm.memory(), "policy: works on " << to_string(policy.memory())
                                                                         << " memory; expected the communicator's "
                                                                         << to_string(comm.memory()));
    SEQPAR_EXPECTS(policy.supports(dtype_of<T>, dk_, dv_), "policy: does not support element type "
                                                               << to_string(dtype_of<T>) << " with D = " << dk_
                                                               << ", E = " << dv_);
  }

  // Checks log-gates: [B, S_r, H, 1 or D], and in host memory every entry finite and <= 0 (a
  // decay exp(g) in (0, 1]); a policy may check device memory through check_gates(g, stream),
  // with group checks only (it waits for the stream).
  template <class Policy>
  void check_gates(const Policy& policy, const tensor_view<const float>& g, memory_space where,
                   const execution& exec) const {
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
    } else if constexpr (requires { policy.check_gates(g, exec.stream); }) {
      if (exec.checks == call_checks::group) policy.check_gates(g, exec.stream);
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
