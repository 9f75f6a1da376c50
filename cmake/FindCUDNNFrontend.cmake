# FindCUDNNFrontend
# -----------------
# Finds the cuDNN frontend (header-only C++ graph API, cudnn_frontend.h) and the cuDNN 9 library it
# drives (and NVRTC, which the frontend also calls), and defines the imported target
# CUDNNFrontend::CUDNNFrontend: what seqpar/policy/cudnn_attention.hpp needs.
#
# Looks for the headers in CUDNN_FRONTEND_ROOT (CMake variable or environment: the folder that holds
# include/cudnn_frontend.h), then in the system's default places; for cuDNN in CUDNN_ROOT, then next
# to the CUDA toolkit (which ships cuDNN on some installs), then in the default places. The
# frontend's JSON support (serialising graphs) is left out: CUDNN_FRONTEND_SKIP_JSON_LIB.
#
# Result variables: CUDNNFrontend_FOUND, CUDNNFrontend_INCLUDE_DIRS, CUDNNFrontend_LIBRARIES,
# CUDNNFrontend_VERSION (the frontend's).

find_path(CUDNNFrontend_INCLUDE_DIR cudnn_frontend.h
  HINTS ${CUDNN_FRONTEND_ROOT} $ENV{CUDNN_FRONTEND_ROOT}
  PATH_SUFFIXES include)
find_path(CUDNNFrontend_CUDNN_INCLUDE_DIR cudnn.h
  HINTS ${CUDNN_ROOT} $ENV{CUDNN_ROOT} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)
find_library(CUDNNFrontend_CUDNN_LIBRARY NAMES cudnn
  HINTS ${CUDNN_ROOT} $ENV{CUDNN_ROOT} ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
# The frontend compiles some kernels at run time: it needs NVRTC beside cuDNN.
find_library(CUDNNFrontend_NVRTC_LIBRARY NAMES nvrtc HINTS ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)

if(CUDNNFrontend_INCLUDE_DIR AND EXISTS "${CUDNNFrontend_INCLUDE_DIR}/cudnn_frontend_version.h")
  file(STRINGS "${CUDNNFrontend_INCLUDE_DIR}/cudnn_frontend_version.h" _cudnn_fe_lines
       REGEX "^#define CUDNN_FRONTEND_(MAJOR|MINOR|PATCH)_VERSION ")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "CUDNN_FRONTEND_${_part}_VERSION +([0-9]+)" _match "${_cudnn_fe_lines}")
    set(_cudnn_fe_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  set(CUDNNFrontend_VERSION "${_cudnn_fe_MAJOR}.${_cudnn_fe_MINOR}.${_cudnn_fe_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CUDNNFrontend
  REQUIRED_VARS CUDNNFrontend_INCLUDE_DIR CUDNNFrontend_CUDNN_INCLUDE_DIR CUDNNFrontend_CUDNN_LIBRARY
                CUDNNFrontend_NVRTC_LIBRARY
  VERSION_VAR CUDNNFrontend_VERSION
  REASON_FAILURE_MESSAGE
    "set CUDNN_FRONTEND_ROOT to the folder that holds include/cudnn_frontend.h, and CUDNN_ROOT if cuDNN is not beside the CUDA toolkit")

if(CUDNNFrontend_FOUND)
  set(CUDNNFrontend_INCLUDE_DIRS "${CUDNNFrontend_INCLUDE_DIR}" "${CUDNNFrontend_CUDNN_INCLUDE_DIR}")
  set(CUDNNFrontend_LIBRARIES "${CUDNNFrontend_CUDNN_LIBRARY}" "${CUDNNFrontend_NVRTC_LIBRARY}")
  if(NOT TARGET CUDNNFrontend::CUDNNFrontend)
    add_library(CUDNNFrontend::CUDNNFrontend INTERFACE IMPORTED)
    # SYSTEM: the frontend's own headers are not held to the consumer's warning flags.
    set_target_properties(CUDNNFrontend::CUDNNFrontend PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${CUDNNFrontend_INCLUDE_DIRS}"
      INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${CUDNNFrontend_INCLUDE_DIRS}"
      INTERFACE_LINK_LIBRARIES "${CUDNNFrontend_LIBRARIES}"
      INTERFACE_COMPILE_DEFINITIONS CUDNN_FRONTEND_SKIP_JSON_LIB)
  endif()
endif()
mark_as_advanced(CUDNNFrontend_INCLUDE_DIR CUDNNFrontend_CUDNN_INCLUDE_DIR CUDNNFrontend_CUDNN_LIBRARY
                 CUDNNFrontend_NVRTC_LIBRARY)
unset(_cudnn_fe_lines)
