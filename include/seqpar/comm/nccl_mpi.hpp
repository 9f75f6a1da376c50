//! @file nccl_mpi.hpp
//! Bootstraps an nccl_communicator from an MPI communicator (unique id broadcast by rank 0).
#pragma once

#include <seqpar/comm/mpi.hpp>
#include <seqpar/comm/nccl.hpp>

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

SEQPAR_NAMESPACE_END
