//! @file seqpar.hpp
//! Umbrella header: everything host code can use. NCCL and MPI backends have their own headers.
#pragma once

#include <seqpar/attention_shape.hpp>
#include <seqpar/call.hpp>
#include <seqpar/config.hpp>
#include <seqpar/error.hpp>
#include <seqpar/group_shard.hpp>
#include <seqpar/layer_arguments.hpp>
#include <seqpar/memory_resource.hpp>
#include <seqpar/memory_space.hpp>
#include <seqpar/shard.hpp>
#include <seqpar/tensor.hpp>
#include <seqpar/types.hpp>
#include <seqpar/comm/agreement.hpp>
#include <seqpar/comm/communicator.hpp>
#include <seqpar/comm/counting.hpp>
#include <seqpar/comm/in_process.hpp>
#include <seqpar/policy/attention_policy.hpp>
#include <seqpar/policy/block_sparse_attention.hpp>
#include <seqpar/policy/gated_linear_policy.hpp>
#include <seqpar/policy/gated_linear_reference.hpp>
#include <seqpar/policy/linear_attention_policy.hpp>
#include <seqpar/policy/linear_reference.hpp>
#include <seqpar/policy/linear_state.hpp>
#include <seqpar/policy/reference_attention.hpp>
#include <seqpar/lasp/lasp_attention.hpp>
#include <seqpar/mesh.hpp>
#include <seqpar/zero/adamw.hpp>
#include <seqpar/zero/parameter_partition.hpp>
#include <seqpar/zero/sharded_parameters.hpp>
#include <seqpar/lasp/linear_attention_ring.hpp>
#include <seqpar/ring/ring_attention.hpp>
#include <seqpar/ring/ulysses_ring_attention.hpp>
#include <seqpar/ulysses/all_to_all_heads.hpp>
#include <seqpar/ulysses/all_to_all_heads_plan.hpp>
#include <seqpar/ulysses/head_partition.hpp>
#include <seqpar/ulysses/ulysses_attention.hpp>
#if SEQPAR_HAS_NCCL
#include <seqpar/comm/nccl.hpp>
#endif
#if SEQPAR_HAS_MPI
#include <seqpar/comm/mpi.hpp>
#endif
