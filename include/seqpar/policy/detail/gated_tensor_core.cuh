//! @file gated_tensor_core.cuh
//! The decay weights that run linear_tensor_core.cuh's chunk_scan with log-gates (nvcc only; fp16
//! and bf16, D up to 128): gated_linear_cuda's walks on tensor cores. A scalar gate decays the
//! whole state, so it does not matter which dim of the state it is said to gate; vector gates
//! weigh either the contracted columns (column_gate_weights) or the output columns
//! (output_gate_weights).
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
  //! One weight per pair of tokens.
  static constexpr weight_kind kind = weight_kind::per_pair;
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
    //! Decay of the state's element (x, y) over the sub-block's n tokens (the same for every x, y).
    __device__ float through(int n, int, int) const { return expf(L[n - 1]); }
    //! Weight of token j's share of the state's row x after the sub-block's n tokens (the same for every x).
    __device__ float tail(int n, int j, int) const { return expf(L[n - 1] - L[j]); }
    //! A states pass writes the segment's summed log-gates (batch index segment x B + b of totals).
    __device__ void finish(std::int64_t segment_batch, bool states_only) const {
      if (states_only && totals.size() && blockIdx.x == 0 && threadIdx.x == 0) totals(segment_batch, h, 0) = total;
    }
  };
  //! The weights of the block of batch b and head h over `table` (2 tc_tokens floats, shared).
  __device__ block start(float* table, std::int64_t b, std::int64_t h, std::int64_t C, bool reverse, int) const {
    return {g, totals, table, table + tc_tokens, b, h, C, reverse};
  }
};

//! One block's vector log-gates of a sub-block in the columns c0 .. c0 + width: L[r][c], the gates
//! of steps 0 .. r summed (shared), from which factor(i, j, c) = e^(L_i[c] - L_j[c]) (L_(-1) = 0);
//! the part column_gate_weights and output_gate_weights share.
struct gate_columns {
  tensor_view<const float> g;  //!< the log-gates
  chunk_decay_view totals;     //!< each segment's summed log-gates, written by a states pass (may be empty)
  float* L;                    //!< [tc_tokens][width]: the sub-block's gates, then their sums (shared)
  int width, c0;               //!< the columns' count and the first one
  std::int64_t bt, h, C;       //!< the block's batch and head, and the chunk's length
  bool reverse;                //!< time runs backwards
  float total = 0.0f;          //!< the segment's log-gates so far in column c0 + threadIdx.x

  //! Reads the gates of the sub-block's n steps from t0 (zeros past them and past g's columns).
  __device__ void load(std::int64_t t0, int n) {
    const int G = static_cast<int>(g.head_dim());
    for (int k = threadIdx.x; k < tc_tokens * width; k += blockDim.x) {
      const int r = k / width, c = c0 + k % width;
      const std::int64_t t = t0 + r;
      L[k] = r < n && c < G && !(reverse && t == 0) ? g(bt, reverse ? C - t : t, h, c) : 0.0f;
    }
  }
  //! L from the gates, a thread per column (after the barrier that follows load; ends with one).
  __device__ void prepare() {
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
      float sum = 0.0f;
      for (int r = 0; r < tc_tokens; ++r) L[r * width + c] = sum += L[r * width + c];
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < width) total += L[(tc_tokens - 1) * width + threadIdx.x];
  }
  //! e^(L_i[c] - L_j[c]) for column c0 + c, j <= i (j = -1: e^(L_i[c])).
  __device__ float factor(int i, int j, int c) const {
    return expf(L[i * width + c] - (j >= 0 ? L[j * width + c] : 0.0f));
  }
  //! A states pass writes the segment's summed log-gates (batch index segment x B + b of totals).
  __device__ void write_totals(std::int64_t segment_batch, bool states_only) const {
    if (states_only && totals.size() && static_cast<int>(threadIdx.x) < width && c0 + threadIdx.x < totals.extent(2))
      totals(segment_batch, h, c0 + threadIdx.x) = total;
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
  static constexpr weight_kind kind = weight_kind::per_contracted;
  //! Floats of its shared table for padded D = Xp.
  SEQPAR_HOST_DEVICE static constexpr int table_floats(int Xp) { return tc_tokens * Xp; }

  //! One block's weights: the gates of every padded column.
  struct block : gate_columns {
    //! Decay of the state's row x over the sub-block's n tokens.
    __device__ float through(int n, int x, int) const { return factor(n - 1, -1, x); }
    //! Weight of token j's share of the state's row x after the sub-block's n tokens.
    __device__ float tail(int n, int j, int x) const { return factor(n - 1, j, x); }
    //! The first output tile's block writes a states pass's totals.
    __device__ void finish(std::int64_t segment_batch, bool states_only) const {
      if (blockIdx.x == 0) write_totals(segment_batch, states_only);
    }
  };
  //! The weights of the block of batch b and head h over `table` (table_floats(Xp), shared).
  __device__ block start(float* table, std::int64_t b, std::int64_t h, std::int64_t C, bool reverse, int Xp) const {
    return {{g, totals, table, Xp, 0, b, h, C, reverse}};
  }
};

