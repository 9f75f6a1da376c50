// GPU pack and unpack kernels of the Ulysses exchange against cudaMemcpyAsync of the same bytes,
// timed with CUDA events in the same run. Throughput = (bytes read + bytes written) / time.
// Goal on an H100: at least 90% of the copy from 64 MiB up. Without a GPU it says so and exits 77.
// It calls the pack kernels in seqpar::detail directly: the public exchange adds the communicator's
// all_to_all_v, and this measures the kernels alone.
#include "gpu_support.cuh"
#include "pack_bench_shapes.hpp"

#include <seqpar/ulysses/detail/heads_pack_cuda.cuh>

namespace {
using bf16 = __nv_bfloat16;

using seqpar_bench::device_array;

void BM_gpu_pack(benchmark::State& state, int op) {
  const std::int64_t bytes = state.range(0) << 20, D = state.range(1);
  const auto plan = seqpar_bench::pack_plan(bytes, D);
  const auto& g = plan.geometry(seqpar::heads_payload::q);
  const std::int64_t S_r = plan.seq().size(0), S = plan.seq().tokens, h = plan.heads().count(0);
  const std::size_t n = static_cast<std::size_t>(S_r * seqpar_bench::heads * D);
  device_array<bf16> seq_side(n), heads_side(n), buffer(n);
  seqpar::detail::segment_views<bf16> v;  // in: what the op reads, out: what it writes
  v.in[0] = op == 0 ? seqpar::make_bshd<const bf16>(seq_side.p, 1, S_r, seqpar_bench::heads, D)
                    : seqpar::make_bshd<const bf16>(heads_side.p, 1, S, h, D);
  v.out[0] = op == 1 ? seqpar::make_bshd(heads_side.p, 1, S, h, D)
                     : seqpar::make_bshd(seq_side.p, 1, S_r, seqpar_bench::heads, D);
  const seqpar::detail::cuda_launcher launch;
  seqpar_bench::timed_on_gpu(state, [&] {
    switch (op) {
      case 0: seqpar::detail::device::pack_seq_side(g, v, buffer.p, nullptr, launch); break;
      case 1: seqpar::detail::device::unpack_heads_side(g, buffer.p, v, nullptr, launch); break;
      case 2: seqpar::detail::device::pack_heads_side(g, v, buffer.p, nullptr, launch); break;
      default: seqpar::detail::device::unpack_seq_side_sum(g, buffer.p, v, nullptr, launch); break;
    }
  });
  seqpar_bench::report(state, bytes);
}

void BM_gpu_copy(benchmark::State& state) {
  const std::int64_t bytes = state.range(0) << 20;
  device_array<char> a(bytes), b(bytes);
  seqpar_bench::timed_on_gpu(state, [&] { SEQPAR_CUDA_TRY(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); });
  seqpar_bench::report(state, bytes);
}

void sweep(benchmark::internal::Benchmark* b) { seqpar_bench::pack_sweep(b, 16, 1024); }
}  // namespace

BENCHMARK(BM_gpu_copy)->Apply(sweep);
BENCHMARK_CAPTURE(BM_gpu_pack, forward_pack, 0)->Apply(sweep);
BENCHMARK_CAPTURE(BM_gpu_pack, forward_unpack, 1)->Apply(sweep);
BENCHMARK_CAPTURE(BM_gpu_pack, inverse_pack, 2)->Apply(sweep);
BENCHMARK_CAPTURE(BM_gpu_pack, inverse_unpack, 3)->Apply(sweep);

int main(int argc, char** argv) { return seqpar_bench::run_if_gpu(argc, argv); }
