"""arvc.runtime.triton_attention on the CPU, in Triton's interpreter, against the csrc CPU reference
(Kernels('cpu').attention) for every KV format, fp32 and fp16 q, with and without k-RoPE tables.

Tolerances (of the largest output magnitude): fp32 q 1e-5 (fp32 accumulation in another order), fp16 q
2e-3 (the kernel feeds its dots in fp16, as on tensor cores). Shapes are tiny: the interpreter runs the
kernel in numpy. TRITON_INTERPRET must be set before arvc.runtime.triton_attention is first imported
(triton.jit picks the interpreter when it decorates), so it is set here, before that import, when torch
sees no CUDA device; on a CUDA machine without it this module is skipped (tests/test_triton_attention_gpu.py
covers the device). The variable stays set for the rest of the test process; nothing else here uses Triton.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from arvc.runtime import triton_attention as ta  # noqa: E402  (after TRITON_INTERPRET)
from arvc.runtime.kernels import CacheTensors, Kernels  # noqa: E402
from tests import native  # noqa: E402

if not ta.INTERPRETED:
    pytest.skip("TRITON_INTERPRET is not set (a CUDA machine): the GPU tests cover the kernel",
                allow_module_level=True)

tl = triton.language
FORMATS = ("fp16", "int8", "fp8", "nvfp4")
HEADS, ROWS, N_Q = 2, 100, 40  # rows not a multiple of BLOCK_N, n_q not one of BLOCK_M
BM = BN = 16
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.fixture(scope="module")
def kern():
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(native.session_xdg_cache()))
    mp.delenv("ARVC_KERNELS_DIR", raising=False)
    yield Kernels("cpu")
    mp.undo()


def caches(kern, fmt_k, fmt_v, head_dim, g, rows=ROWS, raw=False):
    """K and V caches written with random rows through the csrc writer; raw: random bytes instead (every
    E4M3 / E2M1 code incl. subnormals, NaN codes excluded), scales random."""
    out = []
    for fmt in (fmt_k, fmt_v):
        c = CacheTensors(fmt, rows, HEADS, head_dim)
        if raw and fmt in ("fp8", "nvfp4"):
            b = torch.randint(0, 256, c.data.shape, generator=g, dtype=torch.uint8)
            c.data.copy_(torch.where((b & 0x7F) == 0x7F, b ^ 1, b))
            if c.block_scale is not None:  # E4M3 block scales in [2^-9, 2^3): subnormals and normals
                c.block_scale.copy_(torch.randint(1, 0x50, c.block_scale.shape, generator=g, dtype=torch.uint8))
            c.scale.copy_(torch.rand(c.scale.shape, generator=g) + 0.1)
        else:
            kern.kv_cache_write(c, torch.randn(rows, HEADS * head_dim, generator=g) * 2,
                                torch.randperm(rows, generator=g).to(torch.int32))
        out.append(c)
    return out


def key_valid(g, rows=ROWS):
    valid = torch.rand(rows, generator=g) < 0.7
    valid[2 * BN:3 * BN] = False  # a fully invalid tile in the middle
    valid[0] = True
    return valid


def rope(g, head_dim, rows=ROWS):
    angles = torch.rand(rows, head_dim // 2, generator=g, dtype=torch.float64) * 20 - 10
    return torch.cos(angles).float(), torch.sin(angles).float()


def compare(kern, q, k, v, valid, k_rope=None, softmax_scale=None, **launch):
    """Triton vs csrc on row-strided q and out; -> the relative error."""
    dim = k.heads * k.head_dim
    want = kern.attention(q, k, v, valid, torch.empty(q.shape[0], dim, dtype=q.dtype), k_rope=k_rope,
                          softmax_scale=softmax_scale)
    out = torch.full((q.shape[0], dim + 8), float("nan"), dtype=q.dtype)[:, 4:4 + dim]
    got = ta.attention(q, k, v, valid, out, k_rope=k_rope, softmax_scale=softmax_scale, **launch)
    assert got is out
    peak = want.double().abs().max()
    err = float((got.double() - want.double()).abs().max() / peak)
    assert err <= TOL[q.dtype], err
    return err


def strided_q(g, n_q, dim, dtype):
    return (torch.randn(n_q, 3 * dim, generator=g) * 1.5)[:, dim:2 * dim].to(dtype)  # fused-qkv-like rows


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["q32", "q16"])
@pytest.mark.parametrize("with_rope", [False, True], ids=["plain", "rope"])
def test_matches_csrc(kern, fmt, dtype, with_rope):
    head_dim = 32
    g = torch.Generator().manual_seed(FORMATS.index(fmt) * 4 + (dtype == torch.float16) * 2 + with_rope)
    k, v = caches(kern, fmt, fmt, head_dim, g)
    valid = key_valid(g)
    q = strided_q(g, N_Q, HEADS * head_dim, dtype)
    compare(kern, q, k, v, valid, rope(g, head_dim) if with_rope else None, block_m=BM, block_n=BN)


@pytest.mark.parametrize("fmt_k,fmt_v", [("int8", "fp8"), ("nvfp4", "fp16"), ("fp8", "nvfp4")])
def test_mixed_formats_head_dim_64_uint8_valid(kern, fmt_k, fmt_v):
    g = torch.Generator().manual_seed(7)
    k, v = caches(kern, fmt_k, fmt_v, 64, g, rows=50)
    valid = key_valid(g, 50).to(torch.uint8)
    q = strided_q(g, 20, HEADS * 64, torch.float32)
    compare(kern, q, k, v, valid, rope(g, 64, 50), softmax_scale=0.3, block_m=BM, block_n=BN)


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
@pytest.mark.parametrize("with_rope", [False, True], ids=["plain", "rope"])
def test_every_code(kern, fmt, with_rope):
    """Random cache bytes: every E4M3 code (subnormals included) and E2M1 code, decoded as the csrc does."""
    g = torch.Generator().manual_seed(11 + with_rope)
    k, v = caches(kern, fmt, fmt, 32, g, raw=True)
    q = strided_q(g, 24, HEADS * 32, torch.float32) * 0.1
    compare(kern, q, k, v, key_valid(g), rope(g, 32) if with_rope else None, block_m=BM, block_n=BN)


def test_default_blocks_and_one_query(kern):
    g = torch.Generator().manual_seed(3)
    k, v = caches(kern, "int8", "int8", 32, g)
    compare(kern, strided_q(g, 1, HEADS * 32, torch.float16), k, v, key_valid(g))  # 64 / 64
    compare(kern, torch.randn(1, HEADS * 32, generator=g), k, v, key_valid(g))


def test_single_valid_key(kern):
    g = torch.Generator().manual_seed(4)
    k, v = caches(kern, "fp8", "fp8", 32, g)
    valid = torch.zeros(ROWS, dtype=torch.bool)
    valid[ROWS - 1] = True  # the last row of the last, partial tile
    compare(kern, strided_q(g, N_Q, HEADS * 32, torch.float32), k, v, valid, block_m=BM, block_n=BN)


@triton.jit
def _decode_kernel(codes, out, N: tl.constexpr, FP8: tl.constexpr):
    i = tl.arange(0, N)
    c = tl.load(codes + i)
    if FP8:
        tl.store(out + i, ta._e4m3(c))
    else:
        tl.store(out + i, ta._e2m1(c))


def test_element_decoders_exact():
    codes = torch.arange(256, dtype=torch.int32)
    got = torch.empty(256)
    _decode_kernel[(1,)](codes, got, N=256, FP8=True)
    want = codes.to(torch.uint8).view(torch.float8_e4m3fn).float()
    assert torch.equal(got.isnan(), want.isnan()) and int(want.isnan().sum()) == 2
    ok = ~want.isnan()
    assert torch.equal(got[ok], want[ok]) and torch.equal(got[ok].signbit(), want[ok].signbit())
    got16 = torch.empty(16)
    _decode_kernel[(1,)](codes[:16].contiguous(), got16, N=16, FP8=False)
    mags = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    assert torch.equal(got16, torch.cat([mags, -mags]))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_no_valid_key(kern):
    k, v = caches(kern, "int8", "int8", 32, torch.Generator().manual_seed(5))
    q, out = torch.randn(3, HEADS * 32), torch.empty(3, HEADS * 32)
    none = torch.zeros(ROWS, dtype=torch.bool)
    with pytest.raises(ValueError, match="no valid key"):
        ta.attention(q, k, v, none, out)
    ta.attention(q, k, v, none, out, check=False, block_m=BM, block_n=BN)  # as csrc under NO_HOST_SYNC: NaN
    assert out.isnan().all()


def test_argument_errors(monkeypatch):
    dim = HEADS * 32
    k, v = CacheTensors("int8", 8, HEADS, 32), CacheTensors("int8", 8, HEADS, 32)
    q, out, valid = torch.ones(2, dim), torch.empty(2, dim), torch.ones(8, dtype=torch.uint8)
    cases = [
        ((q.double(), k, v, valid, out.double()), ValueError, "q: dtype torch.float64"),
        ((q[:, :-1], k, v, valid, out), ValueError, r"q: shape \(2, 63\)"),
        ((torch.ones(2, 2 * dim)[:, ::2], k, v, valid, out), ValueError, "q: the last dimension must be contiguous"),
        ((q, k, v, valid, out.half()), ValueError, "out: dtype"),
        ((q, k, v, valid, torch.empty(3, dim)), ValueError, r"out: shape \(3, 64\)"),
        ((q, k, v, valid.int(), out), ValueError, "key_valid: dtype"),
        ((q, k, v, valid[:7], out), ValueError, r"key_valid: shape \(7,\)"),
        ((q, k, v, valid, out, (torch.ones(8, 8), torch.ones(8, 16))), ValueError, "k_rope cos: shape"),
        ((q, k, v, valid, out, (torch.ones(8, 16), torch.ones(16, 8).t())), ValueError,
         "k_rope sin: the last dimension must be contiguous|k_rope sin must be contiguous"),
        ((q, k, v, valid, out, (torch.ones(8, 16).double(), torch.ones(8, 16))), ValueError, "k_rope cos: dtype"),
        ((q, k, v, valid, out, torch.ones(8, 16)), ValueError, "k_rope: expected a"),
        ((q, k, CacheTensors("int8", 9, HEADS, 32), valid, out), ValueError, "k and v caches differ"),
        ((q, "k", v, valid, out), TypeError, "k: expected CacheTensors"),
        ((q.tolist(), k, v, valid, out), TypeError, "q: expected a torch.Tensor"),
        ((q[:0], k, v, valid, out[:0]), ValueError, "no query rows"),
        ((q.bfloat16(), k, v, valid, out.bfloat16()), ValueError, "bf16 on the CPU"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            ta.attention(*args)
    with pytest.raises(ValueError, match="block_n 24"):
        ta.attention(q, k, v, valid, out, block_n=24)
    odd = CacheTensors("fp16", 8, HEADS, 48)
    with pytest.raises(ValueError, match="head_dim 48"):
        ta.attention(torch.ones(2, HEADS * 48), odd, odd, valid, torch.empty(2, HEADS * 48))
    monkeypatch.setattr(ta, "INTERPRETED", False)
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        ta.attention(q, k, v, valid, out)


def test_torch_backend_streams_a_plan_through_the_triton_kernel(small_ckpt, tmp_path):
    """The whole torch backend with cache_ops='triton' (csrc writes, the Triton kernel reads the quantized
    cache and rotates the keys: relative RoPE) streams the frames ONNX Runtime streams from the same plan."""
    import numpy as np

    from arvc.compiler.compile import CompileOptions, compile_plan
    from arvc.model.cache_geometry import CacheGeometry
    from arvc.model.schedule import Schedule
    from arvc.runtime.plan_session import load

    plan = tmp_path / "fp8kv.plan"
    compile_plan(small_ckpt[0], plan, CompileOptions(CacheGeometry(3, 6, 3, rope="relative"), Schedule((1000.0, 500.0)),
                                                     32, 32, kv_cache="fp8", min_psnr=0.0, verify_blocks=2),
                 log=lambda _m: None)
    ctx = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    want = np.stack(list(load(plan, backend="ort").stream(ctx, frames=28, seed=3, raw=True)))
    session = load(plan, backend="torch", device="cpu", cache_ops="triton")
    assert session.backend.cache_ops == "triton"
    got = np.stack(list(session.stream(ctx, frames=28, seed=3, raw=True)))
    mse = float(np.mean((want.astype(np.float64) - got) ** 2))
    assert mse == 0 or 10 * np.log10(4.0 / mse) >= 100.0  # fp32 end to end: only summation order differs
