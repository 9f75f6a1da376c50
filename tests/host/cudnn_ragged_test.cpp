// cudnn_attention's host algebra for packed documents (no cuDNN needed): the document spans of a
// call against a scan of the per-token ids, the bucketed entries, each tensor's ragged offsets
// against the address of the entry's first element in a strided view, the causal bound and its
// refusals, and the boundaries that layouts and call documents hand a policy.
#include <seqpar/detail/call_documents.hpp>
#include <seqpar/documents.hpp>
#include <seqpar/policy/detail/cudnn_ragged.hpp>
#include <seqpar/tensor.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace cs = seqpar::detail::cudnn_sdpa;

namespace {
// The spans by scanning ids: for every document, its query rows and key rows in the call.
std::vector<cs::document_span> scanned_spans(const seqpar::document_layout& docs, std::int64_t q_first,
                                             std::int64_t q_rows, std::int64_t kv_first, std::int64_t kv_rows) {
  std::vector<cs::document_span> out;
  const auto ids = docs.token_ids();
  for (int d = 0; d < docs.count(); ++d) {
    cs::document_span s{-1, 0, -1, 0};
    for (std::int64_t i = 0; i < q_rows; ++i)
      if (ids[q_first + i] == d) s.q_begin = s.q_begin < 0 ? i : s.q_begin, ++s.q_length;
    for (std::int64_t j = 0; j < kv_rows; ++j)
      if (ids[kv_first + j] == d) s.kv_begin = s.kv_begin < 0 ? j : s.kv_begin, ++s.kv_length;
    if (s.q_length > 0 && s.kv_length > 0) out.push_back(s);
  }
  return out;
}

cs::ragged_entries entries_of(const seqpar::document_layout& docs, std::int64_t batch, std::int64_t q_first,
                              std::int64_t q_rows, std::int64_t kv_first, std::int64_t kv_rows) {
  const auto ids = docs.host_ids();
  return {cs::document_spans(ids.cu_seqlens, ids.count, q_first, q_rows, kv_first, kv_rows), batch, q_rows, kv_rows};
}
}  // namespace

TEST_CASE("cudnn documents: a call's document spans are what a scan of the token ids finds") {
  for (const auto& lengths :
       std::vector<std::vector<std::int32_t>>{{1}, {64}, {1, 60, 3, 64, 1, 63}, {5, 5, 5, 5}, {30, 2, 1, 1, 30}}) {
    const auto docs = seqpar::documents_of_lengths(lengths);
    const std::int64_t S = docs.tokens();
    INFO("documents=" << docs.count() << " S=" << S);
    // The whole sequence, blocks on and off the diagonal, and blocks that share no document.
    const std::vector<std::array<std::int64_t, 4>> calls{{0, S, 0, S},
                                                         {0, S / 2, 0, S / 2},
                                                         {S / 2, S - S / 2, 0, S / 2},
                                                         {S / 4, S / 2, S / 3, S / 3},
                                                         {S - 1, 1, 0, 1}};
    for (const auto& c : calls) {
      const std::int64_t qf = c[0], qn = c[1], kf = c[2], kn = c[3];
      INFO("queries " << qf << " + " << qn << ", keys " << kf << " + " << kn);
      const auto ids = docs.host_ids();
      CHECK(cs::document_spans(ids.cu_seqlens, ids.count, qf, qn, kf, kn) == scanned_spans(docs, qf, qn, kf, kn));
    }
  }
}

TEST_CASE("cudnn documents: entries, lengths and ragged offsets of every tensor") {
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{3, 9, 1, 7, 4});  // S = 24
  const std::int64_t B = 3, S = 24, H = 4, D = 8, pad = 5;
  const auto r = entries_of(docs, B, 0, S, 0, S);
  REQUIRE(r.spans.size() == 5);
  CHECK(r.used() == 15);
  CHECK(r.entries() == 16);  // bucketed: entry 15 is empty
  CHECK(r.max_q() == 16);    // longest document 9, bucketed, at most S
  CHECK(r.max_kv() == 16);
  const auto q_lengths = r.lengths(false);
  REQUIRE(q_lengths.size() == 16);
  for (std::int64_t e = 0; e < 15; ++e) CHECK(q_lengths[e] == docs.end(e % 5) - docs.begin(e % 5));
  CHECK(q_lengths[15] == 0);

  // A strided view (tokens pad elements apart beyond H * D, heads from the second one on): each
  // entry's offset is where its first element sits relative to the view's data.
  std::vector<float> storage(static_cast<std::size_t>(B * S * (H * D + pad)));
  const auto full = seqpar::make_strided(storage.data(), {B, S, H, D}, {S * (H * D + pad), H * D + pad, D, 1});
  const auto view = seqpar::make_strided(storage.data() + D, {B, S, H - 1, D}, {S * (H * D + pad), H * D + pad, D, 1});
  (void)full;
  const auto offsets = r.offsets(false, view.stride(seqpar::axis::batch), view.stride(seqpar::axis::seq));
  REQUIRE(offsets.size() == 17);
  for (std::int64_t e = 0; e < 15; ++e) {
    const std::int64_t b = e / 5, d = e % 5;
    CHECK(offsets[e] == &view(b, docs.begin(static_cast<int>(d)), 0, 0) - view.data());
  }
  // The empty entry and the end sit one past the last entry's rows.
  CHECK(offsets[15] == &view(B - 1, S - 1, 0, 0) - view.data() + view.stride(seqpar::axis::seq));
  CHECK(offsets[16] == offsets[15]);

  // cuDNN's token-major stats [B * S, H]: entry (b, d) starts at token b * S + begin(d).
  const auto stats = r.offsets(false, S * H, H);
  for (std::int64_t e = 0; e < 15; ++e) CHECK(stats[e] == (e / 5 * S + docs.begin(static_cast<int>(e % 5))) * H);
}

