// The layers over the MPI backend, one process per rank: with one bad rank at a time, that rank
// throws an error naming the argument, every other rank throws peer_failed, and no rank has
// written an output; ring attention and the 2-D layer against one device.
#include <seqpar/comm/mpi.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/values.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace {
bool all_sentinel(const std::vector<float>& x) {
  return std::all_of(x.begin(), x.end(),
                     [](float e) { return seqpar_test::same_bits(e, seqpar_test::poison<float>()); });
}

// Checks this rank's outcome of a call where `culprit` passed a bad argument.
void check_outcome(int rank, int culprit, const std::optional<seqpar::error>& e, const std::string& message) {
  REQUIRE(e.has_value());
  if (rank == culprit) {
    CHECK(e->code() == seqpar::errc::invalid_argument);
    CHECK(std::string(e->what()).find(message) != std::string::npos);
  } else {
    CHECK(e->code() == seqpar::errc::peer_failed);
    CHECK(std::string(e->what()).find("rank(s) " + std::to_string(culprit) + " rejected") != std::string::npos);
  }
}
}  // namespace

TEST_CASE("mpi: ulysses_attention and lasp_attention are all or nothing, one bad rank at a time") {
  seqpar::mpi_communicator comm(MPI_COMM_WORLD);
  const int P = comm.size(), r = comm.rank();
  const std::int64_t B = 1, S = 2 * P + 1, D = 4, E = 3;
  const int H = 4, H_kv = 2;
  const auto part = seqpar::make_seq_partition(S, P);
  const std::int64_t n = part.size(r);
  auto cv = [&](std::vector<float>& x, std::int64_t len, std::int64_t h, std::int64_t d) {
    return seqpar::make_bshd<const float>(x.data(), B, len, h, d);
  };
  auto mv = [&](std::vector<float>& x, std::int64_t len, std::int64_t h, std::int64_t d) {
    return seqpar::make_bshd(x.data(), B, len, h, d);
  };
  seqpar::ulysses_attention attn(seqpar::reference_attention{}, comm, part,
                                 {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>,
                                 {.causal = true});
  seqpar::lasp_attention lin(seqpar::linear_reference{}, comm, part,
                             {.batch = B, .heads = 2, .head_dim = D, .value_dim = E}, seqpar::elements<float>,
                             {0.9f, 0.99f});
  std::vector<float> q(B * n * H * D, 0.5f), kv(B * n * H_kv * D, 0.25f), v(B * n * 2 * E, 0.125f);
  for (int culprit = 0; culprit < P; ++culprit) {
    CAPTURE(culprit);
    const bool bad = r == culprit;
    {  // Ulysses forward: o one token short on the culprit.
      std::vector<float> o(B * n * H * D, seqpar_test::poison<float>());
      std::optional<seqpar::error> e;
      try {
        (void)attn.forward(
            {.q = cv(q, n, H, D), .k = cv(kv, n, H_kv, D), .v = cv(kv, n, H_kv, D), .o = mv(o, bad ? n - 1 : n, H, D)},
            {.stream = nullptr});
      } catch (const seqpar::error& x) {
        e = x;
      }
      check_outcome(r, culprit, e, "o: expected extents");
      CHECK(all_sentinel(o));
    }
    {  // Ulysses backward: dk one head short on the culprit.
      std::vector<float> o(B * n * H * D), dq(o.size(), seqpar_test::poison<float>()),
          dk(B * n * H_kv * D, seqpar_test::poison<float>()), dv(dk);
      const auto saved = attn.forward(
          {.q = cv(q, n, H, D), .k = cv(kv, n, H_kv, D), .v = cv(kv, n, H_kv, D), .o = mv(o, n, H, D)}, {.stream = nullptr});
      std::optional<seqpar::error> e;
      try {
        attn.backward(saved,
                      {.dout = cv(q, n, H, D), .dq = mv(dq, n, H, D), .dk = mv(dk, n, bad ? H_kv - 1 : H_kv, D),
                       .dv = mv(dv, n, H_kv, D)},
                      {.stream = nullptr});
      } catch (const seqpar::error& x) {
        e = x;
      }
      check_outcome(r, culprit, e, "dk: expected extents");
      CHECK((all_sentinel(dq) && all_sentinel(dk) && all_sentinel(dv)));
    }
    {  // LASP backward: dv with the wrong value dim on the culprit.
      std::vector<float> o(v.size()), dq(B * n * 2 * D, seqpar_test::poison<float>()), dk(dq),
          dv(v.size(), seqpar_test::poison<float>());
      const auto saved = lin.forward({.q = cv(q, n, 2, D), .k = cv(q, n, 2, D), .v = cv(v, n, 2, E), .o = mv(o, n, 2, E)},
                                     {.stream = nullptr});
      std::optional<seqpar::error> e;
      try {
        lin.backward(saved,
                     {.dout = cv(v, n, 2, E), .dq = mv(dq, n, 2, D), .dk = mv(dk, n, 2, D),
                      .dv = mv(dv, n, 2, bad ? E - 1 : E)},
                     {.stream = nullptr});
      } catch (const seqpar::error& x) {
        e = x;
      }
      check_outcome(r, culprit, e, "dv: expected extents");
      CHECK((all_sentinel(dq) && all_sentinel(dk) && all_sentinel(dv)));
    }
  }
}

namespace {
// Runs make_layer(comm, layout, shape, opt) forward and backward on this process's tokens of
// `layout` (size(r), global(r, s)) and returns the largest gap to one device over o, dq, dk, dv.
template <class Layout, class MakeLayer>
double gap_to_one_device(seqpar::mpi_communicator& comm, const Layout& layout, std::int64_t S, MakeLayer make_layer) {
  const int r = comm.rank(), H = 2, H_kv = 1;
  const std::int64_t B = 1, D = 4;
  const seqpar::attention_options opt{.causal = true};
  // The same global inputs on every process: a fixed function of the index.
  auto global = [&](int heads, int which) {
    std::vector<float> g(B * S * heads * D);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(0.37f * float(i) + 1.3f * float(which));
    return g;
  };
  auto gq = global(H, 0), gk = global(H_kv, 1), gv = global(H_kv, 2), gdo = global(H, 3);
  auto gview = [&](std::vector<float>& x, int h) { return seqpar::make_bshd(x.data(), B, S, h, D); };
  std::vector<float> o(gq.size()), lse(B * H * S), dq(gq.size()), dk(gk.size()), dv(gk.size());
  const seqpar::reference_attention ref;
  const seqpar::gqa_map map{0, H / H_kv, 0};
  using cv = seqpar::tensor_view<const float>;
  ref.forward(seqpar::policy_forward_args<float>{.q = cv(gview(gq, H)),
                                                 .k = cv(gview(gk, H_kv)),
                                                 .v = cv(gview(gv, H_kv)),
                                                 .o = gview(o, H),
                                                 .lse = seqpar::lse_view(lse.data(), B, H, S),
                                                 .map = map,
                                                 .options = opt},
              nullptr);
  ref.backward(seqpar::policy_backward_args<float>{.q = cv(gview(gq, H)),
                                                   .k = cv(gview(gk, H_kv)),
                                                   .v = cv(gview(gv, H_kv)),
                                                   .o = cv(gview(o, H)),
                                                   .lse = seqpar::const_lse_view(lse.data(), B, H, S),
                                                   .dout = cv(gview(gdo, H)),
                                                   .dq = gview(dq, H),
                                                   .dk = gview(dk, H_kv),
                                                   .dv = gview(dv, H_kv),
                                                   .map = map,
                                                   .options = opt},
               nullptr);
  const std::int64_t n = layout.size(r);
  auto shard_of = [&](const std::vector<float>& g, int h) {
    std::vector<float> x;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t s = 0; s < n; ++s)
        for (std::int64_t e = 0; e < h * D; ++e) x.push_back(g[(b * S + layout.global(r, s)) * h * D + e]);
    return x;
  };
  auto q = shard_of(gq, H), k = shard_of(gk, H_kv), v = shard_of(gv, H_kv), dout = shard_of(gdo, H);
  std::vector<float> lo(q.size()), ldq(q.size()), ldk(k.size()), ldv(k.size());
  auto lview = [&](std::vector<float>& x, int h) { return seqpar::make_bshd(x.data(), B, n, h, D); };
  auto layer = make_layer(comm, layout, seqpar::attention_shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                          opt);
  const auto saved = layer.forward(
      {.q = cv(lview(q, H)), .k = cv(lview(k, H_kv)), .v = cv(lview(v, H_kv)), .o = lview(lo, H)}, {.stream = nullptr});
  layer.backward(saved, {.dout = cv(lview(dout, H)), .dq = lview(ldq, H), .dk = lview(ldk, H_kv), .dv = lview(ldv, H_kv)},
                 {.stream = nullptr});
  double gap = 0;
  auto compare = [&](const std::vector<float>& mine, const std::vector<float>& whole, int h) {
    const auto want = shard_of(whole, h);
    for (std::size_t i = 0; i < want.size(); ++i) gap = std::max(gap, double(std::fabs(mine[i] - want[i])));
  };
  compare(lo, o, H), compare(ldq, dq, H), compare(ldk, dk, H_kv), compare(ldv, dv, H_kv);
  return gap;
}
}  // namespace

TEST_CASE("mpi: ring_attention and the 2-D layer (causal, GQA) equal one device, forward and backward") {
  seqpar::mpi_communicator comm(MPI_COMM_WORLD);
  const int P = comm.size();
  const std::int64_t S = 4 * P;
  const auto part = seqpar::make_seq_partition(S, P, seqpar::shard_strategy::zigzag);
  CHECK(gap_to_one_device(comm, part, S, [](auto& c, const auto& l, const auto& shape, const auto& opt) {
          return seqpar::ring_attention(seqpar::reference_attention{}, c, l, shape, seqpar::elements<float>, opt);
        }) <= 1e-5);
  for (int u : {1, 2, P}) {
    if (P % u) continue;
    CAPTURE(u);
    const auto layout = seqpar::make_token_layout_2d(S, {u, P / u});
    CHECK(gap_to_one_device(comm, layout, S, [](auto& c, const auto& l, const auto& shape, const auto& opt) {
            return seqpar::ulysses_ring_attention(seqpar::reference_attention{}, c, l, shape, seqpar::elements<float>,
                                                  opt);
          }) <= 1e-5);
  }
}
