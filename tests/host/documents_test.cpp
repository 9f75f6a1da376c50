// Packed documents: the layout's checks, what each rank holds of which document, softmax attention
// through the Ulysses, ring and 2-D layers and linear attention through LASP (chain and LASP-2,
// with decay) against each document computed alone (its rows cut out, no mask) and put back in
// place; changing one document changes nothing in the others; documents that differ between ranks
// fail on every rank before anything moves.
#include <seqpar/documents.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/attention_cases.hpp>
#include <seqpar_test/lasp_cases.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <vector>

using seqpar::memory_space;
using seqpar::shard_strategy;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };

seqpar::document_layout lengths(std::vector<std::int32_t> l) { return seqpar::documents_of_lengths(l); }

template <class Policy>
auto ulysses_of(const Policy& policy) {
  return [policy](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
    return seqpar::ulysses_attention(policy, comm, part, shape, type, opt);
  };
}
template <class Policy>
auto ring_of(const Policy& policy) {
  return [policy](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
    return seqpar::ring_attention(policy, comm, part, shape, type, opt);
  };
}
}  // namespace

TEST_CASE("document_layout: cu_seqlens checked, with a named error for each fault") {
  const std::vector<std::int32_t> good{0, 3, 4, 9};
  const auto docs = seqpar::make_document_layout(good, 9);
  CHECK(docs.split());
  CHECK(docs.count() == 3);
  CHECK(std::vector<std::int32_t>(docs.token_ids().begin(), docs.token_ids().end()) ==
        std::vector<std::int32_t>{0, 0, 0, 1, 2, 2, 2, 2, 2});
  CHECK(docs.begin(2) == 4);
  CHECK(docs.end(2) == 9);
  auto fails = [](std::vector<std::int32_t> cu, std::int64_t S, const char* message) {
    CHECK_THROWS_WITH_AS(seqpar::make_document_layout(cu, S), doctest::Contains(message), seqpar::error);
  };
  fails({0, 3, 3, 9}, 9, "cu_seqlens: expected strictly increasing offsets (every document at least one token); "
                         "entry 2 is 3 after 3");
  fails({0, 5, 4, 9}, 9, "entry 2 is 4 after 5");
  fails({0, 3, 8}, 9, "cu_seqlens: expected the last entry to be the sequence length 9, got 8");
  fails({0, 3, 10}, 9, "the last entry to be the sequence length 9, got 10");
  fails({-1, 3, 9}, 9, "cu_seqlens: expected 0 first, got -1");
  fails({0}, 9, "cu_seqlens: expected at least 2 entries");
  fails({0, 1, 2, 3, 4}, 3, "got 4");  // more documents than tokens
  CHECK_THROWS_WITH_AS(lengths({3, 0, 2}), doctest::Contains("lengths: expected every document at least 1 token; "
                                                             "document 1 has 0"),
                       seqpar::error);
  const std::vector<std::int32_t> positions{0, 1, 2, 0, 0, 1, 2, 3, 4};
  const auto from_positions = seqpar::documents_of_position_ids(positions);
  CHECK(std::vector<std::int32_t>(from_positions.cu_seqlens().begin(), from_positions.cu_seqlens().end()) == good);
  CHECK(!seqpar::document_layout{}.split());
  CHECK(seqpar::document_layout{}.count() == 1);
}

TEST_CASE("documents_of_rank: the pieces of each document a shard holds, contiguous and zigzag") {
  const auto docs = lengths({5, 1, 1, 9});  // S = 16
  // Contiguous over 3 ranks: tokens 0-5, 6-10, 11-15.
  const auto part = seqpar::make_seq_partition(16, 3);
  const auto r0 = seqpar::documents_of_rank(docs, part, 0);
  REQUIRE(r0.pieces.size() == 2);
  auto is = [](const seqpar::document_piece& p, int d, std::int64_t local, std::int64_t global, std::int64_t n) {
    return p.document == d && p.local == local && p.global == global && p.length == n;
  };
  CHECK(is(r0.pieces[0], 0, 0, 0, 5));
  CHECK(is(r0.pieces[1], 1, 5, 5, 1));
  CHECK(r0.cu_seqlens == std::vector<std::int32_t>{0, 5, 6});
  const auto r1 = seqpar::documents_of_rank(docs, part, 1);
  CHECK(r1.cu_seqlens == std::vector<std::int32_t>{0, 1, 5});  // document 2 (token 6), then document 3 begins
  CHECK(r1.ids == std::vector<std::int32_t>{2, 3, 3, 3, 3});
  // Zigzag over 2 ranks: rank 0 holds blocks 0 and 3 (tokens 0-3, 12-15), rank 1 blocks 1 and 2.
  const auto zig = seqpar::make_seq_partition(16, 2, shard_strategy::zigzag);
  const auto z0 = seqpar::documents_of_rank(docs, zig, 0);
  CHECK(z0.cu_seqlens == std::vector<std::int32_t>{0, 4, 8});  // document 0's first 4, document 3's last 4
  CHECK(z0.ids == std::vector<std::int32_t>{0, 0, 0, 0, 3, 3, 3, 3});
  const auto z1 = seqpar::documents_of_rank(docs, zig, 1);
  CHECK(z1.cu_seqlens == std::vector<std::int32_t>{0, 1, 2, 3, 8});  // 4 | 5 | 6 | 7..11
  // Every token exactly once, under its own document, for any P and either strategy.
  for (auto strategy : {shard_strategy::contiguous, shard_strategy::zigzag})
    for (int P : {1, 2, 4, 8}) {
      const auto p = seqpar::make_seq_partition(16, P, strategy);
      std::vector<int> seen(16, 0);
      for (int r = 0; r < P; ++r)
        for (const auto& piece : seqpar::documents_of_rank(docs, p, r).pieces)
          for (std::int64_t t = 0; t < piece.length; ++t) {
            CHECK(docs.token_ids()[piece.global + t] == piece.document);
            CHECK(p.global(r, piece.local + t) == piece.global + t);
            ++seen[piece.global + t];
          }
      CHECK(seen == std::vector<int>(16, 1));
    }
}

