// All or nothing: when ONE rank passes a bad argument to a primitive or a layer, that rank throws an
// error naming the argument, every other rank throws peer_failed naming it, and no rank has written
// any output. Each case runs once per culprit rank, outputs pre-filled with a sentinel. Outputs that
// share memory with another output or an input are such arguments; slices of one fused buffer are not.
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/group_shard.hpp>
#include <seqpar/shard.hpp>
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/all_or_nothing.hpp>

#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

using seqpar::errc;
using seqpar::in_process_communicator;
using seqpar::memory_space;

namespace {

using seqpar_test::expect_all_or_nothing;
using seqpar_test::sentinels;

// Shapes of the cases: P ranks, S = 2P + 1 tokens (uneven shards), B = 1, H = 4, H_kv = 2, D = 4.
constexpr std::int64_t B = 1, D = 4;
constexpr int H = 4, H_kv = 2;
std::int64_t tokens(int P) { return 2 * P + 1; }

template <class X>
seqpar::tensor_view<const float> in_view(X& x, std::int64_t S, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd<const float>(x.data(), B, S, h, d);
}
template <class X>
seqpar::tensor_view<float> out_view(X& x, std::int64_t S, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd(x.data(), B, S, h, d);
}

}  // namespace

TEST_CASE("all or nothing: seq_shard and seq_unshard over a group") {
  for (int P : {2, 3}) {
    const auto part = seqpar::make_seq_partition(tokens(P), P);
    expect_all_or_nothing(P, "shard: expected seq extent", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      const std::int64_t n = part.size(comm.rank()) - (bad ? 1 : 0);
      std::vector<float> global(B * tokens(P) * H * D, 0.5f);
      auto& shard = s.make(B * n * H * D);
      seqpar::seq_shard(
          comm, part,
          seqpar::seq_shard_args<float>{.global = in_view(global, tokens(P), H), .shard = out_view(shard, n, H)},
          {.stream = nullptr});
    });
    expect_all_or_nothing(P, "global: expected seq extent", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      const std::int64_t n = part.size(comm.rank()), S = tokens(P) + (bad ? 1 : 0);
      std::vector<float> shard(B * n * H * D, 0.5f);
      auto& global = s.make(B * S * H * D);
      seqpar::seq_unshard(
          comm, part, seqpar::seq_unshard_args<float>{.shard = in_view(shard, n, H), .global = out_view(global, S, H)},
          {.stream = nullptr});
    });
  }
}

