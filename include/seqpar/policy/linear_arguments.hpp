//! @file linear_arguments.hpp
//! What a linear-attention policy's chunk operations take, as data: the piece of a rank's chunk
//! they run on (its views and its decay) in one struct, the gradients they write in another, the
//! state and output views and then the stream after them
//! (`policy.forward_intra(seqpar::linear_chunk<T>{.q = q, .k = k, .v = v, .decay = lambda}, o, stream)`).
#pragma once

#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

#include <span>

SEQPAR_NAMESPACE_BEGIN

//! A piece of one rank's chunk as a linear_attention_policy sees it: C tokens and the constant
//! decay of each head. Each operation reads the fields its formula names.
template <element T>
struct linear_chunk {
  tensor_view<const T> q{};        //!< [B, C, H, D]
  tensor_view<const T> k{};        //!< [B, C, H, D]
  tensor_view<const T> v{};        //!< [B, C, H, E]
  tensor_view<const T> dout{};     //!< [B, C, H, E]: the backward operations
  std::span<const float> decay{};  //!< lambda per head
};

//! A piece of one rank's chunk as a gated_linear_attention_policy sees it: C tokens and their
//! log-gates. Each operation reads the fields its formula names.
template <element T>
struct gated_chunk {
  tensor_view<const T> q{};      //!< [B, C, H, D]
  tensor_view<const T> k{};      //!< [B, C, H, D]
  tensor_view<const T> v{};      //!< [B, C, H, E]
  tensor_view<const T> dout{};   //!< [B, C, H, E]: the backward operations
  tensor_view<const float> g{};  //!< fp32 log-gates [B, C, H, 1] (per head) or [B, C, H, D] (per key dim)
};

//! The gradients of a piece: written by backward_intra, added to by backward_inter.
template <element T>
struct linear_gradients {
  tensor_view<T> dq;        //!< [B, C, H, D]
  tensor_view<T> dk;        //!< [B, C, H, D]
  tensor_view<T> dv;        //!< [B, C, H, E]
  tensor_view<float> dg{};  //!< gated policies: the log-gates' gradient, g's shape (fp32)
};

SEQPAR_NAMESPACE_END
