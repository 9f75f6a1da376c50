// The exchanges the communication sweeps compare, written once for any communicator and memory:
// Ulysses forward (Q, K, V) and inverse (O), the LASP chain and LASP-2 all-gather (state traffic
// only: a policy that computes nothing), and two baselines built for comparison only:
// Megatron-style sequence parallelism (two all-gathers and two reduce-scatters of [S, hidden])
// and softmax ring attention (K and V chunks passed P-1 hops).
#pragma once

#include "lockstep.hpp"

#include <seqpar/comm/counting.hpp>
#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>

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

//! One point of a sweep: S tokens in total over P ranks, H heads of dimension D (B = 1).
struct shape {
  std::int64_t S, H, D;
  int P;
  //! Same S, H, D and P.
  bool operator==(const shape&) const = default;
};

//! One rank's iteration.
using step_fn = std::function<void()>;

//! n elements of T in `where`, alive as long as any copy of the returned pointer.
template <class T>
std::shared_ptr<T> buffer(seqpar::memory_space where, std::size_t n) {
  auto bytes = std::make_shared<seqpar::owned_bytes<>>(std::max<std::size_t>(n, 1) * sizeof(T), where);
  return std::shared_ptr<T>(bytes, reinterpret_cast<T*>(bytes->span().data()));
}

template <class Comm>
step_fn ulysses_forward(Comm& comm, const shape& s) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto plan = std::make_shared<seqpar::all_to_all_heads_plan>(
      seqpar::make_all_to_all_heads_plan(r, part,
                                         {.batch = 1, .heads = int(s.H), .kv_heads = int(s.H), .head_dim = s.D},
                                         seqpar::dtype::bfloat16));
  const std::int64_t n = part.size(r), h = plan->heads().count(r);
  auto in = buffer<bf16>(comm.memory(), 3 * n * s.H * s.D), out = buffer<bf16>(comm.memory(), 3 * s.S * h * s.D);
  auto ws = buffer<std::byte>(comm.memory(), plan->workspace_bytes());
  return [&comm, plan, in, out, ws, n, h, s] {
    auto i = [&](int t) { return seqpar::make_bshd<const bf16>(in.get() + t * n * s.H * s.D, 1, n, s.H, s.D); };
    auto o = [&](int t) { return seqpar::make_bshd(out.get() + t * s.S * h * s.D, 1, s.S, h, s.D); };
    seqpar::all_to_all_heads(*plan, comm, seqpar::qkv_views{i(0), i(1), i(2)}, seqpar::qkv_views{o(0), o(1), o(2)},
                             std::span<std::byte>(ws.get(), plan->workspace_bytes()));
  };
}

template <class Comm>
step_fn ulysses_inverse(Comm& comm, const shape& s) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto plan = std::make_shared<seqpar::all_to_all_heads_plan>(
      seqpar::make_all_to_all_heads_plan(r, part,
                                         {.batch = 1, .heads = int(s.H), .kv_heads = int(s.H), .head_dim = s.D},
                                         seqpar::dtype::bfloat16));
  const std::int64_t n = part.size(r), h = plan->heads().count(r);
  auto heads = buffer<bf16>(comm.memory(), s.S * h * s.D), seq = buffer<bf16>(comm.memory(), n * s.H * s.D);
  auto ws = buffer<std::byte>(comm.memory(), plan->workspace_bytes());
  return [&comm, plan, heads, seq, ws, n, h, s] {
    seqpar::all_to_all_heads_inverse(*plan, comm, seqpar::make_bshd<const bf16>(heads.get(), 1, s.S, h, s.D),
                                     seqpar::make_bshd(seq.get(), 1, n, s.H, s.D),
                                     std::span<std::byte>(ws.get(), plan->workspace_bytes()));
  };
}

// LASP with D = E = head dim: the views only give shapes; the policy computes nothing.
template <class Comm>
step_fn lasp(Comm& comm, const shape& s, seqpar::lasp_strategy strategy) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto ring = std::make_shared<seqpar::linear_attention_ring>(
      r, part, seqpar::attention_shape{.batch = 1, .heads = int(s.H), .head_dim = s.D}, strategy);
  const std::int64_t n = part.size(r);
  auto x = buffer<bf16>(comm.memory(), n * s.H * s.D);
  auto st = buffer<float>(comm.memory(), ring->state_elements());
  auto ws = buffer<std::byte>(comm.memory(), ring->workspace_bytes());
  return [&comm, ring, x, st, ws, n, s] {
    const auto v = seqpar::make_bshd<const bf16>(x.get(), 1, n, s.H, s.D);
    const std::vector<float> decay(s.H, 0.99f);
    ring->forward(no_compute{comm.memory()}, comm, v, v, v, decay, seqpar::make_bshd(x.get(), 1, n, s.H, s.D),
                  seqpar::make_state(st.get(), 1, s.H, s.D, s.D), std::span<std::byte>(ws.get(), ring->workspace_bytes()));
  };
}
template <class Comm>
step_fn lasp_chain(Comm& comm, const shape& s) { return lasp(comm, s, seqpar::lasp_strategy::chain); }
template <class Comm>
step_fn lasp2_all_gather(Comm& comm, const shape& s) { return lasp(comm, s, seqpar::lasp_strategy::all_gather); }

