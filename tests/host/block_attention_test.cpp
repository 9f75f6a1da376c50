// Block attention: queries and keys cut into blocks at arbitrary positions, each pair computed
// alone by the policy and merged with the library's fp32 algebra, equal attention over the whole
// sequence, forward (o, lse) and backward (dq, dk, dv from the final lse and the row dots).
#include <seqpar/policy/block_attention.hpp>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();

double max_gap(const std::vector<float>& a, const std::vector<float>& b) {
  double g = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) return INFINITY;
      continue;
    }
    g = std::max(g, double(std::fabs(a[i] - b[i])));
  }
  return g;
}

// Cuts [0, n) at the given interior points.
std::vector<std::pair<std::int64_t, std::int64_t>> blocks(std::int64_t n, std::vector<std::int64_t> cuts) {
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  std::int64_t at = 0;
  cuts.push_back(n);
  for (std::int64_t c : cuts) {
    if (c > at) out.emplace_back(at, c - at);
    at = std::max(at, c);
  }
  return out;
}

// Runs the blockwise forward and backward of `policy` over the cuts and compares with its
// whole-sequence forward and backward.
template <class Policy>
void check_blockwise(const Policy& policy, bool causal, int H, int H_kv, const std::vector<std::int64_t>& q_cuts,
                     const std::vector<std::int64_t>& kv_cuts) {
  const std::int64_t B = 2, S = 23, D = 5;
  CAPTURE(causal);
  CAPTURE(H_kv);
  const seqpar::attention_options opt{.causal = causal};
  const seqpar::gqa_map map{0, H / H_kv, 0};
  auto fresh = [](std::size_t n) { return seqpar_test::uniform_floats(n, seqpar_test::rng()()); };
  const auto q = fresh(B * S * H * D), k = fresh(B * S * H_kv * D), v = fresh(B * S * H_kv * D),
             dout = fresh(B * S * H * D);
  auto cview = [&](const std::vector<float>& x, std::int64_t h) {
    return seqpar::make_bshd<const float>(x.data(), B, S, h, D);
  };
  // Whole sequence.
  std::vector<float> o(q.size()), lse(B * H * S), dq(q.size()), dk(k.size()), dv(k.size());
  policy.forward(seqpar::policy_forward_args<float>{.q = cview(q, H),
                                                    .k = cview(k, H_kv),
                                                    .v = cview(v, H_kv),
                                                    .o = seqpar::make_bshd(o.data(), B, S, H, D),
                                                    .lse = seqpar::lse_view(lse.data(), B, H, S),
                                                    .map = map,
                                                    .options = opt},
                 nullptr);
  policy.backward(seqpar::policy_backward_args<float>{.q = cview(q, H),
                                                      .k = cview(k, H_kv),
                                                      .v = cview(v, H_kv),
                                                      .o = cview(o, H),
                                                      .lse = seqpar::const_lse_view(lse.data(), B, H, S),
                                                      .dout = cview(dout, H),
                                                      .dq = seqpar::make_bshd(dq.data(), B, S, H, D),
                                                      .dk = seqpar::make_bshd(dk.data(), B, S, H_kv, D),
                                                      .dv = seqpar::make_bshd(dv.data(), B, S, H_kv, D),
                                                      .map = map,
                                                      .options = opt},
                  nullptr);
  // Blockwise: sub-views of the same tensors at their positions.
  std::vector<float> o_acc(q.size(), 0.f), lse_acc(lse.size(), -inf), dq_acc(q.size(), 0.f), dk_acc(k.size(), 0.f),
      dv_acc(k.size(), 0.f), row_dots(lse.size(), 0.f);
  for (std::int64_t b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (std::int64_t i = 0; i < S; ++i)
        for (std::int64_t d = 0; d < D; ++d)
          row_dots[(b * H + h) * S + i] += dout[((b * S + i) * H + h) * D + d] * o[((b * S + i) * H + h) * D + d];
  // Per-block lse and row dots are [B, h, S_block] row-major: copied in and out of the global ones.
  int pairs = 0, skipped = 0;
  for (auto [q0, nq] : blocks(S, q_cuts))
    for (auto [k0, nk] : blocks(S, kv_cuts)) {
      const auto relation = seqpar::causal_relation(q0, nq, k0, nk, causal);
      if (relation == seqpar::block_relation::masked) {
        ++skipped;
        continue;
      }
      ++pairs;
      const seqpar::block_pair pair{q0, k0, relation};
      auto sub = [&](const std::vector<float>& x, std::int64_t at, std::int64_t n, std::int64_t h) {
        return seqpar::make_strided<const float>(x.data() + at * h * D, {B, n, h, D}, {S * h * D, h * D, D, 1});
      };
      auto msub = [&](std::vector<float>& x, std::int64_t at, std::int64_t n, std::int64_t h) {
        return seqpar::make_strided<float>(x.data() + at * h * D, {B, n, h, D}, {S * h * D, h * D, D, 1});
      };
      std::vector<float> part(B * nq * H * D), part_lse(B * H * nq), acc_lse(B * H * nq), dots(B * H * nq),
          final_lse(B * H * nq);
      for (std::int64_t b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
          for (std::int64_t i = 0; i < nq; ++i) {
            acc_lse[(b * H + h) * nq + i] = lse_acc[(b * H + h) * S + q0 + i];
            dots[(b * H + h) * nq + i] = row_dots[(b * H + h) * S + q0 + i];
            final_lse[(b * H + h) * nq + i] = lse[(b * H + h) * S + q0 + i];
          }
      policy.block_forward(seqpar::block_forward_args<float>{.q = sub(q, q0, nq, H),
                                                             .k = sub(k, k0, nk, H_kv),
                                                             .v = sub(v, k0, nk, H_kv),
                                                             .o_part = seqpar::make_bshd(part.data(), B, nq, H, D),
                                                             .lse_part = seqpar::lse_view(part_lse.data(), B, H, nq),
                                                             .map = map,
                                                             .options = opt,
                                                             .pair = pair},
                           nullptr);
      seqpar::merge_partial(msub(o_acc, q0, nq, H), seqpar::lse_view(acc_lse.data(), B, H, nq),
                            seqpar::make_bshd<const float>(part.data(), B, nq, H, D),
                            seqpar::const_lse_view(part_lse.data(), B, H, nq));
      for (std::int64_t b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
          for (std::int64_t i = 0; i < nq; ++i) lse_acc[(b * H + h) * S + q0 + i] = acc_lse[(b * H + h) * nq + i];
      policy.block_backward(
          seqpar::block_backward_args<float>{.q = sub(q, q0, nq, H),
                                             .k = sub(k, k0, nk, H_kv),
                                             .v = sub(v, k0, nk, H_kv),
                                             .dout = sub(dout, q0, nq, H),
                                             .lse = seqpar::const_lse_view(final_lse.data(), B, H, nq),
                                             .row_dots = seqpar::const_lse_view(dots.data(), B, H, nq),
                                             .dq = msub(dq_acc, q0, nq, H),
                                             .dk = msub(dk_acc, k0, nk, H_kv),
                                             .dv = msub(dv_acc, k0, nk, H_kv),
                                             .map = map,
                                             .options = opt,
                                             .pair = pair},
          nullptr);
    }
  CHECK(pairs > 1);
  if (causal) CHECK(skipped > 0);
  CHECK(max_gap(o_acc, o) <= 1e-5);
  CHECK(max_gap(lse_acc, lse) <= 1e-5);
  CHECK(max_gap(dq_acc, dq) <= 1e-5);
  CHECK(max_gap(dk_acc, dk) <= 1e-5);
  CHECK(max_gap(dv_acc, dv) <= 1e-5);
}

}  // namespace

TEST_CASE("merge_lse: the online-softmax algebra, rows that saw nothing included") {
  auto m = seqpar::merge_lse(1.0f, 1.0f);
  CHECK(m.lse == doctest::Approx(1.0 + std::log(2.0)));
  CHECK(m.weight_a == doctest::Approx(0.5));
  CHECK(m.weight_b == doctest::Approx(0.5));
  m = seqpar::merge_lse(-inf, 2.0f);
  CHECK((m.lse == 2.0f && m.weight_a == 0.0f && m.weight_b == 1.0f));
  m = seqpar::merge_lse(3.0f, -inf);
  CHECK((m.lse == 3.0f && m.weight_a == 1.0f && m.weight_b == 0.0f));
  m = seqpar::merge_lse(-inf, -inf);
  CHECK((m.lse == -inf && m.weight_a == 0.0f && m.weight_b == 0.0f));
  m = seqpar::merge_lse(80.0f, -20.0f);  // far apart: no overflow, the small side vanishes
  CHECK(m.lse == doctest::Approx(80.0));
  CHECK(m.weight_a == doctest::Approx(1.0));
  CHECK(m.weight_b < 1e-30f);
  CHECK(std::log(std::exp(2.0) + std::exp(-0.5)) == doctest::Approx(seqpar::merge_lse(2.0f, -0.5f).lse));
}

TEST_CASE("causal_relation: visible, diagonal or masked from positions") {
  using seqpar::block_relation;
  CHECK(seqpar::causal_relation(10, 5, 0, 10, true) == block_relation::visible);
  CHECK(seqpar::causal_relation(10, 5, 0, 11, true) == block_relation::visible);  // key 10 <= query 10
  CHECK(seqpar::causal_relation(10, 5, 0, 12, true) == block_relation::diagonal);
  CHECK(seqpar::causal_relation(10, 5, 10, 5, true) == block_relation::diagonal);
  CHECK(seqpar::causal_relation(10, 5, 15, 5, true) == block_relation::masked);
  CHECK(seqpar::causal_relation(10, 5, 15, 5, false) == block_relation::visible);
}

TEST_CASE("reference_attention: block pairs merged equal the whole sequence, forward and backward") {
  for (bool causal : {false, true})
    for (int H_kv : {1, 2, 4}) {
      check_blockwise(seqpar::reference_attention{}, causal, 4, H_kv, {7, 8, 16}, {5, 12, 13});
      check_blockwise(seqpar::reference_attention{}, causal, 4, H_kv, {4, 11, 19}, {4, 11, 19});  // diagonal pairs
    }
}

TEST_CASE("block_sparse_attention: block pairs use global positions for the block mask") {
  const seqpar::block_sparse_attention policy{{.block = 4, .window = 1, .global = 1}};
  for (bool causal : {false, true}) check_blockwise(policy, causal, 2, 1, {6, 9, 17}, {3, 10, 21});
}

namespace {
// An attention policy without the block functions: still an attention policy, not a block one.
struct whole_sequence_only : seqpar::reference_attention {
  template <class... A>
  void block_forward(A&&...) const = delete;
};
}  // namespace

TEST_CASE("block_attention_policy: refused, by name, for a policy without the block functions") {
  static_assert(seqpar::block_attention_policy<seqpar::reference_attention>);
  static_assert(seqpar::attention_policy<whole_sequence_only>);
  static_assert(!seqpar::detail::computes_block_attention<whole_sequence_only>);
  static_assert(!seqpar::block_attention_policy<whole_sequence_only>);
  CHECK(seqpar::block_attention_policy<seqpar::block_sparse_attention>);
}
