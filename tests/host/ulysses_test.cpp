// all_to_all_heads on host memory: exact maps over the grid of shapes, round trips, the adjoint,
// the traffic formula of docs/architecture.md, and bad input.
#include <seqpar_test/ulysses_cases.hpp>

#include <doctest/doctest.h>

#include <mutex>

using seqpar::memory_space;
using seqpar::order;
using seqpar::shard_strategy;
using seqpar_test::ulysses_case;

namespace {
// Every (P, H, H_kv) of the grid: P in {1,2,3,4,8}, H in {1,7,8,32}, H_kv in {1,2,H} dividing H.
template <class Fn>
void for_each_group_and_heads(Fn&& fn) {
  for (int P : {1, 2, 3, 4, 8})
    for (int H : {1, 7, 8, 32})
      for (int H_kv : {1, 2, H})
        if (H % H_kv == 0 && (H_kv != 2 || H != 2)) fn(P, H, H_kv);
}
}  // namespace

TEST_CASE_TEMPLATE("all_to_all_heads: every element lands where the maps say (host)", T, float, __half, __nv_bfloat16) {
  for_each_group_and_heads([](int P, int H, int H_kv) {
    for (std::int64_t B : {1, 3})
      for (order layout : {order::bshd, order::sbhd})
        for (std::int64_t S : {std::int64_t(2 * P), std::int64_t(2 * P + 1)})  // even, and uneven for every P > 1
          seqpar_test::check_exact_maps<T>({P, H, H_kv, B, S, 3, layout, shard_strategy::contiguous},
                                           memory_space::host);
  });
}

TEST_CASE("all_to_all_heads: zigzag shards gather into global token order") {
  for (int P : {1, 2, 3, 4})
    for (order layout : {order::bshd, order::sbhd})
      seqpar_test::check_exact_maps<float>({P, 7, 1, 2, 4 * P, 2, layout, shard_strategy::zigzag}, memory_space::host);
}

TEST_CASE("all_to_all_heads: the inverse Q/K/V exchange is the adjoint of the forward one (GQA sums included)") {
  for_each_group_and_heads([](int P, int H, int H_kv) {
    seqpar_test::check_adjoint({P, H, H_kv, 2, 2 * P + 1, 3, order::bshd, shard_strategy::contiguous}, memory_space::host);
  });
  seqpar_test::check_adjoint({4, 8, 2, 1, 16, 4, order::sbhd, shard_strategy::zigzag}, memory_space::host);
}

