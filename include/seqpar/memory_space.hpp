//! @file memory_space.hpp
//! Where buffers live (host or device memory) and the stream device work is ordered on.
#pragma once

#include <seqpar/config.hpp>

#include <cuda_runtime_api.h>

SEQPAR_NAMESPACE_BEGIN

//! Where a communicator's, a policy's or a pipeline's buffers live.
enum class memory_space { host, device };

//! Name of a memory space ("host", "device").
inline constexpr const char* to_string(memory_space m) noexcept { return m == memory_space::host ? "host" : "device"; }

//! The stream an operation is ordered on (ignored for host memory).
using stream_t = cudaStream_t;

SEQPAR_NAMESPACE_END
