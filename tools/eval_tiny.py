"""Measure the tiny model with the automatic judge (one command; fixed seeds).

    python tools/eval_tiny.py                      # 50 prompts x 10 s (half held-out) + 4 x 60 s rollouts

Generates with the torch backend from models/tiny, judges every video (colour, direction, object
found), judges the ground-truth renders of the same prompts as a control, and writes the numbers
to models/tiny/metrics.json (the model card quotes them).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from arvc.checkpoints.text import load_text_encoder
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.reference.models import load_dit_module, load_vae_module, resolve_checkpoint
from arvc.reference.stream import TorchStreamSession
from arvc.runtime.video import Mp4Writer
from arvc.tiny import data
from arvc.tiny.judge import judge_frames, judge_many


def pick_prompts(n: int, seed: int) -> list[tuple[str, str]]:
    """n prompts, half from held-out (colour, shape, direction) combinations, as (split, prompt)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        split = "heldout" if i % 2 == 0 else "train"
        out.append((split, data.prompt_of(data.sample_spec(rng, split))))
    return out


class Generator:
    def __init__(self, model_dir: str):
        files = resolve_checkpoint(model_dir)
        d = files.defaults
        self.dit = load_dit_module(files.dit)
        self.vae = load_vae_module(files.vae)
        self.text = load_text_encoder(files.text_encoder)
        self.geom = CacheGeometry(**d["geometry"])
        self.schedule = Schedule(tuple(d["schedule"]["timesteps"]))
        self.height, self.width, self.fps = d["height"], d["width"], d["fps"]

    @torch.no_grad()
    def video(self, prompt: str, seconds: float, seed: int) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        s = TorchStreamSession(self.dit, self.vae, self.geom, self.schedule, self.height, self.width, seed=seed)
        s.set_prompt(self.text.encode([prompt]))
        frames = np.concatenate([r.frames for r in s.stream(round(seconds * self.fps))])
        return frames, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/tiny")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--long", type=int, default=4, help="number of long rollouts")
    ap.add_argument("--long-seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--save-videos", default="", help="directory for a few example MP4s")
    ap.add_argument("--out", default="models/tiny/metrics.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    gen = Generator(args.model)
    save = Path(args.save_videos) if args.save_videos else None

    results, control, times = [], [], []
    for i, (split, prompt) in enumerate(pick_prompts(args.prompts, args.seed)):
        frames, dt = gen.video(prompt, args.seconds, seed=args.seed + i)
        times.append(dt)
        r = judge_frames(frames, prompt) | {"split": split, "seconds_to_generate": round(dt, 2)}
        results.append(r)
        spec_rng = np.random.default_rng(args.seed + i)
        c, s_, d_, b = data.parse_prompt(prompt)
        gt = data.render_clip(data.ClipSpec(c, s_, d_, b, *spec_rng.uniform(0, gen.width, 2), 2.0), len(frames), gen.width)
        control.append(judge_frames(gt, prompt))
        print(f"[{i + 1}/{args.prompts}] {split:7s} {prompt!r}: color {r['color']} dir {r['direction']} "
              f"found {r['found_fraction']:.2f} ({dt:.1f} s)", flush=True)
        if save and i < 6:
            save.mkdir(parents=True, exist_ok=True)
            with Mp4Writer(save / f"{i:02d}-{split}.mp4", gen.width, gen.height, gen.fps) as w:
                w.write(frames)

    long = []
    for j in range(args.long):
        split, prompt = pick_prompts(args.long, args.seed + 99)[j]
        frames, dt = gen.video(prompt, args.long_seconds, seed=args.seed + 1000 + j)
        seg = round(10 * gen.fps)
        segments = [judge_frames(frames[k:k + seg], prompt) for k in range(0, len(frames), seg)]
        whole = judge_frames(frames, prompt)
        long.append({"prompt": prompt, "split": split, "seconds": args.long_seconds,
                     "found_fraction": whole["found_fraction"], "direction_match": whole["direction_match"],
                     "color_match": whole["color_match"], "seconds_to_generate": round(dt, 1),
                     "per_10s_direction_match": [s["direction_match"] for s in segments],
                     "per_10s_found": [round(s["found_fraction"], 3) for s in segments]})
        print(f"[long {j + 1}/{args.long}] {prompt!r}: found {whole['found_fraction']:.3f} "
              f"dir {whole['direction']} ({dt:.0f} s)", flush=True)
        if save:
            with Mp4Writer(save / f"long-{j}.mp4", gen.width, gen.height, gen.fps) as w:
                w.write(frames)

    metrics = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "backend": "torch (fp32, CPU)"},
        "prompts": args.prompts, "seconds_per_video": args.seconds,
        "all": judge_many(results),
        "heldout": judge_many([r for r in results if r["split"] == "heldout"]),
        "train_combinations": judge_many([r for r in results if r["split"] == "train"]),
        "judge_control_on_ground_truth": judge_many(control),
        "seconds_to_generate_10s_video": {"mean": round(float(np.mean(times)), 2),
                                          "min": round(float(np.min(times)), 2),
                                          "max": round(float(np.max(times)), 2)},
        "long_rollouts": long,
        "per_video": results,
    }
    Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("all", "heldout", "train_combinations",
                                               "judge_control_on_ground_truth", "seconds_to_generate_10s_video")},
                     indent=2))


if __name__ == "__main__":
    main()
