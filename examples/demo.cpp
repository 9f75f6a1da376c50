// The demonstration: a Ulysses softmax-attention layer and a LASP linear-attention layer on four
// ranks (threads of this process; on a GPU through its memory when one is present and this file is
// built by nvcc), and the 2-D Ulysses x ring layer on the host, forward and backward, each checked
// against one device, with the bytes every rank sent (measured by the counting decorator) beside
// the formula.
#include <seqpar/seqpar.hpp>
#if SEQPAR_CUDA_COMPILER
#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/linear_cuda.cuh>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {
constexpr int P = 4;
using clock_type = std::chrono::steady_clock;

// Host or device copies of host vectors, so the same code runs on either.
struct memory {
  seqpar::memory_space where;
  template <class T>
  T* upload(const std::vector<T>& v) const {
    if (where == seqpar::memory_space::host) return const_cast<T*>(v.data());
    T* p = nullptr;
    SEQPAR_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&p), v.size() * sizeof(T) + 16));
    SEQPAR_CUDA_TRY(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return p;
  }
  template <class T>
  void download(T* p, std::vector<T>& v) const {
    if (where == seqpar::memory_space::host) return;
    SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
    SEQPAR_CUDA_TRY(cudaMemcpy(v.data(), p, v.size() * sizeof(T), cudaMemcpyDeviceToHost));
    cudaFree(p);
  }
};

std::vector<float> random_vector(std::size_t n, std::mt19937& gen) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

// Rows [at, at + n) of a [B = 1, S, heads, dim] tensor.
std::vector<float> rows(const std::vector<float>& g, std::int64_t at, std::int64_t n, std::int64_t width) {
  return std::vector<float>(g.begin() + at * width, g.begin() + (at + n) * width);
}

double max_relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return err / scale;
}

bool failed = false;

// One layer's report: the error of each output, then each rank's bytes beside the formula and the
// bytes Megatron-style sequence parallelism would move for the same activations.
void report(const char* layer, const std::vector<double>& errors, double tolerance, const std::vector<std::size_t>& sent,
            const std::vector<std::size_t>& formula, std::size_t megatron, double ms) {
  std::printf("%s, forward + backward in %.1f ms\n  max error vs one device: o %.1e  dq %.1e  dk %.1e  dv %.1e\n", layer,
              ms, errors[0], errors[1], errors[2], errors[3]);
  std::printf("  %4s %14s %14s %16s\n", "rank", "bytes sent", "formula", "megatron-sp");
  for (int r = 0; r < P; ++r)
    std::printf("  %4d %14zu %14zu %16zu%s\n", r, sent[r], formula[r], megatron, sent[r] == formula[r] ? "" : "  MISMATCH");
  for (int r = 0; r < P; ++r) failed = failed || sent[r] != formula[r];
  for (double e : errors) failed = failed || !(e <= tolerance);
  std::printf("\n");
}

constexpr std::int64_t attention_D = 32;

// A [1, s, h, D] view of a host vector, read-only or writable.
seqpar::tensor_view<const float> cv(const std::vector<float>& x, std::int64_t s, std::int64_t h) {
  return seqpar::make_bshd<const float>(x.data(), 1, s, h, attention_D);
}
seqpar::tensor_view<float> mv(std::vector<float>& x, std::int64_t s, std::int64_t h) {
  return seqpar::make_bshd(x.data(), 1, s, h, attention_D);
}

