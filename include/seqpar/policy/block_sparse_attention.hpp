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
using block_sparse_attention = masked_attention<block_mask>;

static_assert(block_attention_policy<block_sparse_attention>);

SEQPAR_NAMESPACE_END
