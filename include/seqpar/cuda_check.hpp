//! @file cuda_check.hpp
//! SEQPAR_CUDA_TRY: turns a failed CUDA runtime call into seqpar::error.
#pragma once

#include <seqpar/error.hpp>

#include <cuda_runtime_api.h>

//! Calls a CUDA runtime function; on failure clears the sticky error state and throws seqpar::error.
#define SEQPAR_CUDA_TRY(call)                                                                     \
  do {                                                                                            \
    const cudaError_t seqpar_status_ = (call);                                                    \
    if (seqpar_status_ != cudaSuccess) {                                                          \
      (void)cudaGetLastError();                                                                   \
      throw ::seqpar::error(::seqpar::errc::cuda,                                                 \
                            std::string(cudaGetErrorName(seqpar_status_)) + ": " +                \
                                cudaGetErrorString(seqpar_status_),                               \
                            #call, __FILE__, __LINE__);                                           \
    }                                                                                             \
  } while (0)
