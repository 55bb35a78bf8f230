"""`arvc eval PLAN --blocks N`: a plan's quality against the fp32 reference, per block and as drift
(compiler/evaluate.py)."""
from __future__ import annotations

import sys

from .common import SEED, THREADS, print_result
from .contract import UsageError, rich_console


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="quality of a plan vs the fp32 reference: PSNR/SSIM/cosine per block, drift, judge")
    ev.add_argument("plan", help="plan directory (arvc compile)")
    ev.add_argument("--blocks", type=int, required=True, help="blocks rolled out per prompt")
    ev.add_argument("--prompts", type=int, default=8, help="prompts (one rollout each, seeds SEED..SEED+K-1)")
    ev.add_argument("--seed", type=SEED, default=0)
    ev.add_argument("--reference", help="checkpoint the plan was compiled from (default: the manifest's source; "
                                         "its SHA-256 must match)")
    ev.add_argument("--threads", type=THREADS, help="ONNX Runtime threads per stage, 0..256 (default 0: one per "
                                                   "physical core)")
    ev.add_argument("--backend", choices=["ort", "torch", "tensorrt"], help="what runs the plan (default: its target)")
    ev.add_argument("--device", help="--backend torch: cpu | cuda[:N] (default cuda)")
    ev.add_argument("--plot", metavar="FILE.png", help="write the drift plot (frame PSNR and SSIM per block)")
    ev.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ev.set_defaults(func=command)


def command(args) -> int:
    import os

    # Before torch loads: the reference and the plan's ONNX Runtime sessions take turns in this process, and
    # torch's OpenMP workers spinning between ops would hold the cores ORT needs (ORT's own spinning is off
    # for the same reason, runtime/ort_backend.py); on a shared 2-core machine spinning made the reference ~80x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from arvc.compiler.evaluate import check_plot_path, evaluate, plot_drift

    if args.blocks < 1:
        raise UsageError(f"--blocks must be >= 1 (got {args.blocks}); drift needs a rollout of blocks")
    if args.prompts < 1:
        raise UsageError(f"--prompts must be >= 1 (got {args.prompts})")
    plot = check_plot_path(args.plot) if args.plot else None  # fail before the rollout, not after
    log = lambda msg: print(msg, file=sys.stderr)  # progress on stderr in both modes: --json owns stdout only
    log(f"evaluating {args.plan} over {args.blocks} blocks x {args.prompts} prompts against the fp32 reference")
    options = {"device": args.device} if args.device else {}  # the backend refuses it unless it reads it
    from arvc.tiny.judge import TinyJudge  # it declines plans whose prompts are not the tiny model's world

    result = evaluate(args.plan, args.blocks, args.prompts, args.seed, args.reference, args.threads, log,
                      backend=args.backend, judge=TinyJudge(), **options)
    if plot:
        result["plot"] = str(plot_drift(result, plot))
    return print_result(result, args.json, _print_result)


def _print_result(result: dict) -> None:
    from rich.table import Table

    console, s, d = rich_console(), result["summary"], result["drift"]["frame_psnr_db"]
    kv = result["kv_cache"] + (f", sink {result['kv_sink']}" if result["kv_sink"] else "")
    t = Table(title=f"{result['plan']} ({result['precision']} weights, KV {kv}) vs fp32 reference, "
                    f"{result['blocks']} blocks x {result['prompts']} prompts")
    for col in ("block", "frame PSNR (dB)", "SSIM", "latent cosine"):
        t.add_column(col, justify="right")
    pb = result["per_block"]
    for b, (p, ss, c) in enumerate(zip(pb["frame_psnr_db"], pb["ssim"], pb["latent_cosine"])):
        t.add_row(str(b), f"{p:.2f}", f"{ss:.4f}", f"{c:.6f}")
    t.add_row("mean", f"{s['frame_psnr_db_mean']:.2f}", f"{s['ssim_mean']:.4f}", f"{s['latent_cosine_mean']:.6f}",
              style="bold")
    console.print(t)
    console.print(f"drift: {d['slope_per_block']:+.3f} dB/block; frame PSNR first quarter {d['first_quarter_mean']:.2f} "
                  f"dB, last quarter {d['last_quarter_mean']:.2f} dB ({d['quarter_blocks']} blocks each)")
    j = result["judge"]
    if "skipped" in j:
        console.print(f"judge: skipped ({j['skipped']})")
    else:
        jt = Table(title=f"judge (target: within {j['target_points']:.0f} points of fp32: "
                         f"{'met' if j['within_target'] else 'NOT met'})")
        for col in ("score (%)", "plan", "fp32 reference", "delta (points)"):
            jt.add_column(col, justify="right")
        for k in ("color", "direction", "found"):
            jt.add_row(k, f"{j['plan_percent'][k]:.1f}", f"{j['reference_percent'][k]:.1f}", f"{j['delta_points'][k]:+.1f}")
        console.print(jt)
    if "plot" in result:
        console.print(f"drift plot: {result['plot']}")
