// Tensor views: offsets of BSHD, SBHD and padded layouts, the checks of the factories, element types.
#include <seqpar/tensor.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <vector>

using seqpar::axis;
using seqpar::order;

namespace {
constexpr std::int64_t B = 2, S = 5, H = 3, D = 4;

template <class T>
void check_offsets(seqpar::tensor_view<T> v, auto&& expected_offset) {
  int wrong = 0;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < S; ++s)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t d = 0; d < D; ++d) {
          wrong += v.offset(b, s, h, d) != expected_offset(b, s, h, d);
          wrong += &v(b, s, h, d) != v.data() + expected_offset(b, s, h, d);
        }
  CHECK(wrong == 0);
}

std::uint16_t bits(__nv_bfloat16 x) {
  std::uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}
std::uint16_t bits(__half x) {
  std::uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}
}  // namespace

TEST_CASE("BSHD and SBHD views index (b, s, h, d) at the offsets of their memory order") {
  std::vector<float> data(B * S * H * D);
  auto bshd = seqpar::make_bshd(data.data(), B, S, H, D);
  check_offsets(bshd, [](auto b, auto s, auto h, auto d) { return ((b * S + s) * H + h) * D + d; });
  auto sbhd = seqpar::make_sbhd(data.data(), B, S, H, D);
  check_offsets(sbhd, [](auto b, auto s, auto h, auto d) { return ((s * B + b) * H + h) * D + d; });
  CHECK(bshd.batch() == B);
  CHECK(bshd.seq() == S);
  CHECK(bshd.heads() == H);
  CHECK(bshd.head_dim() == D);
  CHECK(bshd.size() == B * S * H * D);
  CHECK(bshd.is_packed(order::bshd));
  CHECK(!bshd.is_packed(order::sbhd));
  CHECK(sbhd.is_packed(order::sbhd));
  CHECK(!sbhd.is_packed(order::bshd));
  CHECK(sbhd.stride(axis::seq) == B * H * D);
  CHECK(sbhd.required_span_size() == B * S * H * D);
}

TEST_CASE("a strided view with padded heads (a slice of a fused QKV tensor) addresses the padding correctly") {
  // [B, S, 3 * H, D] with this view selecting the K part: heads H..2H-1.
  std::vector<__half> fused(B * S * 3 * H * D);
  const seqpar::shape4 strides{S * 3 * H * D, 3 * H * D, D, 1};
  auto k = seqpar::make_strided(fused.data() + H * D, {B, S, H, D}, strides, "k");
  check_offsets(k, [](auto b, auto s, auto h, auto d) { return ((b * S + s) * 3 * H + h) * D + d; });
  CHECK(!k.is_packed(order::bshd));
  seqpar::tensor_view<const __half> read_only = k;
  CHECK(read_only.data() == k.data());
  CHECK(read_only.stride(axis::seq) == 3 * H * D);
}

TEST_CASE("view factories reject what would mis-stride or overlap, naming the view and the axis") {
  std::vector<float> data(1000);
  CHECK_THROWS_WITH_AS(seqpar::make_bshd(data.data(), 2, -1, 3, 4, "q"),
                       doctest::Contains("q: extent of axis seq must be >= 0, got -1"), seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::make_strided(data.data(), {1, 4, 2, 8}, {64, 16, -8, 1}, "k"),
                       doctest::Contains("k: stride of axis heads must be >= 0, got -8"), seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::make_bshd<float>(nullptr, 1, 2, 3, 4, "v"),
                       doctest::Contains("v: null data pointer with 24 elements"), seqpar::error);
  // heads stride 4 < head_dim 8: head h+1 would overlap head h.
  CHECK_THROWS_WITH_AS(seqpar::make_strided(data.data(), {1, 4, 2, 8}, {64, 16, 4, 1}, "o"),
                       doctest::Contains("o: strides {64, 16, 4, 1} make elements overlap"), seqpar::error);
  CHECK_NOTHROW(seqpar::make_bshd<float>(nullptr, 0, 7, 3, 4));
  CHECK_NOTHROW(seqpar::make_strided(data.data(), {1, 4, 2, 8}, {64, 16, 8, 1}));
  CHECK_NOTHROW(seqpar::make_strided(data.data(), {3, 1, 1, 8}, {8, 0, 0, 1}));  // broadcast of unit axes is fine
}

TEST_CASE("element types: tags, sizes and round-to-nearest-even conversions, checked against bit arithmetic") {
  static_assert(seqpar::dtype_of<float> == seqpar::dtype::float32);
  static_assert(seqpar::dtype_of<__half> == seqpar::dtype::float16);
  static_assert(seqpar::dtype_of<__nv_bfloat16> == seqpar::dtype::bfloat16);
  static_assert(!seqpar::element<double>);
  CHECK(seqpar::size_of(seqpar::dtype::bfloat16) == 2);
  CHECK(std::string(seqpar::to_string(seqpar::dtype::float16)) == "float16");

  // bfloat16 is the top half of a float rounded to nearest even: (u + 0x7FFF + lsb) >> 16.
  for (float x : {1.0f, 1.00390625f, 1.01171875f, -3.14159265f, 65504.0f, 1e-20f, 3.0e38f}) {
    std::uint32_t u;
    std::memcpy(&u, &x, 4);
    const auto expected = static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    CHECK(bits(seqpar::from_float<__nv_bfloat16>(x)) == expected);
  }
  CHECK(bits(seqpar::from_float<__half>(1.0f / 3.0f)) == 0x3555);  // 0 01101 0101010101
  CHECK(bits(seqpar::from_float<__half>(2049.0f)) == bits(seqpar::from_float<__half>(2048.0f)));  // tie to even
  CHECK(seqpar::to_float(seqpar::from_float<__half>(0.5f)) == 0.5f);
  CHECK(seqpar::to_float(seqpar::add_in_float(seqpar::from_float<__nv_bfloat16>(1.5f),
                                              seqpar::from_float<__nv_bfloat16>(2.25f))) == 3.75f);
}
