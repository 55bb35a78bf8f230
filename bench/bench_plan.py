"""The compiled ONNX Runtime plan vs the PyTorch reference, in the same run, on this machine.

For each configuration (the shipped tiny model; a mid-size Wan-shaped DiT with random weights) the
script compiles a plan (whose parity gate runs too), then measures on both backends with the same seed:

- per-block DiT latency (4 denoising calls + 1 cache call), block 0 reported apart as warm-up;
- a full stream: time to first frame, wall time, frames per second; the reference decodes after each
  block (serial), the plan overlaps VAE decoding with the next block's DiT (overlap reported);
- ratios reference / plan (> 1: the plan is faster), and how far the two videos differ.

    python bench/bench_plan.py [--configs tiny,mid] [--threads 2] [--machine cpu-2core]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import psutil
import torch

from arvc.checkpoints.text import load_text_encoder
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig, WanVAEConfig
from arvc.model.schedule import Schedule
from arvc.reference.models import load_dit_module, load_vae_module
from arvc.reference.stream import TorchStreamSession
from arvc.runtime.plan_session import PlanSession

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right on a dark blue background"
GEOMETRY = CacheGeometry(3, 12, 3, 21, "relative")
SCHEDULE = Schedule((1000.0, 900.0, 750.0, 500.0))
MID = WanConfig(dim=768, ffn_dim=2048, num_heads=6, num_layers=8, text_dim=256, text_len=64, freq_dim=256)


def make_mid_checkpoint(directory: Path) -> None:
    """A Wan-shaped DiT (head dim 128) and a VAE with random weights: speed does not depend on training."""
    from arvc.checkpoints.safetensors_io import write_safetensors_atomic
    from arvc.checkpoints.state_dicts import save_dit
    from arvc.model.dit import WanDiT, init_random_weights_
    from arvc.model.vae import WanVAEDecoder
    from arvc.model.vae import init_random_weights_ as init_vae

    save_dit(directory / "model.safetensors", init_random_weights_(WanDiT(MID), seed=0).state_dict(), MID)
    vae = init_vae(WanVAEDecoder(WanVAEConfig(base_dim=32)), seed=0)
    write_safetensors_atomic(directory / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})


def prompts(name: str, ckpt: Path, plan: PlanSession):
    """(plan prompt, reference context) for the same prompt."""
    if name == "tiny":
        with torch.no_grad():
            return PROMPT, load_text_encoder(ckpt / "text_encoder.safetensors").encode([PROMPT])
    emb = np.random.default_rng(0).standard_normal((MID.text_len // 2, MID.text_dim)).astype(np.float32)
    return emb, torch.from_numpy(plan.context_for(emb))


def summary(seconds: list[float]) -> dict:
    steady = seconds[1:] or seconds
    return {"block0_s": round(seconds[0], 4), "median_s": round(statistics.median(steady), 4),
            "p90_s": round(float(np.percentile(steady, 90)), 4)}


def bench_config(name: str, ckpt: Path, size: int, blocks: int, threads: int, work: Path) -> dict:
    t0 = time.perf_counter()
    manifest = compile_plan(ckpt, work / f"{name}.plan", CompileOptions(GEOMETRY, SCHEDULE, size, size, 16, force=True),
                            log=lambda _m: None)
    compile_s = time.perf_counter() - t0
    plan = PlanSession(work / f"{name}.plan", threads=threads)
    plan_prompt, ref_ctx = prompts(name, ckpt, plan)
    dit, vae = load_dit_module(ckpt / "model.safetensors"), load_vae_module(ckpt / "vae.safetensors")
    frames = plan.frames_before_block(blocks)

    # per-block DiT latency, no VAE
    gen = plan.generator(seed=0)
    gen.set_prompt(plan.context_for(plan_prompt))
    ref = TorchStreamSession(dit, vae, GEOMETRY, SCHEDULE, size, size, seed=0)
    ref.set_prompt(ref_ctx)
    plan_blocks, ref_blocks = [], []
    for _ in range(blocks):
        t = time.perf_counter()
        gen.next_block()
        plan_blocks.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref.gen.next_block()
        ref_blocks.append(time.perf_counter() - t)

    # full streams
    ref = TorchStreamSession(dit, vae, GEOMETRY, SCHEDULE, size, size, seed=0)
    ref.set_prompt(ref_ctx)
    t = time.perf_counter()
    ref_frames, ref_first = [], None
    for r in ref.stream(frames):
        ref_first = ref_first or time.perf_counter() - t
        ref_frames.append(r.frames)
    ref_wall = time.perf_counter() - t
    plan_frames = np.stack(list(plan.stream(plan_prompt, frames=frames, seed=0)))
    st = plan.stats
    ref_frames = np.concatenate(ref_frames)

    p, r = summary(plan_blocks), summary(ref_blocks)
    return {
        "config": name, "dit": manifest.model.dit.to_dict(), "resolution": size, "blocks": blocks, "frames": frames,
        "compile_s": round(compile_s, 1), "verification": {k: manifest.verification[k] for k in
                                                           ("max_abs_latent_error", "frame_psnr_db", "blocks")},
        "dit_per_block": {"plan": p, "torch": r},
        "stream": {"plan": {"first_frame_s": round(st.first_frame_s, 3), "wall_s": round(st.wall_s, 3),
                            "fps": round(frames / st.wall_s, 2), "dit_s": round(st.dit_s, 3),
                            "vae_s": round(st.vae_s, 3), "overlap": round(st.overlap, 3)},
                   "torch": {"first_frame_s": round(ref_first, 3), "wall_s": round(ref_wall, 3),
                             "fps": round(frames / ref_wall, 2)}},
        "ratios_torch_over_plan": {"dit_block_latency": round(r["median_s"] / p["median_s"], 2),
                                   "time_to_first_frame": round(ref_first / st.first_frame_s, 2),
                                   "stream_wall": round(ref_wall / st.wall_s, 2)},
        "video_max_abs_uint8_difference": int(np.abs(plan_frames.astype(int) - ref_frames.astype(int)).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,mid")
    ap.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False))
    ap.add_argument("--tiny-blocks", type=int, default=8)
    ap.add_argument("--mid-blocks", type=int, default=6)
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # the same cores for both backends

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.configs.split(","):
            if name == "tiny":
                results.append(bench_config("tiny", REPO / "models" / "tiny", 128, args.tiny_blocks, args.threads, work))
            elif name == "mid":
                (work / "mid").mkdir()
                make_mid_checkpoint(work / "mid")
                results.append(bench_config("mid", work / "mid", 256, args.mid_blocks, args.threads, work))
            else:
                raise SystemExit(f"unknown config {name!r}; choose from tiny, mid")
            print(json.dumps(results[-1]["ratios_torch_over_plan"]), flush=True)

    report = {"date": datetime.date.today().isoformat(), "machine": {
        "name": args.machine, "platform": platform.platform(), "processor": platform.processor(),
        "logical_cpus": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_plan-{args.machine}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {stem}.json and .md")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# ORT plan vs PyTorch reference — {m['name']}, {report['date']}", "",
             f"{m['platform']}, {m['physical_cores']} cores, {m['threads']} threads per backend, "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}. Same seed, same blocks; fp32 plans.", "",
             "| config | DiT per block (median) plan / torch | ratio | first frame plan / torch | ratio | "
             "stream fps plan / torch | ratio | plan overlap | gate PSNR | max uint8 diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        d, s, q = r["dit_per_block"], r["stream"], r["ratios_torch_over_plan"]
        lines.append(
            f"| {r['config']} ({r['dit']['dim']}d x {r['dit']['num_layers']}L, {r['resolution']}px, {r['blocks']} blocks) "
            f"| {d['plan']['median_s'] * 1e3:.1f} / {d['torch']['median_s'] * 1e3:.1f} ms | {q['dit_block_latency']:.2f}x "
            f"| {s['plan']['first_frame_s']:.3f} / {s['torch']['first_frame_s']:.3f} s | {q['time_to_first_frame']:.2f}x "
            f"| {s['plan']['fps']:.1f} / {s['torch']['fps']:.1f} | {q['stream_wall']:.2f}x "
            f"| {100 * s['plan']['overlap']:.0f} % | {r['verification']['frame_psnr_db']:.1f} dB "
            f"| {r['video_max_abs_uint8_difference']} |")
    lines += ["", "Ratios are reference / plan: above 1 the plan is faster. The reference decodes each block after its "
              "DiT (serial); the plan decodes block b while the DiT computes block b+1 (overlap: share of the "
              "shorter stage hidden). 'max uint8 diff' compares the two videos frame by frame.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
