"""arvc_attention_qcache_cuda against the CPU reference kernel, for every KV format (needs a CUDA device
and nvcc; conftest skips the gpu mark without a device).

The same encoded cache bytes go to both: numpy buffers for the CPU kernel, copies in torch CUDA tensors
for the CUDA one (the arvc_kv_cache struct then holds device pointers). The two sum in different
orders (tiles of 32 keys vs one key at a time), so fp32 outputs agree to 1e-5 of the largest output
magnitude, fp16 / bf16 outputs to one rounding of their dtype (2e-3 / 1.6e-2 of the largest).
"""
from __future__ import annotations

import ctypes
import os
import shutil

import numpy as np
import pytest
import torch

from arvc.quant.format_table import KV_CODES
from tests import native
from tests.test_attention_qcache import ARGTYPES, FORMATS, fill_cache, rope_tables, sink_then_shuffled

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": (torch.float32, 0, 1e-5), "fp16": (torch.float16, 1, 2e-3), "bf16": (torch.bfloat16, 2, 1.6e-2)}
NO_HOST_SYNC = 1


@pytest.fixture(scope="session")
def libs(tmp_path_factory):
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX"):
        pytest.skip("nvcc not found: the CUDA kernels cannot be built")
    build_dir = native.build(tmp_path_factory.mktemp("arvc_native_attn_cuda"), cuda=True)
    cuda_so = next(build_dir.rglob("libarvc_kernels_cuda.so"), None)
    assert cuda_so is not None, "ARVC_CUDA=ON with nvcc present must build libarvc_kernels_cuda.so"
    cpu, gpu = native.load(build_dir), ctypes.CDLL(str(cuda_so))
    cpu.arvc_attention_qcache_cpu.argtypes = ARGTYPES
    cpu.arvc_attention_qcache_cpu.restype = ctypes.c_int
    gpu.arvc_attention_qcache_cuda.argtypes = ARGTYPES + [ctypes.c_void_p]
    gpu.arvc_attention_qcache_cuda.restype = ctypes.c_int
    return cpu, gpu


def device_struct(buf: native.CacheBuffers):
    """The cache's parts copied to the GPU, and a struct pointing at them (keep the tensors alive)."""
    parts = [None if a is None else torch.from_numpy(np.ascontiguousarray(a)).cuda()
             for a in (buf.data, buf.block_scale, buf.scale)]
    ptr = (lambda t: t.data_ptr() if t is not None else None)
    s = native.KVCache(KV_CODES[buf.fmt], buf.heads, buf.head_dim, buf.rows, *(ptr(t) for t in parts))
    return s, parts


