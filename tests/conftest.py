import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arvc.compiler.selftest import SMALL_CONFIG, write_random_checkpoint

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_collection_modifyitems(config, items):
    # a test with after_every_compile = True reads every plan the session compiled: it runs after the others
    items.sort(key=lambda item: getattr(getattr(item, "function", None), "after_every_compile", False))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def compiled_plans():
    """Every plan this test session compiles (compile_plan or `arvc compile`), in order."""
    from arvc.compiler import compile as compiler

    plans, place = [], compiler._replace

    def recording(new, target, force=False):
        place(new, target, force)
        plans.append(Path(target))

    compiler._replace = recording
    yield plans
    compiler._replace = place


@pytest.fixture(scope="session")
def tiny_plan(tmp_path_factory):
    """The shipped tiny model compiled once (fp32, its model.json geometry: window 12, sink 3, relative RoPE)."""
    from arvc.compiler.compile import CompileOptions, compile_plan
    from arvc.model.cache_geometry import CacheGeometry
    from arvc.model.schedule import Schedule

    out = tmp_path_factory.mktemp("plans") / "tiny.plan"
    opts = CompileOptions(CacheGeometry(3, 12, 3, 21, "relative"), Schedule((1000.0, 900.0, 750.0, 500.0)), 128, 128)
    manifest = compile_plan(REPO / "models" / "tiny", out, opts, log=lambda _m: None)
    return out, manifest


@pytest.fixture(scope="session")
def c_build(tmp_path_factory, tiny_plan):
    """The C runtime built once per test session, with the tiny plan as ctest's test plan."""
    build = tmp_path_factory.mktemp("c_runtime")
    for cmd in (["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DARVC_CUDA=OFF",
                 f"-DARVC_TEST_PLAN={tiny_plan[0]}", f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(build), "-j", "2", "--target", "arvc", "arvc_stream", "test_capi",
                 "test_c_header", "arvc_kernels", "plan_check"]):  # what `cmake --install` installs, and plan_check
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{(r.stdout + r.stderr)[-4000:]}"
    return build


# A small random checkpoint for quantization tests: the one `arvc selftest` builds.
SMALL_CFG_ARGS = dict(SMALL_CONFIG)


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """-> (checkpoint dir, its VAE module); DiT weights from init_random_weights_(seed=2)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("small_ckpt"))
