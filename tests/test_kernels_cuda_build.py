"""The CUDA kernels compile for every target architecture (sm_89/90/100/120) wherever nvcc exists,
GPU or not: a kernel that only builds on the developer's card is caught here, on CPU machines."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from native import REPO

ARCHS = ("sm_89", "sm_90", "sm_100", "sm_120")


def find_tool(name: str) -> str | None:
    """On PATH, or next to the real nvcc (a PATH nvcc may be a wrapper script)."""
    found = shutil.which(name)
    if found:
        return found
    for cuda in (Path("/usr/local/cuda/bin"), *sorted(Path("/usr/local").glob("cuda-*/bin"))):
        if (cuda / name).exists():
            return str(cuda / name)
    return None


@pytest.mark.slow
def test_cuda_library_builds_for_all_archs(tmp_path):
    if find_tool("nvcc") is None:
        pytest.skip("nvcc not found: the CUDA kernels cannot be compiled on this machine")
    build_dir = tmp_path / "native_cuda"
    cfg = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                          "-DARVC_CUDA=ON"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build_dir), "-j", "2", "--target", "arvc_kernels_cuda"],
                         capture_output=True, text=True, timeout=300)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    libs = list(build_dir.rglob("libarvc_kernels_cuda.so"))
    assert libs, "libarvc_kernels_cuda.so was not produced"
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        # no cuobjdump (a minimal toolkit): the fatbinary's embedded cubins still name their arch
        blob = libs[0].read_bytes()
        missing = [a for a in ARCHS if a.encode() not in blob]
    else:
        listing = subprocess.run([cuobjdump, "--list-elf", str(libs[0])], capture_output=True, text=True,
                                 check=True).stdout
        missing = [a for a in ARCHS if f".{a}." not in listing]  # "ELF file 1: <lib>.1.sm_89.cubin"
    assert not missing, f"no device code for {missing}"
    check_host_side_checks(libs[0])


def check_host_side_checks(so: Path) -> None:
    """The CUDA entry points' host-side argument checks run before any CUDA call, so they answer without a
    device: a call whose only fault is in the new arguments (k-RoPE tables, flags) must be rejected, which
    catches a header / .cu parameter order mismatch on CPU machines."""
    import torch

    from arvc.runtime.kernels import CacheTensors

    lib = ctypes.CDLL(str(so))
    p, i32, i64, u32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint32
    attn, write = lib.arvc_attention_qcache_cuda, lib.arvc_kv_cache_write_cuda
    attn.argtypes = [p, i32, i64, i32, p, p, p, p, p, p, p, i64, i32, ctypes.c_float, p, i64, u32, p]
    write.argtypes = [p, p, i32, i64, p, i32, u32, p]
    k, v = CacheTensors("int8", 4, 1, 16), CacheTensors("int8", 4, 1, 16)
    q, out, valid, table = torch.ones(1, 16), torch.empty(1, 16), torch.ones(4, dtype=torch.uint8), torch.zeros(4, 8)
    rows = torch.zeros(1, dtype=torch.int32)

    def call(cos=None, sin=None, flags=0):
        return attn(q.data_ptr(), 0, 16, 1, k.address, v.address, valid.data_ptr(), cos, sin, None, None, 0, 0, 1.0,
                    out.data_ptr(), 16, flags, None)

    assert call(cos=table.data_ptr()) == 1  # ARVC_ERR_ARGUMENT: one table without the other
    assert call(sin=table.data_ptr()) == 1
    assert call(flags=2) == 1  # unknown flag bit
    assert write(k.address, q.data_ptr(), 0, 16, rows.data_ptr(), 1, 2, None) == 1
    assert write(k.address, q.data_ptr(), 0, 15, rows.data_ptr(), 1, 1, None) == 1  # row stride below a row
