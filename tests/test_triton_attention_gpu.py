"""arvc.runtime.triton_attention on a CUDA device against the csrc CUDA kernel (Kernels('cuda').attention),
for every KV format, bf16 / fp16 / fp32 q, with and without k-RoPE tables, at Wan2.1-1.3B's head shape
(12 heads of 128) over a few frames of 480x832 tokens (1560 per latent frame); then the kernel captured
into a CUDA graph with check=False. Needs a CUDA device and nvcc (for the csrc kernel).

Tolerances (of the largest output magnitude): fp32 1e-5 (both accumulate in fp32, in other orders),
fp16 2e-3 and bf16 1.6e-2 (the Triton kernel feeds its dots in q's dtype: one rounding of K, P and V).
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # before importing the kernel module: see tests/test_triton_attention.py
    pytest.skip("needs a CUDA device", allow_module_level=True)

triton = pytest.importorskip("triton")

from arvc.runtime import kernels  # noqa: E402
from arvc.runtime import triton_attention as ta  # noqa: E402
from arvc.runtime.kernels import CacheTensors, Kernels  # noqa: E402
from tests import native  # noqa: E402

if ta.INTERPRETED:
    pytest.skip("TRITON_INTERPRET is set: the kernel would run in the interpreter", allow_module_level=True)

FORMATS = ("fp16", "int8", "fp8", "nvfp4")
DTYPES = {"fp32": (torch.float32, 1e-5), "fp16": (torch.float16, 2e-3), "bf16": (torch.bfloat16, 1.6e-2)}
HEADS, HEAD_DIM, FRAME = 12, 128, 1560  # Wan2.1-1.3B; tokens of one 480x832 latent frame
DIM = HEADS * HEAD_DIM


@pytest.fixture(scope="module")
def kern():
    if kernels._find_nvcc() is None:
        pytest.skip("nvcc not found: the csrc CUDA kernels cannot be built")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(native.session_xdg_cache()))
    mp.delenv("ARVC_KERNELS_DIR", raising=False)
    yield Kernels("cuda")
    mp.undo()


def setup(kern, fmt, rows, n_q, dtype, seed, with_rope):
    g = torch.Generator(device="cuda").manual_seed(seed)
    k, v = CacheTensors(fmt, rows, HEADS, HEAD_DIM, "cuda"), CacheTensors(fmt, rows, HEADS, HEAD_DIM, "cuda")
    for c in (k, v):
        kern.kv_cache_write(c, torch.randn(rows, DIM, generator=g, device="cuda") * 2,
                            torch.randperm(rows, generator=g, device="cuda").to(torch.int32))
    valid = torch.rand(rows, generator=g, device="cuda") < 0.85
    valid[rows // 3:rows // 3 + 300] = False  # whole tiles without a valid key
    q = (torch.randn(n_q, 3 * DIM, generator=g, device="cuda") * 1.5)[:, DIM:2 * DIM].to(dtype)  # strided rows
    k_rope = None
    if with_rope:
        angles = torch.rand(rows, HEAD_DIM // 2, generator=g, device="cuda", dtype=torch.float64) * 200 - 100
        k_rope = (torch.cos(angles).float(), torch.sin(angles).float())
    return q, k, v, valid, k_rope


def check_close(got, want, tol):
    err = float((got.double() - want.double()).abs().max() / want.double().abs().max())
    assert err <= tol, err


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("with_rope", [False, True], ids=["plain", "rope"])
def test_matches_csrc_cuda(kern, fmt, dtype, with_rope):
    torch_dtype, tol = DTYPES[dtype]
    q, k, v, valid, k_rope = setup(kern, fmt, 3 * FRAME, FRAME + 7, torch_dtype, FORMATS.index(fmt), with_rope)
    want = kern.attention(q, k, v, valid, torch.empty(q.shape[0], DIM, dtype=torch_dtype, device="cuda"),
                          k_rope=k_rope)
    got = ta.attention(q, k, v, valid, torch.empty_like(want), k_rope=k_rope)
    check_close(got, want, tol)
    small = ta.attention(q, k, v, valid, torch.empty_like(want), k_rope=k_rope, block_m=16, block_n=32)
    check_close(small, want, tol)


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_wan_window_bf16(kern, fmt):
    """The steady-state shape: 3 latent frames of queries over a 12-frame window (3 sink + 9 ring)."""
    q, k, v, valid, k_rope = setup(kern, fmt, 12 * FRAME, 3 * FRAME, torch.bfloat16, 9, True)
    valid[:] = True
    want = kern.attention(q, k, v, valid, torch.empty(q.shape[0], DIM, dtype=torch.bfloat16, device="cuda"),
                          k_rope=k_rope)
    check_close(ta.attention(q, k, v, valid.to(torch.uint8), torch.empty_like(want), k_rope=k_rope), want, 1.6e-2)


def test_cuda_graph_capture(kern):
    q, k, v, valid, k_rope = setup(kern, "int8", 2 * FRAME, 300, torch.bfloat16, 5, True)
    out = torch.empty(q.shape[0], DIM, dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile outside the capture
        ta.attention(q, k, v, valid, out, k_rope=k_rope, check=False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ta.attention(q, k, v, valid, out, k_rope=k_rope, check=False)
    q.copy_(torch.randn(q.shape, device="cuda").to(q.dtype))
    valid[: FRAME // 2] = False
    graph.replay()
    torch.cuda.synchronize()
    want = kern.attention(q, k, v, valid, torch.empty_like(out), k_rope=k_rope)
    check_close(out, want, 1.6e-2)
    eager = ta.attention(q, k, v, valid, torch.empty_like(out), k_rope=k_rope)
    assert torch.equal(out, eager)


def test_all_invalid_on_device(kern):
    q, k, v, valid, _ = setup(kern, "fp16", 256, 8, torch.float16, 1, False)
    valid[:] = False
    out = torch.empty(q.shape[0], DIM, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="no valid key"):
        ta.attention(q, k, v, valid, out)
    ta.attention(q, k, v, valid, out, check=False)
    assert out.isnan().all()
    with pytest.raises(ValueError, match="is on cpu"):
        ta.attention(q.cpu(), k, v, valid, out)
