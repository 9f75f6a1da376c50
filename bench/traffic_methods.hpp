// The exchanges the communication sweeps compare, written once for any communicator and memory:
// Ulysses forward (Q, K, V) and inverse (O), the LASP chain and LASP-2 all-gather (state traffic
// only: a policy that computes nothing), the ring_attention layer and the 2-D layer with
// u = 2, 4, 8 (their forward with a block policy that computes nothing: the exchanges and the
// merges), the Ulysses layer in 1, 2 and 4 head groups, and Megatron-style sequence parallelism
// (two all-gathers and two reduce-scatters of [S, hidden]), a baseline for comparison only.
#pragma once

#include "lockstep.hpp"

#include <seqpar/comm/counting.hpp>
#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace seqpar_bench {

using bf16 = __nv_bfloat16;

//! A linear-attention policy that computes nothing: the ring's traffic alone (host or device).
struct no_compute {
  using policy_concept = seqpar::linear_attention_policy_tag;
  seqpar::memory_space where = seqpar::memory_space::host;
  seqpar::memory_space memory() const { return where; }
  bool supports(seqpar::dtype, std::int64_t, std::int64_t) const { return true; }
  template <class... A> void forward_intra(A&&...) const {}
  template <class... A> void state_contribution(A&&...) const {}
  template <class... A> void forward_inter(A&&...) const {}
  template <class... A> void state_update(A&&...) const {}
  template <class... A> void backward_intra(A&&...) const {}
  template <class... A> void backward_state_contribution(A&&...) const {}
  template <class... A> void backward_inter(A&&...) const {}
};
static_assert(seqpar::linear_attention_policy<no_compute>);

//! A block-attention policy that computes nothing: the ring's exchanges and merges alone.
struct no_block_compute {
  using policy_concept = seqpar::attention_policy_tag;
  seqpar::memory_space where = seqpar::memory_space::host;
  seqpar::memory_space memory() const { return where; }
  bool supports(seqpar::dtype, std::int64_t) const { return true; }
  bool supports_causal() const { return true; }
  template <class... A> void forward(A&&...) const {}
  template <class... A> void backward(A&&...) const {}
  template <class... A> void block_forward(A&&...) const {}
  template <class... A> void block_backward(A&&...) const {}
};
static_assert(seqpar::block_attention_policy<no_block_compute>);

//! One point of a sweep: S tokens in total over P ranks, H heads of dimension D (B = 1).
struct shape {
  std::int64_t S, H, D;
  int P;
  //! Same S, H, D and P.
  bool operator==(const shape&) const = default;
};

//! One rank's iteration.
using step_fn = std::function<void()>;

//! What a rank sent so far: all its bytes, and the most it sent to one peer of a group.
struct traffic {
  std::size_t bytes = 0;     //!< every byte the rank sent
  std::size_t per_peer = 0;  //!< the most it sent over one link
};

//! The traffic a counting communicator saw.
template <class Counted>
traffic traffic_of(const Counted& comm) {
  traffic t{comm.bytes_sent(), 0};
  for (int j = 0; j < comm.size(); ++j) t.per_peer = std::max(t.per_peer, comm.bytes_sent_to(j));
  return t;
}

//! One rank set up for a sweep: its iteration, and how to read what it sent.
struct rank_run {
  step_fn step;                     //!< one iteration
  std::function<traffic()> sent;    //!< what the rank sent so far
};

//! A rank_run of a step whose bytes all cross `comm`.
template <class Comm>
rank_run on_comm(Comm& comm, step_fn step) {
  return {std::move(step), [&comm] { return traffic_of(comm); }};
}

//! n elements of T in `where`, alive as long as any copy of the returned pointer.
template <class T>
std::shared_ptr<T> buffer(seqpar::memory_space where, std::size_t n) {
  auto bytes = std::make_shared<seqpar::owned_bytes<>>(std::max<std::size_t>(n, 1) * sizeof(T), where);
  return std::shared_ptr<T>(bytes, reinterpret_cast<T*>(bytes->span().data()));
}