TEST_CASE("all_to_all_heads: bytes per peer equal the formulas of docs/architecture.md") {
  for (auto [P, H, H_kv, S] : std::vector<std::array<int, 4>>{{4, 8, 8, 16}, {4, 7, 1, 10}, {3, 32, 2, 11}, {8, 16, 8, 64}}) {
    CAPTURE(P);
    CAPTURE(H);
    CAPTURE(H_kv);
    const std::int64_t B = 2, D = 4;
    const seqpar_test::token_owners tok(S, P, shard_strategy::contiguous);
    const seqpar_test::head_owners heads(H, H_kv, P);
    std::vector<std::vector<seqpar::traffic_record>> logs(P);
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
      seqpar::counting_communicator comm(inner);
      const int r = comm.rank();
      const auto plan = seqpar::make_all_to_all_heads_plan(r, seqpar::make_seq_partition(S, P),
                                                           {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                                           seqpar::dtype::float16);
      std::vector<__half> q(B * tok.sizes[r] * H * D), k(B * tok.sizes[r] * H_kv * D), v(k.size());
      std::vector<__half> q2(B * S * heads.count[r] * D), k2(B * S * heads.kv_count[r] * D), v2(k2.size());
      std::vector<std::byte> ws(plan.workspace_bytes());
      auto seq = [&](std::vector<__half>& x, int h) { return seqpar::make_bshd<const __half>(x.data(), B, tok.sizes[r], h, D); };
      auto hd = [&](std::vector<__half>& x, int h) { return seqpar::make_bshd(x.data(), B, S, h, D); };
      seqpar::all_to_all_heads(
          plan, comm,
          seqpar::qkv_exchange_args<__half>{
              .in = {seq(q, H), seq(k, H_kv), seq(v, H_kv)},
              .out = {hd(q2, heads.count[r]), hd(k2, heads.kv_count[r]), hd(v2, heads.kv_count[r])},
              .workspace = ws},
          {.stream = nullptr});
      seqpar::all_to_all_heads_inverse(
          plan, comm,
          seqpar::heads_exchange_args<__half>{.in = seqpar::make_bshd<const __half>(q2.data(), B, S, heads.count[r], D),
                                              .out = seqpar::make_bshd(q.data(), B, tok.sizes[r], H, D),
                                              .workspace = ws},
          {.stream = nullptr});
      logs[r] = comm.records();
    });
    for (int r = 0; r < P; ++r) {
      REQUIRE(logs[r].size() == 2);
      for (int j = 0; j < P; ++j) {
        const std::size_t fwd = j == r ? 0 : tok.sizes[r] * B * D * (heads.count[j] + 2 * heads.kv_count[j]) * 2;
        const std::size_t inv = j == r ? 0 : tok.sizes[j] * B * D * heads.count[r] * 2;
        CHECK(logs[r][0].bytes_to_peer[j] == fwd);
        CHECK(logs[r][1].bytes_to_peer[j] == inv);
      }
      if (H % P == 0 && H_kv % P == 0 && S % P == 0)  // the even-split closed form
        CHECK(logs[r][0].total() + logs[r][1].total() == (P - 1) * (S / P) * B * D * (2 * H + 2 * H_kv) * 2 / P);
    }
  }
}