// Softmax attention on one device (the host reference over all heads): o, dq, dk, dv.
std::vector<std::vector<float>> one_device(const std::vector<float>& q, const std::vector<float>& k,
                                           const std::vector<float>& v, const std::vector<float>& dout, int H, int H_kv,
                                           std::int64_t S, const seqpar::attention_options& opt) {
  std::vector<float> o(q.size()), dq(q.size()), dk(k.size()), dv(k.size()), lse(H * S);
  const seqpar::gqa_map all{0, H / H_kv, 0};
  const seqpar::reference_attention ref;
  ref.forward(seqpar::policy_forward_args<float>{.q = cv(q, S, H),
                                                 .k = cv(k, S, H_kv),
                                                 .v = cv(v, S, H_kv),
                                                 .o = mv(o, S, H),
                                                 .lse = seqpar::lse_view(lse.data(), 1, H, S),
                                                 .map = all,
                                                 .options = opt},
              nullptr);
  ref.backward(seqpar::policy_backward_args<float>{.q = cv(q, S, H),
                                                   .k = cv(k, S, H_kv),
                                                   .v = cv(v, S, H_kv),
                                                   .o = cv(o, S, H),
                                                   .lse = seqpar::const_lse_view(lse.data(), 1, H, S),
                                                   .dout = cv(dout, S, H),
                                                   .dq = mv(dq, S, H),
                                                   .dk = mv(dk, S, H_kv),
                                                   .dv = mv(dv, S, H_kv),
                                                   .map = all,
                                                   .options = opt},
               nullptr);
  return {o, dq, dk, dv};
}

