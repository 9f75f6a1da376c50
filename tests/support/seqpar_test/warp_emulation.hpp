//! @file warp_emulation.hpp
//! Runs CUDA kernels on the host (blocks of up to 256 threads), with one std::thread per CUDA
//! thread: threadIdx and blockIdx are thread-local, gridDim is the launch's, __syncthreads and the
//! warp shuffles are barriers, and mma.sync m16n8k16 and ldmatrix are computed from the PTX ISA's
//! fragment tables, written here independently of seqpar/detail/mma.cuh. cp.async copies wait in
//! their thread's groups and land only at the cp.async.wait_group that covers them, so a kernel
//! that reads a tile too early reads the poison the block's shared memory starts with. Include it first, before any
//! seqpar header, in a .cpp built by a host compiler; the kernel headers included after it compile
//! as host code. seqpar_emulation::launcher is a launcher for the CUDA policies
//! (seqpar/policy/detail/launcher.cuh) that runs their kernels this way.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

namespace seqpar_emulation {

struct index3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local index3 thread_index, block_index;
inline index3 grid_size, block_size;
inline constexpr int warps = 8;  // the most a block may have
inline std::barrier<>* block_barrier = nullptr;
inline std::barrier<>* warp_barrier[warps] = {};
inline float shuffle_slots[warps][32];
alignas(16) inline unsigned char shared_memory[1 << 17];  // the block's dynamic shared memory
inline std::uint32_t a_slots[warps][32][4], b_slots[warps][32][2];
inline const void* row_slots[warps][32];

//! One thread's cp.async copies: the uncommitted ones, then the committed groups, oldest first.
struct async_copy {
  void* dst;
  const void* src;
};
inline thread_local std::vector<async_copy> uncommitted_copies;
inline thread_local std::deque<std::vector<async_copy>> committed_copies;

inline int warp() { return static_cast<int>(thread_index.x / 32); }
inline int lane() { return static_cast<int>(thread_index.x % 32); }

inline float element_value(std::uint16_t bits, bool half) {
  if (half) {
    __half_raw r;
    r.x = bits;
    return __half2float(__half(r));
  }
  const std::uint32_t widened = std::uint32_t(bits) << 16;  // bfloat16 is the top half of a float
  float f;
  std::memcpy(&f, &widened, sizeof f);
  return f;
}

//! d += A B for the warp of the calling thread, A and B gathered from every lane's registers.
inline void mma_16x8x16(float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2], bool half) {
  const int w = warp(), l = lane();
  warp_barrier[w]->arrive_and_wait();
  for (int i = 0; i < 4; ++i) a_slots[w][l][i] = a[i];
  for (int i = 0; i < 2; ++i) b_slots[w][l][i] = b[i];
  warp_barrier[w]->arrive_and_wait();
  float A[16][16], B[16][8];
  for (int from = 0; from < 32; ++from) {
    const int g = from / 4, t = from % 4;
    for (int i = 0; i < 8; ++i) {  // PTX: a_i is half i % 2 of register i / 2
      const int row = (i % 4 < 2) ? g : g + 8, col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = element_value(static_cast<std::uint16_t>(a_slots[w][from][i / 2] >> (16 * (i & 1))), half);
    }
    for (int i = 0; i < 4; ++i) {  // PTX: b_i is half i % 2 of register i / 2
      const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      B[row][g] = element_value(static_cast<std::uint16_t>(b_slots[w][from][i / 2] >> (16 * (i & 1))), half);
    }
  }
  const int g = l / 4, t = l % 4;
  for (int i = 0; i < 4; ++i) {  // PTX: c_i is row g (+8 for i >= 2), column 2t + i % 2
    const int row = i < 2 ? g : g + 8, col = 2 * t + (i & 1);
    float sum = 0;
    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
    d[i] += sum;
  }
  warp_barrier[w]->arrive_and_wait();
}

//! ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16 for the warp of the calling thread. PTX: the
//! rows of matrix i are the 16-byte rows at the addresses of lanes 8i .. 8i + 7 (row j from lane
//! 8i + j); lane l receives, in register i, elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1)
//! of matrix i, the first in the low half; .trans gives the transpose's, (2 (l % 4), l / 4) and
//! (2 (l % 4) + 1, l / 4).
template <int N>
void ldmatrix(std::uint32_t (&r)[N], const void* row, bool trans) {
  const int w = warp(), l = lane();
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) throw std::logic_error("ldmatrix: a row is not 16-byte aligned");
  warp_barrier[w]->arrive_and_wait();
  row_slots[w][l] = row;
  warp_barrier[w]->arrive_and_wait();
  auto element = [&](int matrix, int i, int j) {  // matrix[i][j]
    std::uint16_t x;
    std::memcpy(&x, static_cast<const unsigned char*>(row_slots[w][8 * matrix + i]) + 2 * j, sizeof x);
    return std::uint32_t(x);
  };
  const int g = l / 4, t = l % 4;
  for (int m = 0; m < N; ++m)
    r[m] = trans ? element(m, 2 * t, g) | element(m, 2 * t + 1, g) << 16
                 : element(m, g, 2 * t) | element(m, g, 2 * t + 1) << 16;
  warp_barrier[w]->arrive_and_wait();
}

//! cp.async.cg.shared.global of 16 bytes (PTX: both addresses 16-byte aligned; the copy is
//! performed asynchronously and belongs to the next group the thread commits).
inline void cp_async(void* dst, const void* src) {
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 || reinterpret_cast<std::uintptr_t>(src) % 16 != 0)
    throw std::logic_error("cp.async: an address is not 16-byte aligned");
  uncommitted_copies.push_back({dst, src});
}
//! cp.async.commit_group: the thread's uncommitted copies become its newest group.
inline void cp_async_commit() {
  committed_copies.push_back(std::move(uncommitted_copies));
  uncommitted_copies.clear();
}
//! cp.async.wait_group n: every committed group but the newest n completes, oldest first.
inline void cp_async_wait(int n) {
  while (committed_copies.size() > static_cast<std::size_t>(n)) {
    for (const async_copy& c : committed_copies.front()) std::memcpy(c.dst, c.src, 16);
    committed_copies.pop_front();
  }
}

//! Runs body() as every thread of every block of `grid` (blocks one after another, `threads`
//! threads each, a multiple of 32 up to 256). `shared` stands for the block's shared memory: it is
//! poisoned with 0xff before each block; returns false when a block wrote past its first `used` bytes.
template <class Body>
bool launch(dim3 grid, unsigned threads, std::span<unsigned char> shared, std::size_t used, Body&& body) {
  bool within = true;
  grid_size = {grid.x, grid.y, grid.z};
  block_size = {threads, 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::fill(shared.begin(), shared.end(), static_cast<unsigned char>(0xff));
        std::barrier<> block(threads);
        std::vector<std::unique_ptr<std::barrier<>>> per_warp;
        for (unsigned w = 0; w < threads / 32; ++w) {
          per_warp.push_back(std::make_unique<std::barrier<>>(32));
          warp_barrier[w] = per_warp.back().get();
        }
        block_barrier = &block;
        std::vector<std::jthread> running;
        for (unsigned t = 0; t < threads; ++t)
          running.emplace_back([&, t] {
            thread_index = {t, 0, 0};
            block_index = {x, y, z};
            body();
            if (!uncommitted_copies.empty() || !committed_copies.empty())
              throw std::logic_error("a thread ended with cp.async copies it never waited for");
          });
        running.clear();  // joins
        within = within && std::all_of(shared.begin() + used, shared.end(), [](unsigned char c) { return c == 0xff; });
      }
  return within;
}

}  // namespace seqpar_emulation

