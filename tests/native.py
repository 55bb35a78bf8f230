"""Load the kernels' CPU library through ctypes for the native tests: one build per test session,
shared with tests/test_runtime_kernels.py (arvc.runtime.kernels builds and caches it)."""
from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from arvc.quant.format_table import KV_CODES
from arvc.runtime import kernels
from arvc.runtime.kernels import KVCacheStruct as KVCache  # noqa: F401  (one struct definition)

REPO = kernels.REPO
DTYPE = {np.float32: 0, np.float16: 1}


def session_xdg_cache() -> Path:
    """An XDG_CACHE_HOME for this test process: arvc.runtime.kernels builds into <it>/arvc/kernels/.
    Keyed by pid, not module state: this module is imported both as `native` and as `tests.native`, and
    both (and tests/test_runtime_kernels.py) must find the one build."""
    return Path(tempfile.gettempdir()) / f"arvc-kernels-test-{os.getpid()}"


def session_cache_root() -> Path:
    return session_xdg_cache() / "arvc" / "kernels"


atexit.register(shutil.rmtree, session_xdg_cache(), True)


def build(_unused_dir: Path | None = None, cuda: bool = False) -> Path:
    """The CMake build directory (ctest runs there) of the current sources, built once per session."""
    if cuda and kernels._find_nvcc() is None:
        pytest.skip("nvcc not found: the CUDA kernels cannot be built")
    return kernels.build_dir(cuda, session_cache_root())


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
        self.struct = KVCache(KV_CODES[fmt], heads, head_dim, rows, ptr(self.data), ptr(self.block_scale),
                              ptr(self.scale))
