// The 2-D layer (Ulysses groups x ring groups) on the host: every (u, r) against one device,
// forward and backward, including u = 1 (pure ring), r = 1 (pure Ulysses), H_kv < u and P = 8 over
// H = 4 heads; the token layout exactly; bad input on one rank at a time.
#include <seqpar/comm/counting.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/attention_cases.hpp>

#include <doctest/doctest.h>

#include <set>
#include <vector>

using seqpar::memory_space;
using seqpar::mesh_2d;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };

// check_parallel_attention_on for the 2-D layer over mesh {u, r}.
template <class T>
void check_2d(int u, int r, int H, int H_kv, std::int64_t S, bool causal) {
  const seqpar::reference_attention policy;
  const auto layout = seqpar::make_token_layout_2d(S, {u, r});
  (void)seqpar_test::check_parallel_attention_on<T>(
      {u * r, H, H_kv, 2, S, 4, causal}, layout, memory_space::host,
      [&](auto& comm, const auto& l, const auto& shape, auto type, const auto& opt) {
        return seqpar::ulysses_ring_attention(policy, comm, l, shape, type, opt);
      },
      policy, everything);
}
}  // namespace

TEST_CASE("token_layout_2d: ring groups own zigzag block pairs, split in order over their Ulysses group") {
  // S = 16, u = 2, r = 2: blocks of 4; ring group 0 owns blocks 0 and 3, ring group 1 blocks 1 and 2.
  const auto layout = seqpar::make_token_layout_2d(16, {2, 2});
  const std::vector<std::vector<std::int64_t>> want{{0, 1, 2, 3},
                                                    {12, 13, 14, 15},  // ranks 0 and 1: Ulysses group 0 (ring index 0)
                                                    {4, 5, 6, 7},
                                                    {8, 9, 10, 11}};  // ranks 2 and 3: Ulysses group 1 (ring index 1)
  for (int rank = 0; rank < 4; ++rank) {
    CAPTURE(rank);
    REQUIRE(layout.size(rank) == 4);
    for (std::int64_t s = 0; s < 4; ++s) CHECK(layout.global(rank, s) == want[rank][s]);
  }
  // Every token is held exactly once, for uneven splits within a group too.
  for (auto mesh : {mesh_2d{3, 2}, mesh_2d{2, 3}, mesh_2d{4, 2}, mesh_2d{1, 4}, mesh_2d{4, 1}}) {
    const auto l = seqpar::make_token_layout_2d(2 * mesh.ring * 5, mesh);
    std::multiset<std::int64_t> seen;
    for (int rank = 0; rank < mesh.ulysses * mesh.ring; ++rank)
      for (std::int64_t s = 0; s < l.size(rank); ++s) seen.insert(l.global(rank, s));
    CHECK(seen.size() == std::size_t(l.tokens));
    for (std::int64_t t = 0; t < l.tokens; ++t) CHECK(seen.count(t) == 1);
  }
  CHECK_THROWS_WITH_AS(seqpar::make_token_layout_2d(10, {2, 3}),
                       doctest::Contains("tokens: the 2-D layout deals 2 * ring = 6 equal blocks"), seqpar::error);
}

TEST_CASE_TEMPLATE("ulysses_ring_attention equals one device for every (u, r)", T, float, __nv_bfloat16) {
  for (auto [u, r] : std::vector<std::pair<int, int>>{{2, 2}, {2, 4}, {4, 2}, {2, 3}, {1, 4}, {4, 1}, {3, 2}})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4}) {
        CAPTURE(u);
        CAPTURE(r);
        check_2d<T>(u, r, 4, H_kv, 2 * r * 3 + (u == 3 ? 0 : 0), causal);
      }
}

TEST_CASE("ulysses_ring_attention: uneven heads whose GQA groups straddle Ulysses ranks") {
  // H = 6 over u = 4 ranks: 2, 2, 1, 1 query heads; with H_kv = 2 rank 1's heads 2 and 3 read kv
  // heads 0 and 1, so the ring must use the Ulysses map, not heads / kv_heads.
  for (int H_kv : {2, 3})
    for (bool causal : {false, true}) check_2d<float>(4, 2, 6, H_kv, 12, causal);
}

TEST_CASE("ulysses_ring_attention: P = 8 over H = 4 heads gives one-device results") {
  for (auto [u, r] : std::vector<std::pair<int, int>>{{2, 4}, {4, 2}, {1, 8}})
    for (bool causal : {false, true}) check_2d<float>(u, r, 4, 2, 32, causal);
}