TEST_CASE("all_to_all_heads: bad input names the argument before anything moves") {
  using seqpar::errc;
  CHECK_THROWS_WITH_AS(seqpar::make_head_partition(8, 3, 4),
                       doctest::Contains("kv_heads: expected a divisor of heads = 8 (GQA groups of equal size), got 3"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::make_seq_partition(10, 4, shard_strategy::zigzag),
                       doctest::Contains("tokens: zigzag sharding needs a sequence length divisible by 2 * ranks = 8, got 10"),
                       seqpar::error);
  // Hand-built partitions that skip the factories' checks are refused by the plan all the same.
  CHECK_THROWS_WITH_AS(seqpar::all_to_all_heads_plan(0, seqpar::make_seq_partition(8, 2), seqpar::head_partition{4, 8, 2},
                                                     1, 4, seqpar::dtype::float32),
                       doctest::Contains("kv_heads: expected a divisor of heads = 4 (GQA groups of equal size), got 8"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::all_to_all_heads_plan(0, seqpar::seq_partition{10, 4, shard_strategy::zigzag},
                                                     seqpar::make_head_partition(4, 4, 4), 1, 4, seqpar::dtype::float32),
                       doctest::Contains("tokens: zigzag sharding needs a sequence length divisible by 2 * ranks = 8, got 10"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::all_to_all_heads_plan(0, seqpar::make_seq_partition(8, 2),
                                                     seqpar::make_head_partition(4, 4, 4), 1, 4, seqpar::dtype::float32),
                       doctest::Contains("heads: partition over 4 ranks; expected the sequence's group size 2"),
                       seqpar::error);

  const int P = 2;
  const std::int64_t B = 1, S = 8, D = 4, H = 4;
  std::vector<std::string> messages(P);
  std::vector<int> untouched(P, 1);
  auto run = [&](auto&& call) {
    std::fill(messages.begin(), messages.end(), "");
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const int r = comm.rank();
      const auto plan = seqpar::make_all_to_all_heads_plan(r, seqpar::make_seq_partition(S, P),
                                                           {.batch = B, .heads = H, .kv_heads = 2, .head_dim = D},
                                                           seqpar::dtype::float32);
      std::vector<float> q(B * S / P * H * D, 1.0f), kv(B * S / P * 2 * D, 1.0f);
      std::vector<__half> kv_half(kv.size());
      std::vector<float> q2(B * S * 2 * D, seqpar_test::poison<float>()), kv2(B * S * 1 * D, seqpar_test::poison<float>());
      std::vector<std::byte> ws(plan.workspace_bytes());
      try {
        call(plan, comm, q, kv, kv_half, q2, kv2, ws);
      } catch (const seqpar::error& e) {
        messages[r] = e.what();
      }
      for (float x : q2) untouched[r] &= seqpar_test::same_bits(x, seqpar_test::poison<float>());
    });
  };
  using ws_t = std::vector<std::byte>;
  auto views = [&](std::vector<float>& x, std::int64_t s, std::int64_t h) { return seqpar::make_bshd(x.data(), B, s, h, D); };
  auto cviews = [&](std::vector<float>& x, std::int64_t s, std::int64_t h) {
    return seqpar::make_bshd<const float>(x.data(), B, s, h, D);
  };

  run([&](auto& plan, auto& comm, auto& q, auto& kv, auto&, auto& q2, auto& kv2, ws_t& ws) {
    seqpar::all_to_all_heads(
        plan, comm,
        seqpar::qkv_exchange_args<float>{.in = {cviews(q, S / P, H), cviews(kv, S / P, 2), cviews(kv, S / P, 2)},
                                         .out = {views(q2, S - 1, 2), views(kv2, S, 1), views(kv2, S, 1)},
                                         .workspace = ws},
        {.stream = nullptr});
  });
  for (int r = 0; r < P; ++r) {
    CHECK(messages[r].find("out.q: expected extents {batch, seq, heads, head_dim} = {1, 8, 2, 4}, got {1, 7, 2, 4}") !=
          std::string::npos);
    CHECK(untouched[r]);
  }

  run([&](auto& plan, auto& comm, auto& q, auto&, auto&, auto& q2, auto&, ws_t& ws) {
    seqpar::all_to_all_heads(
        plan, comm,
        seqpar::heads_exchange_args<float>{
            .in = cviews(q, S / P, H), .out = views(q2, S, 2), .workspace = std::span<std::byte>(ws).first(8)},
        {.stream = nullptr});
  });
  for (int r = 0; r < P; ++r) {
    CHECK(messages[r].find("workspace: expected at least plan.workspace_bytes() = ") != std::string::npos);
    CHECK(untouched[r]);
  }

  // A plan made for another group size than the communicator's.
  run([&](auto&, auto& comm, auto& q, auto&, auto&, auto& q2, auto&, ws_t& ws) {
    const auto plan3 = seqpar::make_all_to_all_heads_plan(comm.rank(), seqpar::make_seq_partition(S, 3),
                                                          {.batch = B, .heads = H, .kv_heads = 2, .head_dim = D},
                                                          seqpar::dtype::float32);
    seqpar::all_to_all_heads(
        plan3, comm,
        seqpar::heads_exchange_args<float>{.in = cviews(q, S / P, H), .out = views(q2, S, 2), .workspace = ws},
        {.stream = nullptr});
  });
  for (int r = 0; r < P; ++r) CHECK(messages[r].find("comm: a group of 2 ranks; expected the plan's 3") != std::string::npos);
}

TEST_CASE("all_to_all_heads: any strides (fused QKV input, head_dim-major output) give the maps' values") {
  const int P = 3, H = 7, H_kv = 1;
  const std::int64_t B = 2, S = 11, D = 5, F = H + 2 * H_kv;  // fused heads per token
  const seqpar_test::token_owners tok(S, P, shard_strategy::contiguous);
  const seqpar_test::head_owners heads(H, H_kv, P);
  long wrong = 0;
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const std::int64_t S_r = tok.sizes[r];
    const auto plan = seqpar::make_all_to_all_heads_plan(r, seqpar::make_seq_partition(S, P),
                                                         {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                                         seqpar::dtype::float32);
    // Input: one fused [B, S_r, H + 2 H_kv, D] buffer; q, k, v are head slices of it.
    std::vector<float> fused(B * S_r * F * D);
    const seqpar::shape4 fused_strides{S_r * F * D, F * D, D, 1};
    auto slice = [&](std::int64_t first_head, std::int64_t n) {
      return seqpar::make_strided<const float>(fused.data() + first_head * D, {B, S_r, n, D}, fused_strides);
    };
    const auto q = slice(0, H), k = slice(H, H_kv), v = slice(H + H_kv, H_kv);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t s = 0; s < S_r; ++s)
        for (std::int64_t d = 0; d < D; ++d) {
          for (int h = 0; h < H; ++h) const_cast<float&>(q(b, s, h, d)) = seqpar_test::encoded<float>(r, 0, b, s, h, d);
          for (int h = 0; h < H_kv; ++h) {
            const_cast<float&>(k(b, s, h, d)) = seqpar_test::encoded<float>(r, 1, b, s, h, d);
            const_cast<float&>(v(b, s, h, d)) = seqpar_test::encoded<float>(r, 2, b, s, h, d);
          }
        }
    // Outputs: [B, S, D, h] memory order, so head_dim has stride h (not 1).
    std::vector<std::vector<float>> out(3);
    auto transposed = [&](int w) {
      const std::int64_t h = w ? heads.kv_count[r] : heads.count[r];
      out[w].assign(B * S * D * h, seqpar_test::poison<float>());
      return seqpar::make_strided(out[w].data(), {B, S, h, D}, {S * D * h, D * h, 1, h});
    };
    const auto q2 = transposed(0), k2 = transposed(1), v2 = transposed(2);
    std::vector<std::byte> ws(plan.workspace_bytes());
    seqpar::all_to_all_heads(plan, comm,
                             seqpar::qkv_exchange_args<float>{.in = {q, k, v}, .out = {q2, k2, v2}, .workspace = ws},
                             {.stream = nullptr});
    long bad = 0;
    for (int j = 0; j < P; ++j)
      for (std::int64_t s = 0; s < tok.sizes[j]; ++s)
        for (std::int64_t b = 0; b < B; ++b)
          for (std::int64_t d = 0; d < D; ++d) {
            const std::int64_t g = tok.global_of[j][s];
            for (int h = 0; h < heads.count[r]; ++h)
              bad += !seqpar_test::same_bits(q2(b, g, h, d), seqpar_test::encoded<float>(j, 0, b, s, heads.first[r] + h, d));
            for (int h = 0; h < heads.kv_count[r]; ++h) {
              bad += !seqpar_test::same_bits(k2(b, g, h, d), seqpar_test::encoded<float>(j, 1, b, s, heads.kv_first[r] + h, d));
              bad += !seqpar_test::same_bits(v2(b, g, h, d), seqpar_test::encoded<float>(j, 2, b, s, heads.kv_first[r] + h, d));
            }
          }
    // And back: the inverse from the transposed q2 into a fresh fused-layout slice.
    std::vector<float> back(fused.size(), seqpar_test::poison<float>());
    const auto q_back = seqpar::make_strided(back.data(), {B, S_r, H, D}, fused_strides);
    seqpar::all_to_all_heads_inverse(
        plan, comm,
        seqpar::heads_exchange_args<float>{.in = seqpar::tensor_view<const float>(q2), .out = q_back, .workspace = ws},
        {.stream = nullptr});
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t s = 0; s < S_r; ++s)
        for (int h = 0; h < H; ++h)
          for (std::int64_t d = 0; d < D; ++d) bad += !seqpar_test::same_bits(q_back(b, s, h, d), q(b, s, h, d));
    static std::mutex m;
    std::lock_guard lock(m);
    wrong += bad;
  });
  CHECK(wrong == 0);
}
