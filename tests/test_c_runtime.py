"""The C runtime (runtime/include/arvc.h, libarvc, examples/stream.cpp) against the Python runtime: the
same plan, prompt, seed and thread count give the same frames byte for byte, through the example (ctest
runs it in CI) and through the C API driven by ctypes on a quantized plan with prompt embeddings; and
its misuse checks (runtime/tests/test_capi.cpp) pass."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from manifests import check_readers_agree

import arvc
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.runtime.capi import CApiError, CSession, load_library
from arvc.runtime.plan import PlanError, PlanIntegrityError, read_manifest, seal_manifest

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right on a dark blue background"
SWITCH = "a green square moving left on a black background"
# what the example_stream ctest runs (runtime/CMakeLists.txt): 2 s, seed 7, 2 threads, a switch at 1 s
EXAMPLE = dict(seconds=2.0, seed=7, threads=2, switch_s=1.0)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}:\n{(r.stdout + r.stderr)[-4000:]}"
    return r


@pytest.fixture(scope="session")
def python_example_frames(tiny_plan):
    session = arvc.load(tiny_plan[0], threads=EXAMPLE["threads"])
    frames = session.stream(PROMPT, EXAMPLE["seconds"], seed=EXAMPLE["seed"], switches=[(EXAMPLE["switch_s"], SWITCH)])
    return np.stack(list(frames))  # [N, H, W, 3] uint8


def y4m_444_full_range(frames: np.ndarray, fps: int) -> bytes:
    """The Y4M the example writes, computed independently: 4:4:4 planes, JPEG's BT.601 full-range
    fixed-point conversion (Python's >> floors, as C's arithmetic shift on these values)."""
    n, h, w, _ = frames.shape
    rgb = frames.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    cb = ((-11059 * r - 21709 * g + 32768 * b + 32768) >> 16) + 128
    cr = ((32768 * r - 27439 * g - 5329 * b + 32768) >> 16) + 128
    planes = np.clip(np.stack([y, cb, cr], axis=1), 0, 255).astype(np.uint8)  # [N, 3, H, W]
    out = [f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C444 XCOLORRANGE=FULL\n".encode()]
    for f in planes:
        out += [b"FRAME\n", f.tobytes()]
    return b"".join(out)


@pytest.fixture(scope="session")
def ctest_run(c_build) -> subprocess.CompletedProcess:
    """ctest's C API checks and example, run once; the example writes runtime/example_stream.y4m."""
    return _run(["ctest", "--output-on-failure", "-R", "test_capi|test_c_header|example_stream"], cwd=c_build)


def test_ctest_runs_the_capi_checks_and_the_example(ctest_run, c_build):
    assert all(t in ctest_run.stdout for t in ("test_capi", "test_c_header", "example_stream"))
    assert "100% tests passed" in ctest_run.stdout
    assert (c_build / "runtime" / "example_stream.y4m").is_file()


def test_example_video_equals_python(ctest_run, c_build, python_example_frames, tiny_plan):
    """The ctest run's Y4M holds exactly the Python runtime's frames (same plan, seed, switch)."""
    assert len(python_example_frames) == 32
    y4m = (c_build / "runtime" / "example_stream.y4m").read_bytes()
    assert y4m == y4m_444_full_range(python_example_frames, tiny_plan[1].resolution.fps)


def test_example_callback_without_prefetch_equals_python(c_build, python_example_frames, tiny_plan, tmp_path):
    """The callback path, and the DiT run in the caller's thread, give the same frames as a raw RGB file."""
    out = tmp_path / "v.rgb"
    _run([str(c_build / "runtime" / "arvc_stream"), str(tiny_plan[0]), "--prompt", PROMPT, "--seconds", "2", "--seed", "7",
          "--threads", "2", "--switch", "1", SWITCH, "--callback", "--no-prefetch", "-o", str(out)])
    assert np.array_equal(np.fromfile(out, np.uint8).reshape(python_example_frames.shape), python_example_frames)
    assert not (tmp_path / "v.rgb.part").exists()


