"""The runtime's binding of the cache-op kernels (csrc/arvc_kernels.h) for torch tensors, through ctypes.

The shared libraries come from ARVC_KERNELS_DIR (a CMake build directory) or are built from csrc/ on
first use into a per-source-hash cache directory, so a changed kernel source never loads a stale
library. The wrappers pass data_ptr()s and precomputed struct addresses and allocate no tensors, so a
call may sit inside a captured CUDA graph (with no_host_sync=True, see ARVC_FLAG_NO_HOST_SYNC).
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from arvc.quant.format_table import KV_CODES, dtype_codes
from arvc.quant.kv import kv_parts

from arvc import atomic

DTYPE_CODES = dtype_codes()  # torch dtype -> arvc_dtype

REPO = Path(__file__).resolve().parents[1]  # runtime/ sits at the repository's top level
INSTALLED_LIB = Path(__file__).resolve().parent / "lib"  # where a wheel's CMake install puts the libraries
FLAG_NO_HOST_SYNC = 1
LIB_NAME = {False: "libarvc_kernels.so", True: "libarvc_kernels_cuda.so"}


class KernelError(RuntimeError):
    """A kernel returned a non-OK arvc_status."""

    def __init__(self, call: str, status: int, message: str):
        super().__init__(f"{call} failed: status {status} ({message})")
        self.status = status


class KernelBuildError(RuntimeError):
    """The kernels could not be found or built."""


class KVCacheStruct(ctypes.Structure):
    """arvc_kv_cache."""
    _fields_ = [("format", ctypes.c_int32), ("heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
                ("rows", ctypes.c_int32), ("data", ctypes.c_void_p), ("block_scale", ctypes.c_void_p),
                ("scale", ctypes.c_void_p)]


# ---- finding / building the libraries ---------------------------------------------------------------

def _have_sources() -> bool:
    return (REPO / "csrc" / "arvc_kernels.h").is_file() and (REPO / "CMakeLists.txt").is_file()


def _sources() -> list[Path]:
    csrc = REPO / "csrc"
    if not _have_sources():
        raise KernelBuildError(
            f"the kernel sources (csrc/, CMakeLists.txt) are not next to the arvc package ({REPO}); this is a "
            "non-editable install. Install from a checkout with `pip install -e .`, or build csrc/ with CMake "
            "and point ARVC_KERNELS_DIR at the build directory")
    # everything the top-level CMake project builds: csrc/ and the runtime's native parts
    native = [p for d in (csrc, REPO / "runtime") for p in sorted(d.rglob("*")) if p.is_file()
              and p.suffix in (".h", ".cuh", ".cpp", ".cu", ".txt") and "__pycache__" not in p.parts]
    return [REPO / "CMakeLists.txt"] + native


def source_hash() -> str:
    """16 hex of sha256 over every kernel source's path and bytes: the cache directory's name."""
    h = hashlib.sha256()
    for p in _sources():
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def user_cache_dir(kind: str) -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/arvc/<kind>: where arvc keeps what it builds (kernels, engines)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arvc" / kind


def cache_root() -> Path:
    return user_cache_dir("kernels")


def _find_nvcc() -> str | None:
    if os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    return shutil.which("nvcc") or next((str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.exists()), None)


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-40:])
        raise KernelBuildError(f"{what} of the arvc kernels failed ({' '.join(cmd)}):\n{tail}")


def build_dir(cuda: bool, root: Path | None = None) -> Path:
    """The CMake build directory of the current sources (ctest runs there), built if needed.

    Layout under root/<source hash>/: build-{cpu,cuda}/ (CMake's tree; it records absolute paths, so it
    is built in place under a lock) and {cpu,cuda}/lib*.so (published by copy + rename once the build
    succeeded: a library there is always complete)."""
    key = (root or cache_root()) / source_hash()
    kind = "cuda" if cuda else "cpu"
    published = key / kind
    if (published / LIB_NAME[cuda]).is_file():
        return key / f"build-{kind}"
    if shutil.which("cmake") is None:
        raise KernelBuildError("cmake is not installed; building the arvc kernels needs it (e.g. apt install cmake "
                               "or pip install cmake)")
    nvcc = _find_nvcc() if cuda else None
    if cuda and nvcc is None:
        raise KernelBuildError("the CUDA kernels need nvcc; install the CUDA toolkit or use cache_ops='torch'")
    key.mkdir(parents=True, exist_ok=True)
    with open(key / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same sources
        if (published / LIB_NAME[cuda]).is_file():
            return key / f"build-{kind}"
        tree = key / f"build-{kind}"
        cfg = ["cmake", "-S", str(REPO), "-B", str(tree), "-DCMAKE_BUILD_TYPE=Release",
               f"-DARVC_CUDA={'ON' if cuda else 'OFF'}", "-DARVC_C_RUNTIME=OFF"]  # kernels only: no libarvc
        if nvcc:
            cfg.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        _run(cfg, "configuring")
        _run(["cmake", "--build", str(tree), "-j", str(max(1, min(8, os.cpu_count() or 1)))], "building")
        tmp = atomic.temp_dir(published, ".publishing")  # removed on any exit, or as stale by the next build
        for name in {LIB_NAME[False], LIB_NAME[cuda]}:
            built = next(tree.rglob(name), None)
            if built is None:
                atomic.discard(tmp)
                raise KernelBuildError(f"the build in {tree} produced no {name}" +
                                       (" (CMake did not find a CUDA compiler)" if cuda else ""))
            shutil.copy2(built, tmp / name)
        if published.exists():  # a stale half-published directory from a crashed process
            shutil.rmtree(published)
        os.rename(tmp, published)
        atomic.committed(tmp)
    return tree


def library_path(cuda: bool) -> Path:
    """libarvc_kernels.so (cuda=False) or libarvc_kernels_cuda.so: from ARVC_KERNELS_DIR when set; else, in a
    wheel install (no kernel sources next to the package), the one the wheel installed into
    <arvc.runtime>/lib/; else built once per source version into ${XDG_CACHE_HOME:-~/.cache}/arvc/kernels/<hash>/."""
    name = LIB_NAME[cuda]
    env = os.environ.get("ARVC_KERNELS_DIR")
    if env:
        found = next(Path(env).rglob(name), None)
        if found is None:
            raise KernelBuildError(f"ARVC_KERNELS_DIR={env} holds no {name}" +
                                   (" (configure it with -DARVC_CUDA=ON and nvcc present)" if cuda else ""))
        return found
    installed = INSTALLED_LIB / name
    if installed.is_file() and not _have_sources():
        return installed  # a wheel install: its CMake build installed the library into the package
    build_dir(cuda)
    return cache_root() / source_hash() / ("cuda" if cuda else "cpu") / name


# ---- caches ---------------------------------------------------------------------------------------------


class CacheTensors:
    """One layer's K or V cache in an ABI format as zeroed torch tensors, and the arvc_kv_cache over them.

    data [rows, dim] (nvfp4: [rows, dim/2] u8), block_scale [rows, dim/16] u8 (nvfp4), scale [rows, heads]
    f32 (quantized formats); the struct holds their addresses, so the tensors must never be reallocated."""

    def __init__(self, fmt: str, rows: int, heads: int, head_dim: int, device: str | torch.device = "cpu"):
        if fmt not in KV_CODES:
            raise ValueError(f"KV format {fmt!r} has no kernel; choose one of {tuple(KV_CODES)}")
        self.fmt, self.rows, self.heads, self.head_dim = fmt, rows, heads, head_dim
        self.device = torch.device(device)
        parts = {p.name: p for p in kv_parts(fmt, heads * head_dim, heads)}
        alloc = (lambda p: torch.zeros(rows, p.width, dtype=torch.from_numpy(np.empty(0, p.dtype)).dtype,
                                       device=self.device))
        self.data = alloc(parts["cache"])
        self.device = self.data.device  # "cuda" -> "cuda:0": compared with tensors' devices, which carry the index
        self.block_scale = alloc(parts["block_scale"]) if "block_scale" in parts else None
        self.scale = alloc(parts["scale"]) if "scale" in parts else None
        ptr = (lambda t: t.data_ptr() if t is not None else None)
        self.struct = KVCacheStruct(KV_CODES[fmt], heads, head_dim, rows, ptr(self.data), ptr(self.block_scale),
                                    ptr(self.scale))
        self.address = ctypes.addressof(self.struct)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.data, self.block_scale, self.scale) if t is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def zero_(self) -> "CacheTensors":
        for t in self.tensors():
            t.zero_()
        return self


# ---- the kernels ------------------------------------------------------------------------------------

_P, _I32, _I64, _U32, _F32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint32, ctypes.c_float


def check_tensor(name: str, t, device: torch.device, dtypes, shape: tuple) -> None:
    """shape: expected sizes, None where any size goes; the last dim must be contiguous."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, the kernels on {device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: dtype {t.dtype} not one of {[str(d) for d in dtypes]}")
    if t.dim() != len(shape) or any(w is not None and s != w for s, w in zip(t.shape, shape)):
        want = tuple("*" if w is None else w for w in shape)
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {want}")
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride {t.stride(-1)})")


