// ring_attention on the host: P ranks against one device (every element of o, dq, dk, dv), past
// P = H, GQA, causal or not, contiguous (uneven) and zigzag shards, fp32 and bf16; a policy whose
// block backward reads the final output instead of the row dots; the causal work
// per rank and step; bytes per rank against the formula; bad input on one rank at a time.
#include <seqpar/comm/counting.hpp>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/attention_cases.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

using seqpar::memory_space;
using seqpar::shard_strategy;
using seqpar_test::attention_case;

namespace {
const auto everything = [](std::int64_t, std::int64_t) { return true; };

// Builds a ring layer with `policy`, for check_parallel_attention.
template <class Policy>
auto ring_of(const Policy& policy) {
  return [policy](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
    return seqpar::ring_attention(policy, comm, part, shape, type, opt);
  };
}
}  // namespace

TEST_CASE_TEMPLATE("ring_attention equals one device, forward and backward", T, float, __nv_bfloat16) {
  const seqpar::reference_attention policy;
  for (int P : {1, 2, 3, 4, 8})
    for (bool causal : {false, true})
      for (int H_kv : {1, 2}) {
        seqpar_test::check_parallel_attention<T>({P, 2, H_kv, 2, 2 * P + 1, 4, causal}, memory_space::host,
                                                 ring_of(policy), policy, everything);
        seqpar_test::check_parallel_attention<T>({P, 2, H_kv, 2, 4 * P, 4, causal, shard_strategy::zigzag},
                                                 memory_space::host, ring_of(policy), policy, everything);
      }
  // Eight ranks over two heads: past P = H, where Ulysses stops.
  seqpar_test::check_parallel_attention<T>({8, 2, 1, 1, 32, 4, true, shard_strategy::zigzag}, memory_space::host,
                                           ring_of(policy), policy, everything);
}

namespace {
// The reference policy with the block backward that reads the final output instead of the row dots
// (as cudnn_attention's does), computing the dots itself; its row-dot form is hidden.
struct output_reading_policy : seqpar::reference_attention {
  template <class... A>
  void block_backward(A&&...) const = delete;

  template <class T>
  void block_backward_from_output(const seqpar::block_backward_args<T>& a, seqpar::stream_ref s) const {
    REQUIRE(a.row_dots.data_handle() == nullptr);
    std::vector<float> dots(static_cast<std::size_t>(a.q.batch() * a.q.heads() * a.q.seq()));
    const seqpar::lse_view d(dots.data(), a.q.batch(), a.q.heads(), a.q.seq());
    const seqpar::detail::row_dots_of<T> dot{a.dout, a.o, d};
    for (std::int64_t row = 0; row < dot.rows(); ++row) dot(row);
    seqpar::block_backward_args<T> with_dots = a;
    with_dots.row_dots = seqpar::const_lse_view(d);
    seqpar::reference_attention::block_backward(with_dots, s);
  }
};
static_assert(!seqpar::detail::block_backward_reads_row_dots<output_reading_policy>);
static_assert(seqpar::detail::block_backward_reads_output<output_reading_policy>);
static_assert(seqpar::block_attention_policy<output_reading_policy>);
}  // namespace

TEST_CASE_TEMPLATE("ring_attention hands the final output to a policy whose block backward reads it", T, float,
                   __nv_bfloat16) {
  const output_reading_policy policy;
  for (int P : {1, 2, 3})
    for (bool causal : {false, true}) {
      seqpar_test::check_parallel_attention<T>({P, 2, 1, 2, 3 * P + 1, 4, causal}, memory_space::host,
                                               ring_of(policy), seqpar::reference_attention{}, everything);
      seqpar_test::check_parallel_attention<T>({P, 2, 2, 1, 4 * P, 4, causal, shard_strategy::zigzag},
                                               memory_space::host, ring_of(policy), seqpar::reference_attention{},
                                               everything);
    }
  const auto docs = seqpar::documents_of_lengths(std::vector<std::int32_t>{3, 1, 8});
  seqpar_test::check_parallel_attention<T>({3, 2, 1, 2, 12, 4, true, shard_strategy::zigzag}, memory_space::host,
                                           ring_of(policy), seqpar::reference_attention{}, everything, docs);
}

TEST_CASE("ring_attention with block_sparse_attention: the block mask at global positions") {
  const seqpar::block_sparse_attention policy{{.block = 3, .window = 1, .global = 1}};
  const seqpar::block_mask mask = policy.mask;
  auto allowed = [mask](std::int64_t i, std::int64_t j) { return mask.allowed(i, j); };
  for (auto strategy : {shard_strategy::contiguous, shard_strategy::zigzag})
    seqpar_test::check_parallel_attention<float>({3, 4, 2, 1, 24, 4, true, strategy}, memory_space::host,
                                                 ring_of(policy), policy, allowed);
}