template <class Comm>
rank_run ulysses_forward(Comm& comm, const shape& s) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto plan = std::make_shared<seqpar::all_to_all_heads_plan>(
      seqpar::make_all_to_all_heads_plan(r, part,
                                         {.batch = 1, .heads = int(s.H), .kv_heads = int(s.H), .head_dim = s.D},
                                         seqpar::dtype::bfloat16));
  const std::int64_t n = part.size(r), h = plan->heads().count(r);
  auto in = buffer<bf16>(comm.memory(), 3 * n * s.H * s.D), out = buffer<bf16>(comm.memory(), 3 * s.S * h * s.D);
  auto ws = buffer<std::byte>(comm.memory(), plan->workspace_bytes());
  return on_comm(comm, [&comm, plan, in, out, ws, n, h, s] {
    auto i = [&](int t) { return seqpar::make_bshd<const bf16>(in.get() + t * n * s.H * s.D, 1, n, s.H, s.D); };
    auto o = [&](int t) { return seqpar::make_bshd(out.get() + t * s.S * h * s.D, 1, s.S, h, s.D); };
    seqpar::all_to_all_heads(
        *plan, comm,
        seqpar::qkv_exchange_args<bf16>{.in = {i(0), i(1), i(2)},
                                        .out = {o(0), o(1), o(2)},
                                        .workspace = std::span<std::byte>(ws.get(), plan->workspace_bytes())},
        {.stream = nullptr});
  });
}

template <class Comm>
rank_run ulysses_inverse(Comm& comm, const shape& s) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto plan = std::make_shared<seqpar::all_to_all_heads_plan>(
      seqpar::make_all_to_all_heads_plan(r, part,
                                         {.batch = 1, .heads = int(s.H), .kv_heads = int(s.H), .head_dim = s.D},
                                         seqpar::dtype::bfloat16));
  const std::int64_t n = part.size(r), h = plan->heads().count(r);
  auto heads = buffer<bf16>(comm.memory(), s.S * h * s.D), seq = buffer<bf16>(comm.memory(), n * s.H * s.D);
  auto ws = buffer<std::byte>(comm.memory(), plan->workspace_bytes());
  return on_comm(comm, [&comm, plan, heads, seq, ws, n, h, s] {
    seqpar::all_to_all_heads_inverse(
        *plan, comm,
        seqpar::heads_exchange_args<bf16>{.in = seqpar::make_bshd<const bf16>(heads.get(), 1, s.S, h, s.D),
                                          .out = seqpar::make_bshd(seq.get(), 1, n, s.H, s.D),
                                          .workspace = std::span<std::byte>(ws.get(), plan->workspace_bytes())},
        {.stream = nullptr});
  });
}

// LASP with D = E = head dim: the views only give shapes; the policy computes nothing.
template <class Comm>
rank_run lasp(Comm& comm, const shape& s, seqpar::lasp_strategy strategy) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto ring = std::make_shared<seqpar::linear_attention_ring>(
      r, part, seqpar::attention_shape{.batch = 1, .heads = int(s.H), .head_dim = s.D}, strategy);
  const std::int64_t n = part.size(r);
  auto x = buffer<bf16>(comm.memory(), n * s.H * s.D), o = buffer<bf16>(comm.memory(), n * s.H * s.D);
  auto st = buffer<float>(comm.memory(), ring->state_elements());
  auto ws = buffer<std::byte>(comm.memory(), ring->workspace_bytes());
  return on_comm(comm, [&comm, ring, x, o, st, ws, n, s] {
    const auto v = seqpar::make_bshd<const bf16>(x.get(), 1, n, s.H, s.D);
    const std::vector<float> decay(s.H, 0.99f);
    const seqpar::lasp_ring_forward_args<bf16> args{.q = v,
                                                    .k = v,
                                                    .v = v,
                                                    .decay = decay,
                                                    .o = seqpar::make_bshd(o.get(), 1, n, s.H, s.D),
                                                    .saved = seqpar::make_state(st.get(), 1, s.H, s.D, s.D),
                                                    .workspace = std::span<std::byte>(ws.get(), ring->workspace_bytes())};
    ring->forward(no_compute{comm.memory()}, comm, args, {.stream = nullptr});
  });
}
template <class Comm>
rank_run lasp_chain(Comm& comm, const shape& s) { return lasp(comm, s, seqpar::lasp_strategy::chain); }
template <class Comm>
rank_run lasp2_all_gather(Comm& comm, const shape& s) { return lasp(comm, s, seqpar::lasp_strategy::all_gather); }

