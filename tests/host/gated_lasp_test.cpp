// Gated LASP on host memory with the reference policy: o of P ranks against the token-by-token
// recurrence in double; dq, dk, dv and the gates' dg against the one-device backward (whose pieces
// gated_linear_test checks against central differences); scalar and vector gates, gates near 0
// and near 1, chain and all-gather, fp32 and bf16, packed documents as a gate of minus infinity;
// bytes per rank; bad gates refused by every rank before anything moves.
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar_test/all_or_nothing.hpp>
#include <seqpar_test/gated_lasp_cases.hpp>
#include <seqpar_test/lasp_cases.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using seqpar::gate_kind;
using seqpar::lasp_strategy;
using seqpar::memory_space;
using seqpar_test::check_gated_lasp;
using seqpar_test::dense4;

TEST_CASE_TEMPLATE("gated lasp_attention (host): o equals the recurrence, dq, dk, dv, dg one device's", T, float,
                   __nv_bfloat16) {
  for (int P : {1, 2, 3, 4, 8})
    for (gate_kind gates : {gate_kind::scalar, gate_kind::vector})
      for (auto [lo, hi] : {std::pair{0.5, 1.0}, std::pair{1e-6, 1e-5}, std::pair{1.0 - 1e-6, 1.0}})
        for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
          check_gated_lasp<T>({.P = P, .S = 4 * P + 3, .gates = gates, .lo = lo, .hi = hi, .strategy = strategy});
}

TEST_CASE("gated lasp_attention (host): packed documents equal a log-gate of minus infinity at every start") {
  for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
    for (gate_kind gates : {gate_kind::scalar, gate_kind::vector}) {
      // 4 ranks of 5 or 6 tokens: documents that start mid-rank, at a rank's first token, span ranks
      const std::vector<std::int32_t> cu{0, 3, 6, 12, 13, 23};
      check_gated_lasp<float>({.P = 4, .S = 23, .gates = gates, .strategy = strategy},
                              seqpar::make_document_layout(cu, 23));
      const std::vector<std::int32_t> one_per_rank{0, 8, 16, 24};
      check_gated_lasp<float>({.P = 3, .S = 24, .gates = gates, .strategy = strategy},
                              seqpar::make_document_layout(one_per_rank, 24));
    }
}

namespace {
// The reference's state algebra with the quadratic intra-chunk products left out: what the byte
// count needs (traffic does not depend on them) at S = 64K.
struct states_only : seqpar::gated_linear_reference {
  template <class... A>
  void forward_intra(A&&...) const {}
  template <class... A>
  void backward_intra(A&&...) const {}
};
static_assert(seqpar::gated_linear_attention_policy<states_only>);
}  // namespace

