"""CPU cache-op kernels (csrc/kv_cache_write.cpp, csrc/rope3d.cpp) against the Python references.

The cache write must equal quant/formats.py's per_token encoders byte for byte; RoPE must equal
arvc/model/rope.py up to the last-bit differences of libm's pow/cos/sin against torch's (see
test_rope3d_matches_reference for the tolerance).
"""
from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import torch

from arvc.model.rope import RotaryTable, rope_angles
from arvc.quant.formats import NVFP4, Fp8E4M3, Int8
from arvc.quant.kv import kv_round_trip
from native import DTYPE, CacheBuffers, build, load

FORMATS = ("fp16", "int8", "fp8", "nvfp4")
CODECS = {"int8": Int8("per_token"), "fp8": Fp8E4M3("per_token"), "nvfp4": NVFP4("per_token")}
OK, ERR_ARGUMENT, ERR_FORMAT, ERR_NONFINITE = 0, 1, 2, 3
NO_HOST_SYNC = 1


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    build_dir = build(tmp_path_factory.mktemp("native_cpu"))
    lib = load(build_dir)
    p = ctypes.c_void_p
    lib.arvc_kv_cache_write_cpu.argtypes = [p, p, ctypes.c_int32, ctypes.c_int64, p, ctypes.c_int32, ctypes.c_uint32]
    lib.arvc_rope3d_cpu.argtypes = [p, ctypes.c_int32, ctypes.c_int64] + [ctypes.c_int32] * 6
    return build_dir, lib


