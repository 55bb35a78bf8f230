"""The wheel: `pip wheel .` (scikit-build-core, in build isolation) gives the four Python packages with their
repository-top-level mapping (arvc, compiler -> arvc.compiler, quant -> arvc.quant, runtime -> arvc.runtime)
and the native parts CMake installs (cmake/install.cmake); installed into a fresh venv and imported from
outside the checkout, arvc.runtime.kernels loads the library the wheel installed instead of building one."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# source directory -> its package's directory inside the wheel
PACKAGES = {"arvc": "arvc", "compiler": "arvc/compiler", "quant": "arvc/quant", "runtime": "arvc/runtime"}


def _pip(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}  # the pyproject.toml settings only
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _tail(r: subprocess.CompletedProcess, n: int = 40) -> str:
    return "\n".join((r.stdout + r.stderr).strip().splitlines()[-n:])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the checkout, built once for this module."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    # build isolation installs the (pinned) build requirements from the package index: without it, skip
    probe = _pip("download", "--no-deps", "-q", "-d", str(tmp_path_factory.mktemp("probe")), *requires, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"the package index is unreachable for build isolation ({' '.join(requires)}):\n{_tail(probe, 5)}")
    out = tmp_path_factory.mktemp("wheel")
    r = _pip("wheel", str(REPO), "--no-deps", "-w", str(out))
    assert r.returncode == 0, f"pip wheel failed:\n{_tail(r)}"
    wheels = list(out.glob("arvc-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{pkg}/{p.relative_to(REPO / src).as_posix()}"
                for src, pkg in PACKAGES.items() for p in (REPO / src).rglob("*.py") if "__pycache__" not in p.parts}
    assert len(expected) > 40
    missing = sorted(expected - names)
    assert not missing, f"Python modules missing from the wheel: {missing}"
    for pkg in ("arvc/model", "arvc/checkpoints", "arvc/reference", "arvc/tiny", "arvc/compiler", "arvc/quant",
                "arvc/runtime"):
        assert f"{pkg}/__init__.py" in names
    assert "arvc/runtime/lib/libarvc_kernels.so" in names
    headers = sorted((REPO / "runtime" / "include").glob("*.h"))
    assert headers
    for h in headers:
        assert f"arvc/runtime/include/{h.name}" in names
    if (REPO / "runtime" / "include" / "arvc.h").is_file():  # the C API: libarvc.so comes with its header
        assert "arvc/runtime/lib/libarvc.so" in names
    # build inputs are not package data; no CUDA library (the wheel is built with ARVC_CUDA=OFF)
    sources = [n for n in names if (n.endswith(("CMakeLists.txt", ".cmake", ".c", ".cc", ".cpp", ".cu", ".cuh", ".hpp"))
                                    and not n.startswith("arvc/runtime/lib/cmake/arvc/"))
               or (n.endswith(".h") and not n.startswith("arvc/runtime/include/"))]
    if "arvc/runtime/lib/libarvc.so" in names:  # the C API's CMake package (find_package(arvc))
        assert {"arvc/runtime/lib/cmake/arvc/arvcConfig.cmake", "arvc/runtime/lib/cmake/arvc/arvcTargets.cmake"} <= set(names)
    assert not sources, sources
    assert "arvc/runtime/lib/libarvc_kernels_cuda.so" not in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "arvc = arvc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_installs_and_loads_its_library(wheel, tmp_path, tiny_plan):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    r = _pip("--python", str(py), "install", "--no-deps", "-q", str(wheel))
    assert r.returncode == 0, f"installing the wheel failed:\n{_tail(r)}"
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                           text=True).strip())
    # the dependencies (torch, numpy, ...) come from this interpreter's site-packages, after the wheel's arvc
    (purelib / "_arvc_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    script = """
import ctypes, json, sys
import arvc, arvc.cli, arvc.compiler, arvc.quant, arvc.model, arvc.checkpoints, arvc.reference, arvc.tiny
from arvc.model import noise
from arvc.runtime import kernels
path = kernels.library_path(False)
k = kernels.Kernels("cpu")
print(json.dumps({"arvc": arvc.__file__, "kernels": kernels.__file__, "noise": noise.__file__, "lib": str(path),
                  "status0": k.lib.arvc_status_string(0).decode()}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ARVC_KERNELS_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # nothing may be built there
    run = tmp_path / "elsewhere"
    run.mkdir()
    r = subprocess.run([str(py), "-c", script], cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the installed package failed:\n{_tail(r)}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    pkg = purelib / "arvc"
    for key in ("arvc", "kernels", "noise"):
        assert Path(got[key]).resolve().is_relative_to(pkg.resolve()), got
    assert Path(got["lib"]).resolve() == (pkg / "runtime" / "lib" / "libarvc_kernels.so").resolve(), got
    assert got["status0"]
    assert not (tmp_path / "cache" / "arvc" / "kernels").exists(), "the installed package built the kernels"
    assert (env_dir / "bin" / "arvc").is_file()
    # the installed C runtime and example: they find each other ($ORIGIN rpaths) and stream a plan
    exe = pkg / "runtime" / "bin" / "arvc_stream"
    import onnxruntime

    ort_lib = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    r = subprocess.run([str(exe), str(tiny_plan[0]), "--seconds", "1", "--threads", "2", "-o", str(tmp_path / "v.y4m")],
                       env={**env, "ARVC_ONNXRUNTIME_LIB": str(ort_lib)}, cwd=run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the installed arvc_stream failed:\n{_tail(r)}"
    assert (tmp_path / "v.y4m").read_bytes().count(b"FRAME\n") == 16
    # ... and a C program builds against the wheel's CMake package (CMAKE_PREFIX_PATH=<arvc.runtime>)
    from test_c_runtime import build_and_run_consumer, python_block0

    out = build_and_run_consumer(pkg / "runtime", tiny_plan[0], tmp_path, env={**env, "ARVC_ONNXRUNTIME_LIB": str(ort_lib)})
    assert np.array_equal(np.fromfile(out, np.uint8).reshape(-1, 128, 128, 3), python_block0(tiny_plan[0]))
