//! @file architecture_check.cuh
//! Refuses to compile the tensor-core kernels for a GPU architecture older than sm_80, where they
//! could only trap: the mistake is usually a build that kept nvcc's or CMake's default
//! architecture, and it shows here instead of at run time.
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800 && !defined(SEQPAR_ALLOW_PRE_SM80)
#error "seqpar: the tensor-core kernels (flash_attention, linear_cuda, gated_linear_cuda) need sm_80 or newer, and this file is being compiled for an older GPU architecture. Set CMAKE_CUDA_ARCHITECTURES (90 for H100, 80 for A100) or nvcc -arch. To build for older GPUs as well, define SEQPAR_ALLOW_PRE_SM80: linear_cuda and gated_linear_cuda then run on CUDA cores on those GPUs, and such a binary must not run on a newer GPU through its pre-sm_80 PTX (the tensor-core kernels would trap)."
#endif
