//! @file heads_pack_host.hpp
//! Host pack and unpack of the Ulysses exchange buffers, one head_dim row at a time.
#pragma once

#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>
#include <seqpar/ulysses/detail/heads_geometry.hpp>

#include <cstdint>
#include <cstring>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! Copies one head_dim row between a view and a packed buffer (memcpy when the row is contiguous).
template <class T>
void copy_row(T* dst, std::int64_t dst_stride, const T* src, std::int64_t src_stride, std::int64_t n) {
  if (dst_stride == 1 && src_stride == 1) {
    std::memcpy(static_cast<void*>(dst), static_cast<const void*>(src), static_cast<std::size_t>(n) * sizeof(T));
    return;
  }
  for (std::int64_t d = 0; d < n; ++d) dst[d * dst_stride] = src[d * src_stride];
}

//! The tensors of one exchange, one per segment.
template <class T>
struct segment_views {
  tensor_view<const T> in[3];
  tensor_view<T> out[3];
};

//! Visits every head_dim row of every segment of the blocks of one side: fn(p, t, e) with e the
//! row's first element within the segment.
template <class SegmentElems, class Fn>
void for_each_row(const heads_geometry& g, SegmentElems&& segment_elems, Fn&& fn) {
  for (int p = 0; p < g.seq.ranks; ++p)
    for (int t = 0; t < g.segments; ++t)
      for (std::int64_t e = 0, n = segment_elems(p, t); e < n; e += g.head_dim) fn(p, t, e);
}

//! Forward pack: seq-side blocks from the sequence-sharded inputs.
template <class T>
void pack_seq_side(const heads_geometry& g, const segment_views<T>& v, T* buffer) {
  for_each_row(g, [&](int p, int t) { return g.seq_side_segment(p, t); }, [&](int p, int t, std::int64_t e) {
    const coord4 c = g.seq_side_coord(p, t, e);
    T* dst = buffer + g.seq_displ[p] + g.seq_side_segment_offset(p, t) + e;
    copy_row<T>(dst, 1, &v.in[t](c.b, c.s, c.h, 0), v.in[t].stride(axis::head_dim), g.head_dim);
  });
}

//! Forward unpack: heads-side blocks into the head-sharded outputs.
template <class T>
void unpack_heads_side(const heads_geometry& g, const T* buffer, const segment_views<T>& v) {
  for_each_row(g, [&](int p, int t) { return g.heads_side_segment(p, t); }, [&](int p, int t, std::int64_t e) {
    const coord4 c = g.heads_side_coord(p, t, e);
    const T* src = buffer + g.heads_displ[p] + g.heads_side_segment_offset(p, t) + e;
    copy_row<T>(&v.out[t](c.b, c.s, c.h, 0), v.out[t].stride(axis::head_dim), src, 1, g.head_dim);
  });
}

//! Inverse pack: heads-side blocks from the head-sharded inputs.
template <class T>
void pack_heads_side(const heads_geometry& g, const segment_views<T>& v, T* buffer) {
  for_each_row(g, [&](int p, int t) { return g.heads_side_segment(p, t); }, [&](int p, int t, std::int64_t e) {
    const coord4 c = g.heads_side_coord(p, t, e);
    T* dst = buffer + g.heads_displ[p] + g.heads_side_segment_offset(p, t) + e;
    copy_row<T>(dst, 1, &v.in[t](c.b, c.s, c.h, 0), v.in[t].stride(axis::head_dim), g.head_dim);
  });
}

//! Inverse unpack: every element of the sequence-sharded outputs gathers the copies that its
//! owners sent back and sums them in fp32 (a kv head used by several ranks gets the sum of their
//! gradients; an element with one owner, as every query head has, is copied bit for bit). With
//! head groups only the group's heads are written, a kv head that an earlier group wrote gets the
//! sum of what is there and its copies (for two owners, the same bits as one exchange).
template <class T>
void unpack_seq_side_sum(const heads_geometry& g, const T* buffer, const segment_views<T>& v) {
  const std::int64_t tokens = g.seq.size(g.rank);
  for (int t = 0; t < g.segments; ++t)
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t s = 0; s < tokens; ++s)
        for (std::int64_t head = 0; head < g.seg_total_heads(t); ++head) {
          int first = 0, last = 0;
          g.owners(t, head, first, last);
          if (first > last) continue;  // not in this exchange's group
          const bool add = g.sent_by_earlier_group(t, head);
          T* out = &v.out[t](b, s, head, 0);
          const std::int64_t stride = v.out[t].stride(axis::head_dim);
          if (first == last && !add) {  // one owner: pass the bits through untouched
            copy_row<T>(out, stride, buffer + g.seq_side_index(first, t, b, s, head, 0), 1, g.head_dim);
            continue;
          }
          for (std::int64_t d = 0; d < g.head_dim; ++d) {
            float sum = add ? to_float(out[d * stride]) : 0.0f;
            for (int p = first; p <= last; ++p) sum += to_float(buffer[g.seq_side_index(p, t, b, s, head, d)]);
            out[d * stride] = from_float<T>(sum);
          }
        }
}

}  // namespace detail
SEQPAR_NAMESPACE_END
