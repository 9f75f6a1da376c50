//! @file tensor.hpp
//! 4-d strided activation views: a pointer plus a cuda::std::mdspan layout over named axes.
#pragma once

#include <seqpar/config.hpp>
#include <seqpar/error.hpp>
#include <seqpar/types.hpp>

#include <cuda/std/array>
#include <cuda/std/mdspan>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

SEQPAR_NAMESPACE_BEGIN

//! The named axes of an activation view; a view is always indexed in this order.
enum class axis : int {
  batch = 0,     //!< B, the batch
  seq = 1,       //!< S or S_r, the tokens
  heads = 2,     //!< H or H_kv, the attention heads
  head_dim = 3,  //!< D, the elements of one head
};

//! Name of an axis ("batch", "seq", "heads", "head_dim").
inline constexpr const char* to_string(axis a) noexcept {
  constexpr const char* names[] = {"batch", "seq", "heads", "head_dim"};
  return names[static_cast<int>(a)];
}

//! Memory orders with a factory: BSHD (FlashAttention's) and SBHD (sequence first).
enum class order {
  bshd,  //!< [batch, seq, heads, head_dim], head_dim contiguous (FlashAttention's)
  sbhd,  //!< [seq, batch, heads, head_dim], head_dim contiguous (sequence first)
};

//! Extents or strides of a view, indexed by axis: {batch, seq, heads, head_dim}.
using shape4 = std::array<std::int64_t, 4>;

//! A 4-d strided view [batch, seq, heads, head_dim] over elements of type T (possibly const).
template <class T>
  requires element<std::remove_const_t<T>>
class tensor_view {
 public:
  //! Index type of extents and strides.
  using index_type = std::int64_t;
  //! Dynamic 4-d extents.
  using extents_type = cuda::std::dextents<index_type, 4>;
  //! Strided layout mapping (the layout half of the view).
  using mapping_type = cuda::std::layout_stride::mapping<extents_type>;
  //! The underlying mdspan.
  using mdspan_type = cuda::std::mdspan<T, extents_type, cuda::std::layout_stride>;
  //! Element type with cv-qualifiers.
  using element_type = T;
  //! Element type without const.
  using value_type = std::remove_const_t<T>;

  //! An empty view (null data, all extents zero).
  tensor_view() = default;
  //! A view of `data` with layout `mapping`; checked factories are make_bshd/make_sbhd/make_strided.
  SEQPAR_HOST_DEVICE tensor_view(T* data, const mapping_type& mapping) : span_(data, mapping) {}
  //! A non-const view converts to a const one.
  template <class U>
    requires(std::is_const_v<T> && std::same_as<std::remove_const_t<T>, U>)
  SEQPAR_HOST_DEVICE tensor_view(const tensor_view<U>& other) : span_(other.data(), other.mapping()) {}

  //! Extent along an axis.
  SEQPAR_HOST_DEVICE index_type extent(axis a) const { return span_.extent(static_cast<int>(a)); }
  //! Stride (in elements) along an axis.
  SEQPAR_HOST_DEVICE index_type stride(axis a) const { return span_.stride(static_cast<int>(a)); }
  //! Batch extent B.
  SEQPAR_HOST_DEVICE index_type batch() const { return extent(axis::batch); }
  //! Sequence extent (tokens in this view).
  SEQPAR_HOST_DEVICE index_type seq() const { return extent(axis::seq); }
  //! Head count.
  SEQPAR_HOST_DEVICE index_type heads() const { return extent(axis::heads); }
  //! Head dimension D.
  SEQPAR_HOST_DEVICE index_type head_dim() const { return extent(axis::head_dim); }
  //! Number of elements B * S * H * D.
  SEQPAR_HOST_DEVICE index_type size() const { return span_.size(); }
  //! Elements spanned in memory from data() to the last element, plus one.
  SEQPAR_HOST_DEVICE index_type required_span_size() const { return span_.mapping().required_span_size(); }
  //! Pointer to element (0, 0, 0, 0).
  SEQPAR_HOST_DEVICE T* data() const { return span_.data_handle(); }
  //! The layout mapping.
  SEQPAR_HOST_DEVICE const mapping_type& mapping() const { return span_.mapping(); }
  //! The underlying mdspan.
  SEQPAR_HOST_DEVICE const mdspan_type& mdspan() const { return span_; }
  //! Element (b, s, h, d).
  SEQPAR_HOST_DEVICE T& operator()(index_type b, index_type s, index_type h, index_type d) const {
    return span_(b, s, h, d);
  }
  //! Offset in elements of (b, s, h, d) from data().
  SEQPAR_HOST_DEVICE index_type offset(index_type b, index_type s, index_type h, index_type d) const {
    return span_.mapping()(b, s, h, d);
  }
  //! True when the view is densely packed in the given memory order.
  SEQPAR_HOST_DEVICE bool is_packed(order o) const {
    const index_type B = batch(), S = seq(), H = heads(), D = head_dim();
    if (stride(axis::head_dim) != 1 || stride(axis::heads) != D) return false;
    return o == order::bshd ? stride(axis::seq) == H * D && stride(axis::batch) == S * H * D
                            : stride(axis::batch) == H * D && stride(axis::seq) == B * H * D;
  }

 private:
  mdspan_type span_{};
};

