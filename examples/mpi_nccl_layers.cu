// One process per GPU under mpirun: NCCL bootstrapped by MPI (rank 0's unique id broadcast), then
// a Ulysses attention layer, a LASP layer, ring attention (zigzag shards) and the 2-D layer, forward
// and backward, on each process's tokens. Rank 0 gathers the outputs into global token order and
// compares them with the same attention on one device (host).
//   mpirun -np 8 ./mpi_nccl_layers                                 (one node, 8 GPUs)
//   mpirun -np 16 --hostfile hosts --map-by ppr:8:node ./mpi_nccl_layers   (two nodes of 8)
// Without a GPU it says so and exits 77.
#include <seqpar/comm/nccl_mpi.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/policy/attention_cuda.cuh>
#include <seqpar/policy/linear_cuda.cuh>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

namespace {
constexpr std::int64_t S = 1024, H = 8, H_kv = 2, D = 64;

float input(std::int64_t i, int which) { return std::sin(0.013f * static_cast<float>(i) + 1.7f * which); }

// A device copy of the rows at positions global(0), ..., global(n - 1) of a global [1, S, heads, D] input.
template <class Global>
float* device_tokens(Global global, std::int64_t n, std::int64_t heads, int which) {
  std::vector<float> host(n * heads * D);
  for (std::int64_t s = 0; s < n; ++s)
    for (std::int64_t e = 0; e < heads * D; ++e) host[s * heads * D + e] = input(global(s) * heads * D + e, which);
  float* p = nullptr;
  SEQPAR_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&p), host.size() * sizeof(float)));
  SEQPAR_CUDA_TRY(cudaMemcpy(p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  return p;
}

// A device copy of the rows [at, at + n) of a global [1, S, heads, D] input.
float* device_rows(std::int64_t at, std::int64_t n, std::int64_t heads, int which) {
  return device_tokens([at](std::int64_t s) { return at + s; }, n, heads, which);
}

// Gathers every rank's device rows to rank 0 in rank (= token) order.
std::vector<float> gather(const float* device, std::int64_t count, MPI_Comm comm) {
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank), MPI_Comm_size(comm, &size);
  std::vector<float> mine(count);
  SEQPAR_CUDA_TRY(cudaMemcpy(mine.data(), device, count * sizeof(float), cudaMemcpyDeviceToHost));
  int n = static_cast<int>(count);
  std::vector<int> counts(size), displs(size);
  MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm);
  for (int i = 1; i < size; ++i) displs[i] = displs[i - 1] + counts[i - 1];
  std::vector<float> all(rank == 0 ? displs[size - 1] + counts[size - 1] : 0);
  MPI_Gatherv(mine.data(), n, MPI_FLOAT, all.data(), counts.data(), displs.data(), MPI_FLOAT, 0, comm);
  return all;
}

// Gathers every rank's n device rows of `heads` heads, at positions global(s), into one global
// [1, S, heads, D] array on rank 0.
template <class Global>
std::vector<float> gather_tokens(const float* device, std::int64_t n, std::int64_t heads, Global global,
                                 MPI_Comm comm) {
  const std::vector<float> rows = gather(device, n * heads * D, comm);
  std::vector<std::int64_t> mine(n), positions;
  for (std::int64_t s = 0; s < n; ++s) mine[s] = global(s);
  int rank = 0, size = 0, count = static_cast<int>(n);
  MPI_Comm_rank(comm, &rank), MPI_Comm_size(comm, &size);
  std::vector<int> counts(size), displs(size);
  MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm);
  for (int i = 1; i < size; ++i) displs[i] = displs[i - 1] + counts[i - 1];
  if (rank == 0) positions.resize(displs[size - 1] + counts[size - 1]);
  MPI_Gatherv(mine.data(), count, MPI_INT64_T, positions.data(), counts.data(), displs.data(), MPI_INT64_T, 0, comm);
  std::vector<float> out(rank == 0 ? S * heads * D : 0);
  for (std::size_t t = 0; t < positions.size(); ++t)
    std::copy_n(rows.begin() + t * heads * D, heads * D, out.begin() + positions[t] * heads * D);
  return out;
}

