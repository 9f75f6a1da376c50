// cudnn_attention (cuDNN's fused attention through the frontend graph API) against the device
// reference policy, one device, packed and strided, with and without packed documents; through
// ulysses_attention against the host reference (with documents: each document alone), including
// ranks whose query heads start inside a GQA group (one cuDNN call per kv head); what it refuses;
// its graph cache; cudnn_block_attention's block pairs against the reference's, and through the
// ring and 2-D layers.
#include <seqpar_test/attention_cases.hpp>
#include <seqpar_test/device_policy_run.hpp>

#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/cudnn_attention.hpp>
#include <seqpar/policy/cudnn_block_attention.cuh>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

using seqpar::memory_space;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };
}

TEST_CASE_TEMPLATE("cudnn_attention equals the device reference, packed and strided", T, __half, __nv_bfloat16) {
  // cuDNN's softmax stats are the natural-log log-sum-exp, as the reference's lse.
  seqpar_test::check_against_device_reference<T>(seqpar::cudnn_attention{}, seqpar::reference_attention_cuda{},
                                                 {{1, 1000, 2, 1, 64, 0}, {2, 517, 4, 2, 128, 0}, {1, 300, 2, 2, 64, 8},
                                                  {1, 129, 4, 1, 128, 8}, {2, 64, 8, 8, 32, 0}});
}

TEST_CASE_TEMPLATE("ulysses_attention with cudnn_attention equals the host reference", T, __half, __nv_bfloat16) {
  for (int P : {1, 2, 4})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4})
        seqpar_test::check_ulysses_attention<T>({P, 4, H_kv, 2, 24 * P + 5, 64, causal}, memory_space::device,
                                                seqpar::cudnn_attention{}, seqpar::reference_attention{}, everything);
  // 8 query heads over 3 ranks (3, 3, 2) with 2 kv heads: ranks 1 and 2 start inside a group, so
  // their kv heads' query heads get calls of their own.
  for (bool causal : {false, true})
    seqpar_test::check_ulysses_attention<T>({3, 8, 2, 1, 77, 128, causal}, memory_space::device,
                                            seqpar::cudnn_attention{}, seqpar::reference_attention{}, everything);
}

TEST_CASE("cudnn_attention refuses what it cannot compute, and builds each graph once") {
  auto comms = seqpar::in_process_communicator::create_group(1, memory_space::device);
  const auto part = seqpar::make_seq_partition(64, 1);
  auto layer = [&](auto t, std::int64_t D) {
    seqpar::ulysses_attention l(seqpar::cudnn_attention{}, comms[0], part, {.batch = 1, .heads = 2, .head_dim = D}, t);
  };
  CHECK_THROWS_WITH_AS(layer(seqpar::elements<float>, 64),
                       doctest::Contains("policy: does not support element type float32 with head_dim 64"), seqpar::error);
  CHECK_THROWS_WITH_AS(layer(seqpar::elements<__nv_bfloat16>, 100),
                       doctest::Contains("policy: does not support element type bfloat16 with head_dim 100"), seqpar::error);

  using bf16 = __nv_bfloat16;
  const auto q = seqpar_test::random_input<bf16>(1, 64, 1, 64);
  const seqpar::cudnn_attention cudnn;
  const seqpar::attention_options opt{.causal = true};
  (void)seqpar_test::run_on_device<bf16>(cudnn, q, q, q, q, opt.resolved(64), 0);
  const auto built = cudnn.cached_graphs();
  CHECK(built == 2);  // a forward and a backward graph
  (void)seqpar_test::run_on_device<bf16>(cudnn, q, q, q, q, opt.resolved(64), 0);
  CHECK(cudnn.cached_graphs() == built);

  // Ids alone (no boundaries on the host) are refused by name.
  seqpar_test::buffer<std::int32_t> ids(memory_space::device, std::vector<std::int32_t>(64, 0));
  CHECK_THROWS_WITH_AS(
      (void)seqpar_test::run_on_device<bf16>(cudnn, q, q, q, q, opt.resolved(64).with_documents({ids.data()}), 0),
      doctest::Contains("options.documents: cudnn_attention needs the documents' boundaries on the host"),
      seqpar::error);
}

namespace {
// A layout's ids in device memory with its boundaries on the host: what a layer hands a policy.
struct device_documents {
  seqpar::document_layout layout;
  mutable seqpar_test::buffer<std::int32_t> ids;
  explicit device_documents(std::vector<std::int32_t> lengths)
      : layout(seqpar::documents_of_lengths(lengths)),
        ids(memory_space::device, std::vector<std::int32_t>(layout.token_ids().begin(), layout.token_ids().end())) {}
  seqpar::document_ids view() const {
    seqpar::document_ids r = layout.host_ids();
    r.ids = ids.data();
    return r;
  }
};
}  // namespace