def both(libs, fmt_k, fmt_v, heads, head_dim, rows, n_q, n_new, dtype, seed, q_pad=0, dead_tile=False,
         rope_hw=None, flags=0):
    """-> (status cpu, status gpu, out cpu, out gpu) for one random case; rope_hw: (height, width) of a
    frame for per-slot k-RoPE tables (sink at 0..2, the ring shuffled); flags go to the CUDA call."""
    cpu, gpu = libs
    torch_dtype, code, _ = DTYPES[dtype]
    g = torch.Generator().manual_seed(seed)
    kb, vb = (native.CacheBuffers(f, rows, heads, head_dim) for f in (fmt_k, fmt_v))
    fill_cache(kb, torch.randn(rows, heads, head_dim, generator=g) * 2.0)
    fill_cache(vb, torch.randn(rows, heads, head_dim, generator=g))
    valid = torch.rand(rows, generator=g) < 0.6
    valid[: min(3, rows)] = True  # sink-like prefix
    if dead_tile:  # a whole key tile (32 rows) with no valid key: the kernel's skip path
        valid[32:64] = False
    valid_u8 = valid.to(torch.uint8)
    dim = heads * head_dim
    q = (torch.randn(n_q, dim + q_pad, generator=g)).to(torch_dtype)
    k_new = torch.randn(max(n_new, 1), dim, generator=g).to(torch_dtype)
    v_new = torch.randn(max(n_new, 1), dim, generator=g).to(torch_dtype)
    scale = 1.0 / head_dim**0.5
    cos = sin = None
    if rope_hw is not None:
        h, w = rope_hw
        _, cos, sin = rope_tables(head_dim, sink_then_shuffled(rows // (h * w), seed), h, w)
    ptr = (lambda t: None if t is None else t.data_ptr())

    out_cpu = torch.full((n_q, dim), float("nan"), dtype=torch_dtype)
    st_cpu = cpu.arvc_attention_qcache_cpu(q.data_ptr(), code, dim + q_pad, n_q, ctypes.byref(kb.struct),
                                           ctypes.byref(vb.struct), valid_u8.data_ptr(), ptr(cos), ptr(sin),
                                           k_new.data_ptr(), v_new.data_ptr(), dim, n_new, scale, out_cpu.data_ptr(),
                                           dim, 0)

    ks, k_parts = device_struct(kb)
    vs, v_parts = device_struct(vb)
    q_d, k_new_d, v_new_d, valid_d = q.cuda(), k_new.cuda(), v_new.cuda(), valid_u8.cuda()
    cos_d, sin_d = (None if t is None else t.cuda() for t in (cos, sin))
    out_d = torch.full((n_q, dim), float("nan"), dtype=torch_dtype, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    st_gpu = gpu.arvc_attention_qcache_cuda(q_d.data_ptr(), code, dim + q_pad, n_q, ctypes.byref(ks),
                                            ctypes.byref(vs), valid_d.data_ptr(), ptr(cos_d), ptr(sin_d),
                                            k_new_d.data_ptr(), v_new_d.data_ptr(), dim, n_new, scale,
                                            out_d.data_ptr(), dim, flags, stream)
    torch.cuda.synchronize()
    del k_parts, v_parts
    return st_cpu, st_gpu, out_cpu.double(), out_d.cpu().double()


def assert_close(out_cpu, out_gpu, dtype):
    assert torch.isfinite(out_gpu).all()
    err = (out_gpu - out_cpu).abs().max() / out_cpu.abs().max()
    assert err <= DTYPES[dtype][2], f"relative error {err:.3g}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("heads,head_dim", [(2, 32), (12, 128)])
def test_cuda_matches_cpu(libs, fmt, dtype, heads, head_dim):
    # 37 query rows: three query tiles, the last partial; 100 rows: four key tiles, the last partial
    st_cpu, st_gpu, out_cpu, out_gpu = both(libs, fmt, fmt, heads, head_dim, rows=100, n_q=37, n_new=7,
                                            dtype=dtype, seed=head_dim, dead_tile=True)
    assert st_cpu == 0 and st_gpu == 0
    assert_close(out_cpu, out_gpu, dtype)


@pytest.mark.parametrize("fmt_k,fmt_v", [("nvfp4", "fp8"), ("int8", "fp16")])
def test_cuda_mixed_formats_strided_no_fresh(libs, fmt_k, fmt_v):
    st_cpu, st_gpu, out_cpu, out_gpu = both(libs, fmt_k, fmt_v, 2, 32, rows=50, n_q=5, n_new=0, dtype="fp32",
                                            seed=5, q_pad=9)
    assert st_cpu == 0 and st_gpu == 0
    assert_close(out_cpu, out_gpu, "fp32")


def test_cuda_head_dim_256(libs):
    # the largest head_dim: over 48 KiB of shared memory, the opt-in path
    st_cpu, st_gpu, out_cpu, out_gpu = both(libs, "nvfp4", "int8", 2, 256, rows=40, n_q=20, n_new=3, dtype="fp32",
                                            seed=6)
    assert st_cpu == 0 and st_gpu == 0
    assert_close(out_cpu, out_gpu, "fp32")


def test_cuda_no_key_is_an_argument_error(libs):
    cpu, gpu = libs
    kb, vb = (native.CacheBuffers("fp8", 8, 2, 32) for _ in range(2))
    ks, k_parts = device_struct(kb)
    vs, v_parts = device_struct(vb)
    valid = torch.zeros(8, dtype=torch.uint8, device="cuda")
    q = torch.randn(2, 64, device="cuda")
    out = torch.empty_like(q)
    call = (lambda flags, cos=None, sin=None: gpu.arvc_attention_qcache_cuda(
        q.data_ptr(), 0, 64, 2, ctypes.byref(ks), ctypes.byref(vs), valid.data_ptr(), cos, sin, None, None, 0, 0, 1.0,
        out.data_ptr(), 64, flags, None))
    assert call(0) == 1  # ARVC_ERR_ARGUMENT
    # NO_HOST_SYNC: nobody looks at key_valid on the host; the softmax over nothing is NaN (arvc_kernels.h)
    assert call(NO_HOST_SYNC) == 0
    torch.cuda.synchronize()
    assert torch.isnan(out).all()
    valid[5] = 1
    assert call(0) == 0
    torch.cuda.synchronize()
    table = torch.zeros(8, 16, device="cuda")
    assert call(0, cos=table.data_ptr()) == 1  # one table without the other
    assert call(2) == 1  # unknown flag bit


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("flags", [0, NO_HOST_SYNC])
def test_cuda_rope_tables_match_cpu(libs, fmt, flags):
    # 100 rows = 25 slots of 2x2-token frames; head_dim 128 is Wan's
    st_cpu, st_gpu, out_cpu, out_gpu = both(libs, fmt, fmt, 2, 128, rows=100, n_q=21, n_new=4, dtype="fp32",
                                            seed=8, rope_hw=(2, 2), flags=flags)
    assert st_cpu == 0 and st_gpu == 0
    assert_close(out_cpu, out_gpu, "fp32")


def test_cuda_no_host_sync_matches_cpu_without_fresh_rows(libs):
    st_cpu, st_gpu, out_cpu, out_gpu = both(libs, "nvfp4", "fp8", 2, 32, rows=64, n_q=9, n_new=0, dtype="bf16",
                                            seed=9, flags=NO_HOST_SYNC)
    assert st_cpu == 0 and st_gpu == 0
    assert_close(out_cpu, out_gpu, "bf16")