def test_ctest_passes(native):
    build_dir, _ = native
    r = subprocess.run(["ctest", "--output-on-failure"], cwd=build_dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_kv_cache_write" in r.stdout and "test_rope3d" in r.stdout


def write(lib, cache: CacheBuffers, x: np.ndarray, rows, row_stride: int | None = None, flags: int = 0) -> int:
    """x: [n, heads, head_dim] (or a strided [n, >= dim] view's base); returns the status."""
    idx = np.ascontiguousarray(rows, np.int32)
    stride = row_stride if row_stride is not None else cache.heads * cache.head_dim
    return lib.arvc_kv_cache_write_cpu(ctypes.byref(cache.struct), x.ctypes.data, DTYPE[x.dtype.type], stride,
                                       idx.ctypes.data, len(idx), flags)


def random_rows(rng, n: int, heads: int, head_dim: int) -> np.ndarray:
    """Rows that exercise the encoders: magnitudes from 1e-6 to 1e4, an all-zero head, a head with
    -0.0 and exact ties for int8 (multiples of amax/254), a head with one huge outlier."""
    mags = 10.0 ** rng.uniform(-6, 4, size=(n, heads, 1))
    x = (rng.standard_normal((n, heads, head_dim)) * mags).astype(np.float32)
    x[0, 0] = 0.0
    x[0, 1 % heads] = -0.0
    x[1 % n, 0] = np.arange(head_dim, dtype=np.float32) - head_dim / 2 + 0.5  # k + 0.5: int8 ties ...
    x[1 % n, 0, 0] = 127.0  # ... once amax 127 makes the scale exactly 1
    x[2 % n, heads - 1, 3] = 3e4
    # NVFP4 ties: amax 6*448 makes scale_2 1 and the first block's scale 448, so x/448 hits every E2M1
    # midpoint (and its negative)
    mids = np.array([6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5], np.float32)
    x[3 % n, 0, :16] = 448 * np.concatenate([mids, -mids])
    # FP8 ties: amax 448 makes the scale 1; 432 ties 416/448, 17 ties 16/18, 2^-10 ties 0/2^-9, 3*2^-10 1/2
    x[3 % n, 1 % heads, :5] = [448.0, 432.0, -17.0, 2.0**-10, -3 * 2.0**-10]
    return x


def expected_parts(fmt: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    n = x.shape[0]
    if fmt == "fp16":
        return {"data": x.half().reshape(n, -1).numpy()}
    enc = CODECS[fmt].encode(x)
    if fmt == "nvfp4":
        return {"data": enc["weight"].reshape(n, -1).numpy(), "block_scale": enc["weight_scale"].reshape(n, -1).numpy(),
                "scale": enc["weight_scale_2"].reshape(n, -1).numpy()}
    return {"data": enc["data"].reshape(n, -1).numpy(), "scale": enc["scale"].reshape(n, -1).numpy()}


def decoded(cache: CacheBuffers, rows) -> torch.Tensor:
    """The cache rows decoded with the Python codecs: [len(rows), heads, head_dim] fp32."""
    shape = (len(rows), cache.heads, cache.head_dim)
    data = torch.from_numpy(cache.data[rows])
    if cache.fmt == "fp16":
        return data.float().reshape(shape)
    scale = torch.from_numpy(cache.scale[rows])
    if cache.fmt == "nvfp4":
        f = {"weight": data.reshape(*shape[:2], -1), "weight_scale": torch.from_numpy(cache.block_scale[rows]).reshape(
            *shape[:2], -1), "weight_scale_2": scale}
        return CODECS["nvfp4"].decode(f)
    return CODECS[cache.fmt].decode({"data": data.reshape(shape), "scale": scale})


def assert_cache_holds(cache: CacheBuffers, x: np.ndarray, rows: list[int]) -> None:
    exp = expected_parts(cache.fmt, torch.from_numpy(x))
    for part, want in exp.items():
        got = getattr(cache, part)[rows]
        assert got.dtype.itemsize == want.dtype.itemsize
        assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), part
    untouched = np.setdiff1d(np.arange(cache.rows), rows)
    for part in ("data", "block_scale", "scale"):
        buf = getattr(cache, part)
        if buf is not None:
            assert not buf[untouched].view(np.uint8).any(), f"{part}: a row not named was written"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("in_dtype", [np.float32, np.float16])
def test_write_bit_exact(native, fmt, in_dtype):
    _, lib = native
    rng = np.random.default_rng(FORMATS.index(fmt) * 10 + (in_dtype is np.float16))
    heads, head_dim, rows = 3, 32, 40
    x = random_rows(rng, 9, heads, head_dim)
    if in_dtype is np.float16:
        x = np.clip(x, -6e4, 6e4).astype(np.float16)
    idx = [37, 0, 5, 21, 22, 39, 3, 11, 30]
    cache = CacheBuffers(fmt, rows, heads, head_dim)
    assert write(lib, cache, x, idx) == OK
    assert_cache_holds(cache, x, idx)
    # the cache decodes to what the reference cache stores
    want = kv_round_trip(torch.from_numpy(x).float(), fmt)
    assert torch.equal(decoded(cache, idx), want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_strided_input(native, fmt):
    """x_row_stride > dim: the rows of a wider buffer (e.g. the K part of a fused QKV output)."""
    _, lib = native
    rng = np.random.default_rng(5)
    heads, head_dim = 2, 16
    base = rng.standard_normal((4, 3 * heads * head_dim)).astype(np.float32)
    cache = CacheBuffers(fmt, 6, heads, head_dim)
    assert write(lib, cache, base, [5, 1, 2, 0], row_stride=base.shape[1]) == OK
    assert_cache_holds(cache, np.ascontiguousarray(base[:, : heads * head_dim]).reshape(4, heads, head_dim), [5, 1, 2, 0])


def test_write_hand_vectors(native):
    _, lib = native
    # int8: amax 127 -> scale 1; 0.5, 1.5, 2.5, -0.5 are ties -> 0, 2, 2, -0 (half to even)
    x = np.zeros((1, 1, 16), np.float32)
    x[0, 0, :5] = [127.0, 0.5, 1.5, 2.5, -0.5]
    cache = CacheBuffers("int8", 2, 1, 16)
    assert write(lib, cache, x, [1]) == OK
    assert cache.scale[1, 0] == 1.0 and list(cache.data[1, :5]) == [127, 0, 2, 2, 0]
    # fp8: amax 448 -> scale 1; 432 is the tie of 416 (mantissa 5) and 448 (6): even, 0x7E; 2^-10 is
    # half the smallest subnormal (2^-9): a tie to 0; 1.5 * 2^-9 ties to 2 units
    x[0, 0, :5] = [448.0, -448.0, 432.0, 2.0**-10, 3 * 2.0**-10]
    cache = CacheBuffers("fp8", 1, 1, 16)
    assert write(lib, cache, x, [0]) == OK
    assert list(cache.data[0, :5]) == [0x7E, 0xFE, 0x7E, 0x00, 0x02]
    # an all-zero head: scale 1, codes 0
    cache = CacheBuffers("fp8", 1, 1, 16)
    assert write(lib, cache, np.zeros((1, 1, 16), np.float32), [0]) == OK
    assert cache.scale[0, 0] == 1.0 and not cache.data.any()
    # nvfp4: amax 6*448 -> scale_2 1, block amax 6*448 -> block scale 448 (0x7E); x/448 = 6, 3, 1, -0.5
    x = np.zeros((1, 1, 16), np.float32)
    x[0, 0, :4] = [2688.0, 1344.0, 448.0, -224.0]
    cache = CacheBuffers("nvfp4", 1, 1, 16)
    assert write(lib, cache, x, [0]) == OK
    assert cache.scale[0, 0] == 1.0 and cache.block_scale[0, 0] == 0x7E
    assert list(cache.data[0, :2]) == [0x7 | (0x5 << 4), 0x2 | (0x9 << 4)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_errors_leave_cache_unchanged(native, fmt):
    _, lib = native
    heads, head_dim = 2, 16
    x = np.ones((3, heads, head_dim), np.float32)
    x[2, 1, 7] = np.nan
    cache = CacheBuffers(fmt, 4, heads, head_dim)
    assert write(lib, cache, x, [0, 1, 2]) == ERR_NONFINITE
    x[2, 1, 7] = np.inf
    assert write(lib, cache, x, [0, 1, 2]) == ERR_NONFINITE
    x[2, 1, 7] = 1.0
    assert write(lib, cache, x, [0, 4, 1]) == ERR_ARGUMENT  # row 4 of 4
    assert write(lib, cache, x, [0, -1, 1]) == ERR_ARGUMENT
    assert write(lib, cache, x, []) == ERR_ARGUMENT  # n = 0
    assert write(lib, cache, x, [0, 1, 2], row_stride=heads * head_dim - 1) == ERR_ARGUMENT
    assert write(lib, cache, x, [0, 1, 2], flags=2) == ERR_ARGUMENT  # unknown flag bit
    assert write(lib, cache, x, [0, 1, 2], flags=1 << 31) == ERR_ARGUMENT
    assert write(lib, cache, x, [0, 4, 1], flags=NO_HOST_SYNC) == ERR_ARGUMENT  # the CPU validates regardless
    for part in ("data", "block_scale", "scale"):
        if getattr(cache, part) is not None:
            assert not getattr(cache, part).any(), part
    assert write(lib, cache, x, [0, 1, 2]) == OK
    bad = CacheBuffers(fmt, 4, heads, head_dim)
    bad.struct.format = 9
    assert write(lib, bad, x, [0]) == ERR_FORMAT
    idx = np.zeros(1, np.int32)
    assert lib.arvc_kv_cache_write_cpu(None, x.ctypes.data, 0, heads * head_dim, idx.ctypes.data, 1, 0) == ERR_ARGUMENT
    assert lib.arvc_kv_cache_write_cpu(ctypes.byref(cache.struct), None, 0, heads * head_dim, idx.ctypes.data, 1, 0) \
        == ERR_ARGUMENT
    assert lib.arvc_kv_cache_write_cpu(ctypes.byref(cache.struct), x.ctypes.data, 7, heads * head_dim,
                                       idx.ctypes.data, 1, 0) == ERR_ARGUMENT  # unknown input dtype


def test_write_nvfp4_head_dim_not_block_multiple(native):
    _, lib = native
    cache = CacheBuffers("nvfp4", 2, 2, 32)
    cache.struct.head_dim = 24  # dim 48 is a multiple of 16 but a head is not
    x = np.ones((1, 2, 24), np.float32)
    assert write(lib, cache, x, [0]) == ERR_FORMAT


def rope_reference(x: np.ndarray, frames: int, height: int, width: int, frame_offset: int) -> np.ndarray:
    d = x.shape[-1]
    axes = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    angles = rope_angles(axes, torch.arange(frames) + frame_offset, height, width)
    return RotaryTable(angles).rotate(torch.from_numpy(x)[None])[0].numpy()


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| in units of the last place of the reference b (works for fp32 and fp16)."""
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) / np.spacing(np.abs(b)).astype(np.float64)


@pytest.mark.parametrize("frame_offset", [0, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("head_dim", [128, 32, 36])
def test_rope3d_matches_reference(native, frame_offset, dtype, head_dim):
    """Tolerance: at most 1 ulp of the output dtype per element, and >= 99.9% of elements exact.

    Why not exact: torch evaluates pow/cos/sin in double with its own (vectorized SLEEF) routines and
    the C kernel with libm; both are within an ulp of the true double, which very rarely flips the
    final rounding to fp32/fp16. Observed on x86-64 glibc: every element identical."""
    _, lib = native
    rng = np.random.default_rng(head_dim + frame_offset)
    frames, height, width, heads = 3, 4, 5, 2
    x = (rng.standard_normal((frames * height * width, heads, head_dim)) * 3).astype(dtype)
    want = rope_reference(x, frames, height, width, frame_offset)
    got = x.copy()
    st = lib.arvc_rope3d_cpu(got.ctypes.data, DTYPE[dtype], heads * head_dim, heads, head_dim, frames, height, width,
                             frame_offset)
    assert st == OK
    ulps = ulp_distance(got, want)
    assert ulps.max() <= 1.0
    assert (got == want).mean() >= 0.999


def test_rope3d_strided_rows_and_errors(native):
    _, lib = native
    rng = np.random.default_rng(3)
    heads, head_dim, stride = 2, 16, 48
    base = rng.standard_normal((6, stride)).astype(np.float32)
    got = base.copy()
    assert lib.arvc_rope3d_cpu(got.ctypes.data, 0, stride, heads, head_dim, 2, 1, 3, 4) == OK
    want = rope_reference(np.ascontiguousarray(base[:, :32]).reshape(6, heads, head_dim), 2, 1, 3, 4)
    assert ulp_distance(got[:, :32].reshape(6, heads, head_dim), want).max() <= 1.0
    assert np.array_equal(got[:, 32:], base[:, 32:])  # the stride's gap is not touched
    assert lib.arvc_rope3d_cpu(None, 0, 32, heads, head_dim, 2, 1, 3, 0) == ERR_ARGUMENT
    assert lib.arvc_rope3d_cpu(got.ctypes.data, 0, 31, heads, head_dim, 2, 1, 3, 0) == ERR_ARGUMENT
    assert lib.arvc_rope3d_cpu(got.ctypes.data, 0, 32, heads, 15, 2, 1, 3, 0) == ERR_ARGUMENT  # odd head_dim
    assert lib.arvc_rope3d_cpu(got.ctypes.data, 0, 32, heads, head_dim, 0, 1, 3, 0) == ERR_ARGUMENT
    assert lib.arvc_rope3d_cpu(got.ctypes.data, 9, 32, heads, head_dim, 2, 1, 3, 0) == ERR_ARGUMENT


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_bf16_input(native, fmt):
    """bf16 activations (ARVC_BF16): the encoders see x.float(), exactly as the Python codecs do."""
    _, lib = native
    rng = np.random.default_rng(11)
    heads, head_dim = 2, 32
    x = torch.from_numpy(random_rows(rng, 5, heads, head_dim)).bfloat16()
    cache = CacheBuffers(fmt, 8, heads, head_dim)
    idx = np.array([6, 1, 4, 0, 7], np.int32)
    st = lib.arvc_kv_cache_write_cpu(ctypes.byref(cache.struct), x.data_ptr(), 2, heads * head_dim, idx.ctypes.data,
                                     len(idx), 0)
    assert st == OK
    exp = expected_parts(fmt, x.float()) if fmt != "fp16" else {"data": x.half().reshape(5, -1).numpy()}
    for part, want in exp.items():
        assert np.array_equal(getattr(cache, part)[idx].view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), part