TEST_CASE("all or nothing: all_to_all_heads and its inverse, Q/K/V and one tensor") {
  const seqpar::attention_shape shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
  for (int P : {2, 3, 4}) {
    const auto part = seqpar::make_seq_partition(tokens(P), P);
    const std::int64_t S = tokens(P);
    auto plan_of = [&](const in_process_communicator& c) {
      return seqpar::make_all_to_all_heads_plan(c.rank(), part, shape, seqpar::dtype::float32);
    };
    expect_all_or_nothing(P, "in.k: expected extents", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      const auto plan = plan_of(comm);
      const auto& hp = plan.heads();
      const int r = comm.rank();
      const std::int64_t n = part.size(r);
      std::vector<float> q(B * n * H * D, 1.f), k(B * (n + 1) * H_kv * D, 1.f), ws(plan.workspace_bytes() / 4 + 4);
      auto& qo = s.make(B * S * hp.count(r) * D);
      auto& ko = s.make(B * S * hp.kv_count(r) * D);
      auto& vo = s.make(B * S * hp.kv_count(r) * D);
      seqpar::all_to_all_heads(
          plan, comm,
          seqpar::qkv_exchange_args<float>{
              .in = {in_view(q, n, H), in_view(k, bad ? n + 1 : n, H_kv), in_view(k, n, H_kv)},
              .out = {out_view(qo, S, hp.count(r)), out_view(ko, S, hp.kv_count(r)), out_view(vo, S, hp.kv_count(r))},
              .workspace = std::as_writable_bytes(std::span(ws))},
          {.stream = nullptr});
    });
    expect_all_or_nothing(P, "out.k: expected extents", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      const auto plan = plan_of(comm);
      const auto& hp = plan.heads();
      const int r = comm.rank();
      const std::int64_t n = part.size(r);
      std::vector<float> gq(B * S * hp.count(r) * D, 1.f), gk(B * S * hp.kv_count(r) * D, 1.f),
          ws(plan.workspace_bytes() / 4 + 4);
      auto& dq = s.make(B * n * H * D);
      auto& dk = s.make(B * n * H * D);
      auto& dv = s.make(B * n * H_kv * D);
      seqpar::all_to_all_heads_inverse(
          plan, comm,
          seqpar::qkv_exchange_args<float>{
              .in = {in_view(gq, S, hp.count(r)), in_view(gk, S, hp.kv_count(r)), in_view(gk, S, hp.kv_count(r))},
              .out = {out_view(dq, n, H), out_view(dk, n, bad ? H : H_kv), out_view(dv, n, H_kv)},
              .workspace = std::as_writable_bytes(std::span(ws))},
          {.stream = nullptr});
    });
    expect_all_or_nothing(P, "out: expected extents", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      const auto plan = plan_of(comm);
      const int r = comm.rank();
      const std::int64_t n = part.size(r), h = plan.heads().count(r);
      std::vector<float> x(B * n * H * D, 1.f), ws(plan.workspace_bytes() / 4 + 4);
      auto& y = s.make(B * S * (h + 1) * D);
      seqpar::all_to_all_heads(plan, comm,
                               seqpar::heads_exchange_args<float>{.in = in_view(x, n, H),
                                                                  .out = out_view(y, S, bad ? h + 1 : h),
                                                                  .workspace = std::as_writable_bytes(std::span(ws))},
                               {.stream = nullptr});
    });
    expect_all_or_nothing(P, "workspace: expected at least",
                          [&](in_process_communicator& comm, bool bad, sentinels& s) {
                            const auto plan = plan_of(comm);
                            const int r = comm.rank();
                            const std::int64_t n = part.size(r), h = plan.heads().count(r);
                            std::vector<float> x(B * S * h * D, 1.f), ws(plan.workspace_bytes() / 4 + 4);
                            auto& y = s.make(B * n * H * D);
                            auto bytes = std::as_writable_bytes(std::span(ws));
                            seqpar::all_to_all_heads_inverse(
                                plan, comm,
                                seqpar::heads_exchange_args<float>{.in = in_view(x, S, h),
                                                                   .out = out_view(y, n, H),
                                                                   .workspace = bad ? bytes.first(16) : bytes},
                                {.stream = nullptr});
                          });
  }
}

