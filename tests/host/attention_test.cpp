// Attention policies and ulysses_attention on the host: the P-rank pipeline against one device,
// the reference policy against the dense definition and finite differences, and bad input.
#include <seqpar_test/attention_cases.hpp>

#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>

#include <doctest/doctest.h>

using seqpar::memory_space;
using seqpar_test::attention_case;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };
}

TEST_CASE_TEMPLATE("ulysses_attention with reference_attention equals one device", T, float, __half, __nv_bfloat16) {
  const seqpar::reference_attention policy;
  for (int P : {1, 2, 3, 4, 8})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2, 4})
        seqpar_test::check_ulysses_attention<T>({P, 4, H_kv, 2, 2 * P + 1, 4, causal}, memory_space::host, policy, policy,
                                                everything);
  seqpar_test::check_ulysses_attention<T>({4, 7, 7, 1, 13, 3, true}, memory_space::host, policy, policy, everything);
  seqpar_test::check_ulysses_attention<T>({4, 7, 1, 1, 13, 3, false}, memory_space::host, policy, policy, everything);
  seqpar_test::check_ulysses_attention<float>({4, 8, 2, 1, 16, 4, true, seqpar::shard_strategy::zigzag},
                                              memory_space::host, policy, policy, everything);
}

TEST_CASE("ulysses_attention with block_sparse_attention (window and global blocks) equals one device") {
  const seqpar::block_sparse_attention policy{seqpar::block_mask{4, 2, 1}};
  const auto allowed = [&](std::int64_t i, std::int64_t j) { return policy.mask.allowed(i, j); };
  for (int P : {1, 2, 4})
    for (bool causal : {false, true})
      seqpar_test::check_ulysses_attention<float>({P, 4, 2, 1, 24, 4, causal}, memory_space::host, policy, policy, allowed);
}

TEST_CASE("reference_attention gradients equal finite differences of the dense definition") {
  // L = sum(dO * o); dL/dx by central differences of the double-precision dense forward.
  const std::int64_t B = 1, S = 5, H = 2, H_kv = 1, D = 3;
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    auto q = seqpar_test::random_input<float>(B, S, H, D), dout = seqpar_test::random_input<float>(B, S, H, D);
    auto k = seqpar_test::random_input<float>(B, S, H_kv, D), v = seqpar_test::random_input<float>(B, S, H_kv, D);
    const double scale = 0.7;
    auto loss = [&] {
      const auto o = seqpar_test::dense_attention(q, k, v, scale, causal, everything);
      double l = 0;
      for (std::size_t i = 0; i < o.v.size(); ++i) l += o.v[i] * dout.v[i];
      return l;
    };
    const auto got = seqpar_test::single_device<float>(seqpar::reference_attention{}, q, k, v, dout,
                                                       {static_cast<float>(scale), causal});
    seqpar_test::dense4* inputs[] = {&q, &k, &v};
    for (int w = 0; w < 3; ++w) {
      double worst = 0;
      for (std::size_t i = 0; i < inputs[w]->v.size(); ++i) {
        const double x = inputs[w]->v[i], eps = 1e-5;
        inputs[w]->v[i] = x + eps;
        const double up = loss();
        inputs[w]->v[i] = x - eps;
        const double down = loss();
        inputs[w]->v[i] = x;
        worst = std::max(worst, std::abs((up - down) / (2 * eps) - double(got[w + 1][i])));
      }
      CAPTURE(w);
      CHECK(worst < 1e-4);
    }
  }
}

namespace {
// A user policy that only handles head_dim 64 and no causal mask (like many hand-written kernels).
struct narrow_policy : seqpar::reference_attention {
  bool supports(seqpar::dtype, std::int64_t d) const { return d == 64; }
  bool supports_causal() const { return false; }
};
static_assert(seqpar::attention_policy<narrow_policy>);
}  // namespace

TEST_CASE("ulysses_attention: bad input is refused at plan time or before anything moves") {
  std::vector<std::string> messages(2);
  std::vector<int> untouched(2, 1);
  auto run = [&](auto&& body) {
    std::fill(messages.begin(), messages.end(), "");
    seqpar::run_in_process(2, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      try {
        body(comm);
      } catch (const seqpar::error& e) {
        messages[comm.rank()] = e.what();
      }
    });
  };
  const auto part = seqpar::make_seq_partition(8, 2);
  run([&](auto& comm) {
    seqpar::ulysses_attention layer(narrow_policy{}, comm, part, {.batch = 1, .heads = 4, .head_dim = 8},
                                    seqpar::elements<float>, {0.3f, false});
  });
  for (auto& m : messages) CHECK(m.find("policy: does not support element type float32 with head_dim 8") != std::string::npos);
  run([&](auto& comm) {
    seqpar::ulysses_attention layer(narrow_policy{}, comm, part, {.batch = 1, .heads = 4, .head_dim = 64},
                                    seqpar::elements<float>, {0.3f, true});
  });
  for (auto& m : messages) CHECK(m.find("options.causal: the policy cannot apply a causal mask") != std::string::npos);
  run([&](auto& comm) {
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part,
                                    {.batch = 1, .heads = 4, .kv_heads = 2, .head_dim = 4}, seqpar::elements<float>,
                                    {0.5f, true});
    std::vector<float> q(4 * 4 * 4, 1.0f), kv(5 * 2 * 4, 1.0f), o(q.size(), seqpar_test::poison<float>());
    const int r = comm.rank();
    try {
      (void)layer.forward({.q = seqpar::make_bshd<const float>(q.data(), 1, 4, 4, 4),
                           .k = seqpar::make_bshd<const float>(kv.data(), 1, 5, 2, 4),
                           .v = seqpar::make_bshd<const float>(kv.data(), 1, 5, 2, 4),
                           .o = seqpar::make_bshd(o.data(), 1, 4, 4, 4)},
                          {.stream = nullptr});
    } catch (...) {
      for (float x : o) untouched[r] &= seqpar_test::same_bits(x, seqpar_test::poison<float>());
      throw;
    }
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(messages[r].find("k: expected extents {batch, seq, heads, head_dim} = {1, 4, 2, 4}, got {1, 5, 2, 4}") !=
          std::string::npos);
    CHECK(untouched[r]);
  }
}
