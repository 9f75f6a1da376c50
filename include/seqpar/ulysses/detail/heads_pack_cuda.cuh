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

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN
namespace device {

//! Which side a kernel walks: the seq-side blocks (forward pack) or the heads-side blocks (forward
//! unpack, inverse pack); and whether the buffer is written (pack) or read (unpack).
enum class walk {
  seq_side_pack,      //!< forward pack: the sequence shards' blocks into the buffer
  heads_side_unpack,  //!< forward unpack: the buffer into the head shards' blocks
  heads_side_pack,    //!< inverse pack: the head shards' blocks into the buffer
};

//! How a kernel walks rows: `lanes` threads share each head_dim row (a power of two dividing the
//! block), each moving every lanes-th vector of it, so one row's coordinates serve several vectors
//! and a warp's accesses stay contiguous within each row.
struct row_walk {
  int lanes = 1;  //!< threads per row
};

//! Where the tokens of a block's peer sit: token s of peer p is global position first + s
//! (contiguous shards), or the zigzag's two chunks; computed once per block, not per element.
struct token_map {
  std::int64_t first = 0, chunk = 0, second = 0;  //!< contiguous: first; zigzag: chunk and the 2nd chunk's start
  bool zigzag = false;                            //!< the partition's strategy
  //! The block's peer's token s as a global position.
  SEQPAR_HOST_DEVICE std::int64_t operator()(std::int64_t s) const {
    return !zigzag ? first + s : s < chunk ? first + s : second + (s - chunk);
  }
};

//! The token map of peer p's shard.
SEQPAR_HOST_DEVICE token_map tokens_of(const seq_partition& seq, int p) {
  if (seq.strategy == shard_strategy::contiguous) return {seq.offset(p), 0, 0, false};
  const std::int64_t chunk = seq.tokens / (2 * seq.ranks);
  return {p * chunk, chunk, (2 * seq.ranks - 1 - p) * chunk, true};
}

//! One block row per (peer, segment); the segment's head_dim rows, in buffer order (row = (s * B +
//! b) * heads + h), are dealt to groups of walk.lanes threads, each moving V elements at a time.
//! Row coordinates use Index arithmetic (32-bit when the launch planning found that it fits).
template <walk W, class T, int V, class Index>
__global__ void exchange_copy_kernel(detail::heads_geometry g, detail::segment_views<T> views, T* buffer,
                                     row_walk walk_rows) {
  const int p = blockIdx.y / g.segments, t = blockIdx.y % g.segments;
  constexpr bool seq_side = W == walk::seq_side_pack;
  const Index heads = static_cast<Index>(seq_side ? g.seg_heads(t, p) : g.seg_heads(t, g.rank));
  const Index batch = static_cast<Index>(g.batch);
  const Index rows = static_cast<Index>(seq_side ? g.seq.size(g.rank) : g.seq.size(p)) * batch * heads;
  const std::int64_t D = g.head_dim;
  T* base = buffer + (seq_side ? g.seq_displ[p] + g.seq_side_segment_offset(p, t)
                               : g.heads_displ[p] + g.heads_side_segment_offset(p, t));
  const int first_head = seq_side ? g.seg_first(t, p) : 0;
  const token_map token = seq_side ? token_map{} : tokens_of(g.seq, p);
  const std::int64_t d_stride =
      W == walk::heads_side_unpack ? views.out[t].stride(axis::head_dim) : views.in[t].stride(axis::head_dim);
  const int lanes = walk_rows.lanes, lane = static_cast<int>(threadIdx.x) % lanes;
  const Index rows_per_block = static_cast<Index>(blockDim.x) / lanes;
  const Index step = static_cast<Index>(gridDim.x) * rows_per_block;
  const std::int64_t vectors = D / V;
  for (Index row = static_cast<Index>(blockIdx.x) * rows_per_block + static_cast<Index>(threadIdx.x) / lanes;
       row < rows; row += step) {
    const Index h = row % heads, sb = row / heads, b = sb % batch, s = sb / batch;
    const std::int64_t at = seq_side ? std::int64_t(s) : token(s);
    T* run = base + static_cast<std::int64_t>(row) * D;
    if constexpr (W == walk::heads_side_unpack) {
      T* out = &views.out[t](b, at, first_head + h, 0);
      for (std::int64_t v = lane; v < vectors; v += lanes)
        *reinterpret_cast<vec<T, V>*>(out + v * V * d_stride) = *reinterpret_cast<const vec<T, V>*>(run + v * V);
    } else {
      const T* in = &views.in[t](b, at, first_head + h, 0);
      for (std::int64_t v = lane; v < vectors; v += lanes)
        *reinterpret_cast<vec<T, V>*>(run + v * V) = *reinterpret_cast<const vec<T, V>*>(in + v * V * d_stride);
    }
  }
}

//! Inverse unpack: the rows of each output segment (row = (s * B + b) * H + head) are dealt to
//! groups of walk.lanes threads; each row's owners and buffer positions are found once, then each
//! thread sums, in fp32, the copies of its V elements that the owners sent back (a single copy, as
//! for every query head, passes bit for bit). With head groups, rows outside the group are left
//! alone and a kv head an earlier group wrote is added to.
template <class T, int V, class Index>
__global__ void unpack_seq_side_sum_kernel(detail::heads_geometry g, detail::segment_views<T> views, const T* buffer,
                                           row_walk walk_rows) {
  const int t = blockIdx.y;
  const Index H = static_cast<Index>(g.seg_total_heads(t)), batch = static_cast<Index>(g.batch);
  const Index rows = static_cast<Index>(g.seq.size(g.rank)) * batch * H;
  const std::int64_t D = g.head_dim, vectors = D / V, d_stride = views.out[t].stride(axis::head_dim);
  const int lanes = walk_rows.lanes, lane = static_cast<int>(threadIdx.x) % lanes;
  const Index rows_per_block = static_cast<Index>(blockDim.x) / lanes;
  const Index step = static_cast<Index>(gridDim.x) * rows_per_block;
  for (Index row = static_cast<Index>(blockIdx.x) * rows_per_block + static_cast<Index>(threadIdx.x) / lanes;
       row < rows; row += step) {
    const Index head = row % H, sb = row / H, b = sb % batch, s = sb / batch;
    int first = 0, last = 0;
    g.owners(t, head, first, last);
    if (first > last) continue;  // not in this exchange's group
    const bool add = g.sent_by_earlier_group(t, head);
    T* out = &views.out[t](b, s, head, 0);
    if (first == last && !add) {  // one owner: pass the bits through untouched
      const T* in = buffer + g.seq_side_index(first, t, b, s, head, 0);
      for (std::int64_t v = lane; v < vectors; v += lanes)
        *reinterpret_cast<vec<T, V>*>(out + v * V * d_stride) = *reinterpret_cast<const vec<T, V>*>(in + v * V);
      continue;
    }
    for (std::int64_t v = lane; v < vectors; v += lanes) {
      float acc[V] = {};
      if (add) {  // an earlier head group wrote this kv head: add to it
        const vec<T, V> x = *reinterpret_cast<const vec<T, V>*>(out + v * V * d_stride);
        for (int i = 0; i < V; ++i) acc[i] = to_float(x.x[i]);
      }
      for (int p = first; p <= last; ++p) {
        const vec<T, V> x = *reinterpret_cast<const vec<T, V>*>(buffer + g.seq_side_index(p, t, b, s, head, v * V));
        for (int i = 0; i < V; ++i) acc[i] += to_float(x.x[i]);
      }
      vec<T, V> y;
      for (int i = 0; i < V; ++i) y.x[i] = from_float<T>(acc[i]);
      *reinterpret_cast<vec<T, V>*>(out + v * V * d_stride) = y;
    }
  }
}

//! True when every view of the exchange allows 16-byte vectors.
template <class T>
bool vectorizable(const detail::heads_geometry& g, const detail::segment_views<T>& v) {
  for (int t = 0; t < g.segments; ++t)
    if (!rows_are_vectorizable(v.in[t]) || !rows_are_vectorizable(v.out[t])) return false;
  return true;
}

//! Threads per head_dim row of `vectors` vectors: a power of two up to 8, so each thread of a row
//! moves one or more vectors and 8 lanes of 16 bytes make 128 contiguous bytes per row.
inline row_walk row_lanes(std::int64_t vectors) {
  int lanes = 1;
  while (lanes < 8 && lanes * 2 <= vectors) lanes *= 2;
  return {lanes};
}

//! The grid of a row walk: `rows` rows at most per block row, 256 threads a block, no more blocks
//! than fill the device (8 blocks of 256 threads per multiprocessor) over `block_rows` block rows,
//! so each thread moves several rows when the work is large.
inline dim3 row_grid(std::int64_t rows, row_walk w, int block_rows, const device_info& device) {
  const std::int64_t per_block = 256 / w.lanes;
  const std::int64_t fill = std::max<std::int64_t>(1, std::int64_t(device.multiprocessors) * 8 / std::max(block_rows, 1));
  const std::int64_t blocks = std::clamp<std::int64_t>((rows + per_block - 1) / per_block, 1, fill);
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(std::max(block_rows, 1)));
}

