"""The C runtime (runtime/include/arvc.h, libarvc, examples/stream.cpp) against the Python runtime: the
same plan, prompt, seed and thread count give the same frames byte for byte, through the example (ctest
runs it in CI) and through the C API driven by ctypes on a quantized plan with prompt embeddings; and
its misuse checks (runtime/tests/test_capi.cpp) pass."""
from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import arvc
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.runtime.kv_cache import CacheGeometry
from arvc.runtime.schedule import Schedule

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
def c_build(tmp_path_factory, tiny_plan):
    """The C runtime built once per test session, with the tiny plan as ctest's test plan."""
    build = tmp_path_factory.mktemp("c_runtime")
    _run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DARVC_CUDA=OFF",
          f"-DARVC_TEST_PLAN={tiny_plan[0]}", f"-DPython3_EXECUTABLE={sys.executable}"])
    _run(["cmake", "--build", str(build), "-j", "2", "--target", "arvc", "arvc_stream", "test_capi"])
    return build


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


def test_ctest_runs_the_capi_checks_and_the_example(c_build):
    r = _run(["ctest", "--output-on-failure", "-R", "test_capi|example_stream"], cwd=c_build)
    assert "test_capi" in r.stdout and "example_stream" in r.stdout and "100% tests passed" in r.stdout
    assert (c_build / "runtime" / "example_stream.y4m").is_file()


def test_example_video_equals_python(c_build, python_example_frames, tiny_plan):
    """The ctest run's Y4M holds exactly the Python runtime's frames (same plan, seed, switch)."""
    y4m = c_build / "runtime" / "example_stream.y4m"
    if not y4m.is_file():
        test_ctest_runs_the_capi_checks_and_the_example(c_build)
    assert len(python_example_frames) == 32
    assert y4m.read_bytes() == y4m_444_full_range(python_example_frames, tiny_plan[1]["resolution"]["fps"])


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


# ---- the C API through ctypes, on a quantized plan that takes prompt embeddings ----------------------------


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
    lib = ctypes.CDLL(str(next(c_build.rglob("libarvc.so"))))
    lib.arvc_last_error.restype = ctypes.c_char_p
    session = ctypes.c_void_p()
    opts = Options(ctypes.sizeof(Options), 2, 0, 0, None)
    assert lib.arvc_open(str(plan).encode(), ctypes.byref(opts), ctypes.byref(session)) == 0, lib.arvc_last_error()
    try:
        info = Info()
        info.size = ctypes.sizeof(Info)
        assert lib.arvc_get_info(session, ctypes.byref(info)) == 0
        assert (info.has_text_encoder, info.window, info.sink, info.max_blocks) == (0, 6, 3, 0)
        assert info.precision.decode() == manifest["precision"]
        text_dim, text_len = manifest["model"]["dit"]["text_dim"], manifest["model"]["dit"]["text_len"]
        rng = np.random.default_rng(0)
        emb_a = rng.standard_normal((5, text_dim)).astype(np.float32)
        emb_b = rng.standard_normal((text_len, text_dim)).astype(np.float32)
        f32p = ctypes.POINTER(ctypes.c_float)
        assert lib.arvc_set_prompt_embeddings(session, emb_a.ctypes.data_as(f32p), ctypes.c_int64(5),
                                              ctypes.c_int64(text_dim), ctypes.c_uint64(11)) == 0, lib.arvc_last_error()
        applied = ctypes.c_int64(-9)
        assert lib.arvc_switch_prompt_embeddings(session, emb_b.ctypes.data_as(f32p), ctypes.c_int64(text_len),
                                                 ctypes.c_int64(text_dim), ctypes.c_int64(2), ctypes.byref(applied)) == 0
        assert applied.value == 2
        buf = np.zeros(info.max_block_bytes, np.uint8)
        frames, n = [], ctypes.c_int32()
        for _ in range(5):  # 15 latent frames through a 6-frame window: the ring wraps, the switch re-caches
            assert lib.arvc_next_block(session, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                       ctypes.c_size_t(buf.size), ctypes.byref(n)) == 0, lib.arvc_last_error()
            frames.append(buf[: n.value * info.width * info.height * 3].reshape(n.value, info.height, info.width, 3).copy())
        c_frames = np.concatenate(frames)
    finally:
        lib.arvc_close(session)

    py = arvc.load(plan, threads=2)
    switch_s = py.frames_before_block(2) / py.fps  # the block_for_time of this instant is block 2
    assert py.block_for_time(switch_s) == 2
    py_frames = np.stack(list(py.stream(emb_a, frames=len(c_frames), seed=11, switches=[(switch_s, emb_b)])))
    assert c_frames.shape == py_frames.shape == (9 + 4 * 12, 32, 32, 3)
    assert np.array_equal(c_frames, py_frames)
