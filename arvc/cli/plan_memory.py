"""`arvc plan-memory SOURCE --gpu GPU`: memory by category and the roofline frame-rate bound of a configuration on
a target GPU, counted without one (compiler/planner.py)."""
from __future__ import annotations

# the format table imports nothing heavy: argparse refuses a bad value before any heavy import
from arvc.quant.format_table import COMPUTE_FORMATS, KV_FORMATS, WEIGHT_FORMATS

from .contract import UsageError, rich_console


def add_parser(sub) -> None:
    pm = sub.add_parser("plan-memory", help="memory by category and a roofline FPS bound for a target GPU (no GPU needed)")
    pm.add_argument("checkpoint", metavar="SOURCE", help="checkpoint (file or model directory), plan directory, or a "
                                                         "preset: wan2.1-t2v-1.3b | wan2.1-t2v-14b")
    pm.add_argument("--gpu", required=True, help="h100 | h200 | b200 | rtx5090 | l40s | rtx4090")
    pm.add_argument("--precision", choices=WEIGHT_FORMATS, help="DiT weights (default: the plan's, else bf16)")
    pm.add_argument("--kv-cache", choices=KV_FORMATS,
                    help="KV-cache format (default: the plan's, else fp16 = 2 bytes like bf16)")
    pm.add_argument("--kv-sink-precision", choices=KV_FORMATS, help="the sink frames' KV format when it differs")
    pm.add_argument("--height", type=int, help="video height (default: the plan's, else 480)")
    pm.add_argument("--width", type=int, help="video width (default: the plan's, else 832)")
    pm.add_argument("--steps", type=int, help="denoising steps per block (default: the plan's schedule, else 4)")
    pm.add_argument("--kept-dtype", choices=COMPUTE_FORMATS,
                    help="bytes of the unquantized tensors (default: fp32 for fp32 weights, else bf16 as the GPU "
                         "runtime holds them)")
    pm.add_argument("--no-flash-attention", action="store_true", help="count the attention score matrices")
    pm.add_argument("--json", action="store_true", help="print the whole result as JSON")
    g = pm.add_argument_group("cache geometry (default: the plan's, else window 12, sink 3)")
    g.add_argument("--frames-per-block", type=int, help="latent frames per block (default 3)")
    g.add_argument("--window", type=int, help="latent frames attended incl. sink; 0 = global")
    g.add_argument("--sink", type=int, help="first frames pinned in the cache")
    g.add_argument("--max-frames", type=int, help="capacity of a global cache (default 21)")
    pm.set_defaults(func=command)


def command(args) -> int:
    from arvc.compiler.planner import GB, GIB, inputs_from, plan_memory, to_json

    if args.window == 0 and args.sink:
        raise ValueError("--sink needs a rolling window (--window > 0)")
    for flag, value, most in (("--height", args.height, 8192), ("--width", args.width, 8192), ("--steps", args.steps, 64)):
        if value is not None and not 1 <= value <= most:  # a plan's ranges (docs/plan-validation.md)
            raise UsageError(f"{flag} {value}: give 1..{most}")
    inp = inputs_from(args.checkpoint, precision=args.precision, kv_cache=args.kv_cache, kv_sink=args.kv_sink_precision,
                      window=args.window, sink=args.sink, max_frames=args.max_frames,
                      frames_per_block=args.frames_per_block, height=args.height, width=args.width, steps=args.steps,
                      kept_dtype=args.kept_dtype, flash=False if args.no_flash_attention else None)
    result = plan_memory(inp, args.gpu)
    if args.json:
        print(to_json(result))
        return 0
    from rich.table import Table

    c = result["config"]
    g = c["geometry"]
    cache = f"window {g['window']} (sink {g['sink']})" if g["window"] else f"global {g['max_frames']} frames"
    t = Table(title=f"{result['source']} on {result['gpu']['name']}: {c['precision']} weights, KV {c['kv_cache']}, "
                    f"{cache}, {c['height']}x{c['width']} ({c['tokens_per_frame']} tokens/frame)")
    t.add_column("memory")
    t.add_column("GB", justify="right")
    t.add_column("GiB", justify="right")
    for k, v in result["memory"].items():
        t.add_row(k.replace("_", " "), f"{v / GB:.3f}", f"{v / GIB:.3f}")
    t.add_row("total", f"{result['total_bytes'] / GB:.3f}", f"{result['total_bytes'] / GIB:.3f}", style="bold")
    t.add_row("GPU memory", f"{result['gpu']['memory_bytes'] / GB:.0f}", f"{result['gpu']['memory_bytes'] / GIB:.1f}")
    con = rich_console()
    con.print(t)
    con.print(("[green]" if result["fits"] else "[red]") + result["verdict"])
    r = Table(title=f"roofline (dense peaks; block GEMMs at the {c['gemm_rate']} rate, {c['steps']} steps + 1 cache call)")
    for col in ("block", "keys", "DiT call TFLOP", "DiT call GB", "DiT call ms", "bound", "VAE ms", "block ms",
                "video frames", "FPS bound"):
        r.add_column(col, justify="right")
    for name, b in result["roofline"].items():
        r.add_row(name.replace("_block", ""), str(b["keys_attended"]), f"{b['dit_call_flops']['total'] / 1e12:.2f}",
                  f"{b['dit_call_bytes']['total'] / GB:.2f}", f"{b['dit_call']['time_s'] * 1e3:.2f}", b["dit_call"]["bound"],
                  f"{b['vae_time_s'] * 1e3:.1f}", f"{b['time_per_block_s'] * 1e3:.1f}", str(b["video_frames"]),
                  f"{b['fps_bound']:.1f}")
    con.print(r)
    for note in result["notes"]:
        con.print(f"note: {note}")
    return 0
