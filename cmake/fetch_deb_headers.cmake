# Header-only build dependencies of the C runtime, taken from the system when installed and otherwise
# fetched once from Debian's archive (a pinned .deb checked by SHA-256, unpacked into the build tree):
#   ONNX Runtime's C/C++ API headers  (Debian libonnxruntime-dev; the library itself is loaded at run time)
#   nlohmann/json                     (Debian nlohmann-json3-dev)
# ARVC_DEB_MIRROR points at another Debian mirror; ARVC_ONNXRUNTIME_INCLUDE_DIR / ARVC_NLOHMANN_INCLUDE_DIR
# at headers elsewhere.
set(ARVC_DEB_MIRROR "http://deb.debian.org/debian" CACHE STRING "Debian mirror the build fetches headers from")

function(arvc_fetch_deb_include out_var name deb_path sha256 probe_header)
  set(root ${CMAKE_BINARY_DIR}/_deps/${name})
  if(NOT EXISTS ${root}/usr/include/${probe_header})
    set(deb ${CMAKE_BINARY_DIR}/_deps/${name}.deb)
    message(STATUS "arvc: fetching ${name} headers from ${ARVC_DEB_MIRROR}/${deb_path}")
    file(DOWNLOAD ${ARVC_DEB_MIRROR}/${deb_path} ${deb} EXPECTED_HASH SHA256=${sha256} STATUS st TLS_VERIFY ON)
    list(GET st 0 code)
    if(NOT code EQUAL 0)
      file(REMOVE ${deb})
      message(FATAL_ERROR "arvc: could not download ${name} (${st}). Install the Debian package "
                          "(apt install ${name}) or set ARVC_DEB_MIRROR to a reachable Debian mirror.")
    endif()
    # a .deb is an ar archive holding data.tar.*; CMake's libarchive reads both
    set(tmp ${root}.tmp)
    file(REMOVE_RECURSE ${tmp})
    file(MAKE_DIRECTORY ${tmp})
    execute_process(COMMAND ${CMAKE_COMMAND} -E tar xf ${deb} WORKING_DIRECTORY ${tmp} RESULT_VARIABLE rc1)
    file(GLOB data ${tmp}/data.tar.*)
    execute_process(COMMAND ${CMAKE_COMMAND} -E tar xf ${data} WORKING_DIRECTORY ${tmp} RESULT_VARIABLE rc2)
    if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0 OR NOT EXISTS ${tmp}/usr/include/${probe_header})
      message(FATAL_ERROR "arvc: ${deb} did not unpack to usr/include/${probe_header}")
    endif()
    file(REMOVE_RECURSE ${root})
    file(RENAME ${tmp} ${root})  # published whole: a half-unpacked tree is never reused
  endif()
  set(${out_var} ${root}/usr/include PARENT_SCOPE)
endfunction()

if(NOT ARVC_ONNXRUNTIME_INCLUDE_DIR)
  find_path(ARVC_ONNXRUNTIME_INCLUDE_DIR onnxruntime_cxx_api.h PATH_SUFFIXES onnxruntime)
  if(NOT ARVC_ONNXRUNTIME_INCLUDE_DIR)
    arvc_fetch_deb_include(inc libonnxruntime-dev
      pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb
      14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08 onnxruntime/onnxruntime_cxx_api.h)
    set(ARVC_ONNXRUNTIME_INCLUDE_DIR ${inc}/onnxruntime CACHE PATH "ONNX Runtime C/C++ API headers" FORCE)
  endif()
endif()

if(NOT ARVC_NLOHMANN_INCLUDE_DIR)
  find_path(ARVC_NLOHMANN_INCLUDE_DIR nlohmann/json.hpp)
  if(NOT ARVC_NLOHMANN_INCLUDE_DIR)
    arvc_fetch_deb_include(inc nlohmann-json3-dev
      pool/main/n/nlohmann-json3/nlohmann-json3-dev_3.11.2-2_all.deb
      ec57940def6b6186c30be0e0ee81d1e58f86d11a54a145b28686a1e3e4aae801 nlohmann/json.hpp)
    set(ARVC_NLOHMANN_INCLUDE_DIR ${inc} CACHE PATH "nlohmann/json headers" FORCE)
  endif()
endif()
