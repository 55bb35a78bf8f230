"""GPU benchmark: arvc's torch backend against a plain PyTorch bf16 baseline, in the same run.

Model: the real Wan2.1-1.3B architecture with seeded random weights (speed does not depend on the
values) and a random Wan VAE, at 480x832, LongLive geometry (blocks of 3 latent frames, window 12 with a
3-frame sink), 4 denoising steps + the cache call per block.

Baseline ("research code"): arvc's PyTorch reference run as the research repositories run it -- bf16
weights, bf16 KV cache, SDPA (flash) attention on cache views, RoPE in float64, no CUDA graphs, and the
VAE decoding each block after its DiT (arvc/reference/stream.py TorchStreamSession).

arvc variants (plans compiled here with --no-verify: a 1.3B parity gate does not fit a benchmark; the
kernels and the backend are checked by the tests and `arvc selftest --target cuda`):
    bf16                 bf16 weights, unquantized cache (bf16), CUDA graph, VAE overlapped on its own stream
    fp8-weights          FP8 weights x dynamic FP8 activations as torch._scaled_mm (sm_89+)
    fp8-kv, int8-kv      bf16 weights, cache quantized on write (csrc) and read in place by the faster of the
                         csrc and Triton attention kernels (timed when the backend loads; both times recorded)
    fp8-kv/torch-ops     the same plan with the torch cache ops (decode(encode) emulation, no graph): the check

Per variant: frames per second including VAE decode, time to first frame, per-stage times (DiT call, VAE
latent frame, text), KV-cache bytes, peak GPU memory, and the ratio to the baseline.

    python bench/gpu_bench.py                       # on a CUDA machine; results in bench/results/
    python bench/gpu_bench.py --smoke               # a small model on the CPU: checks the script runs
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from results_io import write_results

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "bf16": (dict(precision="bf16"), {}),
    "fp8-weights": (dict(precision="fp8", activations="dynamic"), {}),
    "fp8-kv": (dict(precision="bf16", kv_cache="fp8"), {}),
    "int8-kv": (dict(precision="bf16", kv_cache="int8"), {}),
    "fp8-kv/torch-ops": (dict(precision="bf16", kv_cache="fp8"), {"cache_ops": "torch", "cuda_graph": False}),
}
SMOKE_CONFIG = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def write_checkpoint(work: Path, smoke: bool) -> Path:
    from arvc.checkpoints.safetensors_io import write_safetensors_atomic
    from arvc.checkpoints.state_dicts import save_dit
    from arvc.model.config import WAN_PRESETS, WanConfig, WanVAEConfig
    from arvc.model.dit import WanDiT, init_random_weights_
    from arvc.model.vae import WanVAEDecoder
    from arvc.model.vae import init_random_weights_ as init_vae

    ckpt = work / ("model-smoke" if smoke else "model-1.3b")
    if (ckpt / "vae.safetensors").is_file():
        return ckpt
    ckpt.mkdir(parents=True, exist_ok=True)
    cfg = WanConfig(**SMOKE_CONFIG) if smoke else WAN_PRESETS["wan2.1-t2v-1.3b"]
    with torch.device("meta"):
        dit = WanDiT(cfg)
    dit = init_random_weights_(dit.to_empty(device="cpu"), seed=0)
    save_dit(ckpt / "model.safetensors", dit.state_dict(), cfg)
    vae = init_vae(WanVAEDecoder(WanVAEConfig(base_dim=4) if smoke else WanVAEConfig()), seed=0)
    write_safetensors_atomic(ckpt / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})
    return ckpt


def plan_path(ckpt: Path, work: Path, name: str, args) -> Path:
    return work / f"{ckpt.name}-{args.height}x{args.width}-{name.split('/')[0]}.plan"  # "x/torch-ops" shares x's


def compile_all(ckpt: Path, names: list[str], args) -> dict[str, Path]:
    """Each distinct plan compiled once, up to 4 at a time (the VAE lowering is mostly single-threaded)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    todo = {plan_path(ckpt, args.work, n, args): n for n in names}
    todo = {p: n for p, n in todo.items() if not (p / "manifest.json").is_file()}
    if todo:
        workers = min(4, len(todo))
        args.compile_threads = max(1, (torch.get_num_threads() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for f in [pool.submit(compile_variant, ckpt, args.work, n, VARIANTS[n][0], args) for n in todo.values()]:
                f.result()
    return {n: plan_path(ckpt, args.work, n, args) for n in names}


def compile_variant(ckpt: Path, work: Path, name: str, opts: dict, args) -> Path:
    from arvc.compiler.compile import CompileOptions, compile_plan

    plan = plan_path(ckpt, work, name, args)
    if (plan / "manifest.json").is_file():
        return plan
    torch.set_num_threads(args.compile_threads)
    print(f"compiling {name} ({opts}) -> {plan}", file=sys.stderr)
    compile_plan(ckpt, plan, CompileOptions(args.geometry, args.schedule, args.height, args.width, target="cuda",
                                            verify=False, **opts), log=lambda _m: None)
    return plan


def run_baseline(ckpt: Path, context: torch.Tensor, args) -> dict:
    from arvc.reference.models import load_dit_module, load_vae_module
    from arvc.reference.stream import TorchStreamSession

    dev, dtype = args.device, args.dtype
    peak_reset(dev)
    dit = load_dit_module(ckpt / "model.safetensors", dtype, dev)
    vae = load_vae_module(ckpt / "vae.safetensors", dtype, dev)
    calls = []

    def new_session() -> TorchStreamSession:
        session = TorchStreamSession(dit, vae, args.geometry, args.schedule, args.height, args.width, 0, dev)
        call = session.gen.dit_call

        def timed_call(*a):
            sync(dev)
            t0 = time.perf_counter()
            out = call(*a)
            sync(dev)
            calls.append(time.perf_counter() - t0)
            return out

        session.gen.dit_call = timed_call
        return session

    warm = new_session()
    warm.set_prompt(context.to(dev))
    next(iter(warm.stream(1)))  # warm-up: one block (cuDNN / cuBLAS autotuning, allocator)
    del warm
    session = new_session()
    calls.clear()
    t0 = time.perf_counter()
    session.set_prompt(context.to(dev))
    text_s = time.perf_counter() - t0
    frames, first, dit_s, vae_s = 0, None, 0.0, 0.0
    for r in session.stream(args.frames):
        frames += len(r.frames)
        first = first or time.perf_counter() - t0
        dit_s, vae_s = dit_s + r.dit_seconds, vae_s + r.vae_seconds
    wall = time.perf_counter() - t0
    latents = (args.blocks * args.geometry.frames_per_block)
    return {"variant": f"baseline (PyTorch {args.dtype}, research style)", "frames": frames, "fps": frames / wall,
            "first_frame_s": first, "dit_call_ms": 1000 * float(np.median(calls)), "block_ms": 1000 * dit_s / args.blocks,
            "vae_frame_ms": 1000 * vae_s / latents, "text_s": text_s, "overlap": 0.0,
            "kv_cache_bytes": session.gen.cache.nbytes, "peak_gib": peak_gib(dev), "cache_ops": f"sdpa ({args.dtype} views)",
            "cuda_graph": False}


def run_arvc(plan: Path, name: str, backend_opts: dict, context: np.ndarray, args) -> dict:
    import arvc

    dev = args.device
    peak_reset(dev)
    session = arvc.load(plan, backend="torch", device=dev, dtype=args.dtype, verify=False, **backend_options(backend_opts))
    for _ in session.stream(context, frames=1):  # warm-up: capture the CUDA graph, autotune
        pass
    frames = sum(1 for _ in session.stream(context, frames=args.frames))
    st, b = session.stats, session.backend
    gen_calls = args.blocks * (len(args.schedule.timesteps) + 1)
    latents = args.blocks * args.geometry.frames_per_block
    return {"variant": name, "frames": frames, "fps": frames / st.wall_s, "first_frame_s": st.first_frame_s,
            "dit_call_ms": 1000 * st.dit_s / gen_calls, "block_ms": 1000 * float(np.mean(st.block_s)),
            "vae_frame_ms": 1000 * st.vae_s / latents, "text_s": st.text_s, "overlap": st.overlap,
            "kv_cache_bytes": b.kv_cache_bytes, "peak_gib": peak_gib(dev), "cache_ops": b.cache_ops,
            "cuda_graph": b.cuda_graph, "fp8_gemm_layers": len(b.dit.fp8_layers),
            "attention_ms_at_load": {k: round(1000 * v, 3) for k, v in getattr(b.cache, "timings", {}).items()}}


def backend_options(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k in ("cache_ops", "cuda_graph")}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu-{platform.machine()}"


def table(rows: list[dict], base: dict) -> str:
    head = ("| variant | fps (with VAE) | vs baseline | first frame s | DiT call ms | block ms | VAE frame ms | "
            "overlap | KV cache MiB | peak GiB | cache ops | graph |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['fps']:.2f} | {r['fps'] / base['fps']:.2f}x | {r['first_frame_s']:.3f} | "
                     f"{r['dit_call_ms']:.1f} | {r['block_ms']:.1f} | {r['vae_frame_ms']:.1f} | "
                     f"{100 * r['overlap']:.0f} % | {r['kv_cache_bytes'] / 2**20:.1f} | {r['peak_gib']} | "
                     f"{r['cache_ops']} | {'yes' if r['cuda_graph'] else 'no'} |")
    return "\n".join(lines)


def main() -> int:
    from arvc.model.cache_geometry import CacheGeometry
    from arvc.model.schedule import Schedule

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--blocks", type=int, default=8, help="blocks generated per measured run (default 8 = 24 latent frames)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--work", type=Path, default=Path("/tmp/arvc-gpu-bench"), help="checkpoint and plans (reused)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--smoke", action="store_true", help="small model, 64x64, CPU: checks that the script runs")
    args = p.parse_args()
    if args.smoke:
        args.device, args.dtype, args.height, args.width, args.blocks = "cpu", "fp32", 64, 64, 5
        args.variants = ",".join(v for v in args.variants.split(",") if v != "fp8-weights")  # CPU fp32: no fp8 GEMM
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: PyTorch sees no CUDA device; run on a GPU machine (or --smoke to check the script)")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"gpu_bench: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    args.geometry = CacheGeometry(3, 12, 3)  # LongLive: window 12 latent frames, 3-frame sink, absolute RoPE
    args.schedule = Schedule((1000.0, 937.5, 833.333, 625.0))  # shift 5, 4 steps
    args.frames = 1 + 4 * (args.blocks * 3 - 1)  # every latent frame of `blocks` blocks decoded

    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = write_checkpoint(args.work, args.smoke)
    from arvc.model.config import WanConfig

    cfg = WanConfig(**SMOKE_CONFIG) if args.smoke else None
    text_dim, text_len = (cfg.text_dim, cfg.text_len) if cfg else (4096, 512)
    ctx = torch.randn(1, text_len, text_dim, generator=torch.Generator().manual_seed(0))
    ctx[:, text_len // 4:] = 0  # a prompt shorter than the text length, zero-padded as umT5 output is

    plans = compile_all(ckpt, args.variants.split(","), args)
    base = run_baseline(ckpt, ctx, args)
    rows = [base]
    for name, plan in plans.items():
        print(f"running {name}", file=sys.stderr)
        rows.append(run_arvc(plan, name, VARIANTS[name][1], ctx[0].numpy(), args))
    dev = device_name(args.device)
    md = (f"# gpu_bench on {dev}, {date.today()}\n\nWan2.1-1.3B architecture (random weights){' [SMOKE: small model]' if args.smoke else ''}, "
          f"{args.height}x{args.width}, window 12 / sink 3, {args.blocks} blocks ({args.frames} frames), compute "
          f"{args.dtype}, torch {torch.__version__}. Ratios are fps over the baseline's, same run.\n\n"
          f"{table(rows, base)}\n")
    print(md)
    write_results(args.out, "gpu_bench", dev, args.smoke, md, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
