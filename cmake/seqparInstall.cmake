# Installs the headers, the exported targets and a relocatable package configuration: the core
# target in seqparTargets.cmake, each backend component (seqpar::nccl, seqpar::mpi) in a file of
# its own that seqparConfig.cmake reads only when the component is asked for.
include_guard(GLOBAL)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(SEQPAR_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/seqpar")

install(TARGETS seqpar EXPORT seqparTargets)
install(DIRECTORY include/seqpar TYPE INCLUDE)
install(EXPORT seqparTargets NAMESPACE seqpar:: DESTINATION "${SEQPAR_INSTALL_CMAKEDIR}")
foreach(component nccl mpi)
  if(TARGET seqpar_${component})
    install(TARGETS seqpar_${component} EXPORT seqpar_${component}Targets)
    install(EXPORT seqpar_${component}Targets NAMESPACE seqpar:: DESTINATION "${SEQPAR_INSTALL_CMAKEDIR}")
  endif()
endforeach()

configure_package_config_file(cmake/seqparConfig.cmake.in
  "${CMAKE_CURRENT_BINARY_DIR}/seqparConfig.cmake"
  INSTALL_DESTINATION "${SEQPAR_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/seqparConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES
  "${CMAKE_CURRENT_BINARY_DIR}/seqparConfig.cmake"
  "${CMAKE_CURRENT_BINARY_DIR}/seqparConfigVersion.cmake"
  cmake/seqparDependencies.cmake
  cmake/FindNCCL.cmake
  cmake/FindCUDNNFrontend.cmake
  DESTINATION "${SEQPAR_INSTALL_CMAKEDIR}")
