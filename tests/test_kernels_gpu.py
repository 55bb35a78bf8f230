"""CUDA cache-op kernels against the CPU references: arvc_kv_cache_write_cuda must write the same bytes
as arvc_kv_cache_write_cpu for every format and input dtype, reject what it rejects without writing,
and arvc_rope3d_cuda must agree with arvc_rope3d_cpu to 1 ulp (the device's double pow/cos/sin are not
libm's). Needs a CUDA device and nvcc; the buffers are torch CUDA tensors passed by data_ptr."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from arvc.quant.format_table import KV_CODES
from native import KVCache, build, load

pytestmark = pytest.mark.gpu

FORMATS = ("fp16", "int8", "fp8", "nvfp4")
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
OK, ERR_ARGUMENT, ERR_NONFINITE = 0, 1, 3
NO_HOST_SYNC = 1
P = ctypes.c_void_p


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """(CPU library, CUDA library), both from one ARVC_CUDA=ON build."""
    build_dir = build(tmp_path_factory.mktemp("native_gpu"), cuda=True)
    cpu = load(build_dir)
    cuda_so = list(build_dir.rglob("libarvc_kernels_cuda.so"))
    if not cuda_so:
        pytest.skip("libarvc_kernels_cuda.so was not built (nvcc not found by CMake)")
    gpu = ctypes.CDLL(str(cuda_so[0]))
    cpu.arvc_kv_cache_write_cpu.argtypes = [P, P, ctypes.c_int32, ctypes.c_int64, P, ctypes.c_int32, ctypes.c_uint32]
    gpu.arvc_kv_cache_write_cuda.argtypes = [P, P, ctypes.c_int32, ctypes.c_int64, P, ctypes.c_int32, ctypes.c_uint32,
                                             P]
    cpu.arvc_rope3d_cpu.argtypes = [P, ctypes.c_int32, ctypes.c_int64] + [ctypes.c_int32] * 6
    gpu.arvc_rope3d_cuda.argtypes = [P, ctypes.c_int32, ctypes.c_int64] + [ctypes.c_int32] * 6 + [P]
    return cpu, gpu


class TorchCache:
    """A cache's parts as zeroed torch tensors on `device`, and the arvc_kv_cache struct over them."""

    def __init__(self, fmt: str, rows: int, heads: int, head_dim: int, device: str):
        dim = heads * head_dim
        data_dtype = {"fp16": torch.float16, "int8": torch.int8, "fp8": torch.uint8, "nvfp4": torch.uint8}[fmt]
        self.data = torch.zeros(rows, dim // 2 if fmt == "nvfp4" else dim, dtype=data_dtype, device=device)
        self.block_scale = torch.zeros(rows, dim // 16, dtype=torch.uint8, device=device) if fmt == "nvfp4" else None
        self.scale = torch.zeros(rows, heads, dtype=torch.float32, device=device) if fmt != "fp16" else None
        ptr = (lambda t: t.data_ptr() if t is not None else None)
        self.struct = KVCache(KV_CODES[fmt], heads, head_dim, rows, ptr(self.data), ptr(self.block_scale),
                              ptr(self.scale))

    def parts(self) -> dict[str, torch.Tensor]:
        out = {"data": self.data, "block_scale": self.block_scale, "scale": self.scale}
        return {k: v.cpu() for k, v in out.items() if v is not None}


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def write_both(libs, fmt, x: torch.Tensor, rows: list[int], rows_total: int, gpu_flags: int = 0):
    """x: CPU tensor [n, heads, head_dim] -> (cpu cache, gpu cache, (cpu status, gpu status))."""
    cpu, gpu = libs
    n, heads, head_dim = x.shape
    stride = heads * head_dim
    idx = torch.tensor(rows, dtype=torch.int32)
    c_cache, g_cache = TorchCache(fmt, rows_total, heads, head_dim, "cpu"), TorchCache(fmt, rows_total, heads, head_dim,
                                                                                       "cuda")
    xg, idx_g = x.cuda(), idx.cuda()
    st_c = cpu.arvc_kv_cache_write_cpu(ctypes.byref(c_cache.struct), x.data_ptr(), DTYPES[x.dtype], stride,
                                       idx.data_ptr(), n, 0)
    st_g = gpu.arvc_kv_cache_write_cuda(ctypes.byref(g_cache.struct), xg.data_ptr(), DTYPES[x.dtype], stride,
                                        idx_g.data_ptr(), n, gpu_flags, stream())
    torch.cuda.synchronize()
    return c_cache, g_cache, (st_c, st_g)


def random_rows(gen: torch.Generator, n: int, heads: int, head_dim: int) -> torch.Tensor:
    mags = 10.0 ** (torch.rand(n, heads, 1, generator=gen) * 10 - 6)
    x = torch.randn(n, heads, head_dim, generator=gen) * mags
    x[0, 0] = 0.0
    x[1, 0] = torch.arange(head_dim) - head_dim / 2 + 0.5  # int8 ties once amax 127 makes the scale 1
    x[1, 0, 0] = 127.0
    x[2, heads - 1, 3] = 3e4
    return x


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("head_dim", [16, 64, 128])  # 1 NVFP4 block per head (half a warp idle), 4, 8
def test_write_matches_cpu(libs, fmt, dtype, head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    heads, n = 5, 37  # 5 heads: the last thread block has idle warps
    x = random_rows(gen, n, heads, head_dim).clamp(-6e4, 6e4).to(dtype)  # finite in fp16 too
    rows = torch.randperm(64, generator=gen)[:n].tolist()
    c_cache, g_cache, statuses = write_both(libs, fmt, x, rows, 64)
    assert statuses == (OK, OK)
    for (name, c), g in zip(c_cache.parts().items(), g_cache.parts().values()):
        assert torch.equal(c.view(torch.uint8), g.view(torch.uint8)), f"{fmt} {dtype} {name}"
    assert c_cache.data.view(torch.uint8).any()  # the comparison is not of two empty caches


def test_write_strided_input(libs):
    cpu, gpu = libs
    heads, head_dim, n = 2, 32, 6
    base = torch.randn(n, 3 * heads * head_dim)
    idx = torch.tensor([5, 0, 3, 1, 2, 4], dtype=torch.int32)
    c_cache, g_cache = TorchCache("nvfp4", 8, heads, head_dim, "cpu"), TorchCache("nvfp4", 8, heads, head_dim, "cuda")
    bg, ig = base.cuda(), idx.cuda()
    assert cpu.arvc_kv_cache_write_cpu(ctypes.byref(c_cache.struct), base.data_ptr(), 0, base.shape[1], idx.data_ptr(),
                                       n, 0) == OK
    assert gpu.arvc_kv_cache_write_cuda(ctypes.byref(g_cache.struct), bg.data_ptr(), 0, bg.shape[1], ig.data_ptr(), n,
                                        0, stream()) == OK
    torch.cuda.synchronize()
    for c, g in zip(c_cache.parts().values(), g_cache.parts().values()):
        assert torch.equal(c.view(torch.uint8), g.view(torch.uint8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_rejects_without_writing(libs, fmt):
    heads, head_dim = 2, 32
    x = torch.ones(4, heads, head_dim)
    x[3, 1, 5] = float("nan")
    _, g_cache, statuses = write_both(libs, fmt, x, [0, 1, 2, 3], 4)
    assert statuses == (ERR_NONFINITE, ERR_NONFINITE)
    assert all(not p.view(torch.uint8).any() for p in g_cache.parts().values())
    x[3, 1, 5] = float("-inf")
    _, g_cache, statuses = write_both(libs, fmt, x, [0, 1, 2, 3], 4)
    assert statuses == (ERR_NONFINITE, ERR_NONFINITE)
    x[3, 1, 5] = 1.0
    _, g_cache, statuses = write_both(libs, fmt, x, [0, 1, 4, 3], 4)  # row 4 of 4: checked on the device
    assert statuses == (ERR_ARGUMENT, ERR_ARGUMENT)
    assert all(not p.view(torch.uint8).any() for p in g_cache.parts().values())
    _, g_cache, statuses = write_both(libs, fmt, x, [0, 1, 2, 3], 4)  # the flag was reset: a good call passes
    assert statuses == (OK, OK)


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_no_host_sync_matches_cpu(libs, fmt):
    gen = torch.Generator().manual_seed(4)
    x = random_rows(gen, 9, 3, 32)
    rows = torch.randperm(16, generator=gen)[:9].tolist()
    c_cache, g_cache, statuses = write_both(libs, fmt, x, rows, 16, gpu_flags=NO_HOST_SYNC)
    assert statuses == (OK, OK)
    for c, g in zip(c_cache.parts().values(), g_cache.parts().values()):
        assert torch.equal(c.view(torch.uint8), g.view(torch.uint8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_no_host_sync_skips_rows_out_of_range(libs, fmt):
    """Unvalidated, a row index outside the cache is skipped by the kernel: the cache sits between guard
    rows of one allocation, and neither guard nor any other row changes."""
    _, gpu = libs
    heads, head_dim, rows = 2, 32, 4
    big = TorchCache(fmt, rows + 2, heads, head_dim, "cuda")  # rows 0 and rows+1 are guards
    for t in (big.data, big.block_scale, big.scale):
        if t is not None:
            t.fill_(7)
    inner = KVCache(KV_CODES[fmt], heads, head_dim, rows, big.data[1].data_ptr(),
                    None if big.block_scale is None else big.block_scale[1].data_ptr(),
                    None if big.scale is None else big.scale[1].data_ptr())
    before = [p.clone() for p in big.parts().values()]
    x = torch.randn(3, heads * head_dim, device="cuda")
    idx = torch.tensor([-1, rows, 2], dtype=torch.int32, device="cuda")
    st = gpu.arvc_kv_cache_write_cuda(ctypes.byref(inner), x.data_ptr(), 0, heads * head_dim, idx.data_ptr(), 3,
                                      NO_HOST_SYNC, stream())
    torch.cuda.synchronize()
    assert st == OK  # nothing was checked on the host
    for b, a in zip(before, big.parts().values()):
        changed = (b.view(torch.uint8) != a.view(torch.uint8)).reshape(rows + 2, -1).any(dim=1)
        assert changed.tolist() == [False, False, False, True, False, False]  # only cache row 2 (row 3 of big)
    # validated, the same call is rejected; unknown flag bits always are
    assert gpu.arvc_kv_cache_write_cuda(ctypes.byref(inner), x.data_ptr(), 0, heads * head_dim, idx.data_ptr(), 3, 0,
                                        stream()) == ERR_ARGUMENT
    assert gpu.arvc_kv_cache_write_cuda(ctypes.byref(inner), x.data_ptr(), 0, heads * head_dim, idx.data_ptr(), 3, 2,
                                        stream()) == ERR_ARGUMENT


def ulp(v: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The spacing of `dtype` numbers at |v| (float64), subnormal spacing near 0."""
    mantissa, smallest = {torch.float32: (23, 2.0**-149), torch.float16: (10, 2.0**-24),
                          torch.bfloat16: (7, 2.0**-133)}[dtype]
    exponent = np.floor(np.log2(np.maximum(np.abs(v), smallest)))
    return np.maximum(2.0 ** (exponent - mantissa), smallest)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("frame_offset", [0, 7])
def test_rope3d_matches_cpu(libs, dtype, frame_offset):
    """At most 1 ulp of the dtype apart, and >= 99% of elements identical."""
    cpu, gpu = libs
    heads, head_dim, frames, height, width = 3, 128, 3, 6, 10
    x = (torch.randn(frames * height * width, heads, head_dim, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    xc, xg = x.clone(), x.cuda()
    args = (DTYPES[dtype], heads * head_dim, heads, head_dim, frames, height, width, frame_offset)
    assert cpu.arvc_rope3d_cpu(xc.data_ptr(), *args) == OK
    assert gpu.arvc_rope3d_cuda(xg.data_ptr(), *args, stream()) == OK
    torch.cuda.synchronize()
    got, want = xg.cpu().double().numpy(), xc.double().numpy()
    assert (np.abs(got - want) <= ulp(want, dtype)).all()
    assert (got == want).mean() >= 0.99


def test_rope3d_argument_errors(libs):
    _, gpu = libs
    x = torch.ones(4, 32, device="cuda")
    assert gpu.arvc_rope3d_cuda(x.data_ptr(), 0, 31, 1, 32, 1, 2, 2, 0, stream()) == ERR_ARGUMENT
    assert gpu.arvc_rope3d_cuda(None, 0, 32, 1, 32, 1, 2, 2, 0, stream()) == ERR_ARGUMENT
    assert gpu.arvc_rope3d_cuda(x.data_ptr(), 5, 32, 1, 32, 1, 2, 2, 0, stream()) == ERR_ARGUMENT
    torch.cuda.synchronize()
    assert torch.equal(x, torch.ones_like(x))


@pytest.mark.parametrize("fmt", FORMATS)
def test_graph_capture_write_and_attention(libs, fmt, monkeypatch):
    """arvc.runtime.kernels under a torch CUDA graph: cache writes + attention with k-RoPE tables captured
    once with no_host_sync, replayed on new inputs copied into the static tensors, each replay equal to the
    CPU reference run eagerly (cache bytes identical, outputs to 1e-5 of the largest)."""
    from arvc.runtime.kernels import CacheTensors, Kernels

    monkeypatch.setenv("ARVC_KERNELS_DIR", str(build(None, cuda=True)))
    kc, kg = Kernels("cpu"), Kernels("cuda")
    heads, head_dim, rows, n, n_q = 2, 128, 64, 4, 5
    dim = heads * head_dim
    caches = {dev: [CacheTensors(fmt, rows, heads, head_dim, dev) for _ in range(2)] for dev in ("cpu", "cuda")}
    gen = torch.Generator().manual_seed(0)
    angles = torch.rand(rows, head_dim // 2, generator=gen, dtype=torch.float64) * 6
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()

    def inputs(step: int) -> dict[str, torch.Tensor]:
        valid = torch.zeros(rows, dtype=torch.uint8)
        valid[: (step + 1) * n] = 1
        return {"x_k": torch.randn(n, dim, generator=gen), "x_v": torch.randn(n, dim, generator=gen),
                "rows": torch.arange(step * n, (step + 1) * n, dtype=torch.int32), "valid": valid,
                "q": torch.randn(n_q, dim, generator=gen), "k_new": torch.randn(n, dim, generator=gen),
                "v_new": torch.randn(n, dim, generator=gen), "out": torch.zeros(n_q, dim)}

    def step(k, t, dev, cos, sin, no_host_sync):
        kc_, vc_ = caches[dev]
        k.kv_cache_write(kc_, t["x_k"], t["rows"], no_host_sync=no_host_sync)
        k.kv_cache_write(vc_, t["x_v"], t["rows"], no_host_sync=no_host_sync)
        k.attention(t["q"], kc_, vc_, t["valid"], t["out"], k_rope=(cos, sin), k_new=t["k_new"], v_new=t["v_new"],
                    no_host_sync=no_host_sync)

    static = {name: t.cuda() for name, t in inputs(0).items()}
    cos_d, sin_d = cos.cuda(), sin.cuda()
    side = torch.cuda.Stream()  # warm up off the default stream, as torch asks before capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(kg, static, "cuda", cos_d, sin_d, True)
    torch.cuda.current_stream().wait_stream(side)
    for c in caches["cuda"]:
        c.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(kg, static, "cuda", cos_d, sin_d, True)

    for it in range(3):
        host = inputs(it)
        for name, t in host.items():
            static[name].copy_(t)
        graph.replay()
        torch.cuda.synchronize()
        step(kc, host, "cpu", cos, sin, False)
        for c_cache, g_cache in zip(caches["cpu"], caches["cuda"]):
            for c, g in zip(c_cache.tensors(), g_cache.tensors()):
                assert torch.equal(c.view(torch.uint8), g.cpu().view(torch.uint8)), f"replay {it}: cache bytes"
        got, want = static["out"].cpu().double(), host["out"].double()
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), f"replay {it}"
