//! @file host_tensor.hpp
//! Host [B, S, H, D] tensors with padded token strides, filled with random values or poison, and
//! the relative gap between two views: what the emulated-kernel tests compare with.
#pragma once

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

}  // namespace seqpar_test
