//! @file gated_tensor_core.cuh
//! The decay weights that run linear_tensor_core.cuh's chunk_scan with log-gates (nvcc only; fp16
//! and bf16, D up to 128): gated_linear_cuda's walks on tensor cores. A scalar gate decays the
//! whole state, so it does not matter which dim of the state it is said to gate; vector gates run
//! there when they gate the contracted dim.
#pragma once

#include <seqpar/policy/detail/linear_tensor_core.cuh>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>

#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace linear_kernels {

//! chunk_scan's decay weights for scalar log-gates g [B, C, H, 1]: time step t decays the state by
//! e^(g at token t) (reversed: by the gate of token C - t, the next one in time; none at step 0).
//! With L_i the log-gates of a sub-block's steps summed from its start, w(i, j) = e^(L_i - L_j),
//! the state before the sub-block reaches token i with e^(L_i) and leaves it decayed by
//! e^(L_(n-1)): every exponent is a non-positive sum of at most 64 gates. A states pass also writes
//! each segment's summed log-gates to `totals` ([segments x B, H, 1]). The table holds the
//! sub-block's gates, then L.
struct gate_weights {
  tensor_view<const float> g;  //!< the log-gates
  chunk_decay_view totals{};   //!< each segment's summed log-gates, written by a states pass (may be empty)
  //! One weight per pair of tokens (not one per contracted column).
  static constexpr bool per_column = false;
  //! Floats of its shared table.
  SEQPAR_HOST_DEVICE static constexpr int table_floats(int) { return 2 * tc_tokens; }

  //! One block's weights.
  struct block {
    tensor_view<const float> g;  //!< the log-gates
    chunk_decay_view totals;     //!< as gate_weights'
    float* raw;                  //!< the sub-block's gates (shared)
    float* L;                    //!< their sums from the sub-block's start (shared)
    std::int64_t bt, h, C;       //!< the block's batch and head, and the chunk's length
    bool reverse;                //!< time runs backwards
    float total = 0.0f;          //!< the segment's log-gates so far

    //! Reads the gates of the sub-block's n steps from t0 (zeros past them).
    __device__ void load(std::int64_t t0, int n) {
      for (int r = threadIdx.x; r < tc_tokens; r += blockDim.x) {
        const std::int64_t t = t0 + r;
        raw[r] = r < n && !(reverse && t == 0) ? g(bt, reverse ? C - t : t, h, 0) : 0.0f;
      }
    }
    //! L from the gates (after the barrier that follows load; ends with one of its own).
    __device__ void prepare() {
      for (int r = threadIdx.x; r < tc_tokens; r += blockDim.x) {
        float sum = 0.0f;
        for (int i = 0; i <= r; ++i) sum += raw[i];
        L[r] = sum;
      }
      __syncthreads();
      total += L[tc_tokens - 1];
    }
    //! Weight of the pair (i, j), j <= i, of a sub-block.
    __device__ float pair(int i, int j) const { return expf(L[i] - L[j]); }
    //! Weight of the state before the sub-block at its token i.
    __device__ float into(int i) const { return expf(L[i]); }
    //! Decay of the state's row x over the sub-block's n tokens (the same for every x).
    __device__ float through(int n, int) const { return expf(L[n - 1]); }
    //! Weight of token j's share of the state's row x after the sub-block's n tokens (the same for every x).
    __device__ float tail(int n, int j, int) const { return expf(L[n - 1] - L[j]); }
    //! A states pass writes the segment's summed log-gates (batch index segment x B + b of totals).
    __device__ void finish(std::int64_t segment_batch, bool states_only) const {
      if (states_only && totals.size() && blockIdx.x == 0 && threadIdx.x == 0) totals(segment_batch, h, 0) = total;
    }
  };
  //! The weights of the block of batch b and head h over `table` (2 tc_tokens floats, shared).
  __device__ block start(float* table, std::int64_t b, std::int64_t h, std::int64_t C, bool reverse) const {
    return {g, totals, table, table + tc_tokens, b, h, C, reverse};
  }
};

