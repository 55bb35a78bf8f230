"""Soak: a long rollout of a plan must keep resident memory flat (bounded KV ring, VAE state, queues).

Streams BLOCKS blocks through the full pipeline (DiT worker + VAE decode + uint8 frames, frames
discarded), samples the process RSS every SAMPLE blocks, and reports growth from the first sample taken
after warm-up to the end. Not a test (it takes minutes); the result goes to bench/results/.

    python bench/soak_memory.py PLAN --blocks 2000 --prompt "a red circle moving right on a dark blue background"
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import psutil

import arvc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--warmup-blocks", type=int, default=50)
    ap.add_argument("--sample", type=int, default=50, help="blocks between RSS samples")
    ap.add_argument("--prompt", default="a red circle moving right on a dark blue background")
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()

    proc = psutil.Process()
    session = arvc.load(args.plan)
    frames = session.frames_before_block(args.blocks)
    per_block = session.frames_before_block(2) - session.frames_before_block(1)
    samples, t0, n = [], time.perf_counter(), 0
    for _ in session.stream(args.prompt, frames=frames):
        n += 1
        if n % (args.sample * per_block) == 0:
            block = 1 + (n - session.frames_before_block(1)) // per_block  # blocks fully decoded
            samples.append({"block": block, "rss_mib": proc.memory_info().rss / 2**20,
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"block {block:5d}  rss {samples[-1]['rss_mib']:.1f} MiB  {samples[-1]['seconds']} s", flush=True)
    base = next(s for s in samples if s["block"] >= args.warmup_blocks)
    end = samples[-1]
    peak = max(s["rss_mib"] for s in samples if s["block"] >= args.warmup_blocks)
    result = {
        "plan": args.plan, "blocks": session.stats.blocks, "frames": n, "seconds": round(session.stats.wall_s, 1),
        "rss_after_warmup_mib": round(base["rss_mib"], 2), "rss_end_mib": round(end["rss_mib"], 2),
        "rss_peak_after_warmup_mib": round(peak, 2),
        "growth_percent": round(100 * (end["rss_mib"] - base["rss_mib"]) / base["rss_mib"], 3),
        "peak_growth_percent": round(100 * (peak - base["rss_mib"]) / base["rss_mib"], 3),
        "samples": samples,
        "machine": {"name": args.machine, "platform": platform.platform(), "cpus": psutil.cpu_count()},
    }
    print(f"{result['blocks']} blocks, {n} frames in {result['seconds']} s: RSS {base['rss_mib']:.1f} -> "
          f"{end['rss_mib']:.1f} MiB after warm-up ({result['growth_percent']:+.2f} %, peak {result['peak_growth_percent']:+.2f} %)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak_memory-{args.machine}-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
