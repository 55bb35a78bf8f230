"""`arvc profile PLAN`: where a plan's time and memory go, from one recorded stream (runtime/profiler.py)."""
from __future__ import annotations

from pathlib import Path

from .common import SECONDS, SEED, print_execution, print_result, read_prompt_embeds
from .contract import UsageError, rich_console


def add_parser(sub) -> None:
    pr = sub.add_parser("profile", help="where a plan's time and memory go: per-stage latency, first frame, fps, "
                                        "block jitter, overlap, memory; Chrome trace and PNG timeline")
    pr.add_argument("plan", help="plan directory (arvc compile)")
    pr.add_argument("--seconds", type=SECONDS, default=5.0,
                    help="video length streamed and measured, at most 86400 (default 5)")
    pr.add_argument("--prompt", help="prompt text (plans with a text encoder; default: the plan's verification prompt)")
    pr.add_argument("--prompt-embeds", metavar="FILE", help="[L, text_dim] prompt embeddings (.safetensors)")
    pr.add_argument("--seed", type=SEED, default=0)
    pr.add_argument("--no-warmup", action="store_true", help="measure the first stream after loading (cold)")
    pr.add_argument("--backend", choices=["ort", "torch", "tensorrt"], help="what runs the plan (default: its target)")
    pr.add_argument("--device", help="--backend torch: cpu | cuda[:N]")
    pr.add_argument("--trace", metavar="FILE.json", help="write a Chrome trace (Perfetto, chrome://tracing)")
    pr.add_argument("--plot", metavar="FILE.png", help="write a PNG timeline")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.set_defaults(func=command)


def command(args) -> int:
    from arvc.runtime.profiler import chrome_trace, plot_timeline, profile_plan

    if args.prompt and args.prompt_embeds:
        raise UsageError("give --prompt or --prompt-embeds, not both")
    for path, ext in ((args.trace, ".json"), (args.plot, ".png")):
        if path and (not path.endswith(ext) or not Path(path).resolve().parent.is_dir()):
            raise UsageError(f"{path}: expected a {ext} file in an existing directory")
    prompt = read_prompt_embeds(args.prompt_embeds) if args.prompt_embeds else args.prompt
    options = {"device": args.device} if args.device else {}  # the backend refuses it unless it reads it
    try:
        report, rec = profile_plan(args.plan, args.seconds, prompt, args.seed, not args.no_warmup, args.backend,
                                   **options)
    except RuntimeError as e:  # a backend this machine cannot run (no CUDA, no TensorRT): the request is the problem
        raise UsageError(str(e)) from None
    if args.trace:
        report["trace"] = str(chrome_trace(rec, args.trace))
    if args.plot:
        report["plot"] = str(plot_timeline(rec, args.plot, f"{args.plan} ({report['backend']}, {report['precision']})"))
    return print_result(report, args.json, _print_report)


def _print_report(report: dict) -> None:
    from rich.table import Table

    console = rich_console()
    ttff = report["time_to_first_frame_s"]
    console.print(f"{report['plan']}: {report['backend']}, {report['precision']}, {report['resolution']}; "
                  f"{report['frames']} frames in {report['wall_s']:.2f} s = {report['frames_per_second']} fps "
                  f"(steady {report['steady_frames_per_second']} fps), first frame after {ttff:.3f} s, "
                  f"DiT/VAE overlap {100 * report['overlap']:.0f} %")
    print_execution(console, report["execution"], report["backend"])
    t = Table(title="per-stage latency (ms)")
    for col in ("stage", "calls", "mean", "p50", "p99", "max"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for name, st in list(report["stages"].items()) + [("block (DiT)", report["blocks"])]:
        if st:
            t.add_row(name, str(st["count"]), *(f"{st[k]:.2f}" for k in ("mean_ms", "p50_ms", "p99_ms", "max_ms")))
    console.print(t)
    if report["blocks"] and "jitter_ms" in report["blocks"]:
        console.print(f"block jitter: std {report['blocks']['jitter_ms']:.2f} ms, p99 - p50 "
                      f"{report['blocks']['p99_minus_p50_ms']:.2f} ms")
    mt = Table(title="memory")
    mt.add_column("category")
    mt.add_column("MiB", justify="right")
    mem = report["memory"]
    for name, value in (("weights (stored, per file)", sum(mem["weights_stored_bytes"].values())),
                        ("KV cache", mem["kv_cache_bytes"]), ("VAE streaming state", mem["vae_state_bytes"]),
                        ("DiT activations (estimate, one call)", mem["dit_activations_bytes_estimate"]),
                        ("GPU peak allocated", mem.get("gpu_peak_allocated_bytes")),
                        ("process resident (now)", mem.get("process_resident_bytes"))):
        if value is not None:
            mt.add_row(name, f"{value / 2**20:.1f}")
    console.print(mt)
    for key in ("trace", "plot"):
        if key in report:
            console.print(f"{key}: {report[key]}")