TEST_CASE("gated lasp_attention: bytes per rank equal the formula, the same for S = 1K and S = 64K") {
  const int P = 8;
  const std::int64_t B = 1, H = 2, D = 3, E = 2, state_bytes = B * H * D * E * 4, decay_bytes = B * H * D * 4;
  for (gate_kind gates : {gate_kind::scalar, gate_kind::vector})
    for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather}) {
      CAPTURE(seqpar::to_string(gates));
      CAPTURE(seqpar::to_string(strategy));
      std::vector<std::vector<std::size_t>> sent;  // per S: bytes per rank
      for (std::int64_t S : {1024, 65536}) {
        const std::int64_t W = gates == gate_kind::scalar ? 1 : D;
        std::vector<std::size_t> bytes(P);
        std::vector<std::vector<std::size_t>> to_peer(P, std::vector<std::size_t>(P));
        const auto part = seqpar::make_seq_partition(S, P);
        seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& inner) {
          seqpar::counting_communicator comm(inner);
          const int r = comm.rank();
          const std::int64_t n = part.size(r);
          std::vector<float> q(B * n * H * D, 0.5f), v(B * n * H * E, 0.25f), g(B * n * H * W, -0.01f), o(v.size()),
              dq(q.size()), dk(q.size()), dv(v.size()), dg(g.size());
          auto in = [&](std::vector<float>& x, std::int64_t w) {
            return seqpar::make_bshd<const float>(x.data(), B, n, H, w);
          };
          auto out = [&](std::vector<float>& x, std::int64_t w) { return seqpar::make_bshd(x.data(), B, n, H, w); };
          seqpar::lasp_attention layer(states_only{}, comm, part,
                                       {.batch = B, .heads = int(H), .head_dim = D, .value_dim = E},
                                       seqpar::elements<float>, gates, strategy);
          const auto saved = layer.forward({.q = in(q, D), .k = in(q, D), .v = in(v, E), .g = in(g, W), .o = out(o, E)},
                                           {.stream = nullptr});
          layer.backward(saved,
                         {.dout = in(v, E), .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E), .dg = out(dg, W)},
                         {.stream = nullptr});
          bytes[r] = comm.bytes_sent();
          for (int j = 0; j < P; ++j) to_peer[r][j] = comm.bytes_sent_to(j);
        });
        seqpar_test::check_bytes_to_peers(to_peer, [&](int r, int j) -> std::size_t {
          if (strategy == lasp_strategy::chain)  // one state forward to r + 1, one backward to r - 1
            return (j == r + 1 || j == r - 1) ? state_bytes : 0;
          // forward and backward all-gathers: a state and the chunk's log-decay [B, H, D] each
          return j == r ? 0 : 2 * (state_bytes + decay_bytes);
        });
        sent.push_back(bytes);
      }
      CHECK(sent[0] == sent[1]);
    }
}

TEST_CASE("gated lasp_attention: bad gates are refused by every rank before anything moves") {
  const std::int64_t B = 1, H = 2, D = 3, E = 2;
  const seqpar::attention_shape shape{.batch = B, .heads = int(H), .head_dim = D, .value_dim = E};
  struct bad_gate {
    gate_kind kind;
    std::int64_t width;  // of the culprit's g
    float value;         // one entry of the culprit's g
    const char* message;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const bad_gate cases[] = {
      {gate_kind::scalar, D, -0.1f, "g: last extent 3; expected 1 for the layer's scalar gates"},
      {gate_kind::vector, 1, -0.1f, "g: last extent 1; expected 3 for the layer's vector gates"},
      {gate_kind::vector, D, 0.5f, "g(0, 1, 1, 2) = 0.5; expected a finite log-gate <= 0"},
      {gate_kind::scalar, 1, nan, "g(0, 1, 1, 0) = nan; expected a finite log-gate <= 0"},
      {gate_kind::scalar, 1, -inf, "g(0, 1, 1, 0) = -inf; expected a finite log-gate <= 0"},
  };
  for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather})
    for (int P : {2, 3})
      for (const bad_gate& c : cases) {
        const auto part = seqpar::make_seq_partition(2 * P + 1, P);
        seqpar_test::expect_all_or_nothing(
            P, c.message, [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& s) {
              seqpar::lasp_attention layer(seqpar::gated_linear_reference{}, comm, part, shape, seqpar::elements<float>,
                                           c.kind, strategy);
              const std::int64_t n = part.size(comm.rank()), good = c.kind == gate_kind::scalar ? 1 : D,
                                 W = bad ? c.width : good;
              std::vector<float> q(B * n * H * D, 0.5f), v(B * n * H * E, 0.25f), g(B * n * H * W, -0.1f);
              if (bad) g[(1 * H + 1) * W + W - 1] = c.value;
              auto& o = s.make(v.size());
              (void)layer.forward({.q = seqpar::make_bshd<const float>(q.data(), B, n, H, D),
                                   .k = seqpar::make_bshd<const float>(q.data(), B, n, H, D),
                                   .v = seqpar::make_bshd<const float>(v.data(), B, n, H, E),
                                   .g = seqpar::make_bshd<const float>(g.data(), B, n, H, W),
                                   .o = seqpar::make_bshd(o.data(), B, n, H, E)},
                                  {.stream = nullptr});
            });
      }
  // backward: a dg of the wrong width on one rank leaves every gradient untouched
  for (int P : {2, 3}) {
    const auto part = seqpar::make_seq_partition(2 * P + 1, P);
    seqpar_test::expect_all_or_nothing(
        P, "dg: last extent 1; expected 3 for the layer's vector gates",
        [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels& s) {
          seqpar::lasp_attention layer(seqpar::gated_linear_reference{}, comm, part, shape, seqpar::elements<float>,
                                       gate_kind::vector);
          const std::int64_t n = part.size(comm.rank());
          std::vector<float> q(B * n * H * D, 0.5f), v(B * n * H * E, 0.25f), g(B * n * H * D, -0.1f), o(v.size());
          auto cview = [&](std::vector<float>& x, std::int64_t w) {
            return seqpar::make_bshd<const float>(x.data(), B, n, H, w);
          };
          const auto saved = layer.forward({.q = cview(q, D),
                                            .k = cview(q, D),
                                            .v = cview(v, E),
                                            .g = cview(g, D),
                                            .o = seqpar::make_bshd(o.data(), B, n, H, E)},
                                           {.stream = nullptr});
          auto &dq = s.make(q.size()), &dk = s.make(q.size()), &dv = s.make(v.size());
          auto& dg = s.make(B * n * H * D);
          layer.backward(saved,
                         {.dout = cview(v, E),
                          .dq = seqpar::make_bshd(dq.data(), B, n, H, D),
                          .dk = seqpar::make_bshd(dk.data(), B, n, H, D),
                          .dv = seqpar::make_bshd(dv.data(), B, n, H, E),
                          .dg = seqpar::make_bshd(dg.data(), B, n, H, bad ? 1 : D)},
                         {.stream = nullptr});
        });
  }
  seqpar_test::expect_all_or_nothing(
      2, "gates: expected gate_kind::scalar or gate_kind::vector, got 5",
      [&](seqpar::in_process_communicator& comm, bool bad, seqpar_test::sentinels&) {
        seqpar::lasp_attention layer(seqpar::gated_linear_reference{}, comm, seqpar::make_seq_partition(5, 2), shape,
                                     seqpar::elements<float>, bad ? static_cast<gate_kind>(5) : gate_kind::scalar);
      });
}