//! chunk_scan's decay weights for vector log-gates on the output columns, g [B, C, H, Y]: as
//! column_gate_weights for the block's 64 output columns y0.. (blockIdx.x): the pair (i, j) weighs
//! v_j[y] by factor(i, j, y), the state before the sub-block reaches out_i[y] with factor(i, -1,
//! y), and its column y decays by factor(n - 1, -1, y). The table holds v weighted for the state
//! update (a 2-byte T tile, made once per sub-block for all four warps), L (tc_tokens rows of the
//! tile's 64 columns), a 16 x 16 scratch per warp, and for a padded D up to 64 e^(gate) of each
//! step and column, which the pairs within a warp's slice multiply up instead of exponentiating
//! each pair (for larger D that table would leave room for one block per SM only). A states pass
//! writes each segment's summed log-gates to `totals` ([segments x B, H, Y]).
struct output_gate_weights {
  tensor_view<const float> g;  //!< the log-gates
  chunk_decay_view totals{};   //!< each segment's summed log-gates, written by a states pass (may be empty)
  //! One weight per output column.
  static constexpr weight_kind kind = weight_kind::per_output;
  //! Floats of the table's weighted v tile (16-byte rows, so L stays 16-byte aligned).
  static constexpr int values_floats = tc_tokens * tc_ld(tc_y_tile) / 2;
  //! Whether the table keeps the steps' e^(gate) in a chunk_scan of MT state tiles.
  SEQPAR_HOST_DEVICE static constexpr bool keeps_steps(int MT) { return MT == 1; }
  //! Floats of its shared table for padded D = Xp.
  SEQPAR_HOST_DEVICE static constexpr int table_floats(int Xp) {
    return values_floats + (keeps_steps(tc_state_tiles(Xp)) ? 2 : 1) * tc_tokens * tc_y_tile + 4 * 256;
  }

  //! One block's weights: the gates of its output tile.
  struct block : gate_columns {
    //! e^(the gate of step r) in the tile's column y, factor(r, r - 1, y), in a chunk_scan of MT
    //! state tiles: from the table when it keeps them.
    template <int MT>
    __device__ float step(int r, int y) const {
      if constexpr (keeps_steps(MT)) return steps()[r * tc_y_tile + y];
      else return factor(r, r - 1, y);
    }
    //! Decay of the state's column y over the sub-block's n tokens.
    __device__ float through(int n, int, int y) const { return factor(n - 1, -1, y); }
    //! The keys' side of token j's share of the state: unweighted (v_j carries the weight).
    __device__ float tail(int, int, int) const { return 1.0f; }
    //! v weighted for the state update, factor(n - 1, j, y) v_j[y], in the table's tile, and the
    //! steps' e^(gate) if it keeps them (every thread calls it, after prepare; it ends with a barrier).
    template <int MT, class T>
    __device__ mma::smem_tile<T> weigh_values(mma::smem_tile<T> v, int n) const {
      static_assert(sizeof(T) == 2, "the table's values tile holds 2-byte elements");
      const mma::smem_tile<T> out{reinterpret_cast<T*>(L - values_floats), tc_ld(tc_y_tile)};
      for (int k = threadIdx.x; k < tc_tokens * tc_y_tile; k += blockDim.x) {
        const int r = k / tc_y_tile, y = k % tc_y_tile;
        out(r, y) = from_float<T>(r < n ? factor(n - 1, r, y) * to_float(v(r, y)) : 0.0f);
        if constexpr (keeps_steps(MT)) steps()[k] = factor(r, r - 1, y);
      }
      __syncthreads();
      return out;
    }
    //! Warp w's 16 x 16 scratch.
    __device__ float* scratch(int w) const { return L + tc_tokens * tc_y_tile + 256 * w; }
    //! A states pass writes the tile's totals.
    __device__ void finish(std::int64_t segment_batch, bool states_only) const {
      write_totals(segment_batch, states_only);
    }

   private:
    __device__ float* steps() const { return L + tc_tokens * tc_y_tile + 4 * 256; }
  };
  //! The weights of the block of batch b and head h over `table` (table_floats(Xp), shared).
  __device__ block start(float* table, std::int64_t b, std::int64_t h, std::int64_t C, bool reverse, int) const {
    return {{g, totals, table + values_floats, tc_y_tile, static_cast<int>(blockIdx.x) * tc_y_tile, b, h, C, reverse}};
  }
};

}  // namespace linear_kernels
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
