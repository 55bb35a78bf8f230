"""The CUDA kernels compile for every target architecture (sm_89/90/100/120) wherever nvcc exists,
GPU or not: a kernel that only builds on the developer's card is caught here, on CPU machines."""
from __future__ import annotations

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
