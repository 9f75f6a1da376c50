// Head groups in the Ulysses exchange and layer: the group exchanges together move exactly what one
// exchange moves (every element, the same bytes), and ulysses_attention gives the same bits for
// every head-group count, forward and backward, with GQA kv heads shared between ranks, causal
// masks, zigzag shards and packed documents; bad group counts fail on every rank before any output.
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/attention_cases.hpp>

#include <seqpar/comm/counting.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <mutex>
#include <vector>

using seqpar::memory_space;
using seqpar::shard_strategy;

namespace {
struct heads_case {
  int P, H, H_kv;
};

// P, H, H_kv where every rank holds at least two kv heads (so more than one group is possible),
// among them splits where a kv head is shared by two ranks that hold it in different groups.
const heads_case grouped_cases[] = {
    {1, 4, 4}, {2, 8, 8}, {2, 6, 3}, {3, 10, 5}, {2, 12, 4}, {4, 16, 8}, {3, 9, 9}, {2, 4, 2},
};

// The fewest kv heads a rank's query heads read: the largest head-group count.
int most_groups(const heads_case& c) {
  const auto split = seqpar::make_head_partition(c.H, c.H_kv, c.P);
  int fewest = c.H_kv;
  for (int r = 0; r < c.P; ++r) fewest = std::min(fewest, split.kv_count(r));
  return std::max(fewest, 1);
}

template <class T>
bool same_values(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(seqpar::to_float(a[i]) == seqpar::to_float(b[i]))) return false;  // NaN (poison) never equal
  return true;
}

// What one rank got from a layer run: o, dq, dk, dv of its tokens, and its bytes sent per peer.
template <class T>
struct rank_result {
  std::vector<std::vector<T>> tensors;
  std::vector<std::size_t> bytes_to_peer;
  std::size_t calls = 0;
};

// ulysses_attention with `groups` head groups, forward then backward on c.P ranks.
template <class T>
std::vector<rank_result<T>> run_layer(const heads_case& c, std::int64_t S, bool causal, shard_strategy strategy,
                                      const seqpar::document_layout& docs, int groups) {
  const std::int64_t B = 2, D = 4;
  seqpar_test::rng().seed(7);  // the same inputs for every group count
  const auto q = seqpar_test::random_input<T>(B, S, c.H, D), dout = seqpar_test::random_input<T>(B, S, c.H, D);
  const auto k = seqpar_test::random_input<T>(B, S, c.H_kv, D), v = seqpar_test::random_input<T>(B, S, c.H_kv, D);
  const auto part = seqpar::make_seq_partition(S, c.P, strategy);
  std::vector<rank_result<T>> out(c.P);
  seqpar::run_in_process(c.P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
    seqpar::counting_communicator comm(inner);
    const int r = comm.rank();
    const std::int64_t n = part.size(r);
    auto shard = [&](const seqpar_test::dense4& a) {
      std::vector<T> x;
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t s = 0; s < n; ++s)
          for (std::int64_t h = 0; h < a.H; ++h)
            for (std::int64_t d = 0; d < D; ++d)
              x.push_back(seqpar::from_float<T>(static_cast<float>(a(b, part.global(r, s), h, d))));
      return x;
    };
    std::vector<T> hq = shard(q), hk = shard(k), hv = shard(v), hdo = shard(dout);
    std::vector<T> o(hq.size(), seqpar_test::poison<T>()), dq = o, dk(hk.size(), seqpar_test::poison<T>()), dv = dk;
    auto cv = [&](std::vector<T>& x, int h) { return seqpar::make_bshd<const T>(x.data(), B, n, h, D); };
    auto mv = [&](std::vector<T>& x, int h) { return seqpar::make_bshd(x.data(), B, n, h, D); };
    const seqpar::attention_options opt{0.5f, causal};
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part,
                                    {.batch = B, .heads = c.H, .kv_heads = c.H_kv, .head_dim = D}, seqpar::elements<T>,
                                    opt, seqpar::ulysses_options{.head_groups = groups});
    comm.clear();  // the construction's agreement
    const auto saved = layer.forward({.q = cv(hq, c.H),
                                      .k = cv(hk, c.H_kv),
                                      .v = cv(hv, c.H_kv),
                                      .o = mv(o, c.H),
                                      .documents = docs.split() ? &docs : nullptr},
                                     {.stream = nullptr});
    layer.backward(saved, {.dout = cv(hdo, c.H), .dq = mv(dq, c.H), .dk = mv(dk, c.H_kv), .dv = mv(dv, c.H_kv)},
                   {.stream = nullptr});
    out[r].tensors = {o, dq, dk, dv};
    out[r].bytes_to_peer.assign(c.P, 0);
    for (int p = 0; p < c.P; ++p) out[r].bytes_to_peer[p] = comm.bytes_sent_to(p);
    for (const auto& record : comm.records()) out[r].calls += record.operation == "all_to_all_v";
  });
  return out;
}
}  // namespace