namespace detail {
//! True when no two distinct indices of a strided layout map to the same offset (sufficient test:
//! sorted by stride, each axis steps past everything the smaller axes span).
inline bool strides_are_unique(const shape4& extents, const shape4& strides) {
  if (std::find(extents.begin(), extents.end(), 0) != extents.end()) return true;  // no elements
  std::array<int, 4> ax{0, 1, 2, 3};
  std::sort(ax.begin(), ax.end(), [&](int a, int b) { return strides[a] < strides[b]; });
  std::int64_t span = 1;
  for (int a : ax) {
    if (extents[a] <= 1) continue;
    if (strides[a] < span) return false;
    span = strides[a] * (extents[a] - 1) + span;
  }
  return true;
}
}  // namespace detail

namespace detail {
//! N views of one element type kept without their type: what a layer's context holds of the
//! caller's tensors for backward, which reads them back with the type forward saw.
template <int N>
struct erased_views {
  const void* data[N] = {};                                       //!< each view's first element
  typename tensor_view<const float>::mapping_type mapping[N] = {};  //!< each view's layout
  //! Keeps `views` (N of them) in order.
  template <class... V>
  void keep(const V&... views) {
    static_assert(sizeof...(V) == N, "erased_views::keep: pass exactly N views");
    int i = 0;
    ((data[i] = views.data(), mapping[i] = views.mapping(), ++i), ...);
  }
  //! View i as elements of type T (the type it was kept with).
  template <class T>
  tensor_view<const T> get(int i) const {
    return tensor_view<const T>(static_cast<const T*>(data[i]), mapping[i]);
  }
};
}  // namespace detail

namespace detail {
//! Indices [first, first + n) of axis `a` of a view, the other axes whole, with its strides.
template <class T>
tensor_view<T> slice(const tensor_view<T>& v, axis a, std::int64_t first, std::int64_t n) {
  using view = tensor_view<T>;
  cuda::std::array<std::int64_t, 4> e{v.batch(), v.seq(), v.heads(), v.head_dim()};
  e[static_cast<int>(a)] = n;
  cuda::std::array<std::int64_t, 4> s{v.stride(axis::batch), v.stride(axis::seq), v.stride(axis::heads),
                                      v.stride(axis::head_dim)};
  return view(v.data() + first * v.stride(a), typename view::mapping_type(typename view::extents_type(e), s));
}

//! Rows [first, first + n) of a view, with its strides.
template <class T>
tensor_view<T> rows(const tensor_view<T>& v, std::int64_t first, std::int64_t n) {
  return slice(v, axis::seq, first, n);
}

//! Throws unless `view` has extents {B, S, H, D} = `want`, naming the view as the caller knows it.
template <class T>
void check_extents(const char* name, const tensor_view<T>& view, const shape4& want) {
  const shape4 got{view.batch(), view.seq(), view.heads(), view.head_dim()};
  SEQPAR_EXPECTS(got == want, name << ": expected extents {batch, seq, heads, head_dim} = {" << want[0] << ", " << want[1]
                                   << ", " << want[2] << ", " << want[3] << "}, got {" << got[0] << ", " << got[1]
                                   << ", " << got[2] << ", " << got[3] << "}");
}
}  // namespace detail

//! A checked view with explicit extents {B, S, H, D} and strides in elements; `name` labels errors.
template <class T>
tensor_view<T> make_strided(T* data, const shape4& extents, const shape4& strides,
                            const char* name = "view") {
  std::int64_t count = 1;
  for (int a = 0; a < 4; ++a) {
    SEQPAR_EXPECTS(extents[a] >= 0, name << ": extent of axis " << to_string(axis(a))
                                          << " must be >= 0, got " << extents[a]);
    count *= extents[a];
  }
  for (int a = 0; a < 4; ++a)
    SEQPAR_EXPECTS(strides[a] >= 0, name << ": stride of axis " << to_string(axis(a))
                                          << " must be >= 0, got " << strides[a]);
  SEQPAR_EXPECTS(data != nullptr || count == 0,
                 name << ": null data pointer with " << count << " elements; expected a valid pointer");
  SEQPAR_EXPECTS(detail::strides_are_unique(extents, strides),
                 name << ": strides {" << strides[0] << ", " << strides[1] << ", " << strides[2] << ", "
                      << strides[3] << "} make elements overlap; expected a one-to-one layout");
  using view = tensor_view<T>;
  typename view::extents_type e(extents[0], extents[1], extents[2], extents[3]);
  cuda::std::array<std::int64_t, 4> s{strides[0], strides[1], strides[2], strides[3]};
  return view(data, typename view::mapping_type(e, s));
}

//! A packed view in a given memory order over extents {B, S, H, D}.
template <class T>
tensor_view<T> make_packed(T* data, order o, std::int64_t B, std::int64_t S, std::int64_t H,
                           std::int64_t D, const char* name = "view") {
  const shape4 strides = o == order::bshd ? shape4{S * H * D, H * D, D, 1} : shape4{H * D, B * H * D, D, 1};
  return make_strided(data, {B, S, H, D}, strides, name);
}

//! A packed [B, S, H, D] view (FlashAttention order).
template <class T>
tensor_view<T> make_bshd(T* data, std::int64_t B, std::int64_t S, std::int64_t H, std::int64_t D,
                         const char* name = "view") {
  return make_packed(data, order::bshd, B, S, H, D, name);
}

//! A packed [S, B, H, D] view (sequence first), still indexed as (b, s, h, d).
template <class T>
tensor_view<T> make_sbhd(T* data, std::int64_t B, std::int64_t S, std::int64_t H, std::int64_t D,
                         const char* name = "view") {
  return make_packed(data, order::sbhd, B, S, H, D, name);
}

SEQPAR_NAMESPACE_END
