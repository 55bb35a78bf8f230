"""Every plan precision against the fp32 plan, on the tiny model: quality, memory, DiT latency.

A variant is ``WEIGHTS[/kv=FORMAT][/sink=FORMAT][/act=static|dynamic][/scales=per-layer|per-timestep]``
(compile options). Each is compiled with the parity gate opened (--min-psnr 0) over BLOCKS blocks, so
the measured quality is recorded whatever it is; then the DiT per-block latency of each plan is timed
in the same run as the fp32 plan's and reported as a ratio (> 1: faster than fp32), with the weight
and KV-cache byte ratios.

    python bench/bench_precisions.py [--blocks 24] [--variants fp32,int8,fp32/kv=fp8,...] [--name NAME]
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

import psutil

from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.runtime.plan_session import PlanSession

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right on a dark blue background"


def block_latency(plan: Path, blocks: int) -> float:
    session = PlanSession(plan)
    gen = session.generator(seed=0)
    gen.set_prompt(session.context_for(PROMPT))
    times = []
    for _ in range(blocks):
        t = time.perf_counter()
        gen.next_block()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


DEFAULT_VARIANTS = "fp32,fp16,bf16,int8,fp8,nvfp4"
OPTION_KEYS = {"kv": "kv_cache", "sink": "kv_sink", "act": "activations", "scales": "act_scales"}


def parse_variant(spec: str) -> dict:
    weights, *rest = spec.split("/")
    opts = {"precision": weights}
    for item in rest:
        key, _, value = item.partition("=")
        if key not in OPTION_KEYS or not value:
            raise SystemExit(f"variant {spec!r}: {item!r} is not one of {', '.join(k + '=...' for k in OPTION_KEYS)}")
        opts[OPTION_KEYS[key]] = value
    return opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=24, help="parity rollout length (quality)")
    ap.add_argument("--timing-blocks", type=int, default=6)
    ap.add_argument("--variants", "--precisions", default=DEFAULT_VARIANTS, help="comma-separated variants")
    ap.add_argument("--name", default="bench_precisions", help="result file stem")
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--plans-dir", help="keep the compiled plans here (e.g. for arvc eval); default: a temporary dir")
    args = ap.parse_args()
    opts = dict(geometry=CacheGeometry(3, 12, 3, 21, "relative"), schedule=Schedule((1000.0, 900.0, 750.0, 500.0)),
                height=128, width=128, min_psnr=0.0, verify_blocks=args.blocks, force=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.plans_dir or scratch
        plans = {}
        variants = args.variants.split(",")
        if "fp32" not in variants:
            variants.insert(0, "fp32")  # the baseline of every ratio
        for p in variants:
            plans[p] = Path(tmp) / f"{p.replace('/', '_').replace('=', '-')}.plan"
            m = compile_plan(REPO / "models" / "tiny", plans[p], CompileOptions(**parse_variant(p), **opts),
                             log=lambda _m: None)
            v, mem = m.verification, m.memory
            rows.append({"precision": p, "recipe": m.precision, "frame_psnr_db": v["frame_psnr_db"],
                         "latent_psnr_db": v["latent_psnr_db"],
                         "max_abs_latent_error": v["max_abs_latent_error"],
                         "stage_psnr_db": {k: s["psnr_db"] for k, s in v["stages"].items()},
                         "dit_weight_bytes": mem.weights_bytes["dit.safetensors"],
                         "dit_weight_bytes_per_parameter": mem.dit_weight_bytes_per_parameter,
                         "quantized_linear_bytes_per_parameter": mem.quantized_linear_bytes_per_parameter,
                         "kv_cache_bytes": mem.kv_cache_bytes,
                         "kv_bytes_per_cached_token": mem.kv_bytes_per_cached_token,
                         "kv_bytes_vs_fp16": mem.kv_bytes_vs_fp16,
                         "quantized_weights": len(m.recipe.quantized_weights)})
            print(f"{p}: frame PSNR {v['frame_psnr_db']:.1f} dB over {v['blocks']} blocks", flush=True)
        base = block_latency(plans["fp32"], args.timing_blocks)  # timed in the same run as the others
        for r in rows:
            t = block_latency(plans[r["precision"]], args.timing_blocks)
            r.update(dit_block_s=round(t, 4), latency_ratio_fp32_over=round(base / t, 3))
        fp32 = next(r for r in rows if r["precision"] == "fp32")
        for r in rows:
            r["weight_bytes_ratio_vs_fp32"] = round(r["dit_weight_bytes"] / fp32["dit_weight_bytes"], 4)
            r["kv_bytes_ratio_vs_fp32"] = round(r["kv_cache_bytes"] / fp32["kv_cache_bytes"], 4)

    report = {"date": datetime.date.today().isoformat(), "blocks": args.blocks, "model": "models/tiny",
              "machine": {"name": args.machine, "platform": platform.platform(),
                          "physical_cores": psutil.cpu_count(logical=False)}, "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.name}-{args.machine}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Plan precisions vs fp32 — tiny model, {args.blocks} blocks, {args.machine}, {report['date']}", "",
             "Variant = weights[/kv=KV cache][/sink=sink frames][/act=activations]; quantized weights are the block "
             "linears (embeddings and head kept fp32). PSNR vs the fp32 PyTorch reference (fp32 cache) with the same "
             "noise; latency ratio = fp32 plan / variant, timed in the same run.", "",
             "| variant | frame PSNR (dB) | latent PSNR (dB) | quantized linear bytes/param | DiT weight bytes vs fp32 "
             "| KV bytes/token (vs fp16) | KV bytes vs fp32 | DiT block latency ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quantized_linear_bytes_per_parameter"]
        lines.append(f"| {r['precision']} | {r['frame_psnr_db']:.1f} | {r['latent_psnr_db']:.1f} | "
                     f"{q if q else '-'} | {r['weight_bytes_ratio_vs_fp32']:.3f} | "
                     f"{r['kv_bytes_per_cached_token']} ({r['kv_bytes_vs_fp16']}x) | {r['kv_bytes_ratio_vs_fp32']:.3f} | "
                     f"{r['latency_ratio_fp32_over']:.2f}x |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
