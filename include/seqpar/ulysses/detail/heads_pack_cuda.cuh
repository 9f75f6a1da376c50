//! @file heads_pack_cuda.cuh
//! CUDA pack and unpack of the Ulysses exchange buffers. Same index maps as the host loops
//! (heads_geometry); 16-byte vectors along head_dim when every view allows, else scalars. The host
//! code plans each launch and hands it to a launcher (policy/detail/launcher.cuh): cuda_launcher
//! under nvcc, or the kernel-emulation tests' host launcher, so they run the shipped planning.
#pragma once

#include <seqpar/cuda_check.hpp>
#include <seqpar/detail/vector_copy.cuh>
#include <seqpar/policy/detail/launcher.cuh>
#include <seqpar/ulysses/detail/heads_geometry.hpp>
#include <seqpar/ulysses/detail/heads_pack_host.hpp>

#include <cstdint>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace device {

//! Which side a kernel walks: the seq-side blocks (forward pack) or the heads-side blocks (forward
//! unpack, inverse pack); and whether the buffer is written (pack) or read (unpack).
enum class walk {
  seq_side_pack,      //!< forward pack: the sequence shards' blocks into the buffer
  heads_side_unpack,  //!< forward unpack: the buffer into the head shards' blocks
  heads_side_pack,    //!< inverse pack: the head shards' blocks into the buffer
};

//! One block row per (peer, segment); threads stride over that segment's elements, V at a time.
template <walk W, class T, int V>
__global__ void exchange_copy_kernel(detail::heads_geometry g, detail::segment_views<T> views, T* buffer) {
  const int p = blockIdx.y / g.segments, t = blockIdx.y % g.segments;
  const bool seq_side = W == walk::seq_side_pack;
  const std::int64_t n = seq_side ? g.seq_side_segment(p, t) : g.heads_side_segment(p, t);
  T* base = buffer + (seq_side ? g.seq_displ[p] + g.seq_side_segment_offset(p, t)
                               : g.heads_displ[p] + g.heads_side_segment_offset(p, t));
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x * V;
  for (std::int64_t e = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; e < n; e += step) {
    const detail::coord4 c = seq_side ? g.seq_side_coord(p, t, e) : g.heads_side_coord(p, t, e);
    if constexpr (W == walk::heads_side_unpack) {
      *reinterpret_cast<vec<T, V>*>(&views.out[t](c.b, c.s, c.h, c.d)) = *reinterpret_cast<const vec<T, V>*>(base + e);
    } else {
      *reinterpret_cast<vec<T, V>*>(base + e) = *reinterpret_cast<const vec<T, V>*>(&views.in[t](c.b, c.s, c.h, c.d));
    }
  }
}

//! Inverse unpack: each thread owns V consecutive head_dim elements of one output row and sums, in
//! fp32, the copies its owners sent back (a single copy, as for every query head, passes bit for bit).
template <class T, int V>
__global__ void unpack_seq_side_sum_kernel(detail::heads_geometry g, detail::segment_views<T> views, const T* buffer) {
  const int t = blockIdx.y;
  const std::int64_t H = g.seg_total_heads(t), D = g.head_dim, B = g.batch;
  const std::int64_t n = g.seq.size(g.rank) * B * H * D;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x * V;
  for (std::int64_t e = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; e < n; e += step) {
    const std::int64_t d = e % D, head = (e / D) % H, b = (e / (D * H)) % B, s = e / (D * H * B);
    int first = 0, last = 0;
    g.owners(t, head, first, last);
    if (first == last) {  // one owner: pass the bits through untouched
      *reinterpret_cast<vec<T, V>*>(&views.out[t](b, s, head, d)) =
          *reinterpret_cast<const vec<T, V>*>(buffer + g.seq_side_index(first, t, b, s, head, d));
      continue;
    }
    float acc[V] = {};
    for (int p = first; p <= last; ++p) {
      const vec<T, V> x = *reinterpret_cast<const vec<T, V>*>(buffer + g.seq_side_index(p, t, b, s, head, d));
      for (int i = 0; i < V; ++i) acc[i] += to_float(x.x[i]);
    }
    vec<T, V> y;
    for (int i = 0; i < V; ++i) y.x[i] = from_float<T>(acc[i]);
    *reinterpret_cast<vec<T, V>*>(&views.out[t](b, s, head, d)) = y;
  }
}