// Megatron-style sequence parallelism: all-gather [S_r, hidden] -> [S, hidden] before attention
// and the MLP, reduce-scatter [S, hidden] -> [S_r, hidden] after each (comparison only).
template <class Comm>
step_fn megatron_sp(Comm& comm, const shape& s) {
  const std::int64_t hidden = s.H * s.D, n = s.S / s.P;  // even split: the collectives need equal blocks
  auto shard = buffer<bf16>(comm.memory(), n * hidden), full = buffer<bf16>(comm.memory(), s.S * hidden);
  return [&comm, shard, full, n, hidden, s] {
    const std::span<bf16> part(shard.get(), n * hidden), all(full.get(), s.S * hidden);
    for (int i = 0; i < 2; ++i) {
      comm.template all_gather<bf16>(part, all);
      comm.template reduce_scatter<bf16>(all, part);
    }
  };
}

// Softmax ring attention: each rank's K and V chunk travels P-1 hops (comparison only).
template <class Comm>
step_fn ring_attention(Comm& comm, const shape& s) {
  const std::size_t chunk = 2 * (s.S / s.P) * s.H * s.D;  // K and V
  auto a = buffer<bf16>(comm.memory(), chunk), b = buffer<bf16>(comm.memory(), chunk);
  return [&comm, a, b, chunk, s] {
    const int r = comm.rank();
    bf16 *from = a.get(), *to = b.get();
    for (int hop = 0; hop + 1 < s.P; ++hop) {
      comm.template neighbor_exchange<bf16>(std::span<const bf16>(from, chunk), (r + 1) % s.P, std::span<bf16>(to, chunk),
                                            (r + s.P - 1) % s.P);
      std::swap(from, to);
    }
  };
}

//! One family of the sweep: how to set a rank up, and what nccl-tests calls its size.
template <class Comm>
struct method {
  const char* name;
  step_fn (*setup)(Comm&, const shape&);
  bool all_to_all_like;                    //!< busbw = algbw (P-1)/P, else algbw
  std::size_t (*size_bytes)(const shape&);  //!< bytes of the rank's buffer one iteration moves
  std::size_t element_bytes;
  const char* type;
};

//! The six families, for communicator Comm.
template <class Comm>
std::array<method<Comm>, 6> methods() {
  return {{
      {"ulysses_forward", &ulysses_forward<Comm>, true, [](const shape& s) { return std::size_t(3 * (s.S / s.P) * s.H * s.D * 2); }, 2, "bf16"},
      {"ulysses_inverse", &ulysses_inverse<Comm>, true, [](const shape& s) { return std::size_t((s.S / s.P) * s.H * s.D * 2); }, 2, "bf16"},
      {"lasp_chain", &lasp_chain<Comm>, false, [](const shape& s) { return std::size_t(s.H * s.D * s.D * 4); }, 4, "fp32"},
      {"lasp2_all_gather", &lasp2_all_gather<Comm>, true, [](const shape& s) { return std::size_t(s.P * s.H * s.D * s.D * 4); }, 4, "fp32"},
      {"megatron_sp", &megatron_sp<Comm>, true, [](const shape& s) { return std::size_t(s.S * s.H * s.D * 2); }, 2, "bf16"},
      {"ring_attention", &ring_attention<Comm>, false, [](const shape& s) { return std::size_t(2 * (s.S / s.P) * s.H * s.D * 2 * (s.P - 1)); }, 2, "bf16"},
  }};
}

//! The sweep: at H = 8, D = 64, S from 1K to S_max (x4 steps) at P = P_max and P = 2, 4 at S / P = 8K;
//! then H = 8, 32 times D = 64, 128 at P = P_max and S / P = 8K. Each shape appears once.
inline std::vector<shape> sweep_shapes(int P_max = 8, std::int64_t S_max = std::int64_t{1} << 18) {
  std::vector<shape> out;
  for (std::int64_t S = 1 << 10; S <= S_max; S <<= 2) out.push_back({S, 8, 64, P_max});
  for (int P : {2, 4})
    if (P < P_max) out.push_back({std::int64_t(P) << 13, 8, 64, P});
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

//! Reports the counters of one run; `sent` and `per_peer` are what the counting decorator saw.
template <class Comm>
void report(benchmark::State& state, const method<Comm>& m, const shape& s, std::size_t sent, std::size_t per_peer) {
  state.counters["S"] = static_cast<double>(s.S);
  state.counters["bytes_per_rank"] = static_cast<double>(sent);
  state.counters["bytes_per_peer"] = static_cast<double>(per_peer);
  report_bandwidth(state, m.size_bytes(s), m.element_bytes, m.type, m.all_to_all_like ? double(s.P - 1) / s.P : 1.0);
}

//! Registers every family at every shape over in-process ranks in `where` memory.
inline void register_in_process(seqpar::memory_space where, std::int64_t S_max) {
  using counted = seqpar::counting_communicator<seqpar::in_process_communicator>;
  for (const auto& m : methods<counted>())
    for (const shape& s : sweep_shapes(8, S_max))
      benchmark::RegisterBenchmark(bench_name(m.name, s).c_str(), [m, s, where](benchmark::State& state) {
        std::size_t sent = 0, per_peer = 0;
        lockstep(state, s.P, [&](seqpar::in_process_communicator& inner) -> step_fn {
          auto comm = std::make_shared<counted>(inner);
          step_fn step = m.setup(*comm, s);
          step();  // one untimed iteration: its traffic is what is reported
          if (comm->rank() == 0) {
            sent = comm->bytes_sent();
            for (int j = 0; j < s.P; ++j) per_peer = std::max(per_peer, comm->bytes_sent_to(j));
          }
          return [comm, step] { step(); };
        }, where);
        report(state, m, s, sent, per_peer);
      })->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace seqpar_bench