TEST_CASE("all or nothing: linear_attention_ring forward and backward, both strategies") {
  const std::int64_t E = 3;
  const std::vector<float> decay{0.9f, 1.0f};
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    for (int P : {2, 3}) {
      const auto part = seqpar::make_seq_partition(tokens(P), P);
      const seqpar::attention_shape shape{.batch = B, .heads = 2, .head_dim = D, .value_dim = E};
      expect_all_or_nothing(P, "o: expected extents", [&](in_process_communicator& comm, bool bad, sentinels& s) {
        seqpar::linear_attention_ring ring(comm.rank(), part, shape, strategy);
        const std::int64_t n = part.size(comm.rank());
        std::vector<float> q(B * n * 2 * D, 1.f), v(B * n * 2 * E, 1.f), ws(ring.workspace_bytes() / 4 + 4);
        auto& o = s.make(B * n * 2 * E);
        auto& state = s.make(ring.state_elements());
        ring.forward(seqpar::linear_reference{}, comm,
                     seqpar::lasp_ring_forward_args<float>{.q = in_view(q, n, 2), .k = in_view(q, n, 2),
                                                           .v = in_view(v, n, 2, E), .decay = decay,
                                                           .o = out_view(o, bad ? n - 1 : n, 2, E),
                                                           .saved = seqpar::make_state(state.data(), B, 2, D, E),
                                                           .workspace = std::as_writable_bytes(std::span(ws))},
                     {.stream = nullptr});
      });
      expect_all_or_nothing(P, "dk: expected extents", [&](in_process_communicator& comm, bool bad, sentinels& s) {
        seqpar::linear_attention_ring ring(comm.rank(), part, shape, strategy);
        const std::int64_t n = part.size(comm.rank());
        std::vector<float> q(B * n * 2 * D, 1.f), v(B * n * 2 * E, 1.f), state(ring.state_elements(), 0.f),
            ws(ring.workspace_bytes() / 4 + 4);
        auto& dq = s.make(B * n * 2 * D);
        auto& dk = s.make(B * n * 2 * D);
        auto& dv = s.make(B * n * 2 * E);
        ring.backward(seqpar::linear_reference{}, comm,
                      seqpar::lasp_ring_backward_args<float>{.q = in_view(q, n, 2), .k = in_view(q, n, 2),
                                                             .v = in_view(v, n, 2, E), .dout = in_view(v, n, 2, E),
                                                             .decay = decay,
                                                             .saved = seqpar::make_state(state.data(), B, 2, D, E),
                                                             .dq = out_view(dq, n, 2), .dk = out_view(dk, n, bad ? 1 : 2),
                                                             .dv = out_view(dv, n, 2, E),
                                                             .workspace = std::as_writable_bytes(std::span(ws))},
                      {.stream = nullptr});
      });
    }
}

namespace {
// A Ulysses layer of the cases' shapes on `comm`.
auto ulysses_layer(in_process_communicator& comm, const seqpar::seq_partition& part) {
  return seqpar::ulysses_attention(seqpar::reference_attention{}, comm, part,
                                   {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>,
                                   {.causal = true});
}
}  // namespace

TEST_CASE("all or nothing: ulysses_attention forward, backward and construction") {
  for (int P : {2, 3, 4}) {
    const auto part = seqpar::make_seq_partition(tokens(P), P);
    // The culprit's o has the wrong extents, or (shared) lies over its q.
    for (bool shared : {false, true})
      expect_all_or_nothing(P, shared ? "o shares memory with q" : "o: expected extents",
                            [&](in_process_communicator& comm, bool bad, sentinels& s) {
                              auto layer = ulysses_layer(comm, part);
                              const std::int64_t n = part.size(comm.rank());
                              std::vector<float> q(B * n * H * D, 1.f), kv(B * n * H_kv * D, 1.f);
                              auto& o = s.make(B * n * H * D);
                              (void)layer.forward({.q = bad && shared ? in_view(o, n, H) : in_view(q, n, H),
                                                   .k = in_view(kv, n, H_kv),
                                                   .v = in_view(kv, n, H_kv),
                                                   .o = out_view(o, bad && !shared ? n - 1 : n, H)},
                                                  {.stream = nullptr});
                            });
    for (const char* which : {"dq", "dk", "dout"}) {
      const std::string name = which;
      expect_all_or_nothing(P, name + ": expected extents", [&](in_process_communicator& comm, bool bad, sentinels& s) {
        auto layer = ulysses_layer(comm, part);
        const std::int64_t n = part.size(comm.rank());
        std::vector<float> q(B * n * H * D, 1.f), kv(B * n * H_kv * D, 1.f), o(q.size());
        const auto saved = layer.forward(
            {.q = in_view(q, n, H), .k = in_view(kv, n, H_kv), .v = in_view(kv, n, H_kv), .o = out_view(o, n, H)},
            {.stream = nullptr});
        auto& dq = s.make(B * n * H * D);
        auto& dk = s.make(B * n * H * D);
        auto& dv = s.make(B * n * H_kv * D);
        layer.backward(saved,
                       {.dout = in_view(q, bad && name == "dout" ? n + 1 : n, H),
                        .dq = out_view(dq, n, bad && name == "dq" ? H - 1 : H),
                        .dk = out_view(dk, n, bad && name == "dk" ? H_kv - 1 : H_kv),
                        .dv = out_view(dv, n, H_kv)},
                       {.stream = nullptr});
      });
    }
    expect_all_or_nothing(P, "saved: an empty context", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      auto layer = ulysses_layer(comm, part);
      const std::int64_t n = part.size(comm.rank());
      std::vector<float> q(B * n * H * D, 1.f), kv(B * n * H_kv * D, 1.f), o(q.size());
      auto saved = layer.forward(
          {.q = in_view(q, n, H), .k = in_view(kv, n, H_kv), .v = in_view(kv, n, H_kv), .o = out_view(o, n, H)},
          {.stream = nullptr});
      if (bad) saved = {};
      auto& dq = s.make(B * n * H * D);
      auto& dk = s.make(B * n * H_kv * D);
      auto& dv = s.make(B * n * H_kv * D);
      layer.backward(saved,
                     {.dout = in_view(q, n, H), .dq = out_view(dq, n, H), .dk = out_view(dk, n, H_kv),
                      .dv = out_view(dv, n, H_kv)},
                     {.stream = nullptr});
    });
    expect_all_or_nothing(
        P, "shape.kv_heads: expected a divisor of heads = 4", [&](in_process_communicator& comm, bool bad, sentinels&) {
          seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part,
                                          {.batch = B, .heads = H, .kv_heads = bad ? 3 : H_kv, .head_dim = D},
                                          seqpar::elements<float>);
        });
  }
}

