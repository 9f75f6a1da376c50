# What the seqpar target needs, shared by the build tree and the installed seqparConfig.cmake so
# both find the same packages and give seqpar::seqpar the same usage requirements.
include_guard(GLOBAL)

# Where CCCL's package configuration sits in a CUDA toolkit (call after finding CUDAToolkit).
macro(_seqpar_cccl_hints out)
  set(${out} "${CUDAToolkit_LIBRARY_DIR}/cmake" "${CUDAToolkit_LIBRARY_ROOT}/lib64/cmake")
endmacro()

# For seqpar's own build: finds the CUDA toolkit (headers and cudart; nvcc is not needed), CCCL,
# and, when asked for (SEQPAR_ENABLE_*) and present, NCCL, MPI and the cuDNN frontend. Sets
# SEQPAR_HAS_NCCL, SEQPAR_HAS_MPI and SEQPAR_HAS_CUDNN in the caller's scope. The cuDNN frontend is
# not a usage requirement of seqpar::seqpar: a consumer of cudnn_attention links
# CUDNNFrontend::CUDNNFrontend (FindCUDNNFrontend.cmake, installed beside seqparConfig.cmake).
macro(seqpar_find_dependencies)
  find_package(CUDAToolkit REQUIRED)
  _seqpar_cccl_hints(_seqpar_hints)
  find_package(CCCL CONFIG REQUIRED COMPONENTS libcudacxx CUB HINTS ${_seqpar_hints})
  unset(_seqpar_hints)
  set(SEQPAR_HAS_NCCL OFF)
  if(NOT DEFINED SEQPAR_ENABLE_NCCL OR SEQPAR_ENABLE_NCCL)
    find_package(NCCL)
    if(NCCL_FOUND)
      set(SEQPAR_HAS_NCCL ON)
    endif()
  endif()
  set(SEQPAR_HAS_MPI OFF)
  if(SEQPAR_ENABLE_MPI)
    find_package(MPI REQUIRED COMPONENTS CXX)
    set(SEQPAR_HAS_MPI ON)
  endif()
  set(SEQPAR_HAS_CUDNN OFF)
  if(NOT DEFINED SEQPAR_ENABLE_CUDNN OR SEQPAR_ENABLE_CUDNN)
    find_package(CUDNNFrontend)
    if(CUDNNFrontend_FOUND)
      set(SEQPAR_HAS_CUDNN ON)
    endif()
  endif()
endmacro()

# For the installed seqparConfig.cmake (`dir` is where it and FindNCCL.cmake sit): finds the same
# packages with find_dependency, NCCL and MPI when seqpar_WITH_NCCL / seqpar_WITH_MPI say that
# seqpar was built with them. A missing one makes seqpar not found and returns from the config
# file (find_dependency's return()); on that path only, `dir` stays at the front of
# CMAKE_MODULE_PATH. Reads and sets no SEQPAR_* variable of the consumer.
macro(seqpar_find_package_dependencies dir)
  find_dependency(CUDAToolkit)
  _seqpar_cccl_hints(_seqpar_hints)
  find_dependency(CCCL CONFIG COMPONENTS libcudacxx CUB HINTS ${_seqpar_hints})
  unset(_seqpar_hints)
  if(seqpar_WITH_NCCL)
    set(_seqpar_module_path "${CMAKE_MODULE_PATH}")
    list(PREPEND CMAKE_MODULE_PATH "${dir}")
    find_dependency(NCCL)
    set(CMAKE_MODULE_PATH "${_seqpar_module_path}")
    unset(_seqpar_module_path)
  endif()
  if(seqpar_WITH_MPI)
    find_dependency(MPI COMPONENTS CXX)
  endif()
endmacro()

# Gives `target` (seqpar's INTERFACE library) its usage requirements: C++20 for both g++ and nvcc,
# the CUDA headers and runtime, CCCL, and the optional backends with their SEQPAR_HAS_* macros.
function(seqpar_link_dependencies target)
  target_compile_features(${target} INTERFACE cxx_std_20)
  # CMake 3.25 does not know cuda_std_20 for nvcc 13, so ask nvcc directly; a target that chose
  # its own CUDA_STANDARD keeps it (and config.hpp then says that C++20 is required).
  target_compile_options(${target} INTERFACE
    "$<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<STREQUAL:$<TARGET_PROPERTY:CUDA_STANDARD>,>>:-std=c++20>")
  target_link_libraries(${target} INTERFACE CUDA::cudart CCCL::CCCL)
  if(SEQPAR_HAS_NCCL)
    target_link_libraries(${target} INTERFACE NCCL::NCCL)
    target_compile_definitions(${target} INTERFACE SEQPAR_HAS_NCCL=1)
  endif()
  if(SEQPAR_HAS_MPI)
    target_link_libraries(${target} INTERFACE MPI::MPI_CXX)
    target_compile_definitions(${target} INTERFACE SEQPAR_HAS_MPI=1)
  endif()
endfunction()