TEST_CASE_TEMPLATE("packed documents through ulysses_attention equal each document alone", T, float, __nv_bfloat16) {
  const seqpar::reference_attention policy;
  // S = 23 over P = 4 (6, 6, 6, 5): a document spanning three ranks, length-1 documents, many short
  // documents on one rank, a rank boundary on a document boundary (12), uneven S.
  const auto docs = lengths({1, 14, 1, 1, 2, 1, 3});
  for (bool causal : {false, true})
    for (int H_kv : {1, 2, 4})
      (void)seqpar_test::check_parallel_attention<T>({4, 4, H_kv, 2, 23, 4, causal}, memory_space::host,
                                                     ulysses_of(policy), policy, everything, docs);
  // P = 8 over H = 8, zigzag.
  (void)seqpar_test::check_parallel_attention<T>({8, 8, 2, 1, 32, 4, true, shard_strategy::zigzag}, memory_space::host,
                                                 ulysses_of(policy), policy, everything, lengths({7, 1, 16, 8}));
}

TEST_CASE("packed documents with block_sparse_attention: the block mask and the documents together") {
  // Each document alone keeps its global positions, so the block mask is the one of the whole sequence.
  const seqpar::block_sparse_attention policy{{.block = 3, .window = 1, .global = 1}};
  const seqpar::block_mask mask = policy.mask;
  const auto allowed = [mask](std::int64_t i, std::int64_t j) { return mask.allowed(i, j); };
  for (bool causal : {false, true}) {
    (void)seqpar_test::check_parallel_attention<float>({3, 3, 1, 1, 24, 4, causal}, memory_space::host,
                                                       ulysses_of(policy), policy, allowed, lengths({10, 3, 11}));
    (void)seqpar_test::check_parallel_attention<float>({3, 3, 1, 1, 24, 4, causal}, memory_space::host,
                                                       ring_of(policy), policy, allowed, lengths({10, 3, 11}));
  }
}

TEST_CASE_TEMPLATE("packed documents through ring_attention and the 2-D layer equal each document alone", T, float,
                   __nv_bfloat16) {
  const seqpar::reference_attention policy;
  for (bool causal : {false, true})
    for (int H_kv : {1, 2}) {
      for (int P : {2, 3, 4, 8}) {
        const std::int64_t S = 4 * P + 3;
        (void)seqpar_test::check_parallel_attention<T>({P, 2, H_kv, 2, S, 4, causal}, memory_space::host,
                                                       ring_of(policy), policy, everything,
                                                       lengths({1, std::int32_t(S - 6), 1, 2, 2}));
      }
      (void)seqpar_test::check_parallel_attention<T>({4, 2, H_kv, 2, 32, 4, causal, shard_strategy::zigzag},
                                                     memory_space::host, ring_of(policy), policy, everything,
                                                     lengths({3, 20, 1, 8}));
      for (auto [u, r] : std::vector<std::pair<int, int>>{{2, 2}, {2, 4}, {4, 2}, {2, 3}}) {
        const auto layout = seqpar::make_token_layout_2d(2 * r * 4, {u, r});
        (void)seqpar_test::check_parallel_attention_on<T>(
            {u * r, 4, H_kv, 2, layout.tokens, 4, causal}, layout, memory_space::host,
            [&](auto& comm, const auto& l, const auto& shape, auto type, const auto& opt) {
              return seqpar::ulysses_ring_attention(policy, comm, l, shape, type, opt);
            },
            policy, everything, lengths({1, std::int32_t(layout.tokens - 4), 3}));
      }
    }
}

