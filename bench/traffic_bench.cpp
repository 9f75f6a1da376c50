// Communication sweeps, one family per exchange, on the in-process host backend, reported like
// nccl-tests: size (bytes of the rank's buffer an iteration moves), count, type, time, algbw =
// size / time, busbw (all-to-all and all-gather: algbw (P-1)/P; send/recv chains: algbw), plus
// the bytes each rank sent and the most it sent over one link, measured by the counting decorator.
// Families: Ulysses forward (Q, K, V) and inverse (O), the LASP chain and LASP-2 all-gather (state
// traffic only: a policy that computes nothing), and two baselines built for comparison only:
// Megatron-style sequence parallelism (two all-gathers and two reduce-scatters of [S, hidden])
// and softmax ring attention (K and V chunks passed P-1 hops).
#include "lockstep.hpp"

#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>
#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace {
using bf16 = __nv_bfloat16;
using counted = seqpar::counting_communicator<seqpar::in_process_communicator>;

// A linear-attention policy that computes nothing: the ring's traffic alone.
struct no_compute {
  using policy_concept = seqpar::linear_attention_policy_tag;
  seqpar::memory_space memory() const { return seqpar::memory_space::host; }
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

struct shape {
  std::int64_t S, H, D;
  int P;
};

// What one rank does per iteration, after a one-time setup on that rank.
using step_fn = std::function<void()>;
using setup_fn = std::function<step_fn(counted&, const shape&)>;

// Each rank wraps its communicator in the counting decorator and runs one untimed iteration, whose
// traffic (rank 0's) is what we report; then the ranks follow the benchmark loop.
void drive(benchmark::State& state, const setup_fn& setup, double bus_factor, std::size_t size_bytes,
           std::size_t element_bytes, const char* type = "bf16") {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  std::size_t sent = 0, per_link = 0;
  seqpar_bench::lockstep(state, s.P, [&](seqpar::in_process_communicator& inner) -> step_fn {
    auto comm = std::make_shared<counted>(inner);
    step_fn step = setup(*comm, s);
    step();
    if (comm->rank() == 0) {
      sent = comm->bytes_sent();
      for (int j = 0; j < s.P; ++j) per_link = std::max(per_link, comm->bytes_sent_to(j));
    }
    return [comm, step] { step(); };
  });
  state.counters["S"] = static_cast<double>(s.S);
  state.counters["bytes_per_rank"] = static_cast<double>(sent);
  state.counters["bytes_per_link"] = static_cast<double>(per_link);
  seqpar_bench::report_bandwidth(state, size_bytes, element_bytes, type, bus_factor);
}

std::int64_t tokens(const shape& s, int r) { return seqpar::make_seq_partition(s.S, s.P).size(r); }

void BM_ulysses_forward(benchmark::State& state) {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  drive(state, [](counted& comm, const shape& s) -> step_fn {
    const int r = comm.rank();
    const auto part = seqpar::make_seq_partition(s.S, s.P);
    auto plan = std::make_shared<seqpar::all_to_all_heads_plan>(
        seqpar::make_all_to_all_heads_plan(r, part, int(s.H), int(s.H), 1, s.D, seqpar::dtype::bfloat16));
    const std::int64_t n = part.size(r), h = plan->heads().count(r);
    auto buf = std::make_shared<std::vector<bf16>>(3 * n * s.H * s.D + 3 * s.S * h * s.D);
    auto ws = std::make_shared<std::vector<std::byte>>(plan->workspace_bytes());
    return [&comm, plan, buf, ws, n, h, s] {
      bf16* p = buf->data();
      auto in = [&](int t) { return seqpar::make_bshd<const bf16>(p + t * n * s.H * s.D, 1, n, s.H, s.D); };
      auto out = [&](int t) { return seqpar::make_bshd(p + 3 * n * s.H * s.D + t * s.S * h * s.D, 1, s.S, h, s.D); };
      seqpar::all_to_all_heads(*plan, comm, seqpar::qkv_views{in(0), in(1), in(2)}, seqpar::qkv_views{out(0), out(1), out(2)},
                               *ws);
    };
  }, double(s.P - 1) / s.P, 3 * tokens(s, 0) * s.H * s.D * 2, 2);
}

void BM_ulysses_inverse(benchmark::State& state) {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  drive(state, [](counted& comm, const shape& s) -> step_fn {
    const int r = comm.rank();
    const auto part = seqpar::make_seq_partition(s.S, s.P);
    auto plan = std::make_shared<seqpar::all_to_all_heads_plan>(
        seqpar::make_all_to_all_heads_plan(r, part, int(s.H), int(s.H), 1, s.D, seqpar::dtype::bfloat16));
    const std::int64_t n = part.size(r), h = plan->heads().count(r);
    auto o_heads = std::make_shared<std::vector<bf16>>(s.S * h * s.D), o = std::make_shared<std::vector<bf16>>(n * s.H * s.D);
    auto ws = std::make_shared<std::vector<std::byte>>(plan->workspace_bytes());
    return [&comm, plan, o_heads, o, ws, n, h, s] {
      seqpar::all_to_all_heads_inverse(*plan, comm, seqpar::make_bshd<const bf16>(o_heads->data(), 1, s.S, h, s.D),
                                       seqpar::make_bshd(o->data(), 1, n, s.H, s.D), *ws);
    };
  }, double(s.P - 1) / s.P, tokens(s, 0) * s.H * s.D * 2, 2);
}

// LASP with D = E = head dim: q, k, v, o views only give shapes; the policy computes nothing.
step_fn lasp_step(counted& comm, const shape& s, seqpar::lasp_strategy strategy) {
  const int r = comm.rank();
  const auto part = seqpar::make_seq_partition(s.S, s.P);
  auto ring = std::make_shared<seqpar::linear_attention_ring>(r, part, 1, s.H, s.D, s.D, strategy);
  const std::int64_t n = part.size(r);
  auto x = std::make_shared<std::vector<bf16>>(n * s.H * s.D);
  auto st = std::make_shared<std::vector<float>>(ring->state_elements());
  auto ws = std::make_shared<std::vector<std::byte>>(ring->workspace_bytes());
  return [&comm, ring, x, st, ws, n, s] {
    const auto v = seqpar::make_bshd<const bf16>(x->data(), 1, n, s.H, s.D);
    const std::vector<float> decay(s.H, 0.99f);
    ring->forward(no_compute{}, comm, v, v, v, decay, seqpar::make_bshd(x->data(), 1, n, s.H, s.D),
                  seqpar::make_state(st->data(), 1, s.H, s.D, s.D), *ws);
  };
}

void BM_lasp_chain(benchmark::State& state) {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  drive(state, [](counted& c, const shape& sh) { return lasp_step(c, sh, seqpar::lasp_strategy::chain); }, 1.0,
        s.H * s.D * s.D * 4, 4, "fp32");
}

void BM_lasp2_all_gather(benchmark::State& state) {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  drive(state, [](counted& c, const shape& sh) { return lasp_step(c, sh, seqpar::lasp_strategy::all_gather); },
        double(s.P - 1) / s.P, s.P * s.H * s.D * s.D * 4, 4, "fp32");
}

// Megatron-style sequence parallelism: all-gather [S_r, hidden] -> [S, hidden] before attention
// and the MLP, reduce-scatter [S, hidden] -> [S_r, hidden] after each (comparison only).
void BM_megatron_sp(benchmark::State& state) {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  drive(state, [](counted& comm, const shape& s) -> step_fn {
    const std::int64_t hidden = s.H * s.D, n = s.S / s.P;  // even split: the collectives need equal blocks
    auto shard = std::make_shared<std::vector<bf16>>(n * hidden), full = std::make_shared<std::vector<bf16>>(s.S * hidden);
    return [&comm, shard, full] {
      for (int i = 0; i < 2; ++i) {
        comm.all_gather<bf16>(*shard, *full);
        comm.reduce_scatter<bf16>(*full, *shard);
      }
    };
  }, double(s.P - 1) / s.P, s.S * s.H * s.D * 2, 2);
}

// Softmax ring attention: each rank's K and V chunk travels P-1 hops (comparison only).
void BM_ring_attention(benchmark::State& state) {
  const shape s{state.range(0), state.range(2), state.range(3), static_cast<int>(state.range(1))};
  drive(state, [](counted& comm, const shape& s) -> step_fn {
    const std::int64_t chunk = 2 * (s.S / s.P) * s.H * s.D;  // K and V
    auto a = std::make_shared<std::vector<bf16>>(chunk), b = std::make_shared<std::vector<bf16>>(chunk);
    return [&comm, a, b, s] {
      const int r = comm.rank();
      for (int hop = 0; hop + 1 < s.P; ++hop) {
        comm.neighbor_exchange<bf16>(*a, (r + 1) % s.P, *b, (r + s.P - 1) % s.P);
        std::swap(*a, *b);
      }
    };
  }, 1.0, 2 * (s.S / s.P) * s.H * s.D * 2 * (s.P - 1), 2);
}

// S from 1K to 256K at P = 8, and P from 2 to 8 at S / P = 8K; H = 8 heads of D = 64 (bf16).
void sweep(benchmark::internal::Benchmark* b) {
  b->ArgNames({"S", "P", "H", "D"});
  for (std::int64_t S = 1 << 10; S <= (1 << 18); S <<= 2) b->Args({S, 8, 8, 64});
  for (int P : {2, 4}) b->Args({std::int64_t(P) << 13, P, 8, 64});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}
}  // namespace

BENCHMARK(BM_ulysses_forward)->Apply(sweep);
BENCHMARK(BM_ulysses_inverse)->Apply(sweep);
BENCHMARK(BM_lasp_chain)->Apply(sweep);
BENCHMARK(BM_lasp2_all_gather)->Apply(sweep);
BENCHMARK(BM_megatron_sp)->Apply(sweep);
BENCHMARK(BM_ring_attention)->Apply(sweep);
BENCHMARK_MAIN();
