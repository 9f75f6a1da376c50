//! @file types.hpp
//! Element types (float, __half, __nv_bfloat16), their runtime tags and fp32 accumulation helpers.
#pragma once

#include <seqpar/config.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <concepts>
#include <cstddef>

SEQPAR_NAMESPACE_BEGIN

//! Runtime tag of an element type, used in messages and type-erased paths.
enum class dtype {
  float32,   //!< float
  float16,   //!< __half
  bfloat16,  //!< __nv_bfloat16
};

//! The element types seqpar moves and computes on.
template <class T>
concept element = std::same_as<T, float> || std::same_as<T, __half> || std::same_as<T, __nv_bfloat16>;

//! The dtype tag of an element type.
template <element T>
inline constexpr dtype dtype_of = std::same_as<T, float>    ? dtype::float32
                                  : std::same_as<T, __half> ? dtype::float16
                                                            : dtype::bfloat16;

//! The element type a layer is built for, as a value: `seqpar::elements<__nv_bfloat16>`. The
//! layer's call arguments are views of that type, so a view of another type does not compile.
template <element T>
struct element_tag {
  using type = T;  //!< the element type
};
//! The element_tag of T.
template <element T>
inline constexpr element_tag<T> elements{};

//! Name of a dtype ("float32", "float16", "bfloat16").
inline constexpr const char* to_string(dtype t) noexcept {
  switch (t) {
    case dtype::float32: return "float32";
    case dtype::float16: return "float16";
    case dtype::bfloat16: return "bfloat16";
  }
  return "?";
}

//! Bytes of one element of a dtype.
inline constexpr std::size_t size_of(dtype t) noexcept { return t == dtype::float32 ? 4 : 2; }

//! Converts an element to the fp32 accumulation type.
SEQPAR_HOST_DEVICE float to_float(float x) { return x; }
//! Converts an element to the fp32 accumulation type.
SEQPAR_HOST_DEVICE float to_float(__half x) { return __half2float(x); }
//! Converts an element to the fp32 accumulation type.
SEQPAR_HOST_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

//! Rounds an fp32 value to element type T (round to nearest even).
template <element T>
SEQPAR_HOST_DEVICE T from_float(float x) {
  if constexpr (std::same_as<T, float>) {
    return x;
  } else if constexpr (std::same_as<T, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

//! Adds two elements in fp32 and rounds the sum back to T.
template <element T>
SEQPAR_HOST_DEVICE T add_in_float(T a, T b) {
  return from_float<T>(to_float(a) + to_float(b));
}

SEQPAR_NAMESPACE_END