def test_example_refuses_bad_input_without_writing(c_build, tiny_plan, tmp_path):
    exe = str(c_build / "runtime" / "arvc_stream")
    r = subprocess.run([exe, str(tiny_plan[0]), "--prompt", "a purple circle", "-o", str(tmp_path / "v.y4m")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown word(s) 'purple'" in r.stderr and "vocabulary is" in r.stderr
    r = subprocess.run([exe, str(tmp_path / "nope"), "-o", str(tmp_path / "v.y4m")], capture_output=True, text=True)
    assert r.returncode == 1 and "not an arvc plan" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# ---- the C API through ctypes (arvc.runtime.capi), on a quantized plan that takes prompt embeddings ------


@pytest.fixture(scope="session")
def quant_plan(small_ckpt, tmp_path_factory):
    """NVFP4 weights, an NVFP4 KV cache with an fp16 sink (split cache buffers), relative RoPE, a window
    that evicts: every cache layout path of the C runtime's generic binding."""
    out = tmp_path_factory.mktemp("c_quant") / "q.plan"
    opts = CompileOptions(CacheGeometry(3, 6, 3, 21, "relative"), Schedule((1000.0, 750.0, 500.0)), 32, 32,
                          precision="nvfp4", kv_cache="nvfp4", kv_sink="fp16", min_psnr=0.0, verify_blocks=3)
    return out, compile_plan(small_ckpt[0], out, opts, log=lambda _m: None)


def test_c_api_equals_python_on_a_quantized_plan_with_embeddings(c_build, quant_plan):
    plan, manifest = quant_plan
    text_dim, text_len = manifest.model.dit.text_dim, manifest.model.dit.text_len
    rng = np.random.default_rng(0)
    emb_a = rng.standard_normal((5, text_dim)).astype(np.float32)
    emb_b = rng.standard_normal((text_len, text_dim)).astype(np.float32)
    with CSession(load_library(next(c_build.rglob("libarvc.so"))), plan, threads=2) as c:
        info = c.info
        assert (info.has_text_encoder, info.window, info.sink, info.max_blocks) == (0, 6, 3, 0)
        assert info.precision.decode() == manifest.precision
        c.set_prompt(emb_a, seed=11)
        assert c.switch_prompt(emb_b, at_block=2) == 2
        with pytest.raises(CApiError, match="prompt embeddings must be") as e:
            c.switch_prompt(emb_b[:, :-1])
        assert e.value.status == 4  # ARVC_ERR_PROMPT
        # 15 latent frames through a 6-frame window: the ring wraps, the switch re-caches
        c_frames = np.concatenate([c.next_block() for _ in range(5)])
        assert c.stats().frames == len(c_frames)

    py = arvc.load(plan, threads=2)
    switch_s = py.frames_before_block(2) / py.fps  # the block_for_time of this instant is block 2
    assert py.block_for_time(switch_s) == 2
    py_frames = np.stack(list(py.stream(emb_a, frames=len(c_frames), seed=11, switches=[(switch_s, emb_b)])))
    assert c_frames.shape == py_frames.shape == (9 + 4 * 12, 32, 32, 3)
    assert np.array_equal(c_frames, py_frames)


def test_every_compiled_plan_reads_the_same_in_c_and_python(c_build, tiny_plan, quant_plan, compiled_plans):
    """Every plan this test session compiled (this test runs last): the C reader (arvc_plan_describe) and
    runtime/manifest.py read the same fields and KV cache layout, or refuse it alike (plans tests broke)."""
    lib = load_library(next(c_build.rglob("libarvc.so")))
    assert {tiny_plan[0], quant_plan[0]} <= set(compiled_plans)
    for plan in dict.fromkeys(compiled_plans):
        check_readers_agree(lib, plan)


test_every_compiled_plan_reads_the_same_in_c_and_python.after_every_compile = True


def _resealed(plan: Path, where: Path, edit) -> Path:
    shutil.copytree(plan, where, symlinks=True)
    m = json.loads((where / "manifest.json").read_text())
    edit(m)
    (where / "manifest.json").write_text(seal_manifest(m))
    return where


def _rename_file(m: dict, old: str, new: str) -> None:
    m["files"] = {new if k == old else k: v for k, v in m["files"].items()}
    m["stages"]["dit"]["graph"] = new


@pytest.mark.parametrize("name", ["../dit.onnx", "/tmp/dit.onnx", "sub/dit.onnx", ".dit.onnx", "dit\x00.onnx", ""])
def test_a_plan_names_only_its_own_files_in_both_readers(c_build, tiny_plan, tmp_path, name):
    """A closed plan: a resealed manifest naming a file outside the plan folder (or not a plain name) is refused by
    the C reader and runtime/manifest.py alike, before any file is opened."""
    lib = load_library(next(c_build.rglob("libarvc.so")))
    plan = _resealed(tiny_plan[0], tmp_path / "p", lambda m: _rename_file(m, "dit.onnx", name))
    with pytest.raises(PlanError, match="not a plain file name"):
        read_manifest(plan)
    check_readers_agree(lib, plan)


def test_a_stage_reads_only_listed_files_and_no_links(c_build, tiny_plan, tmp_path):
    lib = load_library(next(c_build.rglob("libarvc.so")))
    unlisted = _resealed(tiny_plan[0], tmp_path / "unlisted", lambda m: m["stages"]["dit"].update(graph="other.onnx"))
    check_readers_agree(lib, unlisted)
    linked = _resealed(tiny_plan[0], tmp_path / "linked", lambda m: None)
    (linked / "dit.onnx").unlink()
    (linked / "dit.onnx").symlink_to(tiny_plan[0] / "dit.onnx")  # same bytes, but from outside the plan
    with pytest.raises(PlanIntegrityError, match="not a regular file of the plan"):
        read_manifest(linked)
    check_readers_agree(lib, linked)


def test_installed_cmake_package_serves_a_c_program(c_build, tiny_plan, tmp_path):
    """`cmake --install` gives a CMake package: a C program finds it with find_package(arvc), links
    arvc::arvc, and its first block equals Python's."""
    prefix = tmp_path / "prefix"
    _run(["cmake", "--install", str(c_build), "--prefix", str(prefix)])
    out = build_and_run_consumer(prefix, tiny_plan[0], tmp_path)
    assert np.array_equal(np.fromfile(out, np.uint8).reshape(-1, 128, 128, 3), python_block0(tiny_plan[0]))


def build_and_run_consumer(prefix: Path, plan: Path, work: Path, env: dict | None = None) -> Path:
    """tests/c_consumer built against the arvc installed at prefix, run on plan: its block-0 RGB file."""
    _run(["cmake", "-S", str(REPO / "tests" / "c_consumer"), "-B", str(work / "consumer"), f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", str(work / "consumer")])
    _run([str(work / "consumer" / "consumer"), str(plan), str(work / "b0.rgb")], env=env)
    return work / "b0.rgb"


def python_block0(plan: Path) -> np.ndarray:
    session = arvc.load(plan, threads=2)
    return np.stack(list(session.stream("a blue square", frames=session.frames_before_block(1), seed=5)))
