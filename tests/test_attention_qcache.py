"""arvc_attention_qcache_cpu against a float64 torch reference, for every KV format.

Caches are filled with quant/formats.py's per_token encoders, written byte for byte in the layout of
csrc/arvc_kernels.h; the reference attends over kv_round_trip-decoded rows (the values the cache
holds) restricted to the valid rows, plus the fresh rows, in float64. Tolerance: fp32 q/out agree to
1e-5 of the output's largest magnitude (the kernel accumulates in fp32; the reference is exact to
float64); fp16 q/out to 2e-3 (one fp16 rounding of the output, ~5e-4 relative, plus fp32 noise),
bf16 to 1.6e-2 (one bf16 rounding, ~4e-3 relative).
"""
from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch

from arvc.model.rope import RotaryTable, rope_angles
from arvc.quant.formats import NVFP4, Fp8E4M3, Int8
from arvc.quant.kv import kv_round_trip
from tests import native

FORMATS = ("fp16", "int8", "fp8", "nvfp4")
DTYPES = {"fp32": (torch.float32, 0), "fp16": (torch.float16, 1), "bf16": (torch.bfloat16, 2)}


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return native.build(tmp_path_factory.mktemp("arvc_native_attn"))


@pytest.fixture(scope="session")
def lib(build_dir):
    lib = native.load(build_dir)
    fn = lib.arvc_attention_qcache_cpu
    fn.restype = ctypes.c_int
    fn.argtypes = ARGTYPES
    return lib


ARGTYPES = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32, ctypes.POINTER(native.KVCache),
            ctypes.POINTER(native.KVCache), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p, ctypes.c_int64,
            ctypes.c_uint32]  # arvc_attention_qcache_cpu; the CUDA one appends the stream


