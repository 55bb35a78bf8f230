"""ctypes mirror of the C API (runtime/include/arvc.h): one definition of its structs and signatures for
Python code that drives libarvc (the tests that compare it with the Python runtime, the benchmark).

    with CSession(LIB, "tiny.plan", threads=2) as s:
        s.set_prompt("a red circle moving right on a dark blue background", seed=0)
        frames = s.next_block()  # uint8 [n, H, W, 3]
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np

from arvc.model.stream_inputs import check_seed

_p = ctypes.c_void_p
_f32p = ctypes.POINTER(ctypes.c_float)
_u8p = ctypes.POINTER(ctypes.c_uint8)


class Options(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("threads", ctypes.c_int32), ("skip_verify", ctypes.c_int32),
                ("no_prefetch", ctypes.c_int32), ("onnxruntime_library", ctypes.c_char_p)]


class Info(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("width", ctypes.c_int32), ("height", ctypes.c_int32), ("fps", ctypes.c_int32),
                ("latent_frames_per_block", ctypes.c_int32), ("first_block_frames", ctypes.c_int32),
                ("block_frames", ctypes.c_int32), ("max_block_bytes", ctypes.c_size_t), ("window", ctypes.c_int32),
                ("sink", ctypes.c_int32), ("max_blocks", ctypes.c_int32), ("has_text_encoder", ctypes.c_int32),
                ("text_dim", ctypes.c_int32), ("text_len", ctypes.c_int32), ("kv_cache_bytes", ctypes.c_size_t),
                ("vae_state_bytes", ctypes.c_size_t), ("precision", ctypes.c_char_p)]


class Stats(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("blocks", ctypes.c_int64), ("frames", ctypes.c_int64),
                ("wall_s", ctypes.c_double), ("first_frame_s", ctypes.c_double), ("text_s", ctypes.c_double),
                ("dit_s", ctypes.c_double), ("vae_s", ctypes.c_double), ("dit_calls", ctypes.c_int64),
                ("last_block_s", ctypes.c_double)]


_SIGNATURES = {
    "arvc_last_error": (ctypes.c_char_p, []),
    "arvc_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(Options), ctypes.POINTER(_p)]),
    "arvc_close": (None, [_p]),
    "arvc_get_info": (ctypes.c_int, [_p, ctypes.POINTER(Info)]),
    "arvc_get_stats": (ctypes.c_int, [_p, ctypes.POINTER(Stats)]),
    "arvc_set_prompt": (ctypes.c_int, [_p, ctypes.c_char_p, ctypes.c_uint64]),
    "arvc_set_prompt_embeddings": (ctypes.c_int, [_p, _f32p, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64]),
    "arvc_next_block": (ctypes.c_int, [_p, _u8p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32)]),
    "arvc_switch_prompt": (ctypes.c_int, [_p, ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]),
    "arvc_switch_prompt_embeddings": (ctypes.c_int, [_p, _f32p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                     ctypes.POINTER(ctypes.c_int64)]),
    "arvc_plan_describe": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_char_p)]),
}


class CApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status = status


INSTALLED = Path(__file__).resolve().parent / "lib" / "libarvc.so"  # where the wheel's CMake install puts it


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """libarvc.so from ``path`` (a CMake build's), else the one the wheel installed."""
    if path is None and not INSTALLED.is_file():
        raise FileNotFoundError(f"no libarvc.so at {INSTALLED}; build it (cmake --build BUILD --target arvc) and pass its path")
    lib = ctypes.CDLL(str(path or INSTALLED))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def describe_plan(lib: ctypes.CDLL, plan: str | Path, verify_files: bool = True) -> dict:
    """The plan as the C runtime reads it (arvc_plan_describe)."""
    out = ctypes.c_char_p()
    status = lib.arvc_plan_describe(str(plan).encode(), int(verify_files), ctypes.byref(out))
    if status != 0:
        raise CApiError(status, lib.arvc_last_error().decode())
    return json.loads(out.value)


class CSession:
    """One arvc_session; every failing call raises CApiError with the C runtime's message."""

    def __init__(self, lib: ctypes.CDLL, plan: str | Path, threads: int = 0, prefetch: bool = True):
        self.lib, self._s = lib, _p()
        opts = Options(ctypes.sizeof(Options), threads, 0, 0 if prefetch else 1, None)
        self._check(lib.arvc_open(str(plan).encode(), ctypes.byref(opts), ctypes.byref(self._s)))
        self.info = Info()
        self.info.size = ctypes.sizeof(Info)
        self._check(lib.arvc_get_info(self._s, ctypes.byref(self.info)))
        self._buffer = np.zeros(self.info.max_block_bytes, np.uint8)

    def _check(self, status: int) -> None:
        if status != 0:
            raise CApiError(status, self.lib.arvc_last_error().decode())

    def set_prompt(self, prompt: str | np.ndarray, seed: int) -> None:
        seed = check_seed(seed)  # ctypes would mask it to 64 bits: refused as Python's own runtime refuses it
        if isinstance(prompt, str):
            self._check(self.lib.arvc_set_prompt(self._s, prompt.encode(), seed))
        else:
            emb = np.ascontiguousarray(prompt, np.float32)
            self._check(self.lib.arvc_set_prompt_embeddings(self._s, emb.ctypes.data_as(_f32p), *emb.shape, seed))

    def switch_prompt(self, prompt: str | np.ndarray, at_block: int = -1) -> int:
        applied = ctypes.c_int64()
        if isinstance(prompt, str):
            self._check(self.lib.arvc_switch_prompt(self._s, prompt.encode(), at_block, ctypes.byref(applied)))
        else:
            emb = np.ascontiguousarray(prompt, np.float32)
            self._check(self.lib.arvc_switch_prompt_embeddings(self._s, emb.ctypes.data_as(_f32p), *emb.shape, at_block,
                                                               ctypes.byref(applied)))
        return applied.value

    def next_block(self) -> np.ndarray:
        """The next block's frames, uint8 [n, H, W, 3] (a copy)."""
        n = ctypes.c_int32()
        self._check(self.lib.arvc_next_block(self._s, self._buffer.ctypes.data_as(_u8p), self._buffer.size, ctypes.byref(n)))
        h, w = self.info.height, self.info.width
        return self._buffer[: n.value * h * w * 3].reshape(n.value, h, w, 3).copy()

    def stats(self) -> Stats:
        st = Stats()
        st.size = ctypes.sizeof(Stats)
        self._check(self.lib.arvc_get_stats(self._s, ctypes.byref(st)))
        return st

    def close(self) -> None:
        if self._s:
            self.lib.arvc_close(self._s)
            self._s = _p()

    def __enter__(self) -> "CSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