// Megatron-style sequence parallelism: all-gather [S_r, hidden] -> [S, hidden] before attention
// and the MLP, reduce-scatter [S, hidden] -> [S_r, hidden] after each (comparison only).
template <class Comm>
rank_run megatron_sp(Comm& comm, const shape& s) {
  const std::int64_t hidden = s.H * s.D, n = s.S / s.P;  // even split: the collectives need equal blocks
  auto shard = buffer<bf16>(comm.memory(), n * hidden), full = buffer<bf16>(comm.memory(), s.S * hidden);
  return on_comm(comm, [&comm, shard, full, n, hidden, s] {
    const std::span<bf16> part(shard.get(), n * hidden), all(full.get(), s.S * hidden);
    for (int i = 0; i < 2; ++i) {
      comm.template all_gather<bf16>(part, all, nullptr);
      comm.template reduce_scatter<bf16>(all, part, nullptr);
    }
  });
}

// One rank of an attention layer's forward on its n tokens (q = k = v), reading its traffic with `sent`.
template <class Layer>
rank_run layer_forward(std::shared_ptr<Layer> layer, seqpar::memory_space where, std::int64_t n, const shape& s,
                       std::function<traffic()> sent) {
  auto x = buffer<bf16>(where, n * s.H * s.D), o = buffer<bf16>(where, n * s.H * s.D);
  return {[layer, x, o, n, s] {
            const auto in = seqpar::make_bshd<const bf16>(x.get(), 1, n, s.H, s.D);
            (void)layer->forward({.q = in, .k = in, .v = in, .o = seqpar::make_bshd(o.get(), 1, n, s.H, s.D)},
                                 {.stream = nullptr, .checks = seqpar::call_checks::local});
          },
          std::move(sent)};
}

// The shape of the attention layers in the sweep: B = 1, H heads (no GQA) of dimension D.
inline seqpar::attention_shape layer_shape(const shape& s) {
  return {.batch = 1, .heads = int(s.H), .head_dim = s.D};
}

// The Ulysses layer's forward (Q/K/V exchange, O inverse) in `groups` head groups: the same bytes
// as one group in more, smaller exchanges (on a device they overlap the policy's compute; here the
// policy computes nothing, so the figures give the cost of splitting).
template <int groups, class Comm>
rank_run ulysses_layer(Comm& comm, const shape& s) {
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto layer = std::make_shared<seqpar::ulysses_attention<no_block_compute, Comm, bf16>>(
      no_block_compute{comm.memory()}, comm, part, layer_shape(s), seqpar::elements<bf16>, seqpar::attention_options{},
      seqpar::ulysses_options{.head_groups = groups});
  return layer_forward(layer, comm.memory(), part.size(comm.rank()), s, [&comm] { return traffic_of(comm); });
}

// The ring_attention layer's forward over zigzag shards, causal: each rank's K and V travel P-1 hops.
template <class Comm>
rank_run ring_attention(Comm& comm, const shape& s) {
  const auto part = seqpar::make_seq_partition(s.S, s.P, seqpar::shard_strategy::zigzag);
  auto layer = std::make_shared<seqpar::ring_attention<no_block_compute, Comm, bf16>>(
      no_block_compute{comm.memory()}, comm, part, layer_shape(s), seqpar::elements<bf16>,
      seqpar::attention_options{.causal = true});
  return layer_forward(layer, comm.memory(), part.size(comm.rank()), s, [&comm] { return traffic_of(comm); });
}