def row_stride(t: torch.Tensor) -> int:
    # torch gives a size-1 dimension any stride; the kernels want one no smaller than a row
    return t.stride(0) if t.shape[0] > 1 else t.shape[1]


class Kernels:
    """The cache-op kernels for tensors on one device: the CPU references for cpu, the CUDA ones for cuda."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise KernelBuildError("Kernels('cuda'): torch sees no CUDA device")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"Kernels: device {self.device} is neither cpu nor cuda")
        if self.cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.lib = lib = ctypes.CDLL(str(library_path(self.cuda)))
        sfx = "_cuda" if self.cuda else "_cpu"
        tail = [_P] if self.cuda else []  # the stream
        self._write = getattr(lib, "arvc_kv_cache_write" + sfx)
        self._write.argtypes = [_P, _P, _I32, _I64, _P, _I32, _U32] + tail
        self._attn = getattr(lib, "arvc_attention_qcache" + sfx)
        # q, dtype, q stride, n_q, k, v, key_valid, cos, sin, k_new, v_new, new stride, n_new, scale, out, out stride,
        # flags
        self._attn.argtypes = [_P, _I32, _I64, _I32] + [_P] * 7 + [_I64, _I32, _F32, _P, _I64, _U32] + tail
        self._rope = getattr(lib, "arvc_rope3d" + sfx)
        self._rope.argtypes = [_P, _I32, _I64] + [_I32] * 6 + tail
        for fn in (self._write, self._attn, self._rope):
            fn.restype = ctypes.c_int
        lib.arvc_status_string.restype = ctypes.c_char_p
        lib.arvc_status_string.argtypes = [ctypes.c_int]

    # -- helpers --
    def _stream(self) -> tuple:
        return (torch.cuda.current_stream(self.device).cuda_stream,) if self.cuda else ()

    def _check(self, call: str, status: int, names: str) -> None:
        if status != 0:
            msg = self.lib.arvc_status_string(status).decode()
            raise KernelError(f"{call}({names})", status, msg)

    def _tensor(self, name: str, t: torch.Tensor, dtypes, shape: tuple) -> None:
        check_tensor(name, t, self.device, dtypes, shape)

    def _cache(self, name: str, c: CacheTensors) -> None:
        if not isinstance(c, CacheTensors):
            raise TypeError(f"{name}: expected CacheTensors, got {type(c).__name__}")
        if c.device != self.device:
            raise ValueError(f"{name} is on {c.device}, the kernels on {self.device}")

    # -- the kernels --
    def kv_cache_write(self, cache: CacheTensors, x: torch.Tensor, rows: torch.Tensor,
                       no_host_sync: bool = False) -> None:
        """Quantize x [n, heads*head_dim] (rows may be strided) into cache rows `rows` (int32 [n])."""
        self._cache("cache", cache)
        dim = cache.heads * cache.head_dim
        self._tensor("x", x, DTYPE_CODES, (None, dim))
        self._tensor("rows", rows, (torch.int32,), (x.shape[0],))
        st = self._write(cache.address, x.data_ptr(), DTYPE_CODES[x.dtype], row_stride(x), rows.data_ptr(), x.shape[0],
                         FLAG_NO_HOST_SYNC if no_host_sync else 0, *self._stream())
        self._check("kv_cache_write", st, "cache, x, rows")

    def attention(self, q: torch.Tensor, k: CacheTensors, v: CacheTensors, key_valid: torch.Tensor,
                  out: torch.Tensor, k_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                  k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None,
                  softmax_scale: float | None = None, no_host_sync: bool = False) -> torch.Tensor:
        """out [n_q, dim] = attention of q [n_q, dim] over the valid rows (key_valid u8 [rows]) of the
        k / v caches, then k_new / v_new [n_new, dim] (q's dtype, one row stride); k_rope: (cos, sin) f32
        [rows, head_dim/2] rotating the cached keys, or None when they are stored rotated."""
        self._cache("k", k)
        self._cache("v", v)
        dim = k.heads * k.head_dim
        self._tensor("q", q, DTYPE_CODES, (None, dim))
        self._tensor("out", out, (q.dtype,), (q.shape[0], dim))
        self._tensor("key_valid", key_valid, (torch.uint8, torch.bool), (k.rows,))
        cos_p = sin_p = None
        if k_rope is not None:
            cos, sin = k_rope
            for name, t in (("k_rope cos", cos), ("k_rope sin", sin)):
                self._tensor(name, t, (torch.float32,), (k.rows, k.head_dim // 2))
                if not t.is_contiguous():
                    raise ValueError(f"{name} must be contiguous")
            cos_p, sin_p = cos.data_ptr(), sin.data_ptr()
        n_new, new_stride, kn_p, vn_p = 0, dim, None, None
        if (k_new is None) != (v_new is None):
            raise ValueError("k_new and v_new go together")
        if k_new is not None:
            self._tensor("k_new", k_new, (q.dtype,), (None, dim))
            self._tensor("v_new", v_new, (q.dtype,), (k_new.shape[0], dim))
            if k_new.shape[0] > 1 and k_new.stride(0) != v_new.stride(0):
                raise ValueError(f"k_new and v_new need one row stride ({k_new.stride(0)} vs {v_new.stride(0)})")
            n_new, new_stride, kn_p, vn_p = k_new.shape[0], row_stride(k_new), k_new.data_ptr(), v_new.data_ptr()
        scale = 1.0 / math.sqrt(k.head_dim) if softmax_scale is None else softmax_scale
        st = self._attn(q.data_ptr(), DTYPE_CODES[q.dtype], row_stride(q), q.shape[0], k.address, v.address,
                        key_valid.data_ptr(), cos_p, sin_p, kn_p, vn_p, new_stride, n_new, scale, out.data_ptr(),
                        row_stride(out), FLAG_NO_HOST_SYNC if no_host_sync else 0, *self._stream())
        self._check("attention", st, "q, k, v, key_valid, out, k_rope, k_new, v_new")
        return out

    def rope3d(self, x: torch.Tensor, heads: int, head_dim: int, frames: int, height: int, width: int,
               frame_offset: int) -> torch.Tensor:
        """Wan's 3D RoPE in place on x [frames*height*width, heads*head_dim] (rows may be strided)."""
        self._tensor("x", x, DTYPE_CODES, (frames * height * width, heads * head_dim))
        st = self._rope(x.data_ptr(), DTYPE_CODES[x.dtype], row_stride(x), heads, head_dim, frames, height, width,
                        frame_offset, *self._stream())
        self._check("rope3d", st, "x, heads, head_dim, frames, height, width, frame_offset")
        return x