//! True when a row walk over `rows` rows can count in 32-bit arithmetic: every row index and the
//! one a thread steps to past its last row. A step is the grid's rows, at most `rows` plus a block
//! of 256 (row_grid), so the largest index reached is below 2 rows + 256.
inline bool rows_fit_32_bits(std::int64_t rows) { return 2 * rows + 256 <= std::numeric_limits<std::int32_t>::max(); }

template <class I>
struct index_type {
  using type = I;
};

//! run(vector, index): vector is std::integral_constant<int, V> (16-byte vectors or 1 element) and
//! index is index_type<std::int32_t> or index_type<std::int64_t>, as the arguments choose.
template <class T, class Run>
void with_vector_and_index(bool vectors, bool narrow, Run&& run) {
  using wide = std::integral_constant<int, vec16<T>>;
  using one = std::integral_constant<int, 1>;
  if (vectors && narrow) run(wide{}, index_type<std::int32_t>{});
  else if (vectors) run(wide{}, index_type<std::int64_t>{});
  else if (narrow) run(one{}, index_type<std::int32_t>{});
  else run(one{}, index_type<std::int64_t>{});
}

//! Launches exchange_copy_kernel for walk W on `stream` through `launch`: 16-byte vectors when
//! every view allows them, 32-bit row arithmetic when the largest segment allows it, a grid sized to
//! the device; nothing when every segment is empty.
template <walk W, class T, class Launcher>
void launch_exchange_copy(const detail::heads_geometry& g, const detail::segment_views<T>& v, T* buffer,
                          stream_t stream, const Launcher& launch) {
  std::int64_t largest = 0;
  for (int p = 0; p < g.seq.ranks; ++p)
    for (int t = 0; t < g.segments; ++t)
      largest = std::max(largest, W == walk::seq_side_pack ? g.seq_side_segment(p, t) : g.heads_side_segment(p, t));
  if (largest == 0) return;
  const std::int64_t rows = largest / g.head_dim;
  const int block_rows = g.seq.ranks * g.segments;
  auto run = [&](auto vector, auto index) {
    constexpr int V = decltype(vector)::value;
    using Index = typename decltype(index)::type;
    const row_walk w = row_lanes(g.head_dim / V);
    launch(exchange_copy_kernel<W, T, V, Index>, row_grid(rows, w, block_rows, launch.device()), dim3(256), 0, stream,
           g, v, buffer, w);
  };
  with_vector_and_index<T>(vectorizable(g, v), rows_fit_32_bits(rows), run);
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
  std::int64_t rows = 0;
  for (int t = 0; t < g.segments; ++t) rows = std::max(rows, g.seq.size(g.rank) * g.batch * g.seg_total_heads(t));
  if (rows == 0) return;
  auto run = [&](auto vector, auto index) {
    constexpr int V = decltype(vector)::value;
    using Index = typename decltype(index)::type;
    const row_walk w = row_lanes(g.head_dim / V);
    launch(unpack_seq_side_sum_kernel<T, V, Index>, row_grid(rows, w, g.segments, launch.device()), dim3(256), 0,
           stream, g, v, buffer, w);
  };
  with_vector_and_index<T>(vectorizable(g, v), rows_fit_32_bits(rows), run);
}

}  // namespace device
SEQPAR_DETAIL_KERNEL_NAMESPACE_END