namespace {
// The reference policy, recording per rank the causal score entries each block_forward computes,
// keyed by the rank that owns the key block.
struct work_counter : seqpar::reference_attention {
  seqpar::seq_partition part;
  std::map<std::pair<int, int>, std::int64_t>* work;  // (rank, key owner) -> entries
  std::mutex* m;
  int rank = 0;
  template <class T>
  void block_forward(const seqpar::block_forward_args<T>& a, seqpar::stream_ref s) const {
    const seqpar::block_pair pair = a.pair;
    std::int64_t entries = 0;
    for (std::int64_t i = 0; i < a.q.seq(); ++i)
      for (std::int64_t j = 0; j < a.k.seq(); ++j)
        entries += !a.options.causal || pair.kv_first + j <= pair.q_first + i;
    int owner = 0;
    for (int r = 0; r < part.ranks; ++r)
      for (const auto& run : seqpar::detail::token_runs(part, r))
        if (pair.kv_first >= run.global && pair.kv_first < run.global + run.length) owner = r;
    {
      std::lock_guard lock(*m);
      (*work)[{rank, owner}] += entries;
    }
    seqpar::reference_attention::block_forward(a, s);
  }
};
static_assert(seqpar::block_attention_policy<work_counter>);

// Max over min, over ranks, of the causal work at each ring step; the worst step.
double worst_step_imbalance(int P, shard_strategy strategy) {
  const auto part = seqpar::make_seq_partition(16 * P, P, strategy);
  std::map<std::pair<int, int>, std::int64_t> work;
  std::mutex m;
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
    work_counter policy;
    policy.part = part, policy.work = &work, policy.m = &m, policy.rank = comm.rank();
    seqpar::ring_attention layer(policy, comm, part, {.batch = 1, .heads = 1, .head_dim = 2}, seqpar::elements<float>,
                                 {.causal = true});
    const std::int64_t n = part.size(comm.rank());
    std::vector<float> x(n * 2, 0.5f), o(x.size());
    const auto in = seqpar::make_bshd<const float>(x.data(), 1, n, 1, 2);
    (void)layer.forward({.q = in, .k = in, .v = in, .o = seqpar::make_bshd(o.data(), 1, n, 1, 2)},
                        {.stream = nullptr});
  });
  double worst = 1;
  for (int t = 1; t < P; ++t) {  // step 0 is each rank's own diagonal block
    std::int64_t lo = -1, hi = 0;
    for (int r = 0; r < P; ++r) {
      const std::int64_t w = work.count({r, (r - t + P) % P}) ? work[{r, (r - t + P) % P}] : 0;
      hi = std::max(hi, w), lo = lo < 0 ? w : std::min(lo, w);
    }
    worst = std::max(worst, lo > 0 ? double(hi) / double(lo) : INFINITY);
  }
  return worst;
}
}  // namespace

TEST_CASE("ring_attention: zigzag shards give every rank the same causal work at every step") {
  for (int P : {2, 4, 8}) {
    CAPTURE(P);
    CHECK(worst_step_imbalance(P, shard_strategy::zigzag) == 1.0);
    CHECK(worst_step_imbalance(P, shard_strategy::contiguous) == INFINITY);  // rank 0 idles after its block
  }
}

TEST_CASE("ring_attention: bytes per rank equal the formula, forward and backward") {
  const int P = 4, H = 4, H_kv = 2;
  const std::int64_t B = 2, S = 2 * P + 3, D = 8;
  const auto part = seqpar::make_seq_partition(S, P);
  std::vector<std::size_t> forward(P), total(P);
  seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
    seqpar::counting_communicator comm(inner);
    const int r = comm.rank();
    const std::int64_t n = part.size(r);
    seqpar::ring_attention layer(seqpar::reference_attention{}, comm, part,
                                 {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<__nv_bfloat16>);
    using bf16 = __nv_bfloat16;
    std::vector<bf16> q(B * n * H * D, bf16(0.5f)), kv(B * n * H_kv * D, bf16(0.25f)), o(q.size()), dq(q.size()),
        dk(kv.size()), dv(kv.size());
    auto in = [&](std::vector<bf16>& x, int h) { return seqpar::make_bshd<const bf16>(x.data(), B, n, h, D); };
    auto out = [&](std::vector<bf16>& x, int h) { return seqpar::make_bshd(x.data(), B, n, h, D); };
    const auto saved =
        layer.forward({.q = in(q, H), .k = in(kv, H_kv), .v = in(kv, H_kv), .o = out(o, H)}, {.stream = nullptr});
    forward[r] = comm.bytes_sent();
    layer.backward(saved, {.dout = in(q, H), .dq = out(dq, H), .dk = out(dk, H_kv), .dv = out(dv, H_kv)},
                   {.stream = nullptr});
    total[r] = comm.bytes_sent();
  });
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    // Forward: at step t < P-1 rank r passes on rank (r - t)'s K and V (bf16). Backward: the same
    // K and V again, and at every step t < P that shard's fp32 dK and dV.
    std::size_t kv_bytes = 0, grad_bytes = 0;
    for (int t = 0; t < P; ++t) {
      const std::size_t shard = 2 * B * part.size((r - t + P) % P) * H_kv * D;
      if (t + 1 < P) kv_bytes += shard * sizeof(__nv_bfloat16);
      grad_bytes += shard * sizeof(float);
    }
    CHECK(forward[r] == kv_bytes);
    CHECK(total[r] == 2 * kv_bytes + grad_bytes);
  }
}

