"""Self-attention cache ops of the torch backend: write the block's K/V into the plan's cache rows, then
attend every valid row. Two implementations of one contract (``attend(layer, q, k, v, inputs)``):

- ``KernelCacheOps`` (csrc/, through runtime/kernels.py): the cache is held in the plan's format (fp16,
  INT8, FP8, NVFP4 with per-token-per-head scales), quantized once on write by ``kv_cache_write`` and read
  by an attention kernel that decodes inside it (and applies window-relative RoPE to the keys there), so
  no higher-precision copy of the cache ever exists: csrc's ``attention_qcache`` (fp32 CUDA cores) or the
  Triton kernel of runtime/triton_attention.py (tensor cores), which read the same buffers. On CUDA,
  ``auto`` times both on the plan's shapes when the backend loads and keeps the faster; the other is the
  check (tests). CUDA-graph capturable.
- ``TorchCacheOps``: plain torch. Unquantized caches (fp32 held in the compute dtype, fp16) are written
  with ``index_copy_`` and read by SDPA (capturable); quantized formats are emulated by storing
  decode(encode(x)) (quant/kv.py) in the compute dtype: the reference the kernels are checked against,
  not a memory saving, and not capturable (the encoders validate their input on the host).

Cache rows, valid rows and RoPE tables come per call in ``DitInputs``, as the plan's dit graph takes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from arvc.quant.format_table import FORMATS, KV_CODES, KV_FORMATS
from arvc.quant.kv import kv_round_trip

from .torch_dit import rotate_pairs

KERNEL_FORMATS = tuple(KV_CODES)  # the caches the csrc kernels hold
PLAIN_FORMATS = tuple(f for f in KV_FORMATS if not FORMATS[f].quantized)  # stored as is: SDPA reads them


class CacheLayout:
    """Rows of one layer's cache and the format of each region (the sink may have its own)."""

    def __init__(self, rows: int, dim: int, heads: int, fmt: str, sink_fmt: str | None, sink_rows: int):
        self.rows, self.dim, self.heads = rows, dim, heads
        self.fmt, self.sink_fmt = fmt, sink_fmt if sink_fmt and sink_fmt != fmt else None
        self.sink_rows = sink_rows if self.sink_fmt else 0

    @property
    def formats(self) -> tuple[str, ...]:
        return (self.fmt,) if self.sink_fmt is None else (self.sink_fmt, self.fmt)


def _attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, heads: int):
    # q: [N, dim]; keys/values: [Nk, dim]; valid: [Nk] bool -> [N, dim]
    split = (lambda t: t.reshape(1, t.shape[0], heads, -1).transpose(1, 2))
    out = F.scaled_dot_product_attention(split(q), split(keys), split(values), attn_mask=valid[None, None, None, :])
    return out.transpose(1, 2).reshape(q.shape[0], -1)


