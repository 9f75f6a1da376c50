// The communication sweeps with P in-process ranks sharing one GPU (device memory, the pack
// kernels, cudaMemcpyAsync between ranks' streams). Without a GPU it says so and exits 77.
#include "gpu_support.cuh"
#include "traffic_methods.hpp"

int main(int argc, char** argv) {
  seqpar_bench::register_in_process(seqpar::memory_space::device, std::int64_t{1} << 20);
  return seqpar_bench::run_if_gpu(argc, argv);
}