TEST_CASE("ulysses_attention: a rank built with other shapes fails at construction on every rank") {
  const int P = 3;
  const auto part = seqpar::make_seq_partition(tokens(P), P);
  std::vector<std::string> what(P);
  std::vector<std::optional<errc>> code(P);
  seqpar::run_in_process(P, memory_space::host, [&](in_process_communicator& comm) {
    try {
      seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part,
                                      {.batch = B, .heads = H, .kv_heads = comm.rank() == 2 ? H : H_kv, .head_dim = D},
                                      seqpar::elements<float>);
    } catch (const seqpar::error& e) {
      code[comm.rank()] = e.code(), what[comm.rank()] = e.what();
    }
  });
  CHECK(code[2] == errc::invalid_argument);
  CHECK(what[2].find("ulysses_attention: this rank's shape {batch = 1, heads = 4, kv_heads = 4, head_dim = 4") !=
        std::string::npos);
  for (int r : {0, 1}) {
    CHECK(code[r] == errc::peer_failed);
    CHECK(what[r].find("rank(s) 2 were built with other shapes than rank 0") != std::string::npos);
  }
}

TEST_CASE("all or nothing: lasp_attention forward, backward and construction") {
  const std::int64_t E = 3;
  const std::vector<float> decay{0.9f, 0.5f};
  const seqpar::attention_shape shape{.batch = B, .heads = 2, .head_dim = D, .value_dim = E};
  for (auto strategy : {seqpar::lasp_strategy::chain, seqpar::lasp_strategy::all_gather})
    for (int P : {2, 3}) {
      const auto part = seqpar::make_seq_partition(tokens(P), P);
      // The culprit's o has the wrong extents, or (shared) lies over its v.
      for (bool shared : {false, true})
        expect_all_or_nothing(P, shared ? "o shares memory with v" : "o: expected extents",
                              [&](in_process_communicator& comm, bool bad, sentinels& s) {
                                seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, shape,
                                                             seqpar::elements<float>, decay, strategy);
                                const std::int64_t n = part.size(comm.rank());
                                std::vector<float> q(B * n * 2 * D, 1.f), v(B * n * 2 * E, 1.f);
                                auto& o = s.make(B * n * 2 * E);
                                (void)layer.forward(
                                    {.q = in_view(q, n, 2),
                                     .k = in_view(q, n, 2),
                                     .v = bad && shared ? in_view(o, n, 2, E) : in_view(v, n, 2, E),
                                     .o = out_view(o, bad && !shared ? n - 1 : n, 2, E)},
                                    {.stream = nullptr});
                              });
      // The culprit's dk has the wrong extents, or (shared) lies over its dq.
      for (bool shared : {false, true})
        expect_all_or_nothing(P, shared ? "dq and dk share memory" : "dk: expected extents",
                              [&](in_process_communicator& comm, bool bad, sentinels& s) {
                                seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, shape,
                                                             seqpar::elements<float>, decay, strategy);
                                const std::int64_t n = part.size(comm.rank());
                                std::vector<float> q(B * n * 2 * D, 1.f), v(B * n * 2 * E, 1.f), o(v.size());
                                const auto saved = layer.forward({.q = in_view(q, n, 2),
                                                                  .k = in_view(q, n, 2),
                                                                  .v = in_view(v, n, 2, E),
                                                                  .o = out_view(o, n, 2, E)},
                                                                 {.stream = nullptr});
                                auto& dq = s.make(B * n * 2 * D);
                                auto& dk = s.make(B * n * 2 * D);
                                auto& dv = s.make(B * n * 2 * E);
                                layer.backward(saved,
                                               {.dout = in_view(v, n, 2, E),
                                                .dq = out_view(dq, n, 2),
                                                .dk = out_view(bad && shared ? dq : dk, n, bad && !shared ? 1 : 2),
                                                .dv = out_view(dv, n, 2, E)},
                                               {.stream = nullptr});
                              });
      expect_all_or_nothing(P, "decay[1]: expected lambda in (0, 1], got 1.5",
                            [&](in_process_communicator& comm, bool bad, sentinels&) {
                              seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, shape,
                                                           seqpar::elements<float>,
                                                           bad ? std::vector<float>{0.9f, 1.5f} : decay, strategy);
                            });
    }
}

