// head_partition and the balanced split it is built on, against heads and items dealt out one at a time.
#include <seqpar/detail/balanced_split.hpp>
#include <seqpar/ulysses/head_partition.hpp>
#include <seqpar_test/ulysses_reference.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

TEST_CASE_TEMPLATE("balanced split: sizes, offsets and owners match items dealt out one at a time", I, int,
                   std::int64_t, std::size_t) {
  using seqpar::detail::balanced_offset, seqpar::detail::balanced_owner, seqpar::detail::balanced_size;
  static_assert(balanced_size<I>(7, 3, 0) == 3 && balanced_offset<I>(7, 3, 2) == 5 && balanced_owner<I>(7, 3, 6) == 2);
  for (int parts = 1; parts <= 9; ++parts)
    for (int n = 0; n <= 40; ++n) {
      CAPTURE(parts);
      CAPTURE(n);
      std::vector<int> sizes(parts, 0), owner;
      for (int i = 0; i < n; ++i) ++sizes[i % parts];  // round robin: the first n % parts parts get one more
      for (int p = 0; p < parts; ++p) owner.insert(owner.end(), sizes[p], p);
      int offset = 0;
      for (int p = 0; p < parts; ++p) {
        CHECK(balanced_size<I>(n, parts, p) == I(sizes[p]));
        CHECK(balanced_offset<I>(n, parts, p) == I(offset));
        offset += sizes[p];
      }
      for (int i = 0; i < n; ++i) CHECK(balanced_owner<I>(n, parts, i) == I(owner[i]));
    }
}

TEST_CASE("kv_head_of: the local kv head of a local query head is its global kv head less the first") {
  for (int group = 1; group <= 6; ++group)
    for (int first_query = 0; first_query <= 13; ++first_query)
      for (int h = 0; h < 10; ++h) {
        int kv = 0;  // the global kv head k with k * group <= q < (k + 1) * group
        while ((kv + 1) * group <= first_query + h) ++kv;
        CHECK(seqpar::detail::kv_head_of(first_query, h, group, first_query / group) == kv - first_query / group);
      }
}

TEST_CASE("head_partition: counts, firsts and GQA kv ranges match the brute-force assignment") {
  const auto h74 = seqpar::make_head_partition(7, 7, 4);
  CHECK(std::vector<int>{h74.count(0), h74.count(1), h74.count(2), h74.count(3)} == std::vector<int>{2, 2, 2, 1});
  for (int P : {1, 2, 3, 4, 8, 16})
    for (int H : {1, 2, 7, 8, 12, 32})
      for (int H_kv = 1; H_kv <= H; ++H_kv) {
        if (H % H_kv) continue;
        const auto part = seqpar::make_head_partition(H, H_kv, P);
        const seqpar_test::head_owners ref(H, H_kv, P);
        for (int r = 0; r < P; ++r) {
          CAPTURE(P);
          CAPTURE(H);
          CAPTURE(H_kv);
          CAPTURE(r);
          CHECK(part.count(r) == ref.count[r]);
          CHECK(part.first(r) == ref.first[r]);
          CHECK(part.kv_count(r) == ref.kv_count[r]);
          if (ref.kv_count[r]) CHECK(part.kv_first(r) == ref.kv_first[r]);
          for (int h = 0; h < ref.count[r]; ++h)
            CHECK(part.local_kv_head(r, h) == (ref.first[r] + h) / (H / H_kv) - ref.kv_first[r]);
        }
      }
}
