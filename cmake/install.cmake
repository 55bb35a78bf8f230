# Install rules for arvc's native parts, included at the end of the top-level CMakeLists.txt.
#
# In the wheel build (scikit-build-core sets SKBUILD) everything lands inside the arvc.runtime package:
#   arvc/runtime/lib/      libarvc_kernels.so, libarvc.so, libarvc_kernels_cuda.so (whichever are built)
#   arvc/runtime/bin/      arvc_stream (the example streaming program)
#   arvc/runtime/include/  the public headers (runtime/include/*.h)
#   arvc/runtime/lib/cmake/arvc/  the CMake package of the C API (arvc::arvc)
# A plain `cmake --install` uses the usual lib/, bin/, include/ under CMAKE_INSTALL_PREFIX.
# Every rule is guarded by if(TARGET ...): a target that is not configured (ARVC_CUDA=OFF, no nvcc, no C
# runtime yet) is simply not installed.
include(GNUInstallDirs)
include(${CMAKE_CURRENT_LIST_DIR}/arvc_version.cmake)

if(SKBUILD)
  set(ARVC_INSTALL_LIBDIR arvc/runtime/lib)
  set(ARVC_INSTALL_BINDIR arvc/runtime/bin)
  set(ARVC_INSTALL_INCLUDEDIR arvc/runtime/include)
else()
  set(ARVC_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
  set(ARVC_INSTALL_BINDIR ${CMAKE_INSTALL_BINDIR})
  set(ARVC_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})
endif()

# The installed files find each other relative to themselves: libraries next to one another, the
# program in bin/ next to lib/.
file(RELATIVE_PATH _arvc_bin_to_lib /${ARVC_INSTALL_BINDIR} /${ARVC_INSTALL_LIBDIR})

foreach(_arvc_lib arvc_kernels arvc_kernels_cuda)
  if(TARGET ${_arvc_lib})
    set_target_properties(${_arvc_lib} PROPERTIES INSTALL_RPATH "$ORIGIN")
    install(TARGETS ${_arvc_lib}
            LIBRARY DESTINATION ${ARVC_INSTALL_LIBDIR}
            ARCHIVE DESTINATION ${ARVC_INSTALL_LIBDIR}
            RUNTIME DESTINATION ${ARVC_INSTALL_BINDIR})
  endif()
endforeach()

# The C API as a CMake package: find_package(arvc) + target_link_libraries(app PRIVATE arvc::arvc), with
# CMAKE_PREFIX_PATH at the install prefix (in the wheel: <site-packages>/arvc/runtime).
if(TARGET arvc)
  set_target_properties(arvc PROPERTIES INSTALL_RPATH "$ORIGIN")
  target_include_directories(arvc PUBLIC $<INSTALL_INTERFACE:${ARVC_INSTALL_INCLUDEDIR}>)
  install(TARGETS arvc EXPORT arvcTargets LIBRARY DESTINATION ${ARVC_INSTALL_LIBDIR})
  install(EXPORT arvcTargets NAMESPACE arvc:: DESTINATION ${ARVC_INSTALL_LIBDIR}/cmake/arvc)
  include(CMakePackageConfigHelpers)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/arvcConfig.cmake "include(\${CMAKE_CURRENT_LIST_DIR}/arvcTargets.cmake)\n")
  write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/arvcConfigVersion.cmake
                                   VERSION ${ARVC_VERSION_STRING} COMPATIBILITY SameMinorVersion)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/arvcConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/arvcConfigVersion.cmake
          DESTINATION ${ARVC_INSTALL_LIBDIR}/cmake/arvc)
endif()

if(TARGET arvc_stream)
  set_target_properties(arvc_stream PROPERTIES INSTALL_RPATH "$ORIGIN/${_arvc_bin_to_lib}")
  install(TARGETS arvc_stream RUNTIME DESTINATION ${ARVC_INSTALL_BINDIR})
endif()

file(GLOB _arvc_public_headers ${CMAKE_CURRENT_LIST_DIR}/../runtime/include/*.h)
if(_arvc_public_headers)
  install(FILES ${_arvc_public_headers} DESTINATION ${ARVC_INSTALL_INCLUDEDIR})
endif()

# The wheel needs only the installed targets: the ctest executables (csrc/tests, runtime/tests) are left
# out of its build. Plain builds keep building and registering them.
if(SKBUILD)
  foreach(_arvc_dir csrc runtime)
    if(EXISTS ${CMAKE_SOURCE_DIR}/${_arvc_dir}/CMakeLists.txt)
      get_property(_arvc_targets DIRECTORY ${CMAKE_SOURCE_DIR}/${_arvc_dir} PROPERTY BUILDSYSTEM_TARGETS)
      foreach(_arvc_target IN LISTS _arvc_targets)
        get_target_property(_arvc_type ${_arvc_target} TYPE)
        if(_arvc_type STREQUAL "EXECUTABLE" AND _arvc_target MATCHES "^test_")
          set_target_properties(${_arvc_target} PROPERTIES EXCLUDE_FROM_ALL TRUE)
        endif()
      endforeach()
    endif()
  endforeach()
endif()