class TorchCacheOps:
    name = "torch"

    def __init__(self, layout: CacheLayout, layers: int, dtype: torch.dtype, device: torch.device):
        self.layout, self.dtype = layout, dtype
        store = torch.float16 if layout.formats == ("fp16",) else dtype
        shape = (layers, 2, layout.rows, layout.dim)  # [layer, K|V, row, dim]
        self.buffers = torch.zeros(shape, dtype=store, device=device)
        self.capturable = all(f in PLAIN_FORMATS for f in layout.formats)

    @property
    def nbytes(self) -> int:
        return self.buffers.numel() * self.buffers.element_size()

    def addresses(self) -> list[int]:
        return [self.buffers.data_ptr()]

    def reset(self) -> None:
        self.buffers.zero_()

    def _stored(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """What the cache holds for rows x [N, dim]: each row in its region's format."""
        lay = self.layout
        per_head = x.float().reshape(x.shape[0], lay.heads, -1)
        ring = kv_round_trip(per_head, lay.fmt).reshape(x.shape)
        if lay.sink_fmt is None:
            return ring
        sink = kv_round_trip(per_head, lay.sink_fmt).reshape(x.shape)
        return torch.where((rows < lay.sink_rows)[:, None], sink, ring)

    def attend(self, layer: int, q, k, v, inp) -> torch.Tensor:
        buf = self.buffers[layer]
        for j, x in ((0, k), (1, v)):
            buf[j].index_copy_(0, inp.write_rows, self._stored(x, inp.write_rows).to(buf.dtype))
        keys, values = buf[0].to(self.dtype), buf[1].to(self.dtype)
        if inp.k_cos is not None:  # relative RoPE: keys are stored un-rotated
            keys = rotate_pairs(keys, inp.k_cos, inp.k_sin, self.layout.heads)
        return _attention(q, keys, values, inp.key_valid, self.layout.heads)


class KernelCacheOps:
    capturable = True

    def __init__(self, layout: CacheLayout, layers: int, dtype: torch.dtype, device: torch.device,
                 attention: str = "csrc"):
        problem = kernel_problem(layout, dtype)
        if problem:
            raise ValueError(problem)
        from .kernels import CacheTensors, Kernels

        self.layout, self.dtype = layout, dtype
        self.kernels = Kernels(device)
        self.use(attention)
        head_dim = layout.dim // layout.heads
        self.caches = [[CacheTensors(layout.fmt, layout.rows, layout.heads, head_dim, device) for _ in "kv"]
                       for _ in range(layers)]
        # validation passes read device memory on the host, which a CUDA graph cannot contain; the runtime's
        # SlotMap produces the rows and valid flags, so they are in range by construction
        self.no_host_sync = device.type == "cuda"

    def use(self, attention: str) -> None:
        """Which kernel reads the cache: "csrc" or "triton" (both read these buffers; csrc always writes)."""
        if attention == "triton":
            from .triton_attention import attention as triton_attention

            self._triton = triton_attention
        elif attention != "csrc":
            raise ValueError(f"attention kernel {attention!r} unknown; choose csrc or triton")
        self.name = attention

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for layer in self.caches for c in layer)

    def addresses(self) -> list[int]:
        return [c.data.data_ptr() for layer in self.caches for c in layer]

    def reset(self) -> None:
        for layer in self.caches:
            for c in layer:
                c.zero_()

    def attend(self, layer: int, q, k, v, inp) -> torch.Tensor:
        kc, vc = self.caches[layer]
        rows = inp.write_rows_i32
        self.kernels.kv_cache_write(kc, k, rows, no_host_sync=self.no_host_sync)
        self.kernels.kv_cache_write(vc, v, rows, no_host_sync=self.no_host_sync)
        return self.attention(q, kc, vc, inp.key_valid, None if inp.k_cos is None else (inp.k_cos, inp.k_sin))

    def attention(self, q, kc, vc, key_valid, rope) -> torch.Tensor:
        out = torch.empty_like(q)
        if self.name == "triton":
            return self._triton(q, kc, vc, key_valid, out, k_rope=rope, check=not self.no_host_sync)
        return self.kernels.attention(q, kc, vc, key_valid.view(torch.uint8), out, k_rope=rope,
                                      no_host_sync=self.no_host_sync)

    def time_attention(self, n_q: int, repeats: int = 5) -> float:
        """Median seconds of one layer's attention over a full cache (the steady state) on random data."""
        import time

        kc, vc = self.caches[0]
        lay, dev = self.layout, kc.data.device
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(lay.rows, lay.dim, generator=g, device=dev, dtype=self.dtype)
        rows = torch.arange(lay.rows, dtype=torch.int32, device=dev)
        self.kernels.kv_cache_write(kc, x, rows)
        self.kernels.kv_cache_write(vc, x, rows)
        q = torch.randn(n_q, lay.dim, generator=g, device=dev, dtype=self.dtype)
        valid = torch.ones(lay.rows, dtype=torch.bool, device=dev)
        times = []
        for _ in range(repeats + 1):  # the first call compiles / loads the kernel
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            self.attention(q, kc, vc, valid, None)
            torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        self.reset()
        return sorted(times[1:])[len(times[1:]) // 2]


def kernel_problem(layout: CacheLayout, dtype: torch.dtype) -> str | None:
    """Why the csrc kernels cannot hold this cache (None: they can)."""
    if layout.sink_fmt is not None:
        return (f"the csrc attention kernel reads one cache format; this plan keeps the sink in {layout.sink_fmt} "
                f"and the ring in {layout.fmt}: use cache_ops='torch' (or compile without --kv-sink-precision)")
    if layout.fmt not in KERNEL_FORMATS:
        return (f"the csrc kernels hold {', '.join(KERNEL_FORMATS)} caches; this plan's cache is {layout.fmt}: "
                "use cache_ops='torch' (SDPA) or compile with --kv-cache fp16|int8|fp8|nvfp4")
    return None


def triton_problem(device: torch.device) -> str | None:
    """Why the Triton attention kernel cannot run here (None: it can). On the CPU it runs only in Triton's
    interpreter (TRITON_INTERPRET=1 before the first import: how the tests run it without a GPU)."""
    import os

    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the Triton attention kernel runs on CUDA devices (on the CPU only under TRITON_INTERPRET=1, for tests)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install triton, the version matching your torch)"
    return None


def make_cache_ops(choice: str, layout: CacheLayout, layers: int, dtype: torch.dtype, device: torch.device,
                   n_q: int = 1):
    """choice: torch | csrc | triton | auto. auto: on CUDA, where the kernels can hold the cache, the faster of
    the csrc and Triton attention kernels, timed here on n_q queries over a full cache (``timings``); torch
    otherwise."""
    if choice == "auto":
        if device.type != "cuda" or kernel_problem(layout, dtype) is not None:
            return TorchCacheOps(layout, layers, dtype, device)
        ops = KernelCacheOps(layout, layers, dtype, device)
        ops.timings = {"csrc": ops.time_attention(n_q)}
        if triton_problem(device) is None:
            ops.use("triton")
            ops.timings["triton"] = ops.time_attention(n_q)
            if ops.timings["csrc"] <= ops.timings["triton"]:
                ops.use("csrc")
        return ops
    if choice == "torch":
        return TorchCacheOps(layout, layers, dtype, device)
    if choice in ("csrc", "triton"):
        if choice == "triton" and triton_problem(device):
            raise ValueError(f"cache_ops='triton': {triton_problem(device)}")
        return KernelCacheOps(layout, layers, dtype, device, choice)
    raise ValueError(f"cache_ops {choice!r} unknown; choose torch, csrc, triton or auto")
