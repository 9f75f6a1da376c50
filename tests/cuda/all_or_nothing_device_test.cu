// All or nothing on device memory: one bad rank at a time, the others throw peer_failed, and no
// rank's device outputs are touched: the Ulysses exchange, seq_shard over a group, and both layers
// with the device policies, over the in-process backend on one GPU.
#include <seqpar/group_shard.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/linear_cuda.cuh>
#include <seqpar/ulysses/ulysses_attention.hpp>
#include <seqpar_test/all_or_nothing.hpp>

using seqpar::memory_space;
using seqpar_test::buffer;
using seqpar_test::expect_all_or_nothing;
using seqpar_test::sentinels;

namespace {
constexpr std::int64_t B = 1, D = 16, E = 8;
constexpr int H = 4, H_kv = 2, P = 3;
constexpr std::int64_t S = 2 * P + 1;

seqpar::tensor_view<const float> in_view(buffer<float>& x, std::int64_t n, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd<const float>(x.data(), B, n, h, d);
}
seqpar::tensor_view<float> out_view(buffer<float>& x, std::int64_t n, std::int64_t h, std::int64_t d = D) {
  return seqpar::make_bshd(x.data(), B, n, h, d);
}
}  // namespace

TEST_CASE("all or nothing on the GPU: all_to_all_heads and seq_shard over a group") {
  const auto part = seqpar::make_seq_partition(S, P);
  const seqpar::attention_shape shape{.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D};
  expect_all_or_nothing(
      P, "v: expected extents",
      [&](seqpar::in_process_communicator& comm, bool bad, sentinels& s) {
        const auto plan = seqpar::make_all_to_all_heads_plan(comm.rank(), part, shape, seqpar::dtype::float32);
        const auto& hp = plan.heads();
        const int r = comm.rank();
        const std::int64_t n = part.size(r);
        auto& q = s.input(B * n * H * D, 1.f);
        auto& kv = s.input(B * (n + 1) * H_kv * D, 1.f);
        auto& ws = s.input(plan.workspace_bytes() / 4 + 4, 0.f);
        auto& qo = s.make(B * S * hp.count(r) * D);
        auto& ko = s.make(B * S * hp.kv_count(r) * D);
        auto& vo = s.make(B * S * hp.kv_count(r) * D);
        seqpar::all_to_all_heads(
            plan, comm,
            seqpar::qkv_exchange_args<float>{
                .in = {in_view(q, n, H), in_view(kv, n, H_kv), in_view(kv, bad ? n + 1 : n, H_kv)},
                .out = {out_view(qo, S, hp.count(r)), out_view(ko, S, hp.kv_count(r)), out_view(vo, S, hp.kv_count(r))},
                .workspace = std::as_writable_bytes(ws.span())},
            {.stream = nullptr});
      },
      memory_space::device);
  expect_all_or_nothing(
      P, "shard: expected seq extent",
      [&](seqpar::in_process_communicator& comm, bool bad, sentinels& s) {
        const std::int64_t n = part.size(comm.rank()) + (bad ? 1 : 0);
        auto& global = s.input(B * S * H * D, 0.5f);
        auto& shard = s.make(B * n * H * D);
        seqpar::seq_shard(
            comm, part, seqpar::seq_shard_args<float>{.global = in_view(global, S, H), .shard = out_view(shard, n, H)},
            {.stream = nullptr});
      },
      memory_space::device);
}

TEST_CASE("all or nothing on the GPU: ulysses_attention and lasp_attention backward") {
  const auto part = seqpar::make_seq_partition(S, P);
  expect_all_or_nothing(
      P, "dv: expected extents",
      [&](seqpar::in_process_communicator& comm, bool bad, sentinels& s) {
        seqpar::ulysses_attention layer(seqpar::reference_attention_cuda{}, comm, part,
                                        {.batch = B, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                        seqpar::elements<float>, {.causal = true});
        const std::int64_t n = part.size(comm.rank());
        auto& q = s.input(B * n * H * D, 0.5f);
        auto& kv = s.input(B * n * H_kv * D, 0.25f);
        auto& o = s.input(B * n * H * D, 0.f);
        const auto saved = layer.forward(
            {.q = in_view(q, n, H), .k = in_view(kv, n, H_kv), .v = in_view(kv, n, H_kv), .o = out_view(o, n, H)},
            {.stream = nullptr});
        auto& dq = s.make(B * n * H * D);
        auto& dk = s.make(B * n * H_kv * D);
        auto& dv = s.make(B * n * H * D);
        layer.backward(saved,
                       {.dout = in_view(q, n, H), .dq = out_view(dq, n, H), .dk = out_view(dk, n, H_kv),
                        .dv = out_view(dv, n, bad ? H : H_kv)},
                       {.stream = nullptr});
      },
      memory_space::device);
  expect_all_or_nothing(
      P, "dq: expected extents",
      [&](seqpar::in_process_communicator& comm, bool bad, sentinels& s) {
        seqpar::lasp_attention layer(seqpar::linear_cuda{}, comm, part,
                                     {.batch = B, .heads = 2, .head_dim = D, .value_dim = E},
                                     seqpar::elements<float>, {0.9f, 1.0f});
        const std::int64_t n = part.size(comm.rank());
        auto& q = s.input(B * n * 2 * D, 0.5f);
        auto& v = s.input(B * n * 2 * E, 0.25f);
        auto& o = s.input(B * n * 2 * E, 0.f);
        const auto saved = layer.forward(
            {.q = in_view(q, n, 2), .k = in_view(q, n, 2), .v = in_view(v, n, 2, E), .o = out_view(o, n, 2, E)},
            {.stream = nullptr});
        auto& dq = s.make(B * (n + 1) * 2 * D);
        auto& dk = s.make(B * n * 2 * D);
        auto& dv = s.make(B * n * 2 * E);
        layer.backward(saved,
                       {.dout = in_view(v, n, 2, E), .dq = out_view(dq, bad ? n + 1 : n, 2), .dk = out_view(dk, n, 2),
                        .dv = out_view(dv, n, 2, E)},
                       {.stream = nullptr});
      },
      memory_space::device);
}