def test_ctest_passes(build_dir):
    r = subprocess.run(["ctest", "--output-on-failure"], cwd=build_dir, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def fill_cache(buf: native.CacheBuffers, x: torch.Tensor) -> None:
    """Encode rows x [rows, heads, head_dim] (float32) into buf's arrays exactly as the C layout holds them."""
    rows = x.shape[0]
    if buf.fmt == "fp16":
        buf.data[:] = x.reshape(rows, -1).half().numpy()
        return
    if buf.fmt == "nvfp4":
        enc = NVFP4("per_token").encode(x)
        buf.data[:] = enc["weight"].reshape(rows, -1).numpy()
        buf.block_scale[:] = enc["weight_scale"].reshape(rows, -1).numpy()
        buf.scale[:] = enc["weight_scale_2"].numpy()
        return
    enc = {"int8": Int8("per_token"), "fp8": Fp8E4M3("per_token")}[buf.fmt].encode(x)
    buf.data[:] = enc["data"].reshape(rows, -1).numpy().view(buf.data.dtype)
    buf.scale[:] = enc["scale"].numpy()


def reference(q, k, v, valid, k_new, v_new, scale):
    """float64 softmax attention over the valid cached rows then the fresh rows; q [n, H, D]."""
    keys = torch.cat([k[valid], k_new]).double()
    values = torch.cat([v[valid], v_new]).double()
    scores = torch.einsum("ihd,jhd->hij", q.double(), keys) * scale
    return torch.einsum("hij,jhd->ihd", scores.softmax(dim=-1), values)


def rope_tables(head_dim: int, frame_pos: list[int], height: int, width: int):
    """-> (angles f64 [rows, head_dim/2], cos f32, sin f32) for cache rows holding frames of height x width
    tokens, slot i's frame at position frame_pos[i] (window-relative RoPE: the cache's slots in any order)."""
    axes = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    angles = rope_angles(axes, torch.tensor(frame_pos), height, width)
    return angles, torch.cos(angles).float().contiguous(), torch.sin(angles).float().contiguous()


def sink_then_shuffled(slots: int, seed: int, sink: int = 3) -> list[int]:
    """Frame positions of the cache slots: the sink at 0..sink-1, then the ring's slots at shuffled
    positions (a ring that has wrapped around)."""
    ring = torch.randperm(slots - sink, generator=torch.Generator().manual_seed(seed)) + sink
    return list(range(sink)) + ring.tolist()


def run_case(lib, fmt_k, fmt_v, heads, head_dim, rows, n_q, n_new, dtype, seed, q_pad=0, all_invalid=False,
             rope_hw=None):
    """rope_hw: (height, width) of a frame to rotate the cached keys with per-slot positions, or None."""
    g = torch.Generator().manual_seed(seed)
    torch_dtype, code = DTYPES[dtype]
    k = torch.randn(rows, heads, head_dim, generator=g) * 2.0
    v = torch.randn(rows, heads, head_dim, generator=g)
    kb, vb = (native.CacheBuffers(f, rows, heads, head_dim) for f in (fmt_k, fmt_v))
    fill_cache(kb, k)
    fill_cache(vb, v)
    # a sink-like always-valid prefix, then a randomly filled ring
    valid = torch.rand(rows, generator=g) < 0.6
    valid[: min(3, rows)] = True
    if all_invalid:
        valid[:] = False
    valid_u8 = valid.to(torch.uint8)

    dim = heads * head_dim
    # q rows sit q_pad elements apart beyond their width: a non-contiguous view of a wider buffer
    q_buf = torch.randn(n_q, dim + q_pad, generator=g).to(torch_dtype)
    q = q_buf[:, :dim].double().reshape(n_q, heads, head_dim)
    new_buf = torch.randn(2, max(n_new, 1), dim, generator=g).to(torch_dtype)
    k_new = new_buf[0, :n_new].double().reshape(n_new, heads, head_dim)
    v_new = new_buf[1, :n_new].double().reshape(n_new, heads, head_dim)
    out = torch.full((n_q, dim), float("nan"), dtype=torch_dtype)
    scale = 1.0 / head_dim**0.5
    cos = sin = angles = None
    if rope_hw is not None:
        h, w = rope_hw
        assert rows % (h * w) == 0
        angles, cos, sin = rope_tables(head_dim, sink_then_shuffled(rows // (h * w), seed), h, w)

    st = lib.arvc_attention_qcache_cpu(
        q_buf.data_ptr(), code, dim + q_pad, n_q, ctypes.byref(kb.struct), ctypes.byref(vb.struct),
        valid_u8.data_ptr(), None if cos is None else cos.data_ptr(), None if sin is None else sin.data_ptr(),
        new_buf[0].data_ptr(), new_buf[1].data_ptr(), dim, n_new, scale, out.data_ptr(), dim, 0)
    if all_invalid and n_new == 0:
        return st, None, None
    assert st == 0, lib.arvc_status_string(st)

    kd, vd = kv_round_trip(k, fmt_k), kv_round_trip(v, fmt_v)
    if angles is not None:  # the cache holds un-rotated keys; attention sees them rotated
        kd = RotaryTable(angles).rotate(kd[None].double())[0]
    ref = reference(q, kd, vd, valid, k_new, v_new, scale)
    return st, out.double().reshape(n_q, heads, head_dim), ref


TOL = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1.6e-2}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("heads,head_dim", [(2, 32), (12, 128)])
def test_matches_reference(lib, fmt, dtype, heads, head_dim):
    _, out, ref = run_case(lib, fmt, fmt, heads, head_dim, rows=40, n_q=6, n_new=5, dtype=dtype, seed=head_dim)
    err = (out - ref).abs().max() / ref.abs().max()
    assert err <= TOL[dtype], f"{fmt} {dtype}: relative error {err:.3g}"


@pytest.mark.parametrize("fmt_k,fmt_v", [("nvfp4", "fp8"), ("int8", "fp16")])
def test_mixed_formats_strided_q_no_fresh(lib, fmt_k, fmt_v):
    _, out, ref = run_case(lib, fmt_k, fmt_v, 2, 32, rows=24, n_q=4, n_new=0, dtype="fp32", seed=7, q_pad=11)
    assert (out - ref).abs().max() / ref.abs().max() <= TOL["fp32"]


def test_fresh_rows_only(lib):
    _, out, ref = run_case(lib, "int8", "int8", 2, 32, rows=8, n_q=3, n_new=4, dtype="fp32", seed=3,
                           all_invalid=True)
    assert (out - ref).abs().max() / ref.abs().max() <= TOL["fp32"]


def test_no_key_is_an_argument_error(lib):
    st, _, _ = run_case(lib, "fp8", "fp8", 2, 32, rows=8, n_q=2, n_new=0, dtype="fp32", seed=4, all_invalid=True)
    assert st == 1  # ARVC_ERR_ARGUMENT


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_rope_tables_match_rotated_reference(lib, fmt, dtype):
    """Keys cached un-rotated and rotated inside the kernel equal attention over keys decoded and then
    rotated by arvc.model.rope at each slot's frame position (sink 0..2, then a shuffled ring)."""
    _, out, ref = run_case(lib, fmt, fmt, 2, 32, rows=40, n_q=5, n_new=4, dtype=dtype, seed=21, rope_hw=(2, 2))
    err = (out - ref).abs().max() / ref.abs().max()
    assert err <= TOL[dtype], f"{fmt} {dtype}: relative error {err:.3g}"
    # the rotation is not a no-op: the unrotated answer is far off
    _, out_plain, _ = run_case(lib, fmt, fmt, 2, 32, rows=40, n_q=5, n_new=4, dtype=dtype, seed=21)
    assert (out_plain - ref).abs().max() / ref.abs().max() > 10 * TOL[dtype]


def call_status(lib, *, cos=None, sin=None, flags=0, valid_rows=True):
    kb, vb = native.CacheBuffers("int8", 4, 1, 16), native.CacheBuffers("int8", 4, 1, 16)
    kb.scale[:] = vb.scale[:] = 1.0
    valid = torch.full((4,), int(valid_rows), dtype=torch.uint8)
    q, out = torch.ones(1, 16), torch.empty(1, 16)
    return lib.arvc_attention_qcache_cpu(q.data_ptr(), 0, 16, 1, ctypes.byref(kb.struct), ctypes.byref(vb.struct),
                                         valid.data_ptr(), cos, sin, None, None, 0, 0, 0.25, out.data_ptr(), 16, flags)


def test_rope_and_flag_errors(lib):
    table = torch.zeros(4, 8)
    assert call_status(lib, cos=table.data_ptr(), sin=table.data_ptr()) == 0
    assert call_status(lib, cos=table.data_ptr()) == 1  # ARVC_ERR_ARGUMENT: cos without sin
    assert call_status(lib, sin=table.data_ptr()) == 1
    assert call_status(lib, flags=2) == 1  # unknown flag bit
    assert call_status(lib, flags=1 << 31) == 1
    assert call_status(lib, flags=1) == 0  # ARVC_FLAG_NO_HOST_SYNC: accepted, ignored on the CPU
    assert call_status(lib, flags=1, valid_rows=False) == 1  # ... which still checks for a key
