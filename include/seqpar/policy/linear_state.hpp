//! @file linear_state.hpp
//! LASP memory states: fp32 [batch, heads, D, E] arrays, and per-head decays.
#pragma once

#include <seqpar/memory_space.hpp>
#include <seqpar/cuda_check.hpp>
#include <seqpar/error.hpp>

#include <cuda/std/mdspan>

#include <algorithm>
#include <cstdint>
#include <span>

SEQPAR_NAMESPACE_BEGIN

//! A writable fp32 state [batch, heads, D, E], row-major (E fastest).
using state_view = cuda::std::mdspan<float, cuda::std::dextents<std::int64_t, 4>>;
//! A read-only fp32 state [batch, heads, D, E].
using const_state_view = cuda::std::mdspan<const float, cuda::std::dextents<std::int64_t, 4>>;

//! The log of a chunk's total decay per batch, head and key dim, fp32 [B, H, D]: what a gated
//! chunk's state update multiplies by (exponentiated), and what a LASP all-gather carries beside m.
using chunk_decay_view = cuda::std::mdspan<float, cuda::std::dextents<std::int64_t, 3>>;
//! Read-only chunk_decay_view.
using const_chunk_decay_view = cuda::std::mdspan<const float, cuda::std::dextents<std::int64_t, 3>>;

//! A state view over `data` (B * H * D * E floats).
inline state_view make_state(float* data, std::int64_t B, std::int64_t H, std::int64_t D, std::int64_t E) {
  return state_view(data, B, H, D, E);
}

//! Elements of a state view.
template <class S>
std::size_t state_elements(const S& s) {
  return static_cast<std::size_t>(s.size());
}

//! Throws unless every decay lies in (0, 1] and there is one per head.
inline void check_decay(std::span<const float> decay, std::int64_t heads) {
  SEQPAR_EXPECTS(static_cast<std::int64_t>(decay.size()) == heads,
                 "decay: expected one lambda per head = " << heads << " values, got " << decay.size());
  for (std::size_t h = 0; h < decay.size(); ++h)
    SEQPAR_EXPECTS(decay[h] > 0.0f && decay[h] <= 1.0f,
                   "decay[" << h << "]: expected lambda in (0, 1], got " << decay[h]);
}

SEQPAR_NAMESPACE_END