TEST_CASE_TEMPLATE("ulysses_attention: every head-group count gives the same bits and moves the same bytes", T, float,
                   __nv_bfloat16) {
  for (const heads_case& c : grouped_cases)
    for (bool causal : {false, true})
      for (shard_strategy strategy : {shard_strategy::contiguous, shard_strategy::zigzag}) {
        const std::int64_t S = strategy == shard_strategy::zigzag ? 8 * c.P : 3 * c.P + 2;
        std::vector<seqpar::document_layout> layouts{seqpar::document_layout{}};
        layouts.push_back(seqpar::documents_of_lengths(std::vector<std::int32_t>{1, std::int32_t(S - 4), 3}));
        for (const seqpar::document_layout& layout : layouts) {
          const auto one = run_layer<T>(c, S, causal, strategy, layout, 1);
          for (int groups = 2; groups <= most_groups(c); ++groups) {
            INFO("P=" << c.P << " H=" << c.H << " H_kv=" << c.H_kv << " S=" << S << " causal=" << causal << " "
                      << seqpar::to_string(strategy) << " documents=" << layout.count() << " groups=" << groups);
            const auto split = run_layer<T>(c, S, causal, strategy, layout, groups);
            for (int r = 0; r < c.P; ++r) {
              CAPTURE(r);
              const char* names[] = {"o", "dq", "dk", "dv"};
              for (int w = 0; w < 4; ++w) {
                INFO(names[w]);
                CHECK(same_values(split[r].tensors[w], one[r].tensors[w]));
              }
              CHECK(split[r].bytes_to_peer == one[r].bytes_to_peer);
              CHECK(split[r].calls == 4 * static_cast<std::size_t>(groups));  // q/k/v, o, do, dq/dk/dv per group
            }
          }
        }
      }
}

TEST_CASE("ulysses_attention with head groups equals one device (and the dense definition)") {
  const seqpar::reference_attention policy;
  for (const heads_case& c : grouped_cases)
    for (bool causal : {false, true}) {
      const int groups = most_groups(c);
      (void)seqpar_test::check_parallel_attention<float>(
          {c.P, c.H, c.H_kv, 2, 3 * c.P + 1, 4, causal}, memory_space::host,
          [&](auto& comm, const auto& part, const auto& shape, auto type, const auto& opt) {
            return seqpar::ulysses_attention(policy, comm, part, shape, type, opt,
                                             seqpar::ulysses_options{.head_groups = groups});
          },
          policy, [](std::int64_t, std::int64_t) { return true; });
    }
}

