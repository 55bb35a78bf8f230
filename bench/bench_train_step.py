"""One training step of the tiny DiT (tools/train_tiny.py's dit stage: forward_masked over a cache window, the
flow-matching loss, backward, AdamW) in fp32 against bf16 autocast (and torch.compile with --compile), in one run
on this CPU, on random latents of the training shapes. Issue 21: a step is worth profiling before training runs
for hours.

    python bench/bench_train_step.py [--batch 4] [--steps 5] [--threads 2] [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from train_tiny import DIT_CFG, GEOM, training_mask  # noqa: E402 - the recipe's own shapes and mask

from arvc.model.dit import WanDiT  # noqa: E402


def step_seconds(batch: int, steps: int, autocast: bool, compiled: bool) -> float:
    torch.manual_seed(0)
    dit = WanDiT(DIT_CFG)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-4)
    fpb, window = GEOM.frames_per_block, GEOM.window
    n_clean, h = window - fpb, 16  # 128x128 video -> 16x16 latents
    mask = training_mask(window // fpb, fpb, (h // 2) ** 2)
    pos = torch.cat([torch.arange(n_clean), torch.arange(window)])
    seq = torch.randn(batch, DIT_CFG.in_channels, n_clean + window, h, h)
    t = torch.cat([torch.zeros(batch, n_clean), 1000 * torch.rand(batch, window)], dim=1)
    ctx = torch.randn(batch, DIT_CFG.text_len, DIT_CFG.text_dim)
    target = torch.randn(batch, DIT_CFG.in_channels, window, h, h)
    forward = torch.compile(dit.forward_masked) if compiled else dit.forward_masked

    def one() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            v = forward(seq, t, ctx, mask, frame_positions=pos)[:, :, n_clean:]
        loss = (v.float() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(2):  # warm-up (and compilation)
        one()
    return statistics.median(one() for _ in range(steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile on 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [("fp32", False, False), ("bf16 autocast", True, False)]
    if args.compile:
        variants += [("fp32 + compile", False, True), ("bf16 autocast + compile", True, True)]
    base = None
    print(f"tiny DiT training step, batch {args.batch}, {args.threads} threads, torch {torch.__version__}")
    for name, autocast, compiled in variants:
        s = step_seconds(args.batch, args.steps, autocast, compiled)
        base = base or s
        print(f"  {name:26s} {s:.3f} s/step  ({base / s:.2f}x fp32)", flush=True)


if __name__ == "__main__":
    main()
