//! @file group_shard.hpp
//! seq_shard and seq_unshard called by every rank of a group at once: the ranks agree on their
//! arguments first, so either every rank copies its shard or none writes anything.
#pragma once

#include <seqpar/call.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/shard.hpp>

SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN

//! Copies `from` into `to` between a rank's shard and the global tensor (to_shard: global to
//! shard), views checked, in the communicator's memory: on the host at once, on the device
//! ordered on `stream`.
template <bool to_shard, class T>
void group_shard_copy(memory_space where, const seq_partition& part, int rank, tensor_view<const T> from,
                      tensor_view<T> to, stream_t stream) {
#if SEQPAR_CUDA_COMPILER
  if (where == memory_space::device) {
    const tensor_view<T> read(const_cast<T*>(from.data()), from.mapping());  // the kernel only reads it
    if constexpr (to_shard)
      device::launch_shard_copy<true>(part, rank, read, to, stream);
    else
      device::launch_shard_copy<false>(part, rank, to, read, stream);
    return;
  }
#endif
  (void)where, (void)stream;
  if constexpr (to_shard)
    seq_shard(part, rank, seq_shard_args<T>{.global = from, .shard = to});
  else
    seq_unshard(part, rank, seq_unshard_args<T>{.shard = from, .global = to});
}

//! The checks of a group copy: the views against the partition, and device memory only under nvcc.
template <class Comm, class A, class B>
void check_group_shard(const Comm& comm, const seq_partition& part, const tensor_view<A>& global,
                       const tensor_view<B>& shard) {
  static_assert(compiler_serves<Comm>,
                "seqpar: seq_shard on a device-only communicator (nccl_communicator) needs the calling file compiled "
                "by nvcc: its copy kernel is CUDA");
  SEQPAR_EXPECTS(part.ranks == comm.size(),
                 "part: partition over " << part.ranks << " ranks; expected the communicator's " << comm.size());
  check_shard_views(part, comm.rank(), global, shard);
  SEQPAR_EXPECTS(SEQPAR_CUDA_COMPILER || comm.memory() == memory_space::host,
                 "comm: device memory needs the calling file compiled by nvcc (the copy kernels are CUDA)");
}
SEQPAR_DETAIL_KERNEL_NAMESPACE_END

SEQPAR_KERNEL_NAMESPACE_BEGIN

//! Every rank of `comm` copies its tokens of args.global into its args.shard (in the
//! communicator's memory; device: ordered on exec.stream), after the group agrees that every
//! rank's views fit: `seq_shard(comm, part, seqpar::seq_shard_args<T>{.global = g, .shard = s}, {.stream = st})`.
template <communicator Comm, element T>
void seq_shard(Comm& comm, const seq_partition& part, const seq_shard_args<T>& args, const execution& exec) {
  agree_on_arguments(comm, exec.checks, exec.stream,
                     [&] { detail::check_group_shard(comm, part, args.global, args.shard); });
  detail::group_shard_copy<true>(comm.memory(), part, comm.rank(), args.global, args.shard, exec.stream);
}

//! Every rank of `comm` copies its args.shard back to its tokens of args.global, after the group
//! agrees.
template <communicator Comm, element T>
void seq_unshard(Comm& comm, const seq_partition& part, const seq_unshard_args<T>& args, const execution& exec) {
  agree_on_arguments(comm, exec.checks, exec.stream,
                     [&] { detail::check_group_shard(comm, part, args.global, args.shard); });
  detail::group_shard_copy<false>(comm.memory(), part, comm.rank(), args.shard, args.global, exec.stream);
}

SEQPAR_KERNEL_NAMESPACE_END