inline void __syncthreads() { seqpar_emulation::block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float x, int mask) {
  using namespace seqpar_emulation;
  const int w = warp(), l = lane();
  warp_barrier[w]->arrive_and_wait();
  shuffle_slots[w][l] = x;
  warp_barrier[w]->arrive_and_wait();
  const float r = shuffle_slots[w][l ^ mask];
  warp_barrier[w]->arrive_and_wait();
  return r;
}
inline float __expf(float x) { return std::exp(x); }

#define threadIdx seqpar_emulation::thread_index
#define blockIdx seqpar_emulation::block_index
#define blockDim seqpar_emulation::block_size
#define gridDim seqpar_emulation::grid_size
#define SEQPAR_EMULATE_MMA(d, a, b, is_half) seqpar_emulation::mma_16x8x16(d, a, b, is_half)
#define SEQPAR_EMULATE_LDMATRIX(r, row, trans) seqpar_emulation::ldmatrix(r, row, trans)
#define SEQPAR_EMULATE_CP_ASYNC(dst, src) seqpar_emulation::cp_async(dst, src)
#define SEQPAR_EMULATE_CP_ASYNC_COMMIT() seqpar_emulation::cp_async_commit()
#define SEQPAR_EMULATE_CP_ASYNC_WAIT(n) seqpar_emulation::cp_async_wait(n)
#define SEQPAR_EMULATE_SHARED seqpar_emulation::shared_memory
#undef __global__
#undef __device__
#undef __shared__
#undef __align__
#undef __launch_bounds__
#define __global__
#define __device__
#define __shared__
#define __align__(n)
#define __launch_bounds__(n)
#define SEQPAR_KERNELS_AS_HOST_CODE 1  // the kernel headers compile here, their launches the tests' own

#include <seqpar/policy/detail/launcher.cuh>  // after the built-ins above, like the kernel headers

namespace seqpar_emulation {

//! A launcher for seqpar's CUDA policies that runs each kernel on the host, block after block
//! (see launch()), on a device of `multiprocessors` and compute capability `major`.
struct launcher {
  int multiprocessors = 1;            //!< what device() reports
  int major = 8;                      //!< what device() reports
  mutable bool within_shared = true;  //!< every block stayed inside the shared memory its launch asked for

  //! kernel(args...) as every thread of `grid` (one-dimensional blocks).
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t,
                  const Args&... args) const {
    if (block.y != 1 || block.z != 1 || shared_bytes > sizeof shared_memory)
      throw std::logic_error("emulated launch: blocks are one-dimensional and take at most 128 KiB of shared memory");
    within_shared &= launch(grid, block.x, shared_memory, shared_bytes, [&] { kernel(args...); });
  }
  //! The emulated device.
  seqpar::detail::device_info device() const { return {multiprocessors, major}; }
  //! `floats` of host memory, NaN until written.
  std::vector<float> workspace(std::int64_t floats, cudaStream_t) const {
    return std::vector<float>(static_cast<std::size_t>(floats), NAN);
  }
  //! Nothing to order: emulated kernels run one after another, in the order they are launched.
  void order(cudaStream_t, cudaStream_t) const {}
  //! Emulated kernels write host memory: a plain copy.
  void to_host(float* dst, const float* src, std::int64_t floats, cudaStream_t) const {
    std::copy(src, src + floats, dst);
  }
};

//! The emulated launcher, one launch at a time: the emulation's block state is global, and the
//! ranks of an in-process group launch from their own threads.
struct serial_launcher : launcher {
  //! As launcher's, holding the lock every launch of every serial_launcher shares.
  template <class... A>
  void operator()(A&&... a) const {
    std::lock_guard lock(one_launch_at_a_time);
    launcher::operator()(std::forward<A>(a)...);
  }

 private:
  // One for the class: a static local of the template would be one per argument list.
  inline static std::mutex one_launch_at_a_time;
};

}  // namespace seqpar_emulation
