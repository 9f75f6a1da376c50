//! @file reduce.hpp
//! Host-side summation helpers shared by backends that reduce on the CPU (fp32 for 16-bit types).
#pragma once

#include <seqpar/types.hpp>

#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

SEQPAR_NAMESPACE_BEGIN
namespace detail {

//! The type a sum of T accumulates in: float for the element types, T itself otherwise.
template <class T>
using accumulator_t = std::conditional_t<element<T>, float, T>;

//! Widens one value to its accumulator type.
template <class T>
accumulator_t<T> widen(T x) {
  if constexpr (element<T>) return to_float(x);
  else return x;
}

//! acc[i] += x[i] for every i, in the accumulator type.
template <class T>
void accumulate(std::span<accumulator_t<T>> acc, std::span<const T> x) {
  for (std::size_t i = 0; i < x.size(); ++i) acc[i] += widen(x[i]);
}

//! Rounds accumulated sums back to T.
template <class T>
std::vector<T> round_to(const std::vector<accumulator_t<T>>& acc) {
  std::vector<T> out(acc.size());
  for (std::size_t i = 0; i < acc.size(); ++i) {
    if constexpr (element<T>) out[i] = from_float<T>(acc[i]);
    else out[i] = acc[i];
  }
  return out;
}

}  // namespace detail
SEQPAR_NAMESPACE_END