TEST_CASE("all or nothing: ring_attention forward and backward") {
  const int P = 3;
  const auto part = seqpar::make_seq_partition(2 * P + 1, P);
  auto layer_of = [&](seqpar::in_process_communicator& comm) {
    return seqpar::ring_attention(seqpar::reference_attention{}, comm, part,
                                  {.batch = 1, .heads = 2, .kv_heads = 1, .head_dim = 4}, seqpar::elements<float>,
                                  {.causal = true});
  };
  seqpar_test::expect_all_or_nothing(
      P, "v: expected extents", [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& s) {
        auto layer = layer_of(comm);
        const std::int64_t n = part.size(comm.rank());
        auto& q = s.input(n * 2 * 4, 1.f);
        auto& kv = s.input((n + 1) * 4, 1.f);
        auto& o = s.make(n * 2 * 4);
        (void)layer.forward({.q = seqpar::make_bshd<const float>(q.data(), 1, n, 2, 4),
                             .k = seqpar::make_bshd<const float>(kv.data(), 1, n, 1, 4),
                             .v = seqpar::make_bshd<const float>(kv.data(), 1, bad ? n + 1 : n, 1, 4),
                             .o = seqpar::make_bshd(o.data(), 1, n, 2, 4)},
                            {.stream = nullptr});
      });
  seqpar_test::expect_all_or_nothing(
      P, "dk: expected extents", [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& s) {
        auto layer = layer_of(comm);
        const std::int64_t n = part.size(comm.rank());
        auto& q = s.input(n * 2 * 4, 1.f);
        auto& kv = s.input(n * 4, 1.f);
        auto& o = s.input(n * 2 * 4, 0.f);
        const auto saved = layer.forward({.q = seqpar::make_bshd<const float>(q.data(), 1, n, 2, 4),
                                          .k = seqpar::make_bshd<const float>(kv.data(), 1, n, 1, 4),
                                          .v = seqpar::make_bshd<const float>(kv.data(), 1, n, 1, 4),
                                          .o = seqpar::make_bshd(o.data(), 1, n, 2, 4)},
                                         {.stream = nullptr});
        auto& dq = s.make(n * 2 * 4);
        auto& dk = s.make(n * 2 * 4);
        auto& dv = s.make(n * 4);
        layer.backward(saved,
                       {.dout = seqpar::make_bshd<const float>(q.data(), 1, n, 2, 4),
                        .dq = seqpar::make_bshd(dq.data(), 1, n, 2, 4),
                        .dk = seqpar::make_bshd(dk.data(), 1, n, bad ? 2 : 1, 4),
                        .dv = seqpar::make_bshd(dv.data(), 1, n, 1, 4)},
                       {.stream = nullptr});
      });
}

TEST_CASE("ring_attention: partials merge in fp32, so bf16 error at P = 8 is no worse than twice P = 2's") {
  const seqpar::reference_attention policy;
  for (bool causal : {false, true}) {
    CAPTURE(causal);
    const auto seed = seqpar_test::rng()();  // the same fresh inputs for both group sizes
    seqpar_test::rng().seed(seed);
    const auto two = seqpar_test::check_parallel_attention<__nv_bfloat16>(
        {2, 2, 1, 2, 64, 8, causal, shard_strategy::zigzag}, memory_space::host, ring_of(policy), policy, everything);
    seqpar_test::rng().seed(seed);
    const auto eight = seqpar_test::check_parallel_attention<__nv_bfloat16>(
        {8, 2, 1, 2, 64, 8, causal, shard_strategy::zigzag}, memory_space::host, ring_of(policy), policy, everything);
    CHECK(two[4] > 0);              // bf16 outputs do differ from the exact result
    CHECK(eight[4] <= 2 * two[4]);  // o against the dense definition in double
  }
}
