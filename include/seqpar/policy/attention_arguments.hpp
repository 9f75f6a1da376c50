//! @file attention_arguments.hpp
//! What an attention policy's calls take, as data: one struct per call, built with designated
//! initialisers and named with its element type, and the stream after it
//! (`policy.forward(seqpar::policy_forward_args<T>{.q = q, ...}, stream)`). A later
//! feature (a mask) adds a field here, never a parameter.
#pragma once

#include <seqpar/policy/attention_options.hpp>
#include <seqpar/policy/block_pair.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>

SEQPAR_NAMESPACE_BEGIN

//! A policy's forward: local heads over the whole sequence.
template <element T>
struct policy_forward_args {
  tensor_view<const T> q;       //!< [B, S, h, D]
  tensor_view<const T> k;       //!< [B, S, k, D]
  tensor_view<const T> v;       //!< [B, S, k, D]
  tensor_view<T> o;             //!< [B, S, h, D], written
  lse_view lse;                 //!< [B, h, S] fp32, written: each row's log-sum-exp
  gqa_map map{};                //!< which kv head each query head reads
  attention_options options{};  //!< scale, causal, documents
};

//! A policy's backward: the gradients of local heads over the whole sequence.
template <element T>
struct policy_backward_args {
  tensor_view<const T> q;       //!< [B, S, h, D]
  tensor_view<const T> k;       //!< [B, S, k, D]
  tensor_view<const T> v;       //!< [B, S, k, D]
  tensor_view<const T> o;       //!< [B, S, h, D]: the forward's output
  const_lse_view lse;           //!< [B, h, S]: the forward's log-sum-exp
  tensor_view<const T> dout;    //!< [B, S, h, D]
  tensor_view<T> dq;            //!< [B, S, h, D], written
  tensor_view<T> dk;            //!< [B, S, k, D], written (summed over the query heads that read it)
  tensor_view<T> dv;            //!< [B, S, k, D], written (summed over the query heads that read it)
  gqa_map map{};                //!< which kv head each query head reads
  attention_options options{};  //!< scale, causal, documents
};

//! A block pair's forward: a query block against one key/value block alone.
template <element T>
struct block_forward_args {
  tensor_view<const T> q;       //!< [B, S_q, h, D]
  tensor_view<const T> k;       //!< [B, S_kv, k, D]
  tensor_view<const T> v;       //!< [B, S_kv, k, D]
  tensor_view<float> o_part;    //!< [B, S_q, h, D] fp32, written: the pair's partial output
  lse_view lse_part;            //!< [B, h, S_q] fp32, written: the pair's log-sum-exp
  gqa_map map{};                //!< which kv head each query head reads
  attention_options options{};  //!< scale, causal, documents
  block_pair pair{};            //!< where the blocks sit in the global sequence
};

//! A block pair's backward: its share of the gradients, added to fp32 accumulators, from the
//! FINAL lse of the query rows and either their row dots (block_backward) or their final output
//! (block_backward_from_output); the caller fills the one the policy reads.
template <element T>
struct block_backward_args {
  tensor_view<const T> q;       //!< [B, S_q, h, D]
  tensor_view<const T> k;       //!< [B, S_kv, k, D]
  tensor_view<const T> v;       //!< [B, S_kv, k, D]
  tensor_view<const T> dout;    //!< [B, S_q, h, D]
  const_lse_view lse;           //!< [B, h, S_q]: the final log-sum-exp
  const_lse_view row_dots{};    //!< [B, h, S_q]: rowsum(dO * O), for block_backward
  tensor_view<const T> o{};     //!< [B, S_q, h, D]: the final output, for block_backward_from_output
  tensor_view<float> dq;        //!< [B, S_q, h, D] fp32, added to
  tensor_view<float> dk;        //!< [B, S_kv, k, D] fp32, added to
  tensor_view<float> dv;        //!< [B, S_kv, k, D] fp32, added to
  gqa_map map{};                //!< which kv head each query head reads
  attention_options options{};  //!< scale, causal, documents
  block_pair pair{};            //!< where the blocks sit in the global sequence
};

SEQPAR_NAMESPACE_END