//! True when every view of the exchange allows 16-byte vectors.
template <class T>
bool vectorizable(const detail::heads_geometry& g, const detail::segment_views<T>& v) {
  for (int t = 0; t < g.segments; ++t)
    if (!rows_are_vectorizable(v.in[t]) || !rows_are_vectorizable(v.out[t])) return false;
  return true;
}

//! Launches exchange_copy_kernel for walk W on `stream` through `launch`, sized by the largest
//! segment, with 16-byte vectors when every view allows them; nothing when every segment is empty.
template <walk W, class T, class Launcher>
void launch_exchange_copy(const detail::heads_geometry& g, const detail::segment_views<T>& v, T* buffer,
                          stream_t stream, const Launcher& launch) {
  std::int64_t largest = 0;
  for (int p = 0; p < g.seq.ranks; ++p)
    for (int t = 0; t < g.segments; ++t)
      largest = std::max(largest, W == walk::seq_side_pack ? g.seq_side_segment(p, t) : g.heads_side_segment(p, t));
  if (largest == 0) return;
  const int rows = g.seq.ranks * g.segments;
  if (vectorizable(g, v)) {
    constexpr int V = vec16<T>;
    launch(exchange_copy_kernel<W, T, V>, grid_for(largest / V, rows), dim3(256), 0, stream, g, v, buffer);
  } else {
    launch(exchange_copy_kernel<W, T, 1>, grid_for(largest, rows), dim3(256), 0, stream, g, v, buffer);
  }
}

//! Forward pack on the device.
template <class T, class Launcher>
void pack_seq_side(const detail::heads_geometry& g, const detail::segment_views<T>& v, T* buffer, stream_t stream,
                   const Launcher& launch) {
  launch_exchange_copy<walk::seq_side_pack>(g, v, buffer, stream, launch);
}

//! Forward unpack on the device.
template <class T, class Launcher>
void unpack_heads_side(const detail::heads_geometry& g, const T* buffer, const detail::segment_views<T>& v,
                       stream_t stream, const Launcher& launch) {
  launch_exchange_copy<walk::heads_side_unpack>(g, v, const_cast<T*>(buffer), stream, launch);
}

//! Inverse pack on the device.
template <class T, class Launcher>
void pack_heads_side(const detail::heads_geometry& g, const detail::segment_views<T>& v, T* buffer, stream_t stream,
                     const Launcher& launch) {
  launch_exchange_copy<walk::heads_side_pack>(g, v, buffer, stream, launch);
}

//! Inverse unpack (with the GQA sum) on the device.
template <class T, class Launcher>
void unpack_seq_side_sum(const detail::heads_geometry& g, const T* buffer, const detail::segment_views<T>& v,
                         stream_t stream, const Launcher& launch) {
  std::int64_t largest = 0;
  for (int t = 0; t < g.segments; ++t)
    largest = std::max(largest, g.seq.size(g.rank) * g.batch * g.seg_total_heads(t) * g.head_dim);
  if (largest == 0) return;
  if (vectorizable(g, v)) {
    constexpr int V = vec16<T>;
    launch(unpack_seq_side_sum_kernel<T, V>, grid_for(largest / V, g.segments), dim3(256), 0, stream, g, v, buffer);
  } else {
    launch(unpack_seq_side_sum_kernel<T, 1>, grid_for(largest, g.segments), dim3(256), 0, stream, g, v, buffer);
  }
}

}  // namespace device
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