namespace {
// Inputs of a [1, S, H, D] sequence: q, k, v, dout.
struct inputs {
  std::vector<float> q, k, v, dout;
};

// o, dq, dk, dv of the whole sequence from P ranks (contiguous shards) of the layer make(comm, part),
// with `docs` when given.
template <class Make>
std::vector<std::vector<float>> run_layer(int P, std::int64_t S, std::int64_t H, std::int64_t D, Make make,
                                          const inputs& x, const seqpar::document_layout* docs) {
  const auto part = seqpar::make_seq_partition(S, P);
  std::vector<std::vector<float>> out(4, std::vector<float>(S * H * D));
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    const int r = comm.rank();
    const std::int64_t n = part.size(r), at = part.offset(r) * H * D;
    auto layer = make(comm, part);
    auto in = [&](const std::vector<float>& v) { return seqpar::make_bshd<const float>(v.data() + at, 1, n, H, D); };
    auto mine = [&](int w) { return seqpar::make_bshd(out[w].data() + at, 1, n, H, D); };
    const auto saved =
        layer.forward({.q = in(x.q), .k = in(x.k), .v = in(x.v), .o = mine(0), .documents = docs}, {.stream = nullptr});
    layer.backward(saved, {.dout = in(x.dout), .dq = mine(1), .dk = mine(2), .dv = mine(3)}, {.stream = nullptr});
  });
  return out;
}

inputs random_inputs(std::int64_t elements) {
  auto fresh = [&] { return seqpar_test::uniform_floats(elements, seqpar_test::rng()()); };
  return {fresh(), fresh(), fresh(), fresh()};
}
}  // namespace

TEST_CASE_TEMPLATE("packed documents through lasp_attention: the state resets at every document start", T, float,
                   __nv_bfloat16) {
  using seqpar_test::lasp_case;
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    for (float lambda : {1.0f, 0.9f}) {
      // S = 23 over 4 ranks (6, 6, 6, 5): a length-1 document, one spanning three ranks (1 .. 15),
      // short ones on the last rank, a rank boundary on a document boundary (18).
      seqpar_test::check_lasp<T>(lasp_case{4, 2, 23, 2, 3, 4, lambda, strategy}, memory_space::host,
                                 seqpar::linear_reference{}, lengths({1, 14, 3, 1, 2, 1, 1}));
      // P = 8: documents that start and end inside ranks and cross several.
      seqpar_test::check_lasp<T>(lasp_case{8, 1, 37, 2, 3, 2, lambda, strategy}, memory_space::host,
                                 seqpar::linear_reference{}, lengths({9, 2, 20, 6}));
      // One document per rank, and one document over everything.
      seqpar_test::check_lasp<T>(lasp_case{3, 1, 12, 1, 2, 3, lambda, strategy}, memory_space::host,
                                 seqpar::linear_reference{}, lengths({4, 4, 4}));
      seqpar_test::check_lasp<T>(lasp_case{3, 1, 12, 1, 2, 3, lambda, strategy}, memory_space::host,
                                 seqpar::linear_reference{}, lengths({12}));
    }
}

TEST_CASE("packed documents: one document equals the unpacked call exactly") {
  const std::int64_t S = 20, H = 3, D = 4;
  const auto x = random_inputs(S * H * D);
  const auto one = lengths({20});
  for (bool causal : {false, true}) {
    auto ring = [&](auto& comm, const auto& part) {
      return seqpar::ring_attention(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                    seqpar::elements<float>, {.causal = causal});
    };
    auto ulysses = [&](auto& comm, const auto& part) {
      return seqpar::ulysses_attention(seqpar::reference_attention{}, comm, part,
                                       {.batch = 1, .heads = H, .head_dim = D}, seqpar::elements<float>,
                                       {.causal = causal});
    };
    CHECK(run_layer(3, S, H, D, ring, x, &one) == run_layer(3, S, H, D, ring, x, nullptr));
    CHECK(run_layer(3, S, H, D, ulysses, x, &one) == run_layer(3, S, H, D, ulysses, x, nullptr));
  }
  auto lasp = [&](auto& comm, const auto& part) {
    return seqpar::lasp_attention(seqpar::linear_reference{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                  seqpar::elements<float>, std::vector<float>(H, 0.9f));
  };
  CHECK(run_layer(3, S, H, D, lasp, x, &one) == run_layer(3, S, H, D, lasp, x, nullptr));
}

namespace {
// A reference policy that counts the block pairs it computes.
struct pair_counter : seqpar::reference_attention {
  std::atomic<int>* pairs;
  template <class T>
  void block_forward(const seqpar::block_forward_args<T>& a, seqpar::stream_ref s) const {
    ++*pairs;
    seqpar::reference_attention::block_forward(a, s);
  }
};
}  // namespace

TEST_CASE("ring_attention skips block pairs that share no document") {
  // One document per rank's shard, P = 4, not causal: every rank computes only its own shard.
  std::atomic<int> pairs{0};
  const pair_counter policy{{}, &pairs};
  const auto part = seqpar::make_seq_partition(16, 4);
  const auto docs = lengths({4, 4, 4, 4});
  seqpar::run_in_process(4, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    seqpar::ring_attention layer(policy, comm, part, {.batch = 1, .heads = 1, .head_dim = 2}, seqpar::elements<float>);
    std::vector<float> x(8, 0.5f), o(8);
    const auto in = seqpar::make_bshd<const float>(x.data(), 1, 4, 1, 2);
    (void)layer.forward({.q = in, .k = in, .v = in, .o = seqpar::make_bshd(o.data(), 1, 4, 1, 2), .documents = &docs},
                        {.stream = nullptr});
  });
  CHECK(pairs == 4);
  pairs = 0;
  seqpar::run_in_process(4, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    seqpar::ring_attention layer(policy, comm, part, {.batch = 1, .heads = 1, .head_dim = 2}, seqpar::elements<float>);
    std::vector<float> x(8, 0.5f), o(8);
    const auto in = seqpar::make_bshd<const float>(x.data(), 1, 4, 1, 2);
    (void)layer.forward({.q = in, .k = in, .v = in, .o = seqpar::make_bshd(o.data(), 1, 4, 1, 2)}, {.stream = nullptr});
  });
  CHECK(pairs == 16);
}

