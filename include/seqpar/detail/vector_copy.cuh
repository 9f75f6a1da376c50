//! @file vector_copy.cuh
//! Helpers of the copy kernels: 16-byte vectors of elements and the checks that allow them.
#pragma once

#include <seqpar/tensor.hpp>
#include <seqpar/cuda_check.hpp>

#include <algorithm>
#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace device {

//! V elements moved as one aligned load or store.
template <class T, int V>
struct alignas(sizeof(T) * V) vec {
  T x[V];
};

//! Elements per 16-byte vector of T.
template <class T>
inline constexpr int vec16 = static_cast<int>(16 / sizeof(T));

//! True when every head_dim row of `v` can be read or written as 16-byte vectors: unit stride
//! along head_dim, every other stride and the base address multiples of 16 bytes, D a multiple of V.
template <class T>
bool rows_are_vectorizable(const tensor_view<T>& v) {
  constexpr int V = vec16<std::remove_const_t<T>>;
  if (v.size() == 0) return true;
  if (v.stride(axis::head_dim) != 1 || v.head_dim() % V != 0) return false;
  if (reinterpret_cast<std::uintptr_t>(v.data()) % 16 != 0) return false;
  for (axis a : {axis::batch, axis::seq, axis::heads})
    if (v.extent(a) > 1 && v.stride(a) % V != 0) return false;
  return true;
}

//! True when the rows of every one of `views` can be read or written as 16-byte vectors.
template <class... Views>
bool all_rows_are_vectorizable(const Views&... views) {
  return (rows_are_vectorizable(views) && ...);
}

//! A grid-stride launch shape for `work` items of 256 threads each handling one item per step.
inline dim3 grid_for(std::int64_t work, int rows) {
  const std::int64_t blocks = std::clamp<std::int64_t>((work + 255) / 256, 1, 2048);
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(std::max(rows, 1)));
}

}  // namespace device
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