TEST_CASE("all or nothing: a LASP gradient that shares memory with an input its forward saved") {
  const std::int64_t E = 3;
  const std::vector<float> decay{0.9f, 0.5f};
  const seqpar::attention_shape shape{.batch = B, .heads = 2, .head_dim = D, .value_dim = E};
  for (int P : {2, 3}) {
    const auto part = seqpar::make_seq_partition(tokens(P), P);
    expect_all_or_nothing(P, "dk shares memory with k", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      seqpar::lasp_attention layer(seqpar::linear_reference{}, comm, part, shape, seqpar::elements<float>, decay);
      const std::int64_t n = part.size(comm.rank());
      auto& dk = s.make(B * n * 2 * D);  // on the culprit also its forward's k
      std::vector<float> q(B * n * 2 * D, 1.f), k(q), v(B * n * 2 * E, 1.f), o(v.size());
      const auto saved = layer.forward({.q = in_view(q, n, 2),
                                        .k = bad ? in_view(dk, n, 2) : in_view(k, n, 2),
                                        .v = in_view(v, n, 2, E),
                                        .o = out_view(o, n, 2, E)},
                                       {.stream = nullptr});
      auto& dq = s.make(B * n * 2 * D);
      auto& dv = s.make(B * n * 2 * E);
      layer.backward(saved,
                     {.dout = in_view(v, n, 2, E),
                      .dq = out_view(dq, n, 2),
                      .dk = out_view(dk, n, 2),
                      .dv = out_view(dv, n, 2, E)},
                     {.stream = nullptr});
    });
  }
}