//! chunk_scan's decay weights for vector log-gates on the contracted dim, g [B, C, H, D] (GLA):
//! as gate_weights column by column. With L_i[x] the sub-block's log-gates summed from its start,
//! factor(i, j, x) = e^(L_i[x] - L_j[x]) (L_(-1) = 0): the pair (i, j) weighs a_i[x] b_j[x] by
//! factor(i, j, x), the state before the sub-block reaches token i through a_i[x] factor(i, -1,
//! x), and leaves it with row x decayed by factor(n - 1, -1, x). The table holds L, tc_tokens rows
//! of padded D. A states pass writes each segment's summed log-gates to `totals` ([segments x B,
//! H, D]).
struct column_gate_weights {
  tensor_view<const float> g;  //!< the log-gates
  chunk_decay_view totals{};   //!< each segment's summed log-gates, written by a states pass (may be empty)
  //! One weight per contracted column.
  static constexpr bool per_column = true;
  //! Floats of its shared table for padded D = Xp.
  SEQPAR_HOST_DEVICE static constexpr int table_floats(int Xp) { return tc_tokens * Xp; }

  //! One block's weights.
  struct block {
    tensor_view<const float> g;  //!< the log-gates
    chunk_decay_view totals;     //!< as column_gate_weights'
    float* L;                    //!< [tc_tokens][Xp]: the sub-block's gates, then their sums (shared)
    int Xp;                      //!< padded D
    std::int64_t bt, h, C;       //!< the block's batch and head, and the chunk's length
    bool reverse;                //!< time runs backwards
    float total = 0.0f;          //!< the segment's log-gates so far in column threadIdx.x

    //! Reads the gates of the sub-block's n steps from t0 (zeros past them and past D).
    __device__ void load(std::int64_t t0, int n) {
      const int D = static_cast<int>(g.head_dim());
      for (int k = threadIdx.x; k < tc_tokens * Xp; k += blockDim.x) {
        const int r = k / Xp, x = k % Xp;
        const std::int64_t t = t0 + r;
        L[k] = r < n && x < D && !(reverse && t == 0) ? g(bt, reverse ? C - t : t, h, x) : 0.0f;
      }
    }
    //! L from the gates, a thread per column (after the barrier that follows load; ends with one).
    __device__ void prepare() {
      for (int x = threadIdx.x; x < Xp; x += blockDim.x) {
        float sum = 0.0f;
        for (int r = 0; r < tc_tokens; ++r) L[r * Xp + x] = sum += L[r * Xp + x];
      }
      __syncthreads();
      if (static_cast<int>(threadIdx.x) < Xp) total += L[(tc_tokens - 1) * Xp + threadIdx.x];
    }
    //! e^(L_i[x] - L_j[x]), j <= i (j = -1: e^(L_i[x])).
    __device__ float factor(int i, int j, int x) const { return expf(L[i * Xp + x] - (j >= 0 ? L[j * Xp + x] : 0.0f)); }
    //! Decay of the state's row x over the sub-block's n tokens.
    __device__ float through(int n, int x) const { return factor(n - 1, -1, x); }
    //! Weight of token j's share of the state's row x after the sub-block's n tokens.
    __device__ float tail(int n, int j, int x) const { return factor(n - 1, j, x); }
    //! A states pass writes the segment's summed log-gates (batch index segment x B + b of totals).
    __device__ void finish(std::int64_t segment_batch, bool states_only) const {
      if (states_only && totals.size() && blockIdx.x == 0 && threadIdx.x < totals.extent(2))
        totals(segment_batch, h, threadIdx.x) = total;
    }
  };
  //! The weights of the block of batch b and head h over `table` (table_floats, shared).
  __device__ block start(float* table, std::int64_t b, std::int64_t h, std::int64_t C, bool reverse) const {
    return {g, totals, table, tc_padded(g.head_dim()), b, h, C, reverse};
  }
};

}  // namespace linear_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
