//! @file mma.cuh
//! Warp-level tensor-core products (nvcc only): mma.sync m16n8k16 with fp16 or bf16 inputs and fp32
//! accumulators, the fragment layouts it uses, fragment loads from shared-memory tiles, and the
//! warp tile products built from them.
//!
//! Lane l of a warp is in quad row g = l / 4 and column pair t = l % 4. The PTX layouts:
//! - A (16 x 16, row major), 4 registers of two elements: {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
//!   A[g+8][2t+8..]};
//! - B (16 x 8, k by n), 2 registers: {B[2t..2t+1][g], B[2t+8..2t+9][g]};
//! - C (16 x 8, fp32), 4 floats: {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}.
//! The lower k (or column) index of a register pair sits in its low 16 bits.
//! A host compiler may run these under an emulated warp: it defines SEQPAR_EMULATE_MMA(d, a, b,
//! is_half) and the CUDA built-ins the kernels use (tests/support/seqpar_test/warp_emulation.hpp).
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/types.hpp>

#include <cstdint>
#include <type_traits>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace mma {

//! Element types the tensor-core products take.
template <class T>
concept input = std::same_as<T, __half> || std::same_as<T, __nv_bfloat16>;

//! A row-major tile in shared memory: element (r, c) at data[r * ld + c]; ld even.
template <class T>
struct smem_tile {
  T* data;  //!< element (0, 0)
  int ld;   //!< elements between consecutive rows
  //! Element (r, c).
  __device__ T& operator()(int r, int c) const { return data[r * ld + c]; }
};

//! A tile of `rows` rows of `ld` elements, the next array of a shared-memory carver (shared_layout.cuh).
template <class T, class Carver>
SEQPAR_HOST_DEVICE smem_tile<T> take_tile(Carver& carver, int rows, int ld) {
  return {carver.template take<T>(rows * ld), ld};
}

//! Two elements packed into one 32-bit register, `lo` in the low half.
template <input T>
__device__ inline std::uint32_t pack(T lo, T hi) {
  auto bits = [](T x) -> std::uint32_t {
    if constexpr (std::same_as<T, __half>) return __half_as_ushort(x);
    else return __bfloat16_as_ushort(x);
  };
  return bits(lo) | (bits(hi) << 16);
}
//! Two floats rounded to T and packed, `lo` in the low half.
template <input T>
__device__ inline std::uint32_t pack(float lo, float hi) {
  return pack<T>(from_float<T>(lo), from_float<T>(hi));
}

//! The A fragment of the 16 x 16 block of `s` at (row0, col0) (k runs along the rows).
template <input T>
__device__ inline void load_a(std::uint32_t (&a)[4], smem_tile<T> s, int row0, int col0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  auto pair = [&](int r, int c) { return *reinterpret_cast<const std::uint32_t*>(&s(row0 + r, col0 + c)); };
  a[0] = pair(g, 2 * t);
  a[1] = pair(g + 8, 2 * t);
  a[2] = pair(g, 2 * t + 8);
  a[3] = pair(g + 8, 2 * t + 8);
}

//! The B fragment for B[k][n] = s(n0 + n, k0 + k): the product with s's rows transposed (S = Q K^T
//! with K's rows in `s`). Pairs along k are adjacent in memory.
template <input T>
__device__ inline void load_b_transposed(std::uint32_t (&b)[2], smem_tile<T> s, int k0, int n0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  b[0] = *reinterpret_cast<const std::uint32_t*>(&s(n0 + g, k0 + 2 * t));
  b[1] = *reinterpret_cast<const std::uint32_t*>(&s(n0 + g, k0 + 2 * t + 8));
}

