// A layer on nccl_communicator (device memory only) in a file a host compiler builds: the layer's
// kernels are CUDA, so the build must fail with a message that says so, not throw at run time.
// Built as is, the same layer on an in-process communicator (its memory chosen at run time)
// compiles; with SEQPAR_FAIL_NCCL_WITHOUT_NVCC it is built on nccl_communicator.
#include <seqpar/comm/in_process.hpp>
#include <seqpar/comm/nccl.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>

#ifdef SEQPAR_FAIL_NCCL_WITHOUT_NVCC
using comm_type = seqpar::nccl_communicator;
#else
using comm_type = seqpar::in_process_communicator;
#endif

//! Builds a Ulysses layer on `comm`.
void build(comm_type& comm) {
  const auto part = seqpar::make_seq_partition(8, comm.size());
  seqpar::ulysses_attention layer(seqpar::reference_attention{}, comm, part, {.batch = 1, .heads = 2, .head_dim = 8},
                                  seqpar::elements<float>);
  (void)layer;
}
