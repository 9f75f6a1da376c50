//! @file view_overlap.hpp
//! Whether two strided views share memory, exactly for views of one layout (head slices of a fused
//! QKV tensor share none), and the check that a call's outputs share none with its other views.
#pragma once

#include <seqpar/error.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/tensor.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! A view's memory without its element type: first byte, extents, strides in bytes, element bytes.
struct view_bytes {
  const char* name = "";
  std::intptr_t base = 0;
  shape4 extents{};
  shape4 strides{};  //!< bytes
  std::int64_t element = 1;

  //! True when the view has no element.
  bool empty() const { return base == 0 || std::find(extents.begin(), extents.end(), 0) != extents.end(); }
  //! One past its last byte.
  std::intptr_t end() const {
    std::intptr_t last = base;
    for (int a = 0; a < 4; ++a) last += (extents[a] - 1) * strides[a];
    return last + element;
  }
};

//! The memory of `view`, named `name`.
template <class T>
view_bytes bytes_of(const char* name, const tensor_view<T>& view) {
  view_bytes b{name, reinterpret_cast<std::intptr_t>(view.data()), {}, {}, static_cast<std::int64_t>(sizeof(T))};
  for (int a = 0; a < 4; ++a) {
    b.extents[a] = view.extent(axis(a));
    b.strides[a] = view.stride(axis(a)) * b.element;
  }
  return b;
}

namespace overlap_search {
// Whether some index differences d_k in [lo_k, hi_k] over the axes from `k` on give
// sum d_k * stride_k in [want_lo, want_hi]; `budget` bounds the nodes visited (true once spent).
inline bool reachable(const std::array<std::int64_t, 4>& stride, const std::array<std::int64_t, 4>& lo,
                      const std::array<std::int64_t, 4>& hi, int k, std::int64_t want_lo, std::int64_t want_hi,
                      int& budget) {
  if (--budget < 0) return true;
  if (k == 4) return want_lo <= 0 && 0 <= want_hi;
  std::int64_t rest_lo = 0, rest_hi = 0;  // what the later axes can add
  for (int j = k + 1; j < 4; ++j) rest_lo += lo[j] * stride[j], rest_hi += hi[j] * stride[j];
  if (stride[k] == 0) return reachable(stride, lo, hi, k + 1, want_lo, want_hi, budget);
  auto floor_div = [](std::int64_t a, std::int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); };
  const std::int64_t first = std::max(lo[k], -floor_div(-(want_lo - rest_hi), stride[k]));
  const std::int64_t last = std::min(hi[k], floor_div(want_hi - rest_lo, stride[k]));
  for (std::int64_t d = first; d <= last; ++d)
    if (reachable(stride, lo, hi, k + 1, want_lo - d * stride[k], want_hi - d * stride[k], budget)) return true;
  return false;
}
}  // namespace overlap_search

//! True when `a` and `b` share a byte. Exact when both have the same strides and element size (a
//! search over index differences, largest stride first); otherwise, and in the rare layout where
//! the search runs long, true whenever their byte ranges overlap.
inline bool share_memory(const view_bytes& a, const view_bytes& b) {
  if (a.empty() || b.empty()) return false;
  if (a.end() <= b.base || b.end() <= a.base) return false;
  if (a.strides != b.strides || a.element != b.element) return true;
  std::array<int, 4> order{0, 1, 2, 3};
  std::sort(order.begin(), order.end(), [&](int x, int y) { return a.strides[x] > a.strides[y]; });
  std::array<std::int64_t, 4> stride{}, lo{}, hi{};
  for (int k = 0; k < 4; ++k) {
    const int ax = order[k];
    stride[k] = a.strides[ax];
    lo[k] = -(b.extents[ax] - 1);  // index in a minus index in b
    hi[k] = a.extents[ax] - 1;
  }
  // a's element i at a.base + off_a and b's element j at b.base + off_b share a byte when
  // off_a - off_b lies within (b.base - a.base - element, b.base - a.base + element).
  const std::int64_t delta = b.base - a.base;
  int budget = 1 << 12;
  return overlap_search::reachable(stride, lo, hi, 0, delta - a.element + 1, delta + a.element - 1, budget);
}

//! Throws unless every view of `written` shares no memory with any other view of `written` or
//! `read`: a call would otherwise overwrite what it still reads, or write one place twice.
inline void check_written_apart(std::initializer_list<view_bytes> written, std::initializer_list<view_bytes> read) {
  for (auto w = written.begin(); w != written.end(); ++w) {
    for (auto o = w + 1; o != written.end(); ++o)
      SEQPAR_EXPECTS(!share_memory(*w, *o),
                     w->name << " and " << o->name << " share memory; expected separate buffers for outputs");
    for (const auto& r : read)
      SEQPAR_EXPECTS(!share_memory(*w, r), w->name << " shares memory with " << r.name
                                                   << ", which the call reads; expected a separate buffer");
  }
}

//! The softmax layers' forward: o shares memory with none of q, k, v.
template <class T>
void check_outputs_apart(const attention_forward_args<T>& args) {
  check_written_apart({bytes_of("o", args.o)}, {bytes_of("q", args.q), bytes_of("k", args.k), bytes_of("v", args.v)});
}
//! The softmax layers' backward: dq, dk, dv share memory with none of each other and dout.
template <class T>
void check_outputs_apart(const attention_backward_args<T>& args) {
  check_written_apart({bytes_of("dq", args.dq), bytes_of("dk", args.dk), bytes_of("dv", args.dv)},
                      {bytes_of("dout", args.dout)});
}

}  // namespace detail
SEQPAR_NAMESPACE_END