//! The B fragment for B[k][n] = s(k0 + k, n0 + n): the product with s as it is (O = P V with V's
//! rows in `s`). Pairs along k are a row apart, so each register takes two loads.
template <input T>
__device__ inline void load_b(std::uint32_t (&b)[2], smem_tile<T> s, int k0, int n0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  b[0] = pack<T>(s(k0 + 2 * t, n0 + g), s(k0 + 2 * t + 1, n0 + g));
  b[1] = pack<T>(s(k0 + 2 * t + 8, n0 + g), s(k0 + 2 * t + 9, n0 + g));
}

//! The A fragment of k-step `kk` made from fp32 accumulators: c[2kk] and c[2kk + 1] are the two
//! 16 x 8 C blocks of columns 16kk .. 16kk + 15 (the FlashAttention-2 register reuse of P and dS).
template <input T>
__device__ inline void a_from_accumulators(std::uint32_t (&a)[4], const float (*c)[4], int kk) {
  const float* lo = c[2 * kk];
  const float* hi = c[2 * kk + 1];
  a[0] = pack<T>(lo[0], lo[1]);
  a[1] = pack<T>(lo[2], lo[3]);
  a[2] = pack<T>(hi[0], hi[1]);
  a[3] = pack<T>(hi[2], hi[3]);
}

//! d += a * b on tensor cores, fp32 accumulation (sm_80 and newer).
template <input T>
__device__ inline void mma_16x8x16(float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::same_as<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(SEQPAR_EMULATE_MMA)
  SEQPAR_EMULATE_MMA(d, a, b, (std::same_as<T, __half>));  // a host emulation of the warp, for tests
#else
  (void)d, (void)a, (void)b;
  __trap();  // tensor-core kernels need sm_80 or newer
#endif
}

//! Row and column, within a 16 x 8 C block, of accumulator e (0..3) of this lane.
__device__ inline int c_row(int e) { return (threadIdx.x % 32) / 4 + (e >= 2 ? 8 : 0); }
//! Column of accumulator e (0..3) of this lane within its 16 x 8 C block.
__device__ inline int c_col(int e) { return 2 * (threadIdx.x % 4) + (e & 1); }

//! Reduces over the four lanes of a quad (the lanes that share C rows).
template <class Op>
__device__ inline float quad_reduce(float x, Op op) {
  x = op(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return op(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

//! Sets every accumulator of an N-block row to zero.
template <int N>
__device__ inline void zero(float (&c)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) c[n][e] = 0.0f;
}

//! acc[n] += A B over k_steps of 16 with A from `a` (rows row0.., columns along k) and B[k][n] from
//! the rows of `b` (row n0 + n, column k): a product with b's rows transposed, N = 8 * N_tiles.
template <int k_steps, int n_tiles, class T>
__device__ inline void product_transposed(float (&acc)[n_tiles][4], smem_tile<T> a, int row0,
                                          smem_tile<T> b) {
#pragma unroll
  for (int kk = 0; kk < k_steps; ++kk) {
    std::uint32_t af[4];
    load_a(af, a, row0, kk * 16);
#pragma unroll
    for (int n = 0; n < n_tiles; ++n) {
      std::uint32_t bf[2];
      load_b_transposed(bf, b, kk * 16, n * 8);
      mma_16x8x16<T>(acc[n], af, bf);
    }
  }
}

//! acc += C B with C the fp32 accumulators of a 16 x (16 * k_steps) product (rounded to T) and
//! B = rows of `b` as they are: (16 * k_steps) x (8 * d_tiles).
template <int k_steps, int d_tiles, int c_tiles, class T>
__device__ inline void product_from_accumulators(float (&acc)[d_tiles][4], const float (&c)[c_tiles][4],
                                                 smem_tile<T> b) {
#pragma unroll
  for (int kk = 0; kk < k_steps; ++kk) {
    std::uint32_t af[4];
    a_from_accumulators<T>(af, c, kk);
#pragma unroll
    for (int dn = 0; dn < d_tiles; ++dn) {
      std::uint32_t bf[2];
      load_b(bf, b, kk * 16, dn * 8);
      mma_16x8x16<T>(acc[dn], af, bf);
    }
  }
}

}  // namespace mma
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
