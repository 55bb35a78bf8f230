"""Attention over the quantized KV cache at Wan2.1-1.3B shapes: the csrc CUDA kernel and the Triton kernel
(runtime/triton_attention.py) against what other stacks run, in the same run.

Shape: one self-attention call of LongLive's steady state at 480x832 (1560 tokens per latent frame): a
block of 3 latent frames of queries (n_q = 4680) over a window of 12 latent frames (rows = 18720: 3 sink
frames + 9 ring frames, all valid), 12 heads of 128, bf16 activations.

    csrc      Kernels('cuda').attention: decodes each key/value tile inside the kernel
    triton    triton_attention.attention: the same, as a Triton flash-attention kernel
    baseline  what other stacks run: decode the whole cache to bf16 (torch ops), take the valid rows
              (a precomputed index, no host sync), then torch SDPA with the flash backend

per KV format (fp16, int8, fp8, nvfp4). Times are the median of CUDA-event timed calls after a warm-up;
ratios are baseline time / variant time (above 1: faster than the baseline). The max error columns are
relative to the largest output of the csrc kernel. With --rope the cached keys are rotated by per-row
(cos, sin) tables (arvc's window-relative RoPE): inside the kernels, by torch ops in the baseline.

    python bench/bench_attention.py            # on a CUDA machine; results in bench/results/
    python bench/bench_attention.py --smoke    # tiny shapes on the CPU (Triton's interpreter): checks the script
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import write_results

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("fp16", "int8", "fp8", "nvfp4")
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def decode_cache(c, dtype: torch.dtype) -> torch.Tensor:
    """The whole cache decoded by torch ops -> [rows, heads, head_dim] in dtype (the baseline's step 1)."""
    rows, heads, hd = c.rows, c.heads, c.head_dim
    if c.fmt == "fp16":
        return c.data.view(rows, heads, hd).to(dtype)
    if c.fmt == "int8":
        x = c.data.float()
    elif c.fmt == "fp8":
        x = c.data.view(torch.float8_e4m3fn).float()
    else:  # nvfp4: element 2i in the low nibble
        table = torch.tensor(E2M1, device=c.data.device)
        codes = torch.stack([c.data & 15, c.data >> 4], dim=-1).reshape(rows, heads * hd)
        block = c.block_scale.view(torch.float8_e4m3fn).float().repeat_interleave(16, dim=1)
        x = table[codes.long()] * block
    return (x.view(rows, heads, hd) * c.scale[:, :, None]).to(dtype)


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Adjacent-pair RoPE on keys [rows, heads, hd] with tables [rows, hd/2] (as the kernels do, in fp32)."""
    k = keys.float().unflatten(-1, (-1, 2))
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack([k[..., 0] * c - k[..., 1] * s, k[..., 0] * s + k[..., 1] * c], dim=-1)
    return out.flatten(-2).to(keys.dtype)


def baseline(q, k, v, index, out, k_rope):
    keys, values = decode_cache(k, q.dtype), decode_cache(v, q.dtype)
    if k_rope is not None:
        keys = rotate(keys, *k_rope)
    keys, values = keys.index_select(0, index), values.index_select(0, index)
    qh = q.view(q.shape[0], k.heads, k.head_dim).transpose(0, 1)[None]
    o = F.scaled_dot_product_attention(qh, keys.transpose(0, 1)[None], values.transpose(0, 1)[None])
    out.copy_(o[0].transpose(0, 1).reshape(out.shape))
    return out


def timed(fn, device: str, warmup: int, iters: int) -> float:
    """Median milliseconds of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu-{platform.machine()}"


def run_format(fmt, args, kern, ta, sdpa_ctx) -> dict:
    from arvc.runtime.kernels import CacheTensors

    dev, heads, hd = args.device, args.heads, args.head_dim
    dim, rows = heads * hd, args.rows
    g = torch.Generator(device=dev).manual_seed(0)
    k, v = CacheTensors(fmt, rows, heads, hd, dev), CacheTensors(fmt, rows, heads, hd, dev)
    for c in (k, v):
        kern.kv_cache_write(c, torch.randn(rows, dim, generator=g, device=dev) * 2,
                            torch.arange(rows, dtype=torch.int32, device=dev))
    valid = torch.zeros(rows, dtype=torch.bool, device=dev)
    valid[:args.valid_rows] = True
    index = valid.nonzero().flatten()
    q = torch.randn(args.n_q, dim, generator=g, device=dev).to(args.dtype)
    k_rope = None
    if args.rope:
        angles = torch.rand(rows, hd // 2, generator=g, device=dev) * 100
        k_rope = (torch.cos(angles), torch.sin(angles))
    outs = {name: torch.empty(args.n_q, dim, dtype=args.dtype, device=dev) for name in ("csrc", "triton", "baseline")}
    calls = {
        "csrc": lambda: kern.attention(q, k, v, valid, outs["csrc"], k_rope=k_rope, no_host_sync=True),
        "triton": lambda: ta.attention(q, k, v, valid, outs["triton"], k_rope=k_rope, check=False, **args.blocks),
        "baseline": lambda: baseline(q, k, v, index, outs["baseline"], k_rope),
    }
    row = {"format": fmt, "kv_bytes": k.nbytes + v.nbytes}
    with sdpa_ctx():
        for name, fn in calls.items():
            row[f"{name}_ms"] = timed(fn, dev, args.warmup, args.iters)
    ref = outs["csrc"].double()
    peak = ref.abs().max()
    for name in ("triton", "baseline"):
        row[f"{name}_err"] = float((outs[name].double() - ref).abs().max() / peak)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| KV format | KV MiB (K+V) | baseline ms | csrc ms | triton ms | csrc vs baseline | triton vs baseline | "
             "triton vs csrc | max err triton | max err baseline |", "|" + "---|" * 10]
    for r in rows:
        b = r["baseline_ms"]
        lines.append(f"| {r['format']} | {r['kv_bytes'] / 2**20:.1f} | {b:.3f} | {r['csrc_ms']:.3f} | "
                     f"{r['triton_ms']:.3f} | {b / r['csrc_ms']:.2f}x | {b / r['triton_ms']:.2f}x | "
                     f"{r['csrc_ms'] / r['triton_ms']:.2f}x | {r['triton_err']:.1e} | {r['baseline_err']:.1e} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {list(FORMATS)}")
    p.add_argument("--frame-tokens", type=int, default=1560, help="tokens per latent frame (480x832: 30x52)")
    p.add_argument("--window", type=int, default=12, help="latent frames of cache rows")
    p.add_argument("--valid-frames", type=int, default=12, help="valid frames (3 sink + 9 ring in steady state)")
    p.add_argument("--query-frames", type=int, default=3, help="latent frames of queries (one block)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--rope", action="store_true", help="rotate the cached keys by per-row tables")
    p.add_argument("--block-m", type=int, default=None, help="Triton BLOCK_M (default: the module's)")
    p.add_argument("--block-n", type=int, default=None, help="Triton BLOCK_N (default: the module's)")
    p.add_argument("--num-warps", type=int, default=None)
    p.add_argument("--num-stages", type=int, default=None)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (Triton's interpreter): checks the script")
    args = p.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before runtime.triton_attention is imported
        args.device, args.dtype, args.frame_tokens, args.heads, args.head_dim = "cpu", "fp16", 8, 2, 32
        args.warmup, args.iters = 1, 2
    else:
        args.device = "cuda"
        if not torch.cuda.is_available():
            raise SystemExit("bench_attention: PyTorch sees no CUDA device; run on a GPU machine (or --smoke)")
    unknown = [f for f in args.formats.split(",") if f not in FORMATS]
    if unknown:
        raise SystemExit(f"bench_attention: unknown format(s) {unknown}; choose from {list(FORMATS)}")
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    args.rows, args.valid_rows = args.window * args.frame_tokens, args.valid_frames * args.frame_tokens
    args.n_q = args.query_frames * args.frame_tokens
    args.blocks = {k: v for k, v in (("block_m", args.block_m), ("block_n", args.block_n),
                                      ("num_warps", args.num_warps), ("num_stages", args.num_stages)) if v}

    from arvc.runtime import triton_attention as ta
    from arvc.runtime.kernels import Kernels

    kern = Kernels(args.device)
    if args.device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        sdpa_ctx = (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION))
    else:
        from contextlib import nullcontext as sdpa_ctx
    rows = []
    for fmt in args.formats.split(","):
        print(f"running {fmt}", file=sys.stderr)
        rows.append(run_format(fmt, args, kern, ta, sdpa_ctx))
    dev = device_name(args.device)
    dtype_name = str(args.dtype).removeprefix("torch.")
    md = (f"# bench_attention on {dev}, {date.today()}\n\n"
          f"{'[SMOKE: tiny shapes, Triton interpreter; not a benchmark] ' if args.smoke else ''}"
          f"One attention call: n_q = {args.n_q} ({args.query_frames} latent frames of {args.frame_tokens} tokens) over "
          f"{args.rows} cache rows ({args.window} frames, {args.valid_frames} valid), {args.heads} heads x "
          f"{args.head_dim}, q {dtype_name}, k-RoPE tables {'on' if args.rope else 'off'}, torch {torch.__version__}. "
          f"Median of {args.iters} calls; ratios: baseline ms / variant ms (above 1 is faster). Baseline: decode the "
          f"whole cache to {dtype_name} with torch ops, index the valid rows, SDPA "
          f"{'flash' if args.device == 'cuda' else '(CPU)'}. Errors: max |x - csrc| / max |csrc|.\n\n{table(rows)}\n")
    print(md)
    write_results(args.out, "bench_attention", dev, args.smoke, md, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
