// LASP on host memory with the reference policy: outputs and gradients of P ranks against the
// single-device definition, both strategies, traffic, a normalised variant, and bad input.
#include <seqpar_test/lasp_cases.hpp>

#include <seqpar/comm/counting.hpp>
#include <seqpar/policy/linear_reference.hpp>

#include <doctest/doctest.h>

using seqpar::lasp_strategy;
using seqpar::memory_space;
using seqpar_test::lasp_case;

TEST_CASE_TEMPLATE("lasp_attention (host): o, dq, dk, dv equal the single-device reference", T, float, __half,
                   __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (float lambda : {1.0f, 0.99f, 0.9f})
      for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
        seqpar_test::check_lasp<T>({P, 2, 4 * P + 3, 2, 3, 5, lambda, strategy}, memory_space::host);
}

TEST_CASE("lasp_attention (host): a normalised variant (ones column in V) composes unchanged") {
  for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
    seqpar_test::check_lasp<float>({4, 1, 13, 2, 4, 3, 0.95f, strategy, true}, memory_space::host);
}

TEST_CASE("lasp_attention: bytes per rank are one state per hop, the same for S = 1K and S = 64K") {
  const int P = 8;
  const std::int64_t B = 1, H = 1, D = 2, E = 2, state_bytes = B * H * D * E * 4;
  for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather}) {
    std::vector<std::vector<std::size_t>> sent;  // per S: bytes per rank
    for (std::int64_t S : {1024, 65536}) {
      std::vector<std::size_t> bytes(P);
      std::vector<std::vector<std::size_t>> to_peer(P);
      const auto part = seqpar::make_seq_partition(S, P);
      seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
        seqpar::counting_communicator comm(inner);
        const int r = comm.rank();
        const std::int64_t n = part.size(r);
        std::vector<float> q(B * n * H * D, 0.5f), v(B * n * H * E, 0.25f), o(v.size()), dq(q.size()), dk(q.size()),
            dv(v.size());
        auto in = [&](std::vector<float>& x, std::int64_t w) { return seqpar::make_bshd<const float>(x.data(), B, n, H, w); };
        auto out = [&](std::vector<float>& x, std::int64_t w) { return seqpar::make_bshd(x.data(), B, n, H, w); };
        seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part,
                                     {.batch = B, .heads = int(H), .head_dim = D, .value_dim = E},
                                     seqpar::elements<float>, {0.99f}, strategy);
        const auto saved =
            layer.forward({.q = in(q, D), .k = in(q, D), .v = in(v, E), .o = out(o, E)}, {.stream = nullptr});
        layer.backward(saved, {.dout = in(v, E), .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E)},
                       {.stream = nullptr});
        bytes[r] = comm.bytes_sent();
        to_peer[r].resize(P);
        for (int j = 0; j < P; ++j) to_peer[r][j] = comm.bytes_sent_to(j);
      });
      seqpar_test::check_bytes_to_peers(to_peer, [&](int r, int j) -> std::size_t {
        if (strategy == lasp_strategy::chain)
          return (j == r + 1 || j == r - 1) ? state_bytes : 0;  // forward to r+1, backward to r-1
        return j == r ? 0 : 2 * state_bytes;                     // forward and backward all-gathers
      });
      sent.push_back(bytes);
    }
    CHECK(sent[0] == sent[1]);
  }
}

TEST_CASE("linear_attention_ring: bad input names the argument before anything moves") {
  const auto part = seqpar::make_seq_partition(8, 2);
  CHECK_THROWS_WITH_AS(seqpar::linear_attention_ring(0, seqpar::make_seq_partition(8, 2, seqpar::shard_strategy::zigzag),
                                                     {.batch = 1, .heads = 1, .head_dim = 2, .value_dim = 2}),
                       doctest::Contains("seq: LASP passes states along the sequence and needs contiguous shards"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS(seqpar::linear_attention_ring(0, part, {.batch = 1, .heads = 1, .head_dim = 2, .value_dim = 2},
                                                     static_cast<lasp_strategy>(7)),
                       doctest::Contains("strategy: expected lasp_strategy::chain or lasp_strategy::all_gather, got 7"),
                       seqpar::error);
  std::vector<std::string> messages(2);
  std::vector<int> untouched(2, 1);
  auto run = [&](std::vector<float> decay, std::int64_t state_e) {
    seqpar::run_in_process(2, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const int r = comm.rank();
      seqpar::linear_attention_ring ring(r, part, {.batch = 1, .heads = 2, .head_dim = 2, .value_dim = 3});
      std::vector<float> q(4 * 2 * 2, 1.0f), v(4 * 2 * 3, 1.0f), o(v.size(), seqpar_test::poison<float>());
      std::vector<float> state(2 * 2 * state_e);
      std::vector<std::byte> ws(ring.workspace_bytes());
      try {
        ring.forward(seqpar::linear_reference{}, comm,
                     seqpar::lasp_ring_forward_args<float>{.q = seqpar::make_bshd<const float>(q.data(), 1, 4, 2, 2),
                                                           .k = seqpar::make_bshd<const float>(q.data(), 1, 4, 2, 2),
                                                           .v = seqpar::make_bshd<const float>(v.data(), 1, 4, 2, 3),
                                                           .decay = decay, .o = seqpar::make_bshd(o.data(), 1, 4, 2, 3),
                                                           .saved = seqpar::make_state(state.data(), 1, 2, 2, state_e),
                                                           .workspace = ws},
                     {.stream = nullptr});
      } catch (const seqpar::error& e) {
        messages[r] = e.what();
      }
      for (float x : o) untouched[r] &= seqpar_test::same_bits(x, seqpar_test::poison<float>());
    });
  };
  run({0.9f, 1.5f}, 3);
  for (int r = 0; r < 2; ++r) {
    CHECK(messages[r].find("decay[1]: expected lambda in (0, 1], got 1.5") != std::string::npos);
    CHECK(untouched[r]);
  }
  run({0.9f}, 3);
  for (int r = 0; r < 2; ++r) CHECK(messages[r].find("decay: expected one lambda per head = 2 values, got 1") != std::string::npos);
  run({0.9f, 0.0f}, 3);
  for (int r = 0; r < 2; ++r) CHECK(messages[r].find("decay[1]: expected lambda in (0, 1], got 0") != std::string::npos);
  run({0.9f, 0.8f}, 4);
  for (int r = 0; r < 2; ++r) {
    CHECK(messages[r].find("saved: expected state extents {batch, heads, D, E} = {1, 2, 2, 3}, got {1, 2, 2, 4}") !=
          std::string::npos);
    CHECK(untouched[r]);
  }
}

TEST_CASE("lasp_attention (host): longer chunks, head dims 16 and 8") {
  seqpar_test::check_lasp<float>({3, 1, 3 * 40 + 2, 2, 16, 8, 0.99f, lasp_strategy::chain}, memory_space::host);
  seqpar_test::check_lasp<__nv_bfloat16>({2, 2, 61, 1, 8, 16, 0.9f, lasp_strategy::all_gather}, memory_space::host);
}