double max_relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < want.size(); ++i)
    err = std::max(err, double(std::fabs(got[i] - want[i]))), scale = std::max(scale, double(std::fabs(want[i])));
  return err / scale;
}
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1, devices = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank), MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (rank == 0) std::printf("skipped: no CUDA device\n");
    MPI_Finalize();
    return 77;
  }
  seqpar::use_node_local_device(MPI_COMM_WORLD);  // processes on a node take its GPUs in local-rank order
  int failed = 0;
  {
    auto comm = seqpar::make_nccl_communicator(MPI_COMM_WORLD);
    const auto part = seqpar::make_seq_partition(S, size);
    const std::int64_t n = part.size(rank), at = part.offset(rank);
    const seqpar::attention_options opt{.scale = 0.125f, .causal = true};
    cudaStream_t stream;
    SEQPAR_CUDA_TRY(cudaStreamCreate(&stream));
    auto c = [&](float* p, std::int64_t h) { return seqpar::make_bshd<const float>(p, 1, n, h, D); };
    auto m = [&](float* p, std::int64_t h) { return seqpar::make_bshd(p, 1, n, h, D); };

    // Ulysses: q [1, S_r, H, D], k and v [1, S_r, H_kv, D]; o = attention; then the gradients from dO.
    float *q = device_rows(at, n, H, 0), *k = device_rows(at, n, H_kv, 1), *v = device_rows(at, n, H_kv, 2),
          *o = device_rows(at, n, H, 3), *dout = device_rows(at, n, H, 7), *dq = device_rows(at, n, H, 3),
          *dk = device_rows(at, n, H_kv, 3), *dv = device_rows(at, n, H_kv, 3);
    seqpar::ulysses_attention ulysses(seqpar::reference_attention_cuda{}, comm, part,
                                      {.batch = 1, .heads = H, .kv_heads = H_kv, .head_dim = D}, seqpar::elements<float>,
                                      opt);
    const auto saved = ulysses.forward({.q = c(q, H), .k = c(k, H_kv), .v = c(v, H_kv), .o = m(o, H)}, {.stream = stream});
    ulysses.backward(saved, {.dout = c(dout, H), .dq = m(dq, H), .dk = m(dk, H_kv), .dv = m(dv, H_kv)},
                     {.stream = stream});

    // LASP: the same q as queries, keys and values over H heads: E = D.
    float *lv = device_rows(at, n, H, 4), *lo = device_rows(at, n, H, 5), *lk = device_rows(at, n, H, 6),
          *ldq = device_rows(at, n, H, 5), *ldk = device_rows(at, n, H, 5), *ldv = device_rows(at, n, H, 5);
    const std::vector<float> decay(H, 0.99f);
    seqpar::lasp_attention lasp(seqpar::linear_cuda{}, comm, part, {.batch = 1, .heads = H, .head_dim = D},
                                seqpar::elements<float>, decay);
    const auto lsaved = lasp.forward({.q = c(q, H), .k = c(lk, H), .v = c(lv, H), .o = m(lo, H)}, {.stream = stream});
    lasp.backward(lsaved, {.dout = c(dout, H), .dq = m(ldq, H), .dk = m(ldk, H), .dv = m(ldv, H)}, {.stream = stream});

    // Ring attention (zigzag shards where S splits into 2P blocks) and the 2-D layer (the smallest
    // u >= 2 whose ring groups split S into 2r blocks; u = P is pure Ulysses), on the same inputs.
    const auto ring_part = seqpar::make_seq_partition(
        S, size, S % (2 * size) == 0 ? seqpar::shard_strategy::zigzag : seqpar::shard_strategy::contiguous);
    int u = size;
    for (int c = 2; c < size; ++c)
      if (size % c == 0 && S % (2 * (size / c)) == 0) {
        u = c;
        break;
      }
    const auto layout = seqpar::make_token_layout_2d(S, {.ulysses = u, .ring = size / u});
    auto ring_global = [&](std::int64_t s) { return ring_part.global(rank, s); };
    auto mesh_global = [&](std::int64_t s) { return layout.global(rank, s); };
    struct run {
      std::int64_t n;
      std::vector<float*> views;  // q, k, v, dout, then o, dq, dk, dv
    };
    auto inputs = [&](auto global, std::int64_t tokens) {
      run x{tokens, {}};
      for (auto [h, which] : std::vector<std::pair<std::int64_t, int>>{{H, 0}, {H_kv, 1}, {H_kv, 2}, {H, 7}, {H, 3},
                                                                        {H, 3}, {H_kv, 3}, {H_kv, 3}})
        x.views.push_back(device_tokens(global, tokens, h, which));
      return x;
    };
    run ring_run = inputs(ring_global, ring_part.size(rank)), mesh_run = inputs(mesh_global, layout.size(rank));
    const seqpar::attention_shape shape{.batch = 1, .heads = H, .kv_heads = H_kv, .head_dim = D};
    auto run_layer = [&](auto& layer, run& x) {
      auto cr = [&](int i, std::int64_t h) { return seqpar::make_bshd<const float>(x.views[i], 1, x.n, h, D); };
      auto mr = [&](int i, std::int64_t h) { return seqpar::make_bshd(x.views[i], 1, x.n, h, D); };
      const auto ctx =
          layer.forward({.q = cr(0, H), .k = cr(1, H_kv), .v = cr(2, H_kv), .o = mr(4, H)}, {.stream = stream});
      layer.backward(ctx, {.dout = cr(3, H), .dq = mr(5, H), .dk = mr(6, H_kv), .dv = mr(7, H_kv)}, {.stream = stream});
    };
    seqpar::ring_attention ring(seqpar::reference_attention_cuda{}, comm, ring_part, shape, seqpar::elements<float>,
                                opt);
    run_layer(ring, ring_run);
    seqpar::ulysses_ring_attention mesh(seqpar::reference_attention_cuda{}, comm, layout, shape,
                                        seqpar::elements<float>, opt);
    run_layer(mesh, mesh_run);
    SEQPAR_CUDA_TRY(cudaStreamSynchronize(stream));

    std::vector<std::vector<float>> got;
    const std::vector<std::pair<float*, std::int64_t>> results{{o, H},  {dq, H},  {dk, H_kv}, {dv, H_kv},
                                                               {lo, H}, {ldq, H}, {ldk, H},   {ldv, H}};
    for (auto [p, h] : results)
      got.push_back(gather(p, n * h * D, MPI_COMM_WORLD));
    for (int w = 0; w < 4; ++w)
      got.push_back(gather_tokens(ring_run.views[4 + w], ring_run.n, w < 2 ? H : H_kv, ring_global, MPI_COMM_WORLD));
    for (int w = 0; w < 4; ++w)
      got.push_back(gather_tokens(mesh_run.views[4 + w], mesh_run.n, w < 2 ? H : H_kv, mesh_global, MPI_COMM_WORLD));
    if (rank == 0) {
      auto global = [](std::int64_t heads, int which) {
        std::vector<float> g(S * heads * D);
        for (std::size_t i = 0; i < g.size(); ++i) g[i] = input(static_cast<std::int64_t>(i), which);
        return g;
      };
      auto gq = global(H, 0), gk = global(H_kv, 1), gv = global(H_kv, 2), gdo = global(H, 7), glk = global(H, 4 + 2),
           glv = global(H, 4);
      std::vector<std::vector<float>> want(8);
      for (int w : {0, 1, 4, 5, 6, 7}) want[w].resize(S * H * D);
      for (int w : {2, 3}) want[w].resize(S * H_kv * D);
      std::vector<float> lse(H * S);
      auto cg = [](const std::vector<float>& x, std::int64_t h) { return seqpar::make_bshd<const float>(x.data(), 1, S, h, D); };
      auto mg = [](std::vector<float>& x, std::int64_t h) { return seqpar::make_bshd(x.data(), 1, S, h, D); };
      const seqpar::gqa_map map{0, H / H_kv, 0};
      const seqpar::reference_attention ref;
      ref.forward(seqpar::policy_forward_args<float>{.q = cg(gq, H),
                                                     .k = cg(gk, H_kv),
                                                     .v = cg(gv, H_kv),
                                                     .o = mg(want[0], H),
                                                     .lse = seqpar::lse_view(lse.data(), 1, H, S),
                                                     .map = map,
                                                     .options = opt},
                  nullptr);
      ref.backward(seqpar::policy_backward_args<float>{.q = cg(gq, H),
                                                       .k = cg(gk, H_kv),
                                                       .v = cg(gv, H_kv),
                                                       .o = cg(want[0], H),
                                                       .lse = seqpar::const_lse_view(lse.data(), 1, H, S),
                                                       .dout = cg(gdo, H),
                                                       .dq = mg(want[1], H),
                                                       .dk = mg(want[2], H_kv),
                                                       .dv = mg(want[3], H_kv),
                                                       .map = map,
                                                       .options = opt},
                   nullptr);
      // One device holds the whole sequence as one chunk: LASP is its intra-chunk part alone.
      const seqpar::linear_reference lref;
      lref.forward_intra(seqpar::linear_chunk<float>{.q = cg(gq, H), .k = cg(glk, H), .v = cg(glv, H), .decay = decay},
                         mg(want[4], H), nullptr);
      lref.backward_intra(
          seqpar::linear_chunk<float>{
              .q = cg(gq, H), .k = cg(glk, H), .v = cg(glv, H), .dout = cg(gdo, H), .decay = decay},
          seqpar::linear_gradients<float>{.dq = mg(want[5], H), .dk = mg(want[6], H), .dv = mg(want[7], H)}, nullptr);
      const char* names[] = {"ulysses o", "ulysses dq", "ulysses dk", "ulysses dv", "lasp o",   "lasp dq",
                             "lasp dk",   "lasp dv",    "ring o",     "ring dq",    "ring dk",  "ring dv",
                             "2-D o",     "2-D dq",     "2-D dk",     "2-D dv"};
      std::printf("%d processes, NCCL over an MPI bootstrap, against one device (2-D: %d x %d):\n", size, u,
                  size / u);
      for (int w = 0; w < 16; ++w) {
        const double e = max_relative_error(got[w], want[w < 8 ? w : w % 4]);
        std::printf("  %-11s max relative error %.1e\n", names[w], e);
        failed |= !(e < 1e-4);
      }
    }
    for (float* p : {q, k, v, o, dout, dq, dk, dv, lv, lo, lk, ldq, ldk, ldv}) cudaFree(p);
    for (const run* x : {&ring_run, &mesh_run})
      for (float* p : x->views) cudaFree(p);
    cudaStreamDestroy(stream);
  }
  MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