// Each (batch row, document) is one cuDNN entry placed by ragged offsets, causal within it.
TEST_CASE_TEMPLATE("cudnn_attention with packed documents equals the device reference, packed and strided", T, __half,
                   __nv_bfloat16) {
  const device_documents docs({1, 60, 3, 64, 1, 63});  // S = 192
  for (const auto& [B, H, H_kv, D, pad] : std::vector<std::tuple<int, int, int, int, int>>{
           {2, 2, 1, 64, 0}, {1, 4, 2, 128, 8}, {3, 2, 2, 64, 8}})
    for (bool causal : {false, true}) {
      INFO("B=" << B << " H=" << H << " H_kv=" << H_kv << " D=" << D << " pad=" << pad << " causal=" << causal);
      const auto q = seqpar_test::random_input<T>(B, 192, H, D), dout = seqpar_test::random_input<T>(B, 192, H, D);
      const auto k = seqpar_test::random_input<T>(B, 192, H_kv, D), v = seqpar_test::random_input<T>(B, 192, H_kv, D);
      const auto opt = seqpar::attention_options{.causal = causal}.resolved(D).with_documents(docs.view());
      const auto [got, got_lse] = seqpar_test::run_on_device<T>(seqpar::cudnn_attention{}, q, k, v, dout, opt, pad);
      const auto [want, want_lse] =
          seqpar_test::run_on_device<T>(seqpar::reference_attention_cuda{}, q, k, v, dout, opt, 0);
      const char* names[] = {"o", "dq", "dk", "dv"};
      for (int w = 0; w < 4; ++w) {
        INFO(names[w]);
        CHECK(seqpar_test::relative_gap(got[w], want[w]) <= seqpar_test::lasp_tolerance<T>());
      }
      double lse_gap = 0;
      for (std::size_t i = 0; i < want_lse.size(); ++i)
        lse_gap = std::max(lse_gap, double(std::abs(got_lse[i] - want_lse[i])));
      CHECK(lse_gap <= 1e-3);
    }
}

TEST_CASE_TEMPLATE("ulysses_attention with cudnn_attention and packed documents equals each document alone", T,
                   __half, __nv_bfloat16) {
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{1, 60, 3, 64, 1, 63});  // S = 192
  const auto ulysses = [](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
    return seqpar::ulysses_attention(seqpar::cudnn_attention{}, comm, part, shape, type, opt);
  };
  for (int P : {1, 2, 4})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4})
        (void)seqpar_test::check_parallel_attention<T>({P, 4, H_kv, 2, 192, 64, causal}, memory_space::device, ulysses,
                                                       seqpar::reference_attention{}, everything, docs);
  // Ranks whose query heads start inside a GQA group: one call per kv head, documents in each.
  for (bool causal : {false, true})
    (void)seqpar_test::check_parallel_attention<T>({3, 8, 2, 1, 192, 128, causal}, memory_space::device, ulysses,
                                                   seqpar::reference_attention{}, everything, docs);
}

TEST_CASE("cudnn_attention with documents: graphs are cached by bucketed entry count and longest document") {
  using bf16 = __nv_bfloat16;
  const auto q = seqpar_test::random_input<bf16>(1, 64, 1, 64);
  const seqpar::cudnn_attention cudnn;
  const auto run = [&](std::vector<std::int32_t> lengths) {
    const device_documents docs(std::move(lengths));
    (void)seqpar_test::run_on_device<bf16>(
        cudnn, q, q, q, q, seqpar::attention_options{.causal = true}.resolved(64).with_documents(docs.view()), 0);
  };
  run({20, 20, 12, 12});  // 4 entries, longest 20: built for 4 entries of up to 32 rows
  const auto built = cudnn.cached_graphs();
  CHECK(built == 2);
  run({30, 10, 10, 14});  // 4 entries, longest 30
  run({30, 30, 4});       // 3 entries (one empty), longest 30
  CHECK(cudnn.cached_graphs() == built);
  run({64});  // 1 entry of 64 rows: new graphs
  CHECK(cudnn.cached_graphs() == built + 2);
}

