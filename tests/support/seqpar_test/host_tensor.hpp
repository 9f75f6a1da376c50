//! @file host_tensor.hpp
//! Host [B, S, H, D] tensors with padded token strides, filled with random values or poison, and
//! the relative gap between two views: what the emulated-kernel tests compare with.
#pragma once

#include <seqpar/policy/linear_state.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar_test/values.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace seqpar_test {

//! A [B, S, H, D] tensor whose tokens sit `pad` elements apart beyond H * D (pad != 0 defeats the
//! 16-byte loads), filled with normal values of deviation `amp` rounded to T (amp 0: poison).
template <class T>
struct host_tensor {
  std::vector<T> data;           //!< the elements, padding included
  seqpar::tensor_view<T> view;   //!< the tensor over `data`
  //! A tensor of the given extents and padding.
  host_tensor(std::int64_t B, std::int64_t S, std::int64_t H, std::int64_t D, std::int64_t pad, float amp) {
    data.assign(B * S * (H * D + pad), poison<T>());
    std::normal_distribution<float> n(0.0f, amp);
    if (amp > 0)
      for (auto& x : data) x = seqpar::from_float<T>(n(rng()));
    view = seqpar::make_strided(data.data(), {B, S, H, D}, {S * (H * D + pad), H * D + pad, D, 1});
  }
  //! The read-only view.
  seqpar::tensor_view<const T> cview() const { return view; }
  //! Whether every padding element between tokens still holds poison.
  bool padding_untouched() const {
    const std::size_t row = view.heads() * view.head_dim(), stride = view.stride(seqpar::axis::seq);
    for (std::size_t i = 0; i < data.size(); ++i)
      if (i % stride >= row && !same_bits(data[i], poison<T>())) return false;
    return true;
  }
};

//! max |got - want| / max |want| over two views of equal extents (infinity if got is not finite).
template <class T, class U>
double relative_gap(const seqpar::tensor_view<T>& got, const seqpar::tensor_view<U>& want) {
  double err = 0, scale = 1e-30;
  for (std::int64_t b = 0; b < want.batch(); ++b)
    for (std::int64_t s = 0; s < want.seq(); ++s)
      for (std::int64_t h = 0; h < want.heads(); ++h)
        for (std::int64_t d = 0; d < want.head_dim(); ++d) {
          const double g = seqpar::to_float(got(b, s, h, d)), w = seqpar::to_float(want(b, s, h, d));
          if (!std::isfinite(g)) return INFINITY;
          err = std::max(err, std::abs(g - w)), scale = std::max(scale, std::abs(w));
        }
  return err / scale;
}

//! The same values in float, tokens packed.
template <class T>
host_tensor<float> widened(const host_tensor<T>& x) {
  const auto& v = x.view;
  host_tensor<float> out(v.batch(), v.seq(), v.heads(), v.head_dim(), 0, 0);
  for (std::int64_t b = 0; b < v.batch(); ++b)
    for (std::int64_t s = 0; s < v.seq(); ++s)
      for (std::int64_t h = 0; h < v.heads(); ++h)
        for (std::int64_t d = 0; d < v.head_dim(); ++d) out.view(b, s, h, d) = seqpar::to_float(v(b, s, h, d));
  return out;
}

//! An fp32 state [B, H, X, Y] on the host: normal values of deviation `amp` (amp 0: NaN).
struct state {
  std::vector<float> data;  //!< the elements
  seqpar::state_view view;  //!< the state over `data`
  //! A state of the given extents.
  state(std::int64_t B, std::int64_t H, std::int64_t X, std::int64_t Y, float amp) : data(B * H * X * Y, NAN) {
    std::normal_distribution<float> n(0.0f, amp);
    if (amp > 0)
      for (auto& x : data) x = n(rng());
    view = seqpar::make_state(data.data(), B, H, X, Y);
  }
};

//! max |got - want| / max |want| over two states; a non-finite element gives infinity.
inline double state_gap(const state& got, const state& want) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < want.data.size(); ++i) {
    if (!std::isfinite(got.data[i])) return INFINITY;
    err = std::max(err, double(std::abs(got.data[i] - want.data[i])));
    scale = std::max(scale, double(std::abs(want.data[i])));
  }
  return err / scale;
}

}  // namespace seqpar_test
