# Locate TensorRT's headers and nvinfer library: -DTENSORRT_ROOT=..., $TENSORRT_ROOT, -DTensorRT_DIR=...,
# or the standard system paths (Debian/Ubuntu packages put NvInfer.h in /usr/include/<arch>-linux-gnu).
# Sets TensorRT_FOUND, TensorRT_INCLUDE_DIR, TensorRT_LIBRARY.
set(_arvc_trt_hints ${TENSORRT_ROOT} $ENV{TENSORRT_ROOT} ${TensorRT_DIR} $ENV{TensorRT_DIR})
find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS ${_arvc_trt_hints} PATH_SUFFIXES include)
find_library(TensorRT_LIBRARY NAMES nvinfer nvinfer_10 HINTS ${_arvc_trt_hints} PATH_SUFFIXES lib lib64)
if(TensorRT_INCLUDE_DIR AND TensorRT_LIBRARY)
  set(TensorRT_FOUND TRUE)
else()
  set(TensorRT_FOUND FALSE)
endif()