// The block functions through the ring layers: every block pair's partial merged in fp32, the
// backward handed the final output (block_backward_from_output).
TEST_CASE_TEMPLATE("ring and 2-D layers with cudnn_block_attention equal the host reference", T, __half,
                   __nv_bfloat16) {
  const auto ring = [](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
    return seqpar::ring_attention(seqpar::cudnn_block_attention{}, comm, part, shape, type, opt);
  };
  seqpar_test::check_ring_on_device<T>(seqpar::cudnn_block_attention{}, {1, 2, 4});
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{1, 60, 3, 64, 1, 63});  // S = 192
  for (bool causal : {false, true})
    (void)seqpar_test::check_parallel_attention<T>({4, 2, 1, 2, 192, 64, causal, seqpar::shard_strategy::zigzag},
                                                   memory_space::device, ring, seqpar::reference_attention{},
                                                   everything, docs);
  seqpar_test::check_ulysses_ring_on_device<T>(seqpar::cudnn_block_attention{}, {{2, 2}, {1, 4}}, 40, 64);
}

namespace {
// One block pair through cudnn_block_attention on the device and reference_attention on the host:
// the partial output and lse, then (with that partial as the final output and lse) the gradients
// added to zeroed fp32 accumulators. Returns the gaps of o, dq, dk, dv and the largest lse gap.
template <class T>
std::array<double, 5> block_pair_gaps(seqpar::attention_options opt, seqpar::block_pair pair, std::int64_t S_q,
                                      std::int64_t S_kv) {
  const std::int64_t B = 2, H = 2, H_kv = 1, D = 64;
  const auto q = seqpar_test::random_input<T>(B, S_q, H, D), dout = seqpar_test::random_input<T>(B, S_q, H, D);
  const auto k = seqpar_test::random_input<T>(B, S_kv, H_kv, D), v = seqpar_test::random_input<T>(B, S_kv, H_kv, D);
  const seqpar::gqa_map map{0, 2, 0};
  opt = opt.resolved(D);
  auto host = [](const seqpar_test::dense4& a) { return seqpar_test::padded_tensor<T>::place(a, 0, true); };
  auto hview = [](std::vector<T>& x, std::int64_t S, std::int64_t h) {
    return seqpar::tensor_view<const T>(seqpar::make_bshd(x.data(), B, S, h, D));
  };
  std::vector<T> hq = host(q), hk = host(k), hv = host(v), hdo = host(dout);
  // The reference's partial.
  std::vector<float> want_o(B * S_q * H * D), want_lse(B * H * S_q);
  const seqpar::reference_attention reference;
  reference.block_forward(seqpar::block_forward_args<T>{.q = hview(hq, S_q, H),
                                                        .k = hview(hk, S_kv, H_kv),
                                                        .v = hview(hv, S_kv, H_kv),
                                                        .o_part = seqpar::make_bshd(want_o.data(), B, S_q, H, D),
                                                        .lse_part = seqpar::lse_view(want_lse.data(), B, H, S_q),
                                                        .map = map,
                                                        .options = opt,
                                                        .pair = pair},
                          nullptr);
  // cuDNN's.
  seqpar_test::padded_tensor<T> dq_(q, 0), dk_(k, 0), dv_(v, 0), ddo(dout, 0);
  seqpar_test::buffer<float> o(memory_space::device, std::vector<float>(want_o.size(), NAN)),
      lse(memory_space::device, std::vector<float>(want_lse.size(), NAN));
  const seqpar::cudnn_block_attention cudnn;
  cudnn.block_forward(seqpar::block_forward_args<T>{.q = dq_.cview(),
                                                    .k = dk_.cview(),
                                                    .v = dv_.cview(),
                                                    .o_part = seqpar::make_bshd(o.data(), B, S_q, H, D),
                                                    .lse_part = seqpar::lse_view(lse.data(), B, H, S_q),
                                                    .map = map,
                                                    .options = opt,
                                                    .pair = pair},
                      nullptr);
  SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
  std::array<double, 5> gaps{};
  gaps[0] = seqpar_test::relative_gap(o.values(), want_o);
  const auto got_lse = lse.values();
  for (std::size_t i = 0; i < want_lse.size(); ++i)
    gaps[4] = std::max(gaps[4], std::isinf(want_lse[i]) ? (got_lse[i] == want_lse[i] ? 0.0 : INFINITY)
                                                        : double(std::abs(got_lse[i] - want_lse[i])));
  // Backward with the reference's partial as the final output (rounded to T) and lse.
  std::vector<T> final_o(want_o.size());
  for (std::size_t i = 0; i < want_o.size(); ++i) final_o[i] = seqpar::from_float<T>(want_o[i]);
  std::vector<float> dots(want_lse.size()), want_dq(want_o.size()), want_dk(B * S_kv * H_kv * D), want_dv(want_dk);
  const seqpar::detail::row_dots_of<T> dot{hview(hdo, S_q, H), hview(final_o, S_q, H),
                                           seqpar::lse_view(dots.data(), B, H, S_q)};
  for (std::int64_t row = 0; row < dot.rows(); ++row) dot(row);
  const seqpar::const_lse_view final_lse(want_lse.data(), B, H, S_q);
  reference.block_backward(seqpar::block_backward_args<T>{.q = hview(hq, S_q, H),
                                                          .k = hview(hk, S_kv, H_kv),
                                                          .v = hview(hv, S_kv, H_kv),
                                                          .dout = hview(hdo, S_q, H),
                                                          .lse = final_lse,
                                                          .row_dots = seqpar::const_lse_view(dots.data(), B, H, S_q),
                                                          .dq = seqpar::make_bshd(want_dq.data(), B, S_q, H, D),
                                                          .dk = seqpar::make_bshd(want_dk.data(), B, S_kv, H_kv, D),
                                                          .dv = seqpar::make_bshd(want_dv.data(), B, S_kv, H_kv, D),
                                                          .map = map,
                                                          .options = opt,
                                                          .pair = pair},
                           nullptr);
  seqpar_test::buffer<T> o_t(memory_space::device, final_o);
  seqpar_test::buffer<float> l(memory_space::device, want_lse), gq(memory_space::device, std::vector<float>(want_dq.size())),
      gk(memory_space::device, std::vector<float>(want_dk.size())),
      gv(memory_space::device, std::vector<float>(want_dv.size()));
  cudnn.block_backward_from_output(
      seqpar::block_backward_args<T>{.q = dq_.cview(),
                                     .k = dk_.cview(),
                                     .v = dv_.cview(),
                                     .dout = ddo.cview(),
                                     .lse = seqpar::const_lse_view(l.data(), B, H, S_q),
                                     .o = seqpar::make_bshd<const T>(o_t.data(), B, S_q, H, D),
                                     .dq = seqpar::make_bshd(gq.data(), B, S_q, H, D),
                                     .dk = seqpar::make_bshd(gk.data(), B, S_kv, H_kv, D),
                                     .dv = seqpar::make_bshd(gv.data(), B, S_kv, H_kv, D),
                                     .map = map,
                                     .options = opt,
                                     .pair = pair},
      nullptr);
  SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
  gaps[1] = seqpar_test::relative_gap(gq.values(), want_dq);
  gaps[2] = seqpar_test::relative_gap(gk.values(), want_dk);
  gaps[3] = seqpar_test::relative_gap(gv.values(), want_dv);
  return gaps;
}
}  // namespace

