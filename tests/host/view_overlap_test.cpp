// Whether two strided views share memory, against a reference that lists every byte of both: head
// slices of one fused tensor, shifted and overlapping slices, other strides and element sizes (the
// layers' refusals are in all_or_nothing_test.cpp).
#include <seqpar/detail/view_overlap.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace {
using seqpar::detail::bytes_of;
using seqpar::detail::share_memory;

// Every byte either view's elements occupy, listed.
template <class A, class B>
bool share_by_listing(const seqpar::tensor_view<A>& a, const seqpar::tensor_view<B>& b) {
  std::set<std::uintptr_t> bytes;
  for (std::int64_t i = 0; i < a.batch(); ++i)
    for (std::int64_t s = 0; s < a.seq(); ++s)
      for (std::int64_t h = 0; h < a.heads(); ++h)
        for (std::int64_t d = 0; d < a.head_dim(); ++d)
          for (std::size_t k = 0; k < sizeof(A); ++k)
            bytes.insert(reinterpret_cast<std::uintptr_t>(&a(i, s, h, d)) + k);
  for (std::int64_t i = 0; i < b.batch(); ++i)
    for (std::int64_t s = 0; s < b.seq(); ++s)
      for (std::int64_t h = 0; h < b.heads(); ++h)
        for (std::int64_t d = 0; d < b.head_dim(); ++d)
          for (std::size_t k = 0; k < sizeof(B); ++k)
            if (bytes.count(reinterpret_cast<std::uintptr_t>(&b(i, s, h, d)) + k)) return true;
  return false;
}
}  // namespace

TEST_CASE("share_memory: head slices of a fused QKV tensor share none, overlapping slices share") {
  std::vector<float> fused(2 * 5 * 12 * 8);
  const auto all = seqpar::make_bshd(fused.data(), 2, 5, 12, 8);  // q: heads 0-7, k: 8-9, v: 10-11
  const auto q = seqpar::detail::slice(all, seqpar::axis::heads, 0, 8);
  const auto k = seqpar::detail::slice(all, seqpar::axis::heads, 8, 2);
  const auto v = seqpar::detail::slice(all, seqpar::axis::heads, 10, 2);
  CHECK(!share_memory(bytes_of("q", q), bytes_of("k", k)));
  CHECK(!share_memory(bytes_of("k", k), bytes_of("v", v)));
  CHECK(!share_memory(bytes_of("v", v), bytes_of("q", q)));
  const auto q_wide = seqpar::detail::slice(all, seqpar::axis::heads, 0, 9);  // one head into k
  CHECK(share_memory(bytes_of("q", q_wide), bytes_of("k", k)));
  CHECK(share_memory(bytes_of("k", k), bytes_of("q", q_wide)));
  CHECK(share_memory(bytes_of("all", all), bytes_of("v", v)));
  CHECK(!share_memory(bytes_of("empty", seqpar::tensor_view<float>{}), bytes_of("all", all)));
}

TEST_CASE("share_memory agrees with listing every byte, for random strided views of one buffer") {
  std::mt19937 rng(7);
  std::vector<float> memory(4096);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int shared = 0, apart = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    // Both views cut from one [2, 6, H, 4] layout (same strides), or the second with its own.
    const int H = pick(2, 6);
    const seqpar::shape4 strides{6 * H * 4, H * 4, 4, 1};
    auto cut = [&](const seqpar::shape4& st) {
      const seqpar::shape4 e{pick(1, 2), pick(1, 6), pick(1, H), pick(1, 4)};
      const std::int64_t span = (e[0] - 1) * st[0] + (e[1] - 1) * st[1] + (e[2] - 1) * st[2] + (e[3] - 1) * st[3] + 1;
      const int at = pick(0, static_cast<int>(memory.size() / 8 - span - 1));
      return seqpar::make_strided(memory.data() + at, e, st);
    };
    const bool same_layout = pick(0, 3) != 0;
    const auto a = cut(strides);
    const auto b = same_layout ? cut(strides) : cut({7 * H * 4, H * 4, 4, 1});
    INFO("trial " << trial << (same_layout ? "" : ", other strides"));
    const bool want = share_by_listing(a, b), got = share_memory(bytes_of("a", a), bytes_of("b", b));
    if (same_layout)
      CHECK(got == want);  // exact
    else
      CHECK((got || !want));  // by byte range: sharing is never missed
    if (same_layout) (want ? shared : apart)++;
  }
  CHECK(shared > 100);
  CHECK(apart > 100);
  // Views of other element sizes compare by byte range.
  const auto floats = seqpar::make_bshd(memory.data(), 1, 4, 2, 4);
  const auto halves = seqpar::make_bshd(reinterpret_cast<__half*>(memory.data() + 30), 1, 1, 1, 4);
  CHECK(share_memory(bytes_of("a", floats), bytes_of("b", halves)));
  CHECK(share_by_listing(floats, halves));
}