TEST_CASE("gated lasp_attention with g = log(lambda) equals the constant-decay layer") {
  const std::int64_t B = 1, S = 23, H = 2, D = 3, E = 4;
  const int P = 4;
  const std::vector<float> decay{0.9f, 0.6f};
  const auto part = seqpar::make_seq_partition(S, P);
  const seqpar::attention_shape shape{.batch = B, .heads = int(H), .head_dim = D, .value_dim = E};
  const auto q = seqpar_test::random_input<float>(B, S, H, D), k = seqpar_test::random_input<float>(B, S, H, D),
             v = seqpar_test::random_input<float>(B, S, H, E), dout = seqpar_test::random_input<float>(B, S, H, E);
  for (auto strategy : {lasp_strategy::chain, lasp_strategy::all_gather}) {
    CAPTURE(seqpar::to_string(strategy));
    std::vector<double> worst(P, 0.0);
    seqpar::run_in_process(P, memory_space::host, [&](seqpar::in_process_communicator& comm) {
      const int r = comm.rank();
      const std::int64_t n = part.size(r), at = part.offset(r);
      auto xq = seqpar_test::rows_of<float>(q, at, n), xk = seqpar_test::rows_of<float>(k, at, n),
           xv = seqpar_test::rows_of<float>(v, at, n), xdo = seqpar_test::rows_of<float>(dout, at, n);
      std::vector<float> g(B * n * H), dg(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::log(decay[i % H]);
      std::vector<std::vector<float>> outs[2];  // o, dq, dk, dv of the constant and the gated layer
      auto in = [&](std::vector<float>& x, std::int64_t w) { return seqpar::make_bshd<const float>(x.data(), B, n, H, w); };
      auto out = [&](std::vector<float>& x, std::int64_t w) { return seqpar::make_bshd(x.data(), B, n, H, w); };
      for (int gated = 0; gated < 2; ++gated) {
        std::vector<float> o(xv.size()), dq(xq.size()), dk(xq.size()), dv(xv.size());
        if (gated) {
          seqpar::lasp_attention layer(seqpar::gated_linear_reference{}, comm, part, shape, seqpar::elements<float>,
                                       gate_kind::scalar, strategy);
          const auto saved = layer.forward(
              {.q = in(xq, D), .k = in(xk, D), .v = in(xv, E), .g = in(g, 1), .o = out(o, E)}, {.stream = nullptr});
          layer.backward(saved,
                         {.dout = in(xdo, E), .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E), .dg = out(dg, 1)},
                         {.stream = nullptr});
        } else {
          seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, shape, seqpar::elements<float>, decay,
                                       strategy);
          const auto saved =
              layer.forward({.q = in(xq, D), .k = in(xk, D), .v = in(xv, E), .o = out(o, E)}, {.stream = nullptr});
          layer.backward(saved, {.dout = in(xdo, E), .dq = out(dq, D), .dk = out(dk, D), .dv = out(dv, E)},
                         {.stream = nullptr});
        }
        outs[gated] = {o, dq, dk, dv};
      }
      for (int t = 0; t < 4; ++t)
        for (std::size_t i = 0; i < outs[0][t].size(); ++i)
          worst[r] = std::max(worst[r], double(std::abs(outs[0][t][i] - outs[1][t][i])));
    });
    for (int r = 0; r < P; ++r) {
      CAPTURE(r);
      CHECK(worst[r] <= 1e-5);
    }
  }
}