TEST_CASE_TEMPLATE("cudnn_block_attention: single block pairs against the reference's, with and without documents", T,
                   __half, __nv_bfloat16) {
  const device_documents docs({40, 30, 58});  // S = 128
  const auto causal = seqpar::attention_options{.causal = true};
  struct pair_case {
    const char* what;
    seqpar::attention_options opt;
    seqpar::block_pair pair;
  };
  for (const pair_case& c : std::vector<pair_case>{
           // Keys from 16, queries from 48: the causal band's right bound is 32.
           {"diagonal, bound 32", causal, {48, 16, seqpar::block_relation::diagonal}},
           {"not causal", {}, {48, 16, seqpar::block_relation::visible}},
           // One block on the diagonal: each document's entry with bound 0.
           {"documents, diagonal", causal.with_documents(docs.view()), {16, 16, seqpar::block_relation::diagonal}},
           // Queries [64, 128) after keys [0, 64): document 2's queries see no key (o = 0, lse = -inf).
           {"documents, visible", causal.with_documents(docs.view()), {64, 0, seqpar::block_relation::visible}},
       }) {
    INFO(c.what);
    const auto gaps = block_pair_gaps<T>(c.opt, c.pair, 64, 64);
    const char* names[] = {"o", "dq", "dk", "dv"};
    for (int w = 0; w < 4; ++w) {
      INFO(names[w]);
      CHECK(gaps[w] <= seqpar_test::lasp_tolerance<T>());
    }
    CHECK(gaps[4] <= 1e-3);
  }
  // cuDNN's band takes no negative right bound, and one bound for every entry.
  CHECK_THROWS_WITH_AS(block_pair_gaps<T>(causal, {16, 48, seqpar::block_relation::diagonal}, 64, 64),
                       doctest::Contains("cudnn_attention expects q_first >= kv_first"), seqpar::error);
  CHECK_THROWS_WITH_AS(
      block_pair_gaps<T>(causal.with_documents(docs.view()), {48, 16, seqpar::block_relation::diagonal}, 64, 64),
      doctest::Contains("needs every document's first query at or after its first key by the same distance"),
      seqpar::error);
}
