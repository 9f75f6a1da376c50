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

# For the installed seqparConfig.cmake: finds what seqpar::seqpar needs (the CUDA toolkit and
# CCCL) with find_dependency; a missing one makes seqpar not found and returns from the config
# file (find_dependency's return()). Reads and sets no SEQPAR_* variable of the consumer.
macro(seqpar_find_package_dependencies)
  find_dependency(CUDAToolkit)
  _seqpar_cccl_hints(_seqpar_hints)
  find_dependency(CCCL CONFIG COMPONENTS libcudacxx CUB HINTS ${_seqpar_hints})
  unset(_seqpar_hints)
endmacro()

# For the installed seqparConfig.cmake: finds the dependency of component `component` (nccl:
# NCCL, with FindNCCL.cmake from `dir`; mpi: MPI's C++ bindings) and sets `found`. A required
# component that is missing makes seqpar not found, with a message naming the dependency
# (find_dependency's return()); an optional one only leaves `found` false.
macro(seqpar_find_component_dependency dir component required found)
  set(_seqpar_module_path "${CMAKE_MODULE_PATH}")
  list(PREPEND CMAKE_MODULE_PATH "${dir}")
  if("${component}" STREQUAL "nccl")
    set(_seqpar_dependency NCCL)
  else()
    set(_seqpar_dependency MPI COMPONENTS CXX)
  endif()
  if(${required})
    find_dependency(${_seqpar_dependency})
    set(${found} TRUE)
  else()
    list(GET _seqpar_dependency 0 _seqpar_package)
    find_package(${_seqpar_dependency} QUIET)
    set(${found} ${${_seqpar_package}_FOUND})
    unset(_seqpar_package)
  endif()
  set(CMAKE_MODULE_PATH "${_seqpar_module_path}")
  unset(_seqpar_module_path)
  unset(_seqpar_dependency)
endmacro()

# Gives `target` (seqpar's INTERFACE library) its usage requirements: C++20 for both g++ and nvcc,
# the CUDA headers and runtime, and CCCL. The backends are components of their own
# (seqpar_add_backend_targets).
function(seqpar_link_dependencies target)
  target_compile_features(${target} INTERFACE cxx_std_20)
  # CMake 3.25 does not know cuda_std_20 for nvcc 13, so ask nvcc directly; a target that chose
  # its own CUDA_STANDARD keeps it (and config.hpp then says that C++20 is required).
  target_compile_options(${target} INTERFACE
    "$<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<STREQUAL:$<TARGET_PROPERTY:CUDA_STANDARD>,>>:-std=c++20>")
  target_link_libraries(${target} INTERFACE CUDA::cudart CCCL::CCCL)
endfunction()

# The backend components, each an INTERFACE library over seqpar that adds its dependency and its
# SEQPAR_HAS_* macro: seqpar_nccl (seqpar::nccl) when NCCL was found, seqpar_mpi (seqpar::mpi)
# when MPI is enabled. Sets SEQPAR_BACKEND_TARGETS in the caller's scope to those made.
macro(seqpar_add_backend_targets)
  set(SEQPAR_BACKEND_TARGETS "")
  set(_seqpar_nccl_dependency NCCL::NCCL)
  set(_seqpar_mpi_dependency MPI::MPI_CXX)
  foreach(_seqpar_backend nccl mpi)
    string(TOUPPER "${_seqpar_backend}" _seqpar_upper)
    if(SEQPAR_HAS_${_seqpar_upper})
      add_library(seqpar_${_seqpar_backend} INTERFACE)
      target_link_libraries(seqpar_${_seqpar_backend} INTERFACE seqpar ${_seqpar_${_seqpar_backend}_dependency})
      target_compile_definitions(seqpar_${_seqpar_backend} INTERFACE SEQPAR_HAS_${_seqpar_upper}=1)
      set_target_properties(seqpar_${_seqpar_backend} PROPERTIES EXPORT_NAME ${_seqpar_backend})
      add_library(seqpar::${_seqpar_backend} ALIAS seqpar_${_seqpar_backend})
      list(APPEND SEQPAR_BACKEND_TARGETS seqpar::${_seqpar_backend})
    endif()
  endforeach()
  unset(_seqpar_nccl_dependency)
  unset(_seqpar_mpi_dependency)
  unset(_seqpar_backend)
  unset(_seqpar_upper)
endmacro()
