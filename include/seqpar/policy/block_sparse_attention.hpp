//! @file block_sparse_attention.hpp
//! block_sparse_attention: attention restricted to a block mask (a sliding window of blocks plus
//! optional global blocks), on the host. It composes with Ulysses unchanged, because every rank
//! sees whole sequences of its heads.
#pragma once

#include <seqpar/policy/reference_attention.hpp>

#include <cstdint>

SEQPAR_NAMESPACE_BEGIN

//! The block mask: tokens are grouped in blocks of `block` tokens; query block I sees key block J
//! when |I - J| < window, or when either is among the first `global` blocks.
struct block_mask {
  std::int64_t block = 64;   //!< tokens per block
  std::int64_t window = 1;   //!< blocks on each side within reach (1: only its own block)
  std::int64_t global = 0;   //!< leading blocks that see and are seen by every block
  //! Whether query token i may attend key token j.
  SEQPAR_HOST_DEVICE bool allowed(std::int64_t i, std::int64_t j) const {
    const std::int64_t I = i / block, J = j / block;
    return (I > J ? I - J : J - I) < window || I < global || J < global;
  }
};

//! Softmax attention under a block_mask, on the host (causal or not, GQA, any head dim).
struct block_sparse_attention {
  //! Opts into seqpar::attention_policy.
  using policy_concept = attention_policy_tag;
  //! The mask.
  block_mask mask;

  //! Host memory.
  memory_space memory() const { return memory_space::host; }
  //! Any element type and head dim.
  bool supports(dtype, std::int64_t head_dim) const { return head_dim >= 1; }
  //! Causal masking is supported (it combines with the block mask).
  bool supports_causal() const { return true; }

  //! o and lse from q, k, v.
  template <class T>
  void forward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, gqa_map map,
               attention_options opt, tensor_view<T> o, lse_view lse, stream_t = nullptr) const {
    engine().forward(q, k, v, map, opt, o, lse);
  }
  //! dq, dk, dv from dO.
  template <class T>
  void backward(tensor_view<const T> q, tensor_view<const T> k, tensor_view<const T> v, tensor_view<const T> o,
                const_lse_view lse, tensor_view<const T> dout, gqa_map map, attention_options opt, tensor_view<T> dq,
                tensor_view<T> dk, tensor_view<T> dv, stream_t = nullptr) const {
    engine().backward(q, k, v, o, lse, dout, map, opt, dq, dk, dv);
  }

 private:
  struct masked {
    block_mask mask;
    bool operator()(std::int64_t i, std::int64_t j) const { return mask.allowed(i, j); }
  };
  detail::host_attention<masked> engine() const { return {masked{mask}}; }
};

static_assert(attention_policy<block_sparse_attention>);

SEQPAR_NAMESPACE_END
