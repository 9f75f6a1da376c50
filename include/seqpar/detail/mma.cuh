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
//! Fragments come from shared memory by ldmatrix: each of up to four 8 x 8 matrices of 16-bit
//! elements is eight 16-byte rows whose addresses lanes 8i .. 8i + 7 give; lane l receives row
//! l / 4, elements 2(l % 4) and 2(l % 4) + 1 of each matrix (of its transpose with .trans).
//! A host compiler may run these under an emulated warp: it defines SEQPAR_EMULATE_MMA(d, a, b,
//! is_half), SEQPAR_EMULATE_LDMATRIX(r, row, trans) and the CUDA built-ins the kernels use
//! (tests/support/seqpar_test/warp_emulation.hpp).
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/detail/architecture_check.cuh>
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

//! ldmatrix of N (1, 2 or 4) 8 x 8 matrices of 16-bit elements, transposed with `trans`: `row` is
//! the 16-byte row this lane gives (matrix lane / 8, its row lane % 8; lanes past 8N give none
//! that is read). Shared memory, 16-byte aligned rows.
template <int N, bool trans>
__device__ inline void ldmatrix(std::uint32_t (&r)[N], const void* row) {
#if defined(__CUDA_ARCH__)
  const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 4 && trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
  else if constexpr (N == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
  else if constexpr (N == 2 && trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(at));
  else if constexpr (N == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(at));
  else
    static_assert(N == 2 || N == 4, "ldmatrix: two or four matrices");
#elif defined(SEQPAR_EMULATE_LDMATRIX)
  SEQPAR_EMULATE_LDMATRIX(r, row, trans);  // a host emulation of the warp, for tests
#else
  (void)r, (void)row;
  __trap();
#endif
}

//! The A fragment of the 16 x 16 block of `s` at (row0, col0) (k runs along the rows): one
//! ldmatrix.x4 of the blocks (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15).
template <input T>
__device__ inline void load_a(std::uint32_t (&a)[4], smem_tile<T> s, int row0, int col0) {
  const int lane = threadIdx.x % 32, m = lane / 8;
  ldmatrix<4, false>(a, &s(row0 + lane % 8 + 8 * (m & 1), col0 + 8 * (m >> 1)));
}

//! The B fragment for B[k][n] = s(n0 + n, k0 + k): the product with s's rows transposed (S = Q K^T
//! with K's rows in `s`): one ldmatrix.x2 of rows n0 .. n0 + 7 at columns k0 and k0 + 8.
template <input T>
__device__ inline void load_b_transposed(std::uint32_t (&b)[2], smem_tile<T> s, int k0, int n0) {
  const int lane = threadIdx.x % 32, m = lane / 8 % 2;
  ldmatrix<2, false>(b, &s(n0 + lane % 8, k0 + 8 * m));
}

//! The B fragments of two n-blocks at once, b[0..1] for n0 and b[2..3] for n0 + 8 (as
//! load_b_transposed): one ldmatrix.x4.
template <input T>
__device__ inline void load_b_transposed_pair(std::uint32_t (&b)[4], smem_tile<T> s, int k0, int n0) {
  const int lane = threadIdx.x % 32, m = lane / 8;
  ldmatrix<4, false>(b, &s(n0 + lane % 8 + 8 * (m >> 1), k0 + 8 * (m & 1)));
}

//! The B fragment for B[k][n] = s(k0 + k, n0 + n): the product with s as it is (O = P V with V's
//! rows in `s`): one ldmatrix.x2.trans of rows k0 .. k0 + 7 and k0 + 8 .. k0 + 15 at column n0.
template <input T>
__device__ inline void load_b(std::uint32_t (&b)[2], smem_tile<T> s, int k0, int n0) {
  const int lane = threadIdx.x % 32, m = lane / 8 % 2;
  ldmatrix<2, true>(b, &s(k0 + lane % 8 + 8 * m, n0));
}

//! The B fragments of two n-blocks at once, b[0..1] for n0 and b[2..3] for n0 + 8 (as load_b):
//! one ldmatrix.x4.trans.
template <input T>
__device__ inline void load_b_pair(std::uint32_t (&b)[4], smem_tile<T> s, int k0, int n0) {
  const int lane = threadIdx.x % 32, m = lane / 8;
  ldmatrix<4, true>(b, &s(k0 + lane % 8 + 8 * (m & 1), n0 + 8 * (m >> 1)));
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
  static_assert(n_tiles % 2 == 0, "product_transposed: n-blocks come in pairs");
#pragma unroll
  for (int kk = 0; kk < k_steps; ++kk) {
    std::uint32_t af[4];
    load_a(af, a, row0, kk * 16);
#pragma unroll
    for (int n = 0; n < n_tiles; n += 2) {
      std::uint32_t bf[4];
      load_b_transposed_pair(bf, b, kk * 16, n * 8);
      mma_16x8x16<T>(acc[n], af, {bf[0], bf[1]});
      mma_16x8x16<T>(acc[n + 1], af, {bf[2], bf[3]});
    }
  }
}

//! acc += C B with C the fp32 accumulators of a 16 x (16 * k_steps) product (rounded to T) and
//! B = rows of `b` as they are: (16 * k_steps) x (8 * d_tiles).
template <int k_steps, int d_tiles, int c_tiles, class T>
__device__ inline void product_from_accumulators(float (&acc)[d_tiles][4], const float (&c)[c_tiles][4],
                                                 smem_tile<T> b) {
  static_assert(d_tiles % 2 == 0, "product_from_accumulators: n-blocks come in pairs");
#pragma unroll
  for (int kk = 0; kk < k_steps; ++kk) {
    std::uint32_t af[4];
    a_from_accumulators<T>(af, c, kk);
#pragma unroll
    for (int dn = 0; dn < d_tiles; dn += 2) {
      std::uint32_t bf[4];
      load_b_pair(bf, b, kk * 16, dn * 8);
      mma_16x8x16<T>(acc[dn], af, {bf[0], bf[1]});
      mma_16x8x16<T>(acc[dn + 1], af, {bf[2], bf[3]});
    }
  }
}

}  // namespace mma
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