TEST_CASE("all_to_all_heads: the exchanges of the head groups together equal one exchange, both ways") {
  const std::int64_t B = 2, D = 3;
  for (const heads_case& c : grouped_cases)
    for (int groups = 2; groups <= most_groups(c); ++groups) {
      INFO("P=" << c.P << " H=" << c.H << " H_kv=" << c.H_kv << " groups=" << groups);
      const std::int64_t S = 2 * c.P + 1;
      const auto part = seqpar::make_seq_partition(S, c.P);
      const seqpar::attention_shape shape{.batch = B, .heads = c.H, .kv_heads = c.H_kv, .head_dim = D};
      std::vector<int> failures(c.P, 0);
      seqpar::run_in_process(c.P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
        seqpar::counting_communicator comm(inner);
        const int r = comm.rank();
        const std::int64_t n = part.size(r);
        const auto whole = seqpar::make_all_to_all_heads_plan(r, part, shape, seqpar::dtype::float32);
        const int h = whole.local_heads(false), k = whole.local_heads(true);
        auto filled = [&](std::size_t size, int tag) {
          std::vector<float> x(size);
          for (std::size_t i = 0; i < size; ++i)
            x[i] = static_cast<float>(seqpar_test::key_of(r, tag, i) % 1000) - 500.0f;
          return x;
        };
        std::vector<float> sq = filled(B * n * c.H * D, 1), sk = filled(B * n * c.H_kv * D, 2),
                           sv = filled(sk.size(), 3);
        auto seq_view = [&](std::vector<float>& x, int heads) { return seqpar::make_bshd(x.data(), B, n, heads, D); };
        auto heads_view = [&](std::vector<float>& x, int heads) { return seqpar::make_bshd(x.data(), B, S, heads, D); };
        std::vector<std::byte> ws(whole.workspace_bytes());
        // Forward: one exchange, then the groups' exchanges into head ranges of poisoned tensors.
        std::vector<float> q1(B * S * h * D), k1(B * S * k * D), v1(k1.size());
        seqpar::all_to_all_heads(
            whole, comm,
            seqpar::qkv_exchange_args<float>{.in = {seq_view(sq, c.H), seq_view(sk, c.H_kv), seq_view(sv, c.H_kv)},
                                             .out = {heads_view(q1, h), heads_view(k1, k), heads_view(v1, k)},
                                             .workspace = ws},
            {.stream = nullptr});
        const std::size_t one_bytes = comm.bytes_sent();
        comm.clear();
        std::vector<float> q2(q1.size(), seqpar_test::poison<float>()), k2(k1.size(), seqpar_test::poison<float>()),
            v2(k2);
        auto range = [&](std::vector<float>& x, int heads, int first, int count) {
          const auto all = heads_view(x, heads);
          return seqpar::make_strided(x.data() + first * D, {B, S, count, D},
                                      {all.stride(seqpar::axis::batch), all.stride(seqpar::axis::seq), D, 1});
        };
        for (int g = 0; g < groups; ++g) {
          const auto plan = seqpar::make_all_to_all_heads_plan(r, part, shape, seqpar::dtype::float32, {groups, g});
          const int qf = plan.local_first(false), qn = plan.local_heads(false), kf = plan.local_first(true),
                    kn = plan.local_heads(true);
          failures[r] += qn < 1 || kn < 1;  // every group of every rank holds heads
          seqpar::all_to_all_heads(plan, comm,
                                   seqpar::qkv_exchange_args<float>{
                                       .in = {seq_view(sq, c.H), seq_view(sk, c.H_kv), seq_view(sv, c.H_kv)},
                                       .out = {range(q2, h, qf, qn), range(k2, k, kf, kn), range(v2, k, kf, kn)},
                                       .workspace = ws},
                                   {.stream = nullptr});
        }
        failures[r] += !same_values(q1, q2) + !same_values(k1, k2) + !same_values(v1, v2);
        failures[r] += comm.bytes_sent() != one_bytes;
        // Inverse: gradients back to sequence shards, kv heads shared by two ranks summed once.
        std::vector<float> gq = filled(q1.size(), 4), gk = filled(k1.size(), 5), gv = filled(k1.size(), 6);
        std::vector<float> dq1(sq.size()), dk1(sk.size()), dv1(sk.size());
        comm.clear();
        seqpar::all_to_all_heads_inverse(
            whole, comm,
            seqpar::qkv_exchange_args<float>{.in = {heads_view(gq, h), heads_view(gk, k), heads_view(gv, k)},
                                             .out = {seq_view(dq1, c.H), seq_view(dk1, c.H_kv), seq_view(dv1, c.H_kv)},
                                             .workspace = ws},
            {.stream = nullptr});
        const std::size_t one_back = comm.bytes_sent();
        comm.clear();
        std::vector<float> dq2(dq1.size(), seqpar_test::poison<float>()), dk2(dk1.size(), seqpar_test::poison<float>()),
            dv2(dk2);
        for (int g = 0; g < groups; ++g) {
          const auto plan = seqpar::make_all_to_all_heads_plan(r, part, shape, seqpar::dtype::float32, {groups, g});
          const int qf = plan.local_first(false), qn = plan.local_heads(false), kf = plan.local_first(true),
                    kn = plan.local_heads(true);
          seqpar::all_to_all_heads_inverse(
              plan, comm,
              seqpar::qkv_exchange_args<float>{
                  .in = {range(gq, h, qf, qn), range(gk, k, kf, kn), range(gv, k, kf, kn)},
                  .out = {seq_view(dq2, c.H), seq_view(dk2, c.H_kv), seq_view(dv2, c.H_kv)},
                  .workspace = ws},
              {.stream = nullptr});
        }
        failures[r] += !same_values(dq1, dq2) + !same_values(dk1, dk2) + !same_values(dv1, dv2);
        failures[r] += comm.bytes_sent() != one_back;
      });
      for (int r = 0; r < c.P; ++r) {
        CAPTURE(r);
        CHECK(failures[r] == 0);
      }
    }
}

TEST_CASE("ulysses_attention: a head-group count outside 1 to the fewest kv heads of a rank fails on every rank") {
  // H = 6, H_kv = 3 over 2 ranks: each rank's query heads read 2 kv heads (kv head 1 on both).
  for (int groups : {0, 3, -1}) {
    CAPTURE(groups);
    seqpar_test::expect_all_or_nothing(2, "head_groups: expected 1 to 2", [&](auto& comm, bool bad, auto&) {
      seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, seqpar::make_seq_partition(8, 2),
                                      {.batch = 1, .heads = 6, .kv_heads = 3, .head_dim = 4}, seqpar::elements<float>,
                                      {}, seqpar::ulysses_options{.head_groups = bad ? groups : 2});
    });
  }
}
