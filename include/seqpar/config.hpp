//! @file config.hpp
//! Version macros, the versioned namespaces and SEQPAR_HOST_DEVICE.
#pragma once

#if __cplusplus < 202002L
#error "seqpar needs C++20: compile with -std=c++20 (for nvcc too; seqpar::seqpar adds it unless CUDA_STANDARD is set)"
#endif

// The one place the version is written: CMakeLists.txt reads these three lines for project().
//! Major version of seqpar.
#define SEQPAR_VERSION_MAJOR 0
//! Minor version of seqpar.
#define SEQPAR_VERSION_MINOR 1
//! Patch version of seqpar.
#define SEQPAR_VERSION_PATCH 0
//! The version as one integer: major * 10000 + minor * 100 + patch.
#define SEQPAR_VERSION (SEQPAR_VERSION_MAJOR * 10000 + SEQPAR_VERSION_MINOR * 100 + SEQPAR_VERSION_PATCH)

#define SEQPAR_DETAIL_CAT_(a, b) a##b
#define SEQPAR_DETAIL_CAT(a, b) SEQPAR_DETAIL_CAT_(a, b)
#define SEQPAR_DETAIL_STR_(a) #a
#define SEQPAR_DETAIL_STR(a) SEQPAR_DETAIL_STR_(a)

//! Name of the inline namespace that versions every seqpar entity (v0_1_0 for 0.1.0).
#define SEQPAR_ABI_NAMESPACE                                                                      \
  SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_CAT(v, SEQPAR_VERSION_MAJOR),               \
                                      SEQPAR_DETAIL_CAT(_, SEQPAR_VERSION_MINOR)),              \
                    SEQPAR_DETAIL_CAT(_, SEQPAR_VERSION_PATCH))

//! Opens namespace seqpar and its versioned inline namespace.
#define SEQPAR_NAMESPACE_BEGIN                                                                    \
  namespace seqpar {                                                                              \
  inline namespace SEQPAR_ABI_NAMESPACE {
//! Closes what SEQPAR_NAMESPACE_BEGIN opened.
#define SEQPAR_NAMESPACE_END                                                                      \
  }                                                                                               \
  }

// Kernels and their launchers also carry the list of target architectures in their namespace, so
// two shared libraries built for different architectures never share a kernel symbol. The list
// comes from nvcc's __CUDA_ARCH_LIST__ (e.g. 800,900), which is the same in host and device passes.
#define SEQPAR_DETAIL_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, N, ...) N
#define SEQPAR_DETAIL_NARGS(...) SEQPAR_DETAIL_NARGS_(__VA_ARGS__, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define SEQPAR_DETAIL_SM1(a) SEQPAR_DETAIL_CAT(_sm, a)
#define SEQPAR_DETAIL_SM2(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM1(__VA_ARGS__))
#define SEQPAR_DETAIL_SM3(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM2(__VA_ARGS__))
#define SEQPAR_DETAIL_SM4(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM3(__VA_ARGS__))
#define SEQPAR_DETAIL_SM5(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM4(__VA_ARGS__))
#define SEQPAR_DETAIL_SM6(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM5(__VA_ARGS__))
#define SEQPAR_DETAIL_SM7(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM6(__VA_ARGS__))
#define SEQPAR_DETAIL_SM8(a, ...) SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM1(a), SEQPAR_DETAIL_SM7(__VA_ARGS__))
#define SEQPAR_DETAIL_ARCH_TAG(...)                                                               \
  SEQPAR_DETAIL_CAT(SEQPAR_DETAIL_SM, SEQPAR_DETAIL_NARGS(__VA_ARGS__))(__VA_ARGS__)

//! Name of the namespace, inside the versioned one, that holds kernels (kernels_sm800_sm900).
#if defined(__CUDACC__) && defined(__CUDA_ARCH_LIST__)
#define SEQPAR_KERNEL_NAMESPACE SEQPAR_DETAIL_CAT(kernels, SEQPAR_DETAIL_ARCH_TAG(__CUDA_ARCH_LIST__))
#else
#define SEQPAR_KERNEL_NAMESPACE kernels_host
#endif

//! Opens the versioned namespace plus an inline namespace named after the target architectures, for
//! functions whose body differs between nvcc and host compilers (kernels and what launches them),
//! so a .cpp and a .cu of one program never share such a symbol.
#define SEQPAR_KERNEL_NAMESPACE_BEGIN                                                             \
  SEQPAR_NAMESPACE_BEGIN                                                                          \
  inline namespace SEQPAR_KERNEL_NAMESPACE {
//! Closes what SEQPAR_KERNEL_NAMESPACE_BEGIN opened.
#define SEQPAR_KERNEL_NAMESPACE_END                                                               \
  }                                                                                               \
  SEQPAR_NAMESPACE_END

//! Opens seqpar::detail plus the inline namespace named after the target architectures: where
//! kernels and the launch code that users need not see live (seqpar::detail::x finds them, and
//! there is only one namespace named detail, so the name is never ambiguous).
#define SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN                                                      \
  SEQPAR_NAMESPACE_BEGIN                                                                          \
  namespace detail {                                                                              \
  inline namespace SEQPAR_KERNEL_NAMESPACE {
//! Closes what SEQPAR_DETAIL_KERNEL_NAMESPACE_BEGIN opened.
#define SEQPAR_DETAIL_KERNEL_NAMESPACE_END                                                        \
  }                                                                                               \
  }                                                                                               \
  SEQPAR_NAMESPACE_END

//! Marks a function callable from host and device code (plain inline when nvcc is not compiling).
#if defined(__CUDACC__)
#define SEQPAR_HOST_DEVICE __host__ __device__ inline
#else
#define SEQPAR_HOST_DEVICE inline
#endif

//! 1 when a CUDA compiler is compiling this translation unit.
#if defined(__CUDACC__)
#define SEQPAR_CUDA_COMPILER 1
#else
#define SEQPAR_CUDA_COMPILER 0
#endif

//! 1 when the NCCL backend is available (the seqpar target defines SEQPAR_HAS_NCCL when found).
#if !defined(SEQPAR_HAS_NCCL)
#define SEQPAR_HAS_NCCL 0
#endif

//! 1 when the MPI backend is available (the seqpar target defines SEQPAR_HAS_MPI when enabled).
#if !defined(SEQPAR_HAS_MPI)
#define SEQPAR_HAS_MPI 0
#endif
