"""The C runtime (libarvc, runtime/include/arvc.h) vs the Python runtime (arvc.load) on the same plan,
in the same run: open time, time to first frame, stream frames per second, and whether the frames are
identical (they must be: same plan, prompt, seed and thread count).

Both run ONNX Runtime on the CPU with the same graphs; the difference is the host side (Python's loop,
numpy feeds and queue against C++ with buffers bound once). Each side streams once to warm up, then
--repeats timed streams; medians are reported.

    python bench/bench_c_runtime.py [--plan PLAN] [--blocks 12] [--threads 2] [--repeats 3] [--machine cpu-2core]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from results_io import write_results  # noqa: E402

from arvc.runtime.capi import CSession, load_library  # noqa: E402

PROMPT = "a red circle moving right on a dark blue background"


def build_libarvc(build: Path) -> Path:
    for cmd in (["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DARVC_CUDA=OFF",
                 f"-DPython3_EXECUTABLE={sys.executable}"],
                ["cmake", "--build", str(build), "-j", "2", "--target", "arvc"]):
        subprocess.run(cmd, check=True, capture_output=True)
    return next(build.rglob("libarvc.so"))


def c_stream(lib, plan: Path, blocks: int, threads: int, seed: int) -> tuple[dict, np.ndarray]:
    t0 = time.perf_counter()
    with CSession(lib, plan, threads=threads) as session:
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        session.set_prompt(PROMPT, seed)
        frames = [session.next_block()]
        first = time.perf_counter() - t0  # the block's frames arrive together here
        frames += [session.next_block() for _ in range(blocks - 1)]
        wall = time.perf_counter() - t0
    video = np.concatenate(frames)
    return {"open_s": t_open, "first_block_s": first, "wall_s": wall, "fps": len(video) / wall}, video


def python_stream(plan: Path, blocks: int, threads: int, seed: int) -> tuple[dict, np.ndarray]:
    import arvc

    t0 = time.perf_counter()
    session = arvc.load(plan, threads=threads)
    t_open = time.perf_counter() - t0
    frames_total = session.frames_before_block(blocks)
    t0 = time.perf_counter()
    first_block, frames = None, []
    for i, f in enumerate(session.stream(PROMPT, frames=frames_total, seed=seed)):
        frames.append(f)
        if i + 1 == session.frames_before_block(1):
            first_block = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    return {"open_s": t_open, "first_block_s": first_block, "wall_s": wall, "fps": len(frames) / wall}, np.stack(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path, help="a compiled plan (default: compile the shipped tiny model)")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arvc-bench-c-"))
    plan = args.plan
    if plan is None:
        plan = work / "tiny.plan"
        subprocess.run([sys.executable, "-m", "arvc", "compile", str(REPO / "models" / "tiny"), "-o", str(plan)],
                       check=True, capture_output=True)
    lib = load_library(build_libarvc(work / "build"))

    results = {}
    for name, run in (("python", lambda: python_stream(plan, args.blocks, args.threads, 0)),
                      ("c", lambda: c_stream(lib, plan, args.blocks, args.threads, 0))):
        run()  # warm-up
        timed = [run() for _ in range(args.repeats)]
        results[name] = ({k: statistics.median(t[0][k] for t in timed) for k in timed[0][0]}, timed[-1][1])
    same = np.array_equal(results["python"][1], results["c"][1])
    py, c = results["python"][0], results["c"][0]
    rows = [{"runtime": n, **{k: round(v, 4) for k, v in results[n][0].items()}} for n in ("python", "c")]
    md = [f"# C runtime vs Python runtime ({args.machine}, {args.threads} threads, {args.blocks} blocks, plan {plan.name})", "",
          "| runtime | open s | first block s | stream wall s | fps |", "|---|---|---|---|---|"]
    md += [f"| {r['runtime']} | {r['open_s']:.3f} | {r['first_block_s']:.3f} | {r['wall_s']:.3f} | {r['fps']:.1f} |" for r in rows]
    md += ["", f"Ratios python / c (> 1: C faster): open {py['open_s'] / c['open_s']:.2f}x, first block "
               f"{py['first_block_s'] / c['first_block_s']:.2f}x, fps {c['fps'] / py['fps']:.2f}x. Frames identical: {same}.", ""]
    text = "\n".join(md)
    print(text)
    print("written:", write_results(args.out, "bench_c_runtime", args.machine, False, text, args, rows))


if __name__ == "__main__":
    main()