template <class AttentionPolicy>
void ulysses_layer(seqpar::memory_space where, const AttentionPolicy& policy) {
  const int H = 8, H_kv = 2;
  const std::int64_t S = 512, D = attention_D;
  const seqpar::attention_options opt{1.0f / std::sqrt(float(D)), true};
  std::mt19937 gen(7);
  const auto q = random_vector(S * H * D, gen), k = random_vector(S * H_kv * D, gen), v = random_vector(S * H_kv * D, gen),
             dout = random_vector(S * H * D, gen);
  const auto want = one_device(q, k, v, dout, H, H_kv, S, opt);
  const auto &o1 = want[0], &dq1 = want[1], &dk1 = want[2], &dv1 = want[3];

  const auto part = seqpar::make_seq_partition(S, P);
  std::vector<std::vector<float>> o(P), dq(P), dk(P), dv(P);
  std::vector<std::size_t> sent(P), formula(P);
  double ms = 0;
  seqpar::run_in_process(P, where, [&](seqpar::in_process_communicator& inner) {
    seqpar::counting_communicator comm(inner);
    const int r = comm.rank();
    const std::int64_t n = part.size(r), at = part.offset(r);
    const memory mem{where};
    auto lq = rows(q, at, n, H * D), lk = rows(k, at, n, H_kv * D), lv = rows(v, at, n, H_kv * D), ldo = rows(dout, at, n, H * D);
    o[r].resize(lq.size()), dq[r].resize(lq.size()), dk[r].resize(lk.size()), dv[r].resize(lk.size());
    float *pq = mem.upload(lq), *pk = mem.upload(lk), *pv = mem.upload(lv), *pdo = mem.upload(ldo), *po = mem.upload(o[r]),
          *pdq = mem.upload(dq[r]), *pdk = mem.upload(dk[r]), *pdv = mem.upload(dv[r]);
    seqpar::ulysses_attention layer(policy, comm, part, {.batch = 1, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                    seqpar::elements<float>, opt);
    auto c = [&](float* p, std::int64_t h) { return seqpar::make_bshd<const float>(p, 1, n, h, D); };
    auto m = [&](float* p, std::int64_t h) { return seqpar::make_bshd(p, 1, n, h, D); };
    comm.barrier(nullptr);
    const auto start = clock_type::now();
    const auto saved = layer.forward({.q = c(pq, H), .k = c(pk, H_kv), .v = c(pv, H_kv), .o = m(po, H)}, {.stream = nullptr});
    layer.backward(saved, {.dout = c(pdo, H), .dq = m(pdq, H), .dk = m(pdk, H_kv), .dv = m(pdv, H_kv)},
                   {.stream = nullptr});
    if (where == seqpar::memory_space::device) SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
    comm.barrier(nullptr);
    if (r == 0) ms = std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
    mem.download(po, o[r]), mem.download(pdq, dq[r]), mem.download(pdk, dk[r]), mem.download(pdv, dv[r]);
    if (where == seqpar::memory_space::device) cudaFree(pq), cudaFree(pk), cudaFree(pv), cudaFree(pdo);
    sent[r] = comm.bytes_sent();
    // docs/architecture.md, traffic: forward Q/K/V to j: S_r D (h_j + 2 k_j); O back: S_j D h_r; backward mirrors it.
    const auto& hp = layer.plan().heads();
    for (int j = 0; j < P; ++j)
      if (j != r)
        formula[r] += 4 * D * (part.size(r) * (hp.count(j) + 2 * hp.kv_count(j)) + part.size(j) * hp.count(r) +
                               part.size(r) * hp.count(j) + part.size(j) * (hp.count(r) + 2 * hp.kv_count(r)));
  });
  auto gather = [&](std::vector<std::vector<float>>& parts) {
    std::vector<float> g;
    for (auto& p : parts) g.insert(g.end(), p.begin(), p.end());
    return g;
  };
  // Megatron-style sequence parallelism moves the full [S, hidden] activation through two
  // all-gathers and two reduce-scatters each way: 8 (P-1) S_r hidden elements per rank.
  const std::size_t megatron = 8 * (P - 1) * part.size(0) * H * D * 4;
  report("ulysses", {max_relative_error(gather(o), o1), max_relative_error(gather(dq), dq1),
                     max_relative_error(gather(dk), dk1), max_relative_error(gather(dv), dv1)},
         1e-4, sent, formula, megatron, ms);
}

template <class LinearPolicy>
void lasp_layer(seqpar::memory_space where, const LinearPolicy& policy) {
  const std::int64_t S = 1024, D = 32, E = 32;
  const int H = 4;
  const std::vector<float> decay{1.0f, 0.999f, 0.99f, 0.9f};
  std::mt19937 gen(11);
  const auto q = random_vector(S * H * D, gen), k = random_vector(S * H * D, gen), v = random_vector(S * H * E, gen),
             dout = random_vector(S * H * E, gen);
  auto run = [&](int ranks, seqpar::memory_space mem_space, auto&& pol, std::vector<std::size_t>* sent, double* ms) {
    const auto part = seqpar::make_seq_partition(S, ranks);
    std::vector<std::vector<float>> out(4 * ranks);
    seqpar::run_in_process(ranks, mem_space, [&](seqpar::in_process_communicator& inner) {
      seqpar::counting_communicator comm(inner);
      const int r = comm.rank();
      const std::int64_t n = part.size(r), at = part.offset(r);
      const memory mem{mem_space};
      auto lq = rows(q, at, n, H * D), lk = rows(k, at, n, H * D), lv = rows(v, at, n, H * E), ldo = rows(dout, at, n, H * E);
      std::vector<float> o(lv.size()), dq(lq.size()), dk(lk.size()), dv(lv.size());
      float *pq = mem.upload(lq), *pk = mem.upload(lk), *pv = mem.upload(lv), *pdo = mem.upload(ldo), *po = mem.upload(o),
            *pdq = mem.upload(dq), *pdk = mem.upload(dk), *pdv = mem.upload(dv);
      seqpar::lasp_attention layer(pol, comm, part, {.batch = 1, .heads = H, .head_dim = D, .value_dim = E},
                                   seqpar::elements<float>, decay);
      auto c = [&](float* p, std::int64_t x) { return seqpar::make_bshd<const float>(p, 1, n, H, x); };
      auto m = [&](float* p, std::int64_t x) { return seqpar::make_bshd(p, 1, n, H, x); };
      comm.barrier(nullptr);
      const auto start = clock_type::now();
      const auto saved = layer.forward({.q = c(pq, D), .k = c(pk, D), .v = c(pv, E), .o = m(po, E)}, {.stream = nullptr});
      layer.backward(saved, {.dout = c(pdo, E), .dq = m(pdq, D), .dk = m(pdk, D), .dv = m(pdv, E)}, {.stream = nullptr});
      if (mem_space == seqpar::memory_space::device) SEQPAR_CUDA_TRY(cudaDeviceSynchronize());
      comm.barrier(nullptr);
      if (ms && r == 0) *ms = std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
      mem.download(po, o), mem.download(pdq, dq), mem.download(pdk, dk), mem.download(pdv, dv);
      if (mem_space == seqpar::memory_space::device) cudaFree(pq), cudaFree(pk), cudaFree(pv), cudaFree(pdo);
      out[4 * r] = o, out[4 * r + 1] = dq, out[4 * r + 2] = dk, out[4 * r + 3] = dv;
      if (sent) (*sent)[r] = comm.bytes_sent();
    });
    std::vector<std::vector<float>> g(4);
    for (int r = 0; r < ranks; ++r)
      for (int w = 0; w < 4; ++w) g[w].insert(g[w].end(), out[4 * r + w].begin(), out[4 * r + w].end());
    return g;
  };
  const auto one = run(1, seqpar::memory_space::host, seqpar::linear_reference{}, nullptr, nullptr);
  std::vector<std::size_t> sent(P);
  double ms = 0;
  const auto many = run(P, where, policy, &sent, &ms);
  // docs/architecture.md, traffic: one B H D E fp32 state per hop, forward (to r+1) and backward (to r-1), whatever S is.
  const std::size_t state = H * D * E * 4;
  std::vector<std::size_t> formula(P);
  for (int r = 0; r < P; ++r) formula[r] = state * ((r < P - 1 ? 1 : 0) + (r > 0 ? 1 : 0));
  report("lasp (chain)", {max_relative_error(many[0], one[0]), max_relative_error(many[1], one[1]),
                          max_relative_error(many[2], one[2]), max_relative_error(many[3], one[3])},
         1e-4, sent, formula, 8 * (P - 1) * (S / P) * H * D * 4, ms);
}
// The 2-D layer on the same four ranks as 2 x 2 (Ulysses pairs of ranks, a ring of two pairs),
// over two query heads and one kv head: more ranks than heads, where Ulysses alone would leave
// ranks idle. Host memory (the 2-D layer's device path is not written yet).
void ulysses_ring_layer() {
  const int H = 2, H_kv = 1, u = 2, r = 2;
  const std::int64_t S = 512, D = attention_D;
  const seqpar::attention_options opt{.causal = true};
  std::mt19937 gen(13);
  const auto q = random_vector(S * H * D, gen), k = random_vector(S * H_kv * D, gen), v = random_vector(S * H_kv * D, gen),
             dout = random_vector(S * H * D, gen);
  const auto want = one_device(q, k, v, dout, H, H_kv, S, opt);
  const auto &o1 = want[0], &dq1 = want[1], &dk1 = want[2], &dv1 = want[3];

  const auto layout = seqpar::make_token_layout_2d(S, {.ulysses = u, .ring = r});
  // Global results, assembled from each rank's tokens wherever the layout puts them.
  std::vector<float> o(q.size()), dq(q.size()), dk(k.size()), dv(k.size());
  std::vector<std::size_t> sent(P), formula(P);
  double ms = 0;
  seqpar::run_in_process(P, seqpar::memory_space::host, [&](seqpar::in_process_communicator& inner) {
    seqpar::counting_communicator world(inner);
    const int rank = world.rank();
    const std::int64_t n = layout.size(rank);
    auto mine = [&](const std::vector<float>& g, int h) {
      std::vector<float> x;
      for (std::int64_t s = 0; s < n; ++s)
        x.insert(x.end(), g.begin() + layout.global(rank, s) * h * D, g.begin() + (layout.global(rank, s) + 1) * h * D);
      return x;
    };
    auto lq = mine(q, H), lk = mine(k, H_kv), lv = mine(v, H_kv), ldo = mine(dout, H);
    std::vector<float> lo(lq.size()), ldq(lq.size()), ldk(lk.size()), ldv(lk.size());
    seqpar::ulysses_ring_attention layer(seqpar::reference_attention{}, world, layout,
                                         {.batch = 1, .heads = H, .kv_heads = H_kv, .head_dim = D},
                                         seqpar::elements<float>, opt);
    world.barrier(nullptr);
    const auto start = clock_type::now();
    const auto saved =
        layer.forward({.q = cv(lq, n, H), .k = cv(lk, n, H_kv), .v = cv(lv, n, H_kv), .o = mv(lo, n, H)}, {.stream = nullptr});
    layer.backward(saved, {.dout = cv(ldo, n, H), .dq = mv(ldq, n, H), .dk = mv(ldk, n, H_kv), .dv = mv(ldv, n, H_kv)},
                   {.stream = nullptr});
    world.barrier(nullptr);
    if (rank == 0) ms = std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
    auto put = [&](const std::vector<float>& x, std::vector<float>& g, int h) {
      for (std::int64_t s = 0; s < n; ++s)
        std::copy(x.begin() + s * h * D, x.begin() + (s + 1) * h * D, g.begin() + layout.global(rank, s) * h * D);
    };
    put(lo, o, H), put(ldq, dq, H), put(ldk, dk, H_kv), put(ldv, dv, H_kv);
    sent[rank] = layer.ulysses_group().bytes_sent() + layer.ring_group().bytes_sent();
    // docs/architecture.md, 2-D: the Ulysses part within the pair (forward and backward), plus the
    // ring part: (r-1) hops of this head subset's K and V each way, r hops of fp32 dK and dV.
    const auto& hp = layer.plan().heads();
    const int i = layout.mesh.ulysses_index(rank), j = 1 - i;
    const std::int64_t n_j = layout.group_partition().size(j);
    const std::size_t ulysses = D * (n * (hp.count(j) + 2 * hp.kv_count(j)) + n_j * hp.count(i) + n * hp.count(j) +
                                     n_j * (hp.count(i) + 2 * hp.kv_count(i)));  // elements, fp32
    const std::size_t shard = 2 * (S / r) * hp.kv_count(i) * D;                  // K and V, elements
    formula[rank] = 4 * (ulysses + 2 * (r - 1) * shard + r * shard);
  });
  report("ulysses x ring (2 x 2, H = 2 < P = 4)", {max_relative_error(o, o1), max_relative_error(dq, dq1),
                                                   max_relative_error(dk, dk1), max_relative_error(dv, dv1)},
         1e-4, sent, formula, 8 * (P - 1) * (S / P) * H * D * 4, ms);
}
}  // namespace