TEST_CASE("all or nothing: ulysses_ring_attention construction and forward") {
  const int P = 4;
  const auto layout = seqpar::make_token_layout_2d(8, {2, 2});
  seqpar_test::expect_all_or_nothing(P, "mesh: ulysses * ring = 6", [&](auto& comm, bool bad, seqpar_test::sentinels&) {
    seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, comm,
                                         bad ? seqpar::token_layout_2d{12, {2, 3}} : layout,
                                         {.batch = 1, .heads = 2, .head_dim = 4}, seqpar::elements<float>);
  });
  seqpar_test::expect_all_or_nothing(P, "o: expected extents", [&](auto& comm, bool bad, seqpar_test::sentinels& s) {
    seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, comm, layout,
                                         {.batch = 1, .heads = 2, .head_dim = 4}, seqpar::elements<float>,
                                         {.causal = true});
    const std::int64_t n = layout.size(comm.rank());
    auto& x = s.input(n * 2 * 4, 1.f);
    auto& o = s.make((n + 1) * 2 * 4);
    const auto in = seqpar::make_bshd<const float>(x.data(), 1, n, 2, 4);
    (void)layer.forward({.q = in, .k = in, .v = in, .o = seqpar::make_bshd(o.data(), 1, bad ? n + 1 : n, 2, 4)},
                        {.stream = nullptr});
  });
}

TEST_CASE("ulysses_ring_attention: bytes per rank equal the formula, Ulysses part and ring part") {
  using bf16 = __nv_bfloat16;
  const int H = 6, H_kv = 2;
  const std::int64_t B = 2, D = 8;
  for (auto [u, r] : std::vector<std::pair<int, int>>{{2, 2}, {4, 2}, {2, 3}}) {
    const std::int64_t S = 2 * r * 5;
    const auto layout = seqpar::make_token_layout_2d(S, {u, r});
    const int P = u * r;
    std::vector<std::size_t> ulysses_fwd(P), ring_fwd(P), ulysses_all(P), ring_all(P);
    std::vector<seqpar::head_partition> heads(P);
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
      seqpar::counting_communicator world(inner);
      seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, world, layout,
                                           {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                           seqpar::elements<bf16>);
      const int rank = world.rank();
      const std::int64_t n = layout.size(rank);
      std::vector<bf16> q(B * n * H * D, bf16(0.5f)), kv(B * n * H_kv * D, bf16(0.25f)), o(q.size()), dq(q.size()),
          dk(kv.size()), dv(kv.size());
      auto in = [&](std::vector<bf16>& x, int h) { return seqpar::make_bshd<const bf16>(x.data(), B, n, h, D); };
      auto out = [&](std::vector<bf16>& x, int h) { return seqpar::make_bshd(x.data(), B, n, h, D); };
      const auto saved =
          layer.forward({.q = in(q, H), .k = in(kv, H_kv), .v = in(kv, H_kv), .o = out(o, H)}, {.stream = nullptr});
      ulysses_fwd[rank] = layer.ulysses_group().bytes_sent(), ring_fwd[rank] = layer.ring_group().bytes_sent();
      layer.backward(saved, {.dout = in(q, H), .dq = out(dq, H), .dk = out(dk, H_kv), .dv = out(dv, H_kv)},
                     {.stream = nullptr});
      ulysses_all[rank] = layer.ulysses_group().bytes_sent(), ring_all[rank] = layer.ring_group().bytes_sent();
      heads[rank] = layer.plan().heads();
      CHECK(world.bytes_sent() == 0);  // everything moves in the two groups
    });
    for (int rank = 0; rank < P; ++rank) {
      CAPTURE(u);
      CAPTURE(r);
      CAPTURE(rank);
      const auto& h = heads[rank];
      const int i = layout.mesh.ulysses_index(rank);
      const std::int64_t n = layout.size(rank);
      std::size_t qkv = 0, o = 0;  // elements: Q/K/V out and O back; the backward mirrors them
      for (int p = 0; p < u; ++p)
        if (p != i) {
          const std::int64_t n_p = layout.group_partition().size(p);
          qkv += B * D * (n * (h.count(p) + 2 * h.kv_count(p)) + n_p * h.count(i));
          o += B * D * (n * h.count(p) + n_p * (h.count(i) + 2 * h.kv_count(i)));
        }
      CHECK(ulysses_fwd[rank] == qkv * sizeof(bf16));
      CHECK(ulysses_all[rank] == (qkv + o) * sizeof(bf16));
      const std::size_t shard = 2 * B * (S / r) * h.kv_count(i) * D;  // K and V of one ring group, head subset i
      CHECK(ring_fwd[rank] == (r - 1) * shard * sizeof(bf16));
      CHECK(ring_all[rank] == 2 * (r - 1) * shard * sizeof(bf16) + r * shard * sizeof(float));
    }
  }
}
