// The communication sweeps with one MPI process per rank (host memory): P is the number of
// processes (run with -np 2, 4, 8 to vary it); only rank 0 prints.
//   mpirun -np 4 build/bench/seqpar_traffic_bench_mpi --benchmark_out=traffic_mpi.json --benchmark_out_format=json
#include "process_sweep.hpp"

#include <seqpar/comm/mpi.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank), MPI_Comm_size(MPI_COMM_WORLD, &size);
  seqpar_bench::register_process_sweep<seqpar::mpi_communicator>(
      size, std::int64_t{1} << 18, 3, [] { return seqpar::mpi_communicator(MPI_COMM_WORLD); }, [] {});
  seqpar_bench::register_group_check<seqpar::mpi_communicator>(1000,
                                                               [] { return seqpar::mpi_communicator(MPI_COMM_WORLD); });
  const int rc = seqpar_bench::run_process_sweep(argc, argv, rank);
  if (rc != 0) return rc;
  MPI_Finalize();
  return 0;
}
