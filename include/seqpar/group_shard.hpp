//! @file group_shard.hpp
//! seq_shard and seq_unshard called by every rank of a group at once: the ranks agree on their
//! arguments first, so either every rank copies its shard or none writes anything.
#pragma once

#include <seqpar/comm/agreement.hpp>
#include <seqpar/shard.hpp>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! Copies between a rank's shard and the global tensor in the communicator's memory.
template <bool to_shard, class T>
void group_shard_copy(memory_space where, const seq_partition& part, int rank, tensor_view<const T> from,
                      tensor_view<T> to, stream_t stream) {
#if SEQPAR_CUDA_COMPILER
  if (where == memory_space::device) {
    if constexpr (to_shard)
      seq_shard(part, rank, from, to, stream);
    else
      seq_unshard(part, rank, from, to, stream);
    return;
  }
#endif
  (void)where, (void)stream;
  if constexpr (to_shard)
    seq_shard(part, rank, from, to);
  else
    seq_unshard(part, rank, from, to);
}

//! The checks of a group copy: the views against the partition, and device memory only under nvcc.
template <class Comm, class A, class B>
void check_group_shard(const Comm& comm, const seq_partition& part, const tensor_view<A>& global,
                       const tensor_view<B>& shard) {
  SEQPAR_EXPECTS(part.ranks == comm.size(),
                 "part: partition over " << part.ranks << " ranks; expected the communicator's " << comm.size());
  check_shard_views(part, comm.rank(), global, shard);
  SEQPAR_EXPECTS(SEQPAR_CUDA_COMPILER || comm.memory() == memory_space::host,
                 "comm: device memory needs the calling file compiled by nvcc (the copy kernels are CUDA)");
}
SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Every rank of `comm` copies its tokens of `global` into its `shard` (in the communicator's
//! memory; device: ordered on `stream`), after the group agrees that every rank's views fit.
template <communicator Comm, class T>
void seq_shard(Comm& comm, const seq_partition& part, tensor_view<const T> global, tensor_view<T> shard,
               stream_t stream = nullptr, call_checks checks = call_checks::group) {
  agree_on_arguments(comm, checks, stream, [&] { detail::check_group_shard(comm, part, global, shard); });
  detail::group_shard_copy<true>(comm.memory(), part, comm.rank(), global, shard, stream);
}

//! Every rank of `comm` copies its `shard` back to its tokens of `global`, after the group agrees.
template <communicator Comm, class T>
void seq_unshard(Comm& comm, const seq_partition& part, tensor_view<const T> shard, tensor_view<T> global,
                 stream_t stream = nullptr, call_checks checks = call_checks::group) {
  agree_on_arguments(comm, checks, stream, [&] { detail::check_group_shard(comm, part, global, shard); });
  detail::group_shard_copy<false>(comm.memory(), part, comm.rank(), shard, global, stream);
}

SEQPAR_KERNEL_NAMESPACE_END
