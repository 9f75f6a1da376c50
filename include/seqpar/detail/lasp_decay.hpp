//! @file lasp_decay.hpp
//! How a LASP state decays through a rank's chunk, as linear_attention_ring composes it: one
//! constant lambda per head (linear_attention_policy), or per-token log-gates
//! (gated_linear_attention_policy). Each adapter turns the ring's steps into its policy's calls.
#pragma once

#include <seqpar/documents.hpp>
#include <seqpar/policy/gated_linear_policy.hpp>
#include <seqpar/policy/linear_attention_policy.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>

#include <cstddef>
#include <cstdint>
#include <span>

SEQPAR_NAMESPACE_BEGIN

namespace detail {

//! One decay lambda per head: a chunk of n tokens decays the state by lambda^n.
struct constant_decay {
  std::span<const float> lambda;  //!< per head

  //! Floats a rank's contribution carries beside its state: none, lambda is known everywhere.
  static constexpr std::size_t extra_floats(std::int64_t, std::int64_t, std::int64_t) { return 0; }
  //! Piece p of the chunk as the policy's calls take it: its rows of q, k, v and dout.
  template <class T>
  linear_chunk<T> chunk(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                        const tensor_view<const T>& dout, const document_piece&) const {
    return {.q = q, .k = k, .v = v, .dout = dout, .decay = lambda};
  }
  //! Piece p's gradients: its rows of dq, dk and dv.
  template <class T>
  linear_gradients<T> gradients(const tensor_view<T>& dq, const tensor_view<T>& dk, const tensor_view<T>& dv,
                                const document_piece&) const {
    return {.dq = dq, .dk = dk, .dv = dv};
  }
  //! Nothing to compute: a chunk's decay follows from its length.
  template <class Policy>
  void chunk_decay(const Policy&, const document_piece&, float*, stream_t) const {}
  //! out = lambda^tokens in + m, for a chunk of `tokens` tokens.
  template <class Policy>
  void update(const Policy& policy, const float*, std::int64_t tokens, const_state_view in, const_state_view m,
              state_view out, stream_t s) const {
    policy.state_update(lambda, tokens, in, m, out, s);
  }
};

//! Per-token log-gates g [B, C, H, 1 or D] of this rank's chunk (and, in backward, their gradient
//! dg of the same shape): a chunk decays the state by diag(exp(G_{C-1})), which the ring computes
//! and an all-gather carries beside each rank's state, B * H * D floats.
struct gate_decay {
  tensor_view<const float> g;  //!< the chunk's log-gates
  std::int64_t key_dim = 0;    //!< D
  tensor_view<float> dg{};     //!< their gradient (backward)

  //! Floats a rank's contribution carries beside its state: the chunk's log-decay [B, H, D].
  static constexpr std::size_t extra_floats(std::int64_t B, std::int64_t H, std::int64_t D) {
    return static_cast<std::size_t>(B * H * D);
  }
  //! Piece p of the chunk as the policy's calls take it: its rows of q, k, v, dout and the gates.
  template <class T>
  gated_chunk<T> chunk(const tensor_view<const T>& q, const tensor_view<const T>& k, const tensor_view<const T>& v,
                       const tensor_view<const T>& dout, const document_piece& p) const {
    return {.q = q, .k = k, .v = v, .dout = dout, .g = gates_of(p)};
  }
  //! Piece p's gradients: its rows of dq, dk, dv and of the gates' gradient.
  template <class T>
  linear_gradients<T> gradients(const tensor_view<T>& dq, const tensor_view<T>& dk, const tensor_view<T>& dv,
                                const document_piece& p) const {
    return {.dq = dq, .dk = dk, .dv = dv, .dg = detail::rows(dg, p.local, p.length)};
  }
  //! The gates of a piece.
  tensor_view<const float> gates_of(const document_piece& p) const { return detail::rows(g, p.local, p.length); }
  //! total [B, H, D] at `total`: the log of piece p's decay.
  template <class Policy>
  void chunk_decay(const Policy& policy, const document_piece& p, float* total, stream_t s) const {
    policy.chunk_decay(gates_of(p), chunk_decay_view(total, g.batch(), g.heads(), key_dim), s);
  }
  //! out = diag(exp(total)) in + m, total [B, H, D] at `total`.
  template <class Policy>
  void update(const Policy& policy, const float* total, std::int64_t, const_state_view in, const_state_view m,
              state_view out, stream_t s) const {
    policy.state_update(const_chunk_decay_view(total, g.batch(), g.heads(), key_dim), in, m, out, s);
  }
};

}  // namespace detail

SEQPAR_NAMESPACE_END