namespace {
// The reference policy, said to work on device memory, that counts the device-gate checks asked of
// it (and checks nothing itself).
struct counting_device_gates : seqpar::gated_linear_reference {
  mutable int gate_checks = 0;
  seqpar::memory_space memory() const { return seqpar::memory_space::device; }
  void check_gates(seqpar::tensor_view<const float>, seqpar::stream_ref) const { ++gate_checks; }
};
// A group of one on device memory: all the checks ask of a communicator.
struct device_group_of_one {
  int size() const { return 1; }
  int rank() const { return 0; }
  seqpar::memory_space memory() const { return seqpar::memory_space::device; }
};
}  // namespace

TEST_CASE("linear_attention_ring reads device gates (a host wait) with group checks only") {
  const seqpar::attention_shape shape{.batch = 1, .heads = 2, .head_dim = 4, .value_dim = 4};
  const seqpar::linear_attention_ring ring(0, seqpar::make_seq_partition(8, 1), shape);
  std::vector<float> x(8 * 2 * 4), y(x.size()), dk(x.size()), dv(x.size()), gates(8 * 2, -0.5f), dg(gates.size()),
      saved(2 * 4 * 4);
  const auto q = seqpar::make_bshd<const float>(x.data(), 1, 8, 2, 4);
  const auto o = seqpar::make_bshd(y.data(), 1, 8, 2, 4);
  const auto g = seqpar::make_bshd<const float>(gates.data(), 1, 8, 2, 1);
  const seqpar::lasp_ring_forward_args<float> forward{.q = q, .k = q, .v = q, .g = g, .o = o};
  const seqpar::lasp_ring_backward_args<float> backward{.q = q,
                                                        .k = q,
                                                        .v = q,
                                                        .dout = q,
                                                        .g = g,
                                                        .saved = seqpar::make_state(saved.data(), 1, 2, 4, 4),
                                                        .dq = o,
                                                        .dk = seqpar::make_bshd(dk.data(), 1, 8, 2, 4),
                                                        .dv = seqpar::make_bshd(dv.data(), 1, 8, 2, 4),
                                                        .dg = seqpar::make_bshd(dg.data(), 1, 8, 2, 1)};
  const counting_device_gates policy;
  const device_group_of_one comm;
  ring.check_forward(policy, comm, forward, {.stream = nullptr, .checks = seqpar::call_checks::local});
  ring.check_backward(policy, comm, backward, {.stream = nullptr, .checks = seqpar::call_checks::local});
  CHECK(policy.gate_checks == 0);
  ring.check_forward(policy, comm, forward, {.stream = nullptr});
  CHECK(policy.gate_checks == 1);
  ring.check_backward(policy, comm, backward, {.stream = nullptr});
  CHECK(policy.gate_checks == 2);
}