// The 2-D layer's forward with Ulysses groups of u ranks and ring groups of P / u, causal: the
// Q/K/V and O exchanges within the Ulysses group, K/V of H / u heads over r - 1 hops of the ring.
template <int u, class Comm>
rank_run ulysses_ring(Comm& comm, const shape& s) {
  const auto layout = seqpar::make_token_layout_2d(s.S, {.ulysses = u, .ring = s.P / u});
  auto layer = std::make_shared<seqpar::ulysses_ring_attention<no_block_compute, Comm, bf16>>(
      no_block_compute{comm.memory()}, comm, layout, layer_shape(s), seqpar::elements<bf16>,
      seqpar::attention_options{.causal = true});
  return layer_forward(layer, comm.memory(), layout.size(comm.rank()), s, [layer] {
    // The two groups are distinct links: bytes add, the busiest link is the larger.
    const traffic a = traffic_of(layer->ulysses_group()), b = traffic_of(layer->ring_group());
    return traffic{a.bytes + b.bytes, std::max(a.per_peer, b.per_peer)};
  });
}

// Bytes one rank sends in the 2-D forward: (u-1)/u of Q, K, V and O (n H D each) in its Ulysses
// group, and the K and V of its H / u heads over r - 1 hops (n H D each per hop, n = S / P).
template <int u>
std::size_t ulysses_ring_bytes(const shape& s) {
  const std::size_t n = s.S / s.P, r = s.P / u;
  return (4 * n * s.H * s.D * (u - 1) / u + 2 * (r - 1) * n * s.H * s.D) * 2;
}

// Bytes of a rank's buffers one Ulysses layer forward moves: Q, K, V and O of its n = S / P tokens.
inline std::size_t ulysses_layer_bytes(const shape& s) { return std::size_t(4 * (s.S / s.P) * s.H * s.D * 2); }

//! One family of the sweep: how to set a rank up, and what nccl-tests calls its size.
template <class Comm>
struct method {
  const char* name;
  rank_run (*setup)(Comm&, const shape&);
  bool all_to_all_like;                    //!< busbw = algbw (P-1)/P, else algbw
  std::size_t (*size_bytes)(const shape&);  //!< bytes of the rank's buffer one iteration moves
  std::size_t element_bytes;
  const char* type;
  int ulysses = 0;  //!< the 2-D layer's u (0: not a 2-D layer); it runs where u divides P and P / u >= 2
  int head_groups = 1;  //!< the Ulysses layer's head groups; it runs where every rank holds that many heads

  //! Whether the family runs at shape s.
  bool runs_at(const shape& s) const {
    return (ulysses == 0 || (s.P % ulysses == 0 && s.P / ulysses >= 2)) && s.H / s.P >= head_groups;
  }
};

//! The families, for communicator Comm.
template <class Comm>
std::vector<method<Comm>> methods() {
  return {
      {"ulysses_forward", &ulysses_forward<Comm>, true, [](const shape& s) { return std::size_t(3 * (s.S / s.P) * s.H * s.D * 2); }, 2, "bf16"},
      {"ulysses_inverse", &ulysses_inverse<Comm>, true, [](const shape& s) { return std::size_t((s.S / s.P) * s.H * s.D * 2); }, 2, "bf16"},
      {"lasp_chain", &lasp_chain<Comm>, false, [](const shape& s) { return std::size_t(s.H * s.D * s.D * 4); }, 4, "fp32"},
      {"lasp2_all_gather", &lasp2_all_gather<Comm>, true, [](const shape& s) { return std::size_t(s.P * s.H * s.D * s.D * 4); }, 4, "fp32"},
      {"megatron_sp", &megatron_sp<Comm>, true, [](const shape& s) { return std::size_t(s.S * s.H * s.D * 2); }, 2, "bf16"},
      {"ring_attention", &ring_attention<Comm>, false, [](const shape& s) { return std::size_t(2 * (s.S / s.P) * s.H * s.D * 2 * (s.P - 1)); }, 2, "bf16"},
      {"ulysses_ring_u2", &ulysses_ring<2, Comm>, false, &ulysses_ring_bytes<2>, 2, "bf16", 2},
      {"ulysses_ring_u4", &ulysses_ring<4, Comm>, false, &ulysses_ring_bytes<4>, 2, "bf16", 4},
      {"ulysses_ring_u8", &ulysses_ring<8, Comm>, false, &ulysses_ring_bytes<8>, 2, "bf16", 8},
      {"ulysses_layer_g1", &ulysses_layer<1, Comm>, true, &ulysses_layer_bytes, 2, "bf16", 0, 1},
      {"ulysses_layer_g2", &ulysses_layer<2, Comm>, true, &ulysses_layer_bytes, 2, "bf16", 0, 2},
      {"ulysses_layer_g4", &ulysses_layer<4, Comm>, true, &ulysses_layer_bytes, 2, "bf16", 0, 4},
  };
}

