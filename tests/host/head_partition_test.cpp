// head_partition against heads dealt out one rank at a time.
#include <seqpar/ulysses/head_partition.hpp>
#include <seqpar_test/ulysses_reference.hpp>

#include <doctest/doctest.h>

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
