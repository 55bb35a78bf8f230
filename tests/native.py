"""Build csrc/ with CMake once per test session and load the CPU kernels through ctypes."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KV_FORMAT = {"fp16": 1, "int8": 2, "fp8": 3, "nvfp4": 4}
DTYPE = {np.float32: 0, np.float16: 1}


class KVCache(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int32), ("heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("rows", ctypes.c_int32), ("data", ctypes.c_void_p), ("block_scale", ctypes.c_void_p),
                ("scale", ctypes.c_void_p)]


def build(build_dir: Path, cuda: bool = False) -> Path:
    """Configure + build; returns the build directory (ctest runs there)."""
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is not installed; the native kernel tests need it (apt install cmake)")
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DARVC_CUDA={'ON' if cuda else 'OFF'}"], check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", "2"], check=True, capture_output=True, text=True)
    return build_dir


def load(build_dir: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(next(build_dir.rglob("libarvc_kernels.so"))))
    lib.arvc_status_string.restype = ctypes.c_char_p
    lib.arvc_kv_data_bytes_per_row.restype = ctypes.c_int64
    lib.arvc_kv_data_bytes_per_row.argtypes = [ctypes.c_int32] * 3
    return lib


class CacheBuffers:
    """Numpy buffers of one K or V cache in a format, and the arvc_kv_cache struct pointing at them."""

    def __init__(self, fmt: str, rows: int, heads: int, head_dim: int):
        dim = heads * head_dim
        self.fmt, self.rows, self.heads, self.head_dim = fmt, rows, heads, head_dim
        data_dtype = {"fp16": np.float16, "int8": np.int8, "fp8": np.uint8, "nvfp4": np.uint8}[fmt]
        self.data = np.zeros((rows, dim // 2 if fmt == "nvfp4" else dim), data_dtype)
        self.block_scale = np.zeros((rows, dim // 16), np.uint8) if fmt == "nvfp4" else None
        self.scale = np.zeros((rows, heads), np.float32) if fmt != "fp16" else None
        ptr = (lambda a: a.ctypes.data if a is not None else None)
        self.struct = KVCache(KV_FORMAT[fmt], heads, head_dim, rows, ptr(self.data), ptr(self.block_scale),
                              ptr(self.scale))