TEST_CASE("cudnn documents: key offsets of a block pair, and offsets past 32 bits") {
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{10, 10, 10, 10});
  // Queries [20, 30) against keys [10, 30): documents 2 (query rows 0..9, key rows 10..19) and
  // none other (document 1 has no query row there).
  const auto r = entries_of(docs, 2, 20, 10, 10, 20);
  REQUIRE(r.spans.size() == 1);
  CHECK(r.spans[0] == cs::document_span{0, 10, 10, 10});
  const std::int64_t big = std::int64_t{3} << 31;  // a batch stride past INT32_MAX
  const auto kv = r.offsets(true, big, 64);
  CHECK(kv[0] == 10 * 64);
  CHECK(kv[1] == big + 10 * 64);
  CHECK(kv[2] == big + 20 * 64);
  CHECK(r.causal_bound(20, 10) == 0);  // document 2 starts at 20 in both blocks
  // Queries [25, 30) against keys [20, 30): query row i sees key rows j <= i + 5.
  const auto later = entries_of(docs, 1, 25, 5, 20, 10);
  CHECK(later.spans == std::vector<cs::document_span>{{0, 5, 0, 10}});
  CHECK(later.causal_bound(25, 20) == 5);
}

TEST_CASE("cudnn documents: the causal bound, and what cuDNN's band cannot express") {
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{6, 20, 6});  // S = 32
  CHECK(entries_of(docs, 1, 0, 32, 0, 32).causal_bound(0, 0) == 0);
  CHECK(entries_of(docs, 1, 8, 8, 8, 8).causal_bound(8, 8) == 0);  // a diagonal block pair
  // Queries [4, 12) against keys [0, 8): document 0 is 4 rows later in the queries, document 1 not
  // at all (both start at 6): no single band.
  CHECK_THROWS_WITH_AS(entries_of(docs, 1, 4, 8, 0, 8).causal_bound(4, 0),
                       doctest::Contains("pair: with documents, cudnn_attention needs every document's first query"),
                       seqpar::error);
  // Queries before keys: a negative bound.
  CHECK_THROWS_WITH_AS(entries_of(docs, 1, 8, 8, 10, 8).causal_bound(8, 10),
                       doctest::Contains("document span 0 has -2"), seqpar::error);
}

TEST_CASE("cudnn documents: covered query rows, buckets, and refused boundaries") {
  CHECK(cs::covered_rows({{0, 3, 0, 3}, {3, 2, 3, 2}, {7, 1, 7, 1}}) ==
        std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 5}, {7, 8}});
  CHECK(cs::bucket(0) == 1);
  CHECK(cs::bucket(1) == 1);
  CHECK(cs::bucket(5) == 8);
  CHECK(cs::bucket(64) == 64);
  const std::vector<std::int32_t> cu{0, 4, 4, 8};
  CHECK_THROWS_WITH_AS((void)cs::document_spans(nullptr, 0, 0, 8, 0, 8),
                       doctest::Contains("options.documents: cudnn_attention needs the documents' boundaries"),
                       seqpar::error);
  CHECK_THROWS_WITH_AS((void)cs::document_spans(cu.data(), 3, 0, 8, 0, 8),
                       doctest::Contains("expected strictly increasing offsets; entry 2 is 4 after 4"), seqpar::error);
  const std::vector<std::int32_t> short_cu{0, 4, 6};
  CHECK_THROWS_WITH_AS((void)cs::document_spans(short_cu.data(), 2, 0, 8, 0, 8),
                       doctest::Contains("the documents cover 6 positions; expected at least the call's 8"),
                       seqpar::error);
}

TEST_CASE("document ids carry the boundaries on the host, from a layout and from a call's documents") {
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{2, 5, 1});
  const auto ids = docs.host_ids();
  REQUIRE(ids.cu_seqlens != nullptr);
  CHECK(ids.count == 3);
  CHECK(std::vector<std::int32_t>(ids.cu_seqlens, ids.cu_seqlens + 4) == std::vector<std::int32_t>{0, 2, 7, 8});
  const seqpar::detail::call_documents<seqpar::default_memory_resource> call(docs, seqpar::memory_space::host, {},
                                                                             nullptr);
  CHECK(call.ids().count == 3);
  CHECK(call.ids().cu_seqlens[2] == 7);
  CHECK(call.ids().of(6) == 1);
  CHECK(!seqpar::document_layout{}.host_ids().split());
  CHECK(seqpar::document_layout{}.host_ids().cu_seqlens == nullptr);
}