TEST_CASE("all or nothing: a ring gradient that shares memory with dout") {
  for (int P : {2, 3}) {
    const auto part = seqpar::make_seq_partition(tokens(P), P);
    const seqpar::attention_shape shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
    expect_all_or_nothing(P, "dv shares memory with dout", [&](in_process_communicator& comm, bool bad, sentinels& s) {
      seqpar::ring_attention layer(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<float>,
                                   {.causal = true});
      const std::int64_t n = part.size(comm.rank());
      std::vector<float> q(B * n * H * D, 1.f), kv(B * n * H_kv * D, 1.f), o(q.size());
      const auto saved = layer.forward(
          {.q = in_view(q, n, H), .k = in_view(kv, n, H_kv), .v = in_view(kv, n, H_kv), .o = out_view(o, n, H)},
          {.stream = nullptr});
      auto& dq = s.make(B * n * H * D);
      auto& dk = s.make(B * n * H_kv * D);
      auto& dv = s.make(B * n * H * D);  // on the culprit dO too: H heads, of which dv's view takes H_kv
      std::vector<float> dout(q.size(), 1.f);
      layer.backward(saved,
                     {.dout = bad ? in_view(dv, n, H) : in_view(dout, n, H),
                      .dq = out_view(dq, n, H),
                      .dk = out_view(dk, n, H_kv),
                      .dv = out_view(dv, n, H_kv)},
                     {.stream = nullptr});
    });
  }
}

TEST_CASE("ulysses_attention backward into head slices of one fused dQKV buffer equals separate buffers") {
  constexpr int P = 2;
  const auto part = seqpar::make_seq_partition(tokens(P), P);
  const seqpar::attention_shape shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](in_process_communicator& comm) {
    seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part, shape, seqpar::elements<float>,
                                    {.causal = true});
    const std::int64_t n = part.size(comm.rank());
    const auto q = seqpar_test::uniform_floats(B * n * H * D, 11 + comm.rank()),
               kv = seqpar_test::uniform_floats(B * n * H_kv * D, 21 + comm.rank()),
               dout = seqpar_test::uniform_floats(B * n * H * D, 31 + comm.rank());
    std::vector<float> o(q.size());
    const auto saved = layer.forward(
        {.q = in_view(q, n, H), .k = in_view(kv, n, H_kv), .v = in_view(kv, n, H_kv), .o = out_view(o, n, H)},
        {.stream = nullptr});
    std::vector<float> dq(q.size()), dk(kv.size()), dv(kv.size());
    layer.backward(saved,
                   {.dout = in_view(dout, n, H),
                    .dq = out_view(dq, n, H),
                    .dk = out_view(dk, n, H_kv),
                    .dv = out_view(dv, n, H_kv)},
                   {.stream = nullptr});
    std::vector<float> fused(B * n * (H + 2 * H_kv) * D, -7.f);
    const auto all = seqpar::make_bshd(fused.data(), B, n, H + 2 * H_kv, D);
    layer.backward(saved,
                   {.dout = in_view(dout, n, H),
                    .dq = seqpar::detail::slice(all, seqpar::axis::heads, 0, H),
                    .dk = seqpar::detail::slice(all, seqpar::axis::heads, H, H_kv),
                    .dv = seqpar::detail::slice(all, seqpar::axis::heads, H + H_kv, H_kv)},
                   {.stream = nullptr});
    for (std::int64_t s = 0; s < n; ++s)
      for (int h = 0; h < H + 2 * H_kv; ++h)
        for (std::int64_t d = 0; d < D; ++d) {
          const float want = h < H          ? dq[(s * H + h) * D + d]
                             : h < H + H_kv ? dk[(s * H_kv + h - H) * D + d]
                                            : dv[(s * H_kv + h - H - H_kv) * D + d];
          REQUIRE(all(0, s, h, d) == want);
        }
  });
}

TEST_CASE("all_gather_value and counting: the control channel carries no payload and is not recorded") {
  seqpar::run_in_process(3, memory_space::host, [&](in_process_communicator& inner) {
    seqpar::counting_communicator comm(inner);
    const auto all = seqpar::all_gather_value(comm, 10 * comm.rank() + 1, nullptr);
    CHECK(all == std::vector<std::int64_t>{1, 11, 21});
    CHECK(comm.bytes_sent() == 0);
    CHECK(comm.records().empty());
    CHECK(comm.control_calls() == 1);
  });
}
