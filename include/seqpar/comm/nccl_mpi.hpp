//! @file nccl_mpi.hpp
//! Bootstraps an nccl_communicator from an MPI communicator (unique id broadcast by rank 0), and
//! picks each process's GPU when there is one process per GPU.
#pragma once

#include <seqpar/comm/mpi.hpp>
#include <seqpar/comm/nccl.hpp>
#include <seqpar/cuda_check.hpp>

SEQPAR_NAMESPACE_BEGIN

//! Collective over `comm`: rank 0 creates an ncclUniqueId, MPI broadcasts it, and every process
//! joins an NCCL group with its MPI rank. Select each process's GPU (cudaSetDevice) before calling.
inline nccl_communicator make_nccl_communicator(MPI_Comm comm) {
  int rank = 0, size = 0;
  SEQPAR_MPI_TRY(MPI_Comm_rank(comm, &rank));
  SEQPAR_MPI_TRY(MPI_Comm_size(comm, &size));
  ncclUniqueId id{};
  if (rank == 0) SEQPAR_NCCL_TRY(ncclGetUniqueId(&id));
  SEQPAR_MPI_TRY(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm));
  return nccl_communicator(id, size, rank);
}

//! Collective over `comm`: makes current, and returns, the GPU of this process when each runs one:
//! its rank among the processes of `comm` on the same node, modulo the node's device count.
inline int use_node_local_device(MPI_Comm comm) {
  int rank = 0, local = 0, devices = 0;
  SEQPAR_MPI_TRY(MPI_Comm_rank(comm, &rank));
  MPI_Comm node = MPI_COMM_NULL;
  SEQPAR_MPI_TRY(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  const int ranked = MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  SEQPAR_MPI_TRY(ranked);
  SEQPAR_CUDA_TRY(cudaGetDeviceCount(&devices));
  SEQPAR_CUDA_TRY(cudaSetDevice(local % devices));
  return local % devices;
}

SEQPAR_NAMESPACE_END