TEST_CASE("packed documents: changing one document changes nothing in the others") {
  const std::int64_t S = 18, H = 2, D = 4;
  const auto docs = lengths({5, 1, 8, 4});
  const auto x = random_inputs(S * H * D);
  auto changed = x;
  for (std::int64_t t = docs.begin(2); t < docs.end(2); ++t)
    for (std::int64_t e = 0; e < H * D; ++e)
      for (auto* x : {&changed.q, &changed.k, &changed.v}) (*x)[t * H * D + e] += 1.0f;
  auto ulysses = [&](auto& comm, const auto& part) {
    return seqpar::ulysses_attention(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                     seqpar::elements<float>, {.causal = true});
  };
  auto ring = [&](auto& comm, const auto& part) {
    return seqpar::ring_attention(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                  seqpar::elements<float>, {.causal = true});
  };
  auto lasp = [&](auto& comm, const auto& part) {
    return seqpar::lasp_attention(seqpar::linear_reference{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                  seqpar::elements<float>, std::vector<float>(H, 0.95f),
                                  seqpar::lasp_strategy::all_gather);
  };
  for (int layer = 0; layer < 3; ++layer) {
    CAPTURE(layer);
    auto run = [&](const inputs& in) {
      if (layer == 2) return run_layer(4, S, H, D, lasp, in, &docs);
      return layer ? run_layer(3, S, H, D, ring, in, &docs) : run_layer(2, S, H, D, ulysses, in, &docs);
    };
    const auto before = run(x), after = run(changed);
    for (int w = 0; w < 4; ++w) {
      int same_outside = 1, differs_inside = 0;
      for (std::int64_t t = 0; t < S; ++t)
        for (std::int64_t e = 0; e < H * D; ++e) {
          const bool equal = before[w][t * H * D + e] == after[w][t * H * D + e];
          if (docs.token_ids()[t] == 2) differs_inside |= !equal;
          else same_outside &= equal;
        }
      CAPTURE(w);
      CHECK(same_outside);
      CHECK(differs_inside);
    }
  }
}

TEST_CASE("all or nothing: documents that differ between ranks, or do not cover the sequence") {
  const auto part = seqpar::make_seq_partition(12, 3);
  const auto docs = lengths({5, 7}), other = lengths({6, 6}), short_docs = lengths({5, 6});
  auto body = [&](const seqpar::document_layout& bad_docs) {
    return [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& outputs) {
      seqpar::ring_attention layer(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = 1, .head_dim = 2},
                                   seqpar::elements<float>);
      auto& x = outputs.input(8, 0.25f);
      auto& o = outputs.make(8);
      const auto in = seqpar::make_bshd<const float>(x.data(), 1, 4, 1, 2);
      (void)layer.forward(
          {.q = in,
           .k = in,
           .v = in,
           .o = seqpar::make_bshd(o.data(), 1, 4, 1, 2),
           .documents = bad ? &bad_docs : &docs},
          {.stream = nullptr});
    };
  };
  seqpar_test::expect_all_or_nothing(3, "docs: this rank's documents (2 over 12 tokens) differ from the other ranks'",
                                     body(other));
  seqpar_test::expect_all_or_nothing(3, "docs: the layout covers 11 tokens; expected the layer's 12",
                                     body(short_docs));
}