//! The sweep: at H = 8, D = 64, S from 1K to S_max (x4 steps) at P = P_max and P = 2, 4, 8, 16 at
//! S / P = 8K; then H = 8, 32 times D = 64, 128 at P = P_max and S / P = 8K. Each shape appears once.
inline std::vector<shape> sweep_shapes(int P_max = 8, std::int64_t S_max = std::int64_t{1} << 18) {
  std::vector<shape> out;
  for (std::int64_t S = 1 << 10; S <= S_max; S <<= 2) out.push_back({S, 8, 64, P_max});
  for (int P : {2, 4, 8, 16})
    if (const shape s{std::int64_t(P) << 13, 8, 64, P}; std::find(out.begin(), out.end(), s) == out.end())
      out.push_back(s);
  for (std::int64_t H : {8, 32})
    for (std::int64_t D : {64, 128})
      if (const shape s{std::int64_t(P_max) << 13, H, D, P_max}; std::find(out.begin(), out.end(), s) == out.end())
        out.push_back(s);
  return out;
}

//! Benchmark name of a family at a shape, e.g. BM_ulysses_forward/S:1024/P:8/H:8/D:64.
inline std::string bench_name(const char* family, const shape& s) {
  return std::string("BM_") + family + "/S:" + std::to_string(s.S) + "/P:" + std::to_string(s.P) + "/H:" +
         std::to_string(s.H) + "/D:" + std::to_string(s.D);
}

//! Reports the counters of one run; `sent` is what the counting decorators saw.
template <class Comm>
void report(benchmark::State& state, const method<Comm>& m, const shape& s, traffic sent) {
  state.counters["S"] = static_cast<double>(s.S);
  state.counters["bytes_per_rank"] = static_cast<double>(sent.bytes);
  state.counters["bytes_per_peer"] = static_cast<double>(sent.per_peer);
  report_bandwidth(state, m.size_bytes(s), m.element_bytes, m.type, m.all_to_all_like ? double(s.P - 1) / s.P : 1.0);
}

//! Registers every family at every shape over in-process ranks in `where` memory.
inline void register_in_process(seqpar::memory_space where, std::int64_t S_max) {
  using counted = seqpar::counting_communicator<seqpar::in_process_communicator>;
  for (const auto& m : methods<counted>())
    for (const shape& s : sweep_shapes(8, S_max)) {
      if (!m.runs_at(s)) continue;
      benchmark::RegisterBenchmark(bench_name(m.name, s).c_str(), [m, s, where](benchmark::State& state) {
        traffic sent;
        lockstep(state, s.P, [&](seqpar::in_process_communicator& inner) -> step_fn {
          auto comm = std::make_shared<counted>(inner);
          const rank_run run = m.setup(*comm, s);
          run.step();  // one untimed iteration: its traffic is what is reported
          if (comm->rank() == 0) sent = run.sent();
          return [comm, step = run.step] { step(); };
        }, where);
        report(state, m, s, sent);
      })->UseRealTime()->Unit(benchmark::kMillisecond);
    }
}

}  // namespace seqpar_bench
