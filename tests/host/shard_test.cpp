// seq_partition, seq_shard and seq_unshard on the host, against ownership dealt out token by token.
#include <seqpar/shard.hpp>
#include <seqpar_test/ulysses_reference.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <vector>

using seqpar::shard_strategy;

TEST_CASE("seq_partition: sizes, offsets and the local-to-global map match token-by-token ownership") {
  for (int P : {1, 2, 3, 4, 8})
    for (std::int64_t S : {0, 1, 7, 16, 33, 64})
      for (auto strategy : {shard_strategy::contiguous, shard_strategy::zigzag}) {
        if (strategy == shard_strategy::zigzag && S % (2 * P) != 0) continue;
        CAPTURE(P);
        CAPTURE(S);
        const auto part = seqpar::make_seq_partition(S, P, strategy);
        const seqpar_test::token_owners ref(S, P, strategy);
        std::int64_t offset = 0;
        for (int r = 0; r < P; ++r) {
          CHECK(part.size(r) == ref.sizes[r]);
          CHECK(part.offset(r) == offset);
          offset += ref.sizes[r];
          for (std::int64_t s = 0; s < ref.sizes[r]; ++s) CHECK(part.global(r, s) == ref.global_of[r][s]);
        }
      }
  // Zigzag: rank r owns blocks r and 2P-1-r.
  const auto zz = seqpar::make_seq_partition(16, 4, shard_strategy::zigzag);
  CHECK(zz.global(0, 0) == 0);
  CHECK(zz.global(0, 2) == 14);
  CHECK(zz.global(3, 0) == 6);
  CHECK(zz.global(3, 3) == 9);
}

TEST_CASE_TEMPLATE("seq_shard then seq_unshard on every rank rebuilds the global tensor", T, float, __half, __nv_bfloat16) {
  const std::int64_t B = 2, S = 16, H = 3, D = 5;
  for (auto strategy : {shard_strategy::contiguous, shard_strategy::zigzag})
    for (int P : {1, 3, 4, 8}) {
      if (strategy == shard_strategy::zigzag && S % (2 * P) != 0) continue;
      const auto part = seqpar::make_seq_partition(S, P, strategy);
      const seqpar_test::token_owners ref(S, P, strategy);
      std::vector<T> global(B * S * H * D), rebuilt(global.size(), seqpar_test::poison<T>());
      for (std::size_t i = 0; i < global.size(); ++i) global[i] = seqpar_test::tagged<T>(i);
      const auto g = seqpar::make_sbhd<const T>(global.data(), B, S, H, D);
      const auto out = seqpar::make_sbhd(rebuilt.data(), B, S, H, D);
      for (int r = 0; r < P; ++r) {
        std::vector<T> shard(B * part.size(r) * H * D, seqpar_test::poison<T>());
        const auto local = seqpar::make_bshd(shard.data(), B, part.size(r), H, D);
        seqpar::seq_shard(part, r, seqpar::seq_shard_args<T>{.global = g, .shard = local});
        long wrong = 0;
        for (std::int64_t b = 0; b < B; ++b)
          for (std::int64_t s = 0; s < part.size(r); ++s)
            for (std::int64_t h = 0; h < H; ++h)
              for (std::int64_t d = 0; d < D; ++d)
                wrong += !seqpar_test::same_bits(local(b, s, h, d), g(b, ref.global_of[r][s], h, d));
        CHECK(wrong == 0);
        seqpar::seq_unshard(part, r, seqpar::seq_unshard_args<T>{.shard = local, .global = out});
      }
      CHECK(seqpar_test::first_mismatch(rebuilt, global) == -1);
    }
}

TEST_CASE("seq_shard: a shard view of the wrong length or heads is refused") {
  std::vector<float> global(1 * 10 * 2 * 4), shard(1 * 3 * 2 * 4);
  const auto part = seqpar::make_seq_partition(10, 4);
  auto g = seqpar::make_bshd<const float>(global.data(), 1, 10, 2, 4);
  CHECK_THROWS_WITH_AS(
      seqpar::seq_shard(
          part, 3, seqpar::seq_shard_args<float>{.global = g, .shard = seqpar::make_bshd(shard.data(), 1, 3, 2, 4)}),
      doctest::Contains("shard: expected seq extent = S_3 = 2 tokens, got 3"), seqpar::error);
  CHECK_THROWS_WITH_AS(
      seqpar::seq_shard(
          part, 0, seqpar::seq_shard_args<float>{.global = g, .shard = seqpar::make_bshd(shard.data(), 1, 3, 1, 4)}),
      doctest::Contains("shard: expected heads extent = global's 2, got 1"), seqpar::error);
  CHECK_THROWS_WITH_AS(
      seqpar::seq_shard(
          part, 4, seqpar::seq_shard_args<float>{.global = g, .shard = seqpar::make_bshd(shard.data(), 1, 3, 2, 4)}),
      doctest::Contains("rank: expected a rank in [0, 4), got 4"), seqpar::error);
  // A hand-built zigzag partition of 10 tokens over 4 ranks would leave two tokens unsharded.
  CHECK_THROWS_WITH_AS(
      seqpar::seq_shard(
          seqpar::seq_partition{10, 4, seqpar::shard_strategy::zigzag}, 0,
          seqpar::seq_shard_args<float>{.global = g, .shard = seqpar::make_bshd(shard.data(), 1, 2, 2, 4)}),
      doctest::Contains("tokens: zigzag sharding needs a sequence length divisible by 2 * ranks = 8"), seqpar::error);
}