int main() {
  int devices = 0;
  const bool gpu = SEQPAR_CUDA_COMPILER && cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  const auto where = gpu ? seqpar::memory_space::device : seqpar::memory_space::host;
  std::printf("seqpar %d.%d.%d demonstration: %d ranks as threads over %s memory, fp32, forward + backward\n",
              SEQPAR_VERSION_MAJOR, SEQPAR_VERSION_MINOR, SEQPAR_VERSION_PATCH, P, gpu ? "GPU" : "host");
  std::printf("ulysses: causal softmax attention, S = 512, H = 8, H_kv = 2, D = 32\n");
  std::printf("lasp:    linear attention, S = 1024, H = 4, D = E = 32, decays 1, 0.999, 0.99, 0.9\n");
  std::printf("2-D:     causal softmax attention, S = 512, H = 2, H_kv = 1, D = 32, host memory\n");
  std::printf("error: max |%d ranks - one device| / max |one device|\n\n", P);
#if SEQPAR_CUDA_COMPILER
  if (gpu) {
    ulysses_layer(where, seqpar::reference_attention_cuda{});
    lasp_layer(where, seqpar::linear_cuda{});
  }
#endif
  if (!gpu) {
    ulysses_layer(where, seqpar::reference_attention{});
    lasp_layer(where, seqpar::linear_reference{});
  }
  ulysses_ring_layer();
  std::printf("%s\n", failed ? "FAILED: an error or a byte count is off" : "every output matches one device; every byte count matches its formula");
  return failed ? 1 : 0;
}
