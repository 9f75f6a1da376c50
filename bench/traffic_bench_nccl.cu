// The communication sweeps over NCCL with one process per GPU under mpirun (device memory; rank
// 0's ncclUniqueId is broadcast by MPI): P is the number of processes; only rank 0 prints.
//   mpirun -np 8 build/bench/seqpar_traffic_bench_nccl --benchmark_out=nccl.json --benchmark_out_format=json
//   mpirun -np 16 --hostfile hosts --map-by ppr:8:node build/bench/seqpar_traffic_bench_nccl ...
// Processes on a node take its GPUs in local-rank order. Without a GPU it says so and exits 77.
#include "process_sweep.hpp"

#include <seqpar/comm/nccl_mpi.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1, devices = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank), MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (rank == 0) std::printf("skipped: no CUDA device\n");
    MPI_Finalize();
    return 77;
  }
  seqpar::use_node_local_device(MPI_COMM_WORLD);
  int rc = 0;
  {
    auto world = seqpar::make_nccl_communicator(MPI_COMM_WORLD);
    const ncclComm_t native = world.native();  // every benchmark borrows the one NCCL group
    seqpar_bench::register_process_sweep<seqpar::nccl_communicator>(
        size, std::int64_t{1} << 20, 20, [native] { return seqpar::nccl_communicator::borrow(native); },
        [] { SEQPAR_CUDA_TRY(cudaDeviceSynchronize()); });
    seqpar_bench::register_group_check<seqpar::nccl_communicator>(
        1000, [native] { return seqpar::nccl_communicator::borrow(native); });
    rc = seqpar_bench::run_process_sweep(argc, argv, rank);
  }
  if (rc != 0) return rc;
  MPI_Finalize();
  return 0;
}
