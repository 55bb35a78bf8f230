"""The `arvc` command line. Thin: every heavy import happens inside the subcommand that needs it."""
from __future__ import annotations

import argparse
import json
import sys


def _add_geometry_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache geometry (LongLive defaults)")
    g.add_argument("--frames-per-block", type=int, default=3, help="latent frames per block (default 3)")
    g.add_argument("--window", type=int, default=12, help="latent frames attended incl. sink; 0 = global (default 12)")
    g.add_argument("--sink", type=int, default=3, help="first frames pinned in the cache (default 3; 0 with --window 0)")
    g.add_argument("--max-frames", type=int, default=21, help="capacity of a global cache (default 21)")
    g.add_argument("--rope", choices=["absolute", "relative"], default="absolute",
                   help="absolute: K stored rotated (<= 1024 frames); relative: window-relative, unbounded")


def _geometry(args):
    from arvc.runtime.kv_cache import CacheGeometry

    sink = 0 if args.window == 0 else args.sink
    return CacheGeometry(args.frames_per_block, args.window, sink, args.max_frames, args.rope)


def _schedule(args):
    from arvc.runtime.schedule import Schedule

    if args.timesteps:
        return Schedule(tuple(float(t) for t in args.timesteps.split(",")))
    return Schedule.from_shift(args.shift, args.steps)


def _parse_prompt_specs(specs: list[str]) -> list[tuple[float, str]]:
    """'FILE' or 'FILE@SECONDS' -> [(start_seconds, file)], sorted; the first must start at 0."""
    out = []
    for spec in specs:
        path, _, at = spec.rpartition("@") if "@" in spec else (spec, "", "0")
        try:
            start = float(at)
        except ValueError:
            raise SystemExit(f"arvc: --prompt-embeds {spec!r}: expected FILE or FILE@SECONDS") from None
        out.append((start, path))
    out.sort()
    if out[0][0] != 0:
        raise SystemExit("arvc: the first --prompt-embeds must start at 0 seconds")
    return out


def cmd_run(args) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from arvc.runtime.torch_models import load_dit_module, load_prompt_embeds, load_vae_module, resolve_checkpoint
    from arvc.runtime.torch_stream import TorchStreamSession
    from arvc.runtime.video import Mp4Writer

    console = Console(stderr=True)
    if args.backend != "torch":
        raise SystemExit(f"arvc: backend {args.backend!r} needs a compiled plan (arvc compile); use --backend torch")
    if args.seconds <= 0:
        raise SystemExit("arvc: --seconds must be > 0")
    files = resolve_checkpoint(args.checkpoint, args.vae)
    if files.vae is None:
        raise SystemExit("arvc: no VAE: pass --vae VAE.safetensors (or put vae.safetensors beside model.safetensors)")
    prompts = _parse_prompt_specs(args.prompt_embeds)
    dit = load_dit_module(files.dit, args.dtype, args.device, args.modulation_bf16)
    vae = load_vae_module(files.vae, "fp32" if args.device == "cpu" else args.dtype, args.device)
    embeds = [(start, load_prompt_embeds(p, dit.cfg)) for start, p in prompts]
    session = TorchStreamSession(dit, vae, _geometry(args), _schedule(args), args.height, args.width,
                                 seed=args.seed, device=args.device)
    session.set_prompt(embeds[0][1])
    pending = embeds[1:]
    total = round(args.seconds * args.fps)
    t_start = time.perf_counter()
    first_frame_s = None
    with Mp4Writer(args.output, args.width, args.height, args.fps) as writer, Progress(
        TextColumn("[bold]generating"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
        TextColumn("{task.fields[fps]:.2f} fps"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task("gen", total=total, fps=0.0)
        for r in session.stream(total):
            writer.write(r.frames)
            first_frame_s = first_frame_s or time.perf_counter() - t_start
            done = writer.frames_written
            bar.update(task, completed=done, fps=done / (time.perf_counter() - t_start))
            while pending and pending[0][0] * args.fps <= done:
                _, ctx = pending.pop(0)
                session.switch_prompt(ctx)
    wall = time.perf_counter() - t_start
    summary = {"output": str(args.output), "frames": writer.frames_written, "fps_video": args.fps,
               "seconds_wall": round(wall, 3), "frames_per_second": round(writer.frames_written / wall, 3),
               "time_to_first_frame_s": round(first_frame_s or 0.0, 3)}
    print(json.dumps(summary) if args.json else
          f"wrote {summary['output']}: {summary['frames']} frames in {wall:.1f} s "
          f"({summary['frames_per_second']:.2f} fps, first frame after {summary['time_to_first_frame_s']:.2f} s)")
    return 0


def cmd_inspect(args) -> int:
    from arvc.checkpoints.load import describe_checkpoint

    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=str(args.checkpoint), show_header=False)
    for k, v in info.items():
        if k == "config" and isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        t.add_row(str(k), json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
    Console().print(t)
    return 0


def _ranges(frames: list[int]) -> str:
    out, i = [], 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        out.append(f"{frames[i]}" if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return ",".join(out)


def cmd_explain_cache(args) -> int:
    from arvc.runtime.kv_cache import SlotMap

    geom = _geometry(args)
    slots = SlotMap(geom, rope_limit=10**9)
    rows, held = [], set()
    for b in range(args.blocks):
        plan = slots.plan(b * geom.frames_per_block, geom.frames_per_block)
        attended = sorted(plan.key_frames)
        evicted = sorted(held - set(attended))
        held = set(attended)
        rows.append({"block": b, "frames": plan.frames, "writes_slots": plan.slots, "attends_frames": attended,
                     "evicted_frames": evicted, "rope_query_positions": plan.query_positions})
    result = {"geometry": geom.to_dict(), "capacity_slots": geom.capacity_frames, "blocks": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    mode = "global" if not geom.window else f"window {geom.window} (sink {geom.sink} + ring {geom.ring})"
    t = Table(title=f"KV cache: {mode}, {geom.frames_per_block} frames/block, {geom.capacity_frames} slots, RoPE {geom.rope}")
    for col in ("block", "frames", "writes slots", "attends frames", "evicted", "RoPE positions"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["block"]), _ranges(r["frames"]), _ranges(r["writes_slots"]), _ranges(r["attends_frames"]),
                  _ranges(r["evicted_frames"]) or "-", _ranges(r["rope_query_positions"]))
    Console().print(t)
    return 0


def cmd_convert(args) -> int:
    from arvc.checkpoints import convert

    if args.kind == "self-forcing":
        info = convert.convert_self_forcing(args.input, args.output, which=args.which, num_heads=args.num_heads)
    else:
        info = convert.merge_lora(args.base, args.lora, args.output, alpha=args.alpha, rank=args.rank,
                                  num_heads=args.num_heads)
    print(json.dumps(info, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arvc", description="Compile and stream causal video diffusion generators.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="stream a video from a checkpoint")
    r.add_argument("checkpoint", help="DiT .safetensors, or a directory with model.safetensors (+ vae.safetensors)")
    r.add_argument("--backend", default="torch", choices=["torch"], help="torch: the PyTorch reference")
    r.add_argument("--vae", help="Wan VAE .safetensors (original or diffusers names)")
    r.add_argument("--prompt-embeds", action="append", required=True, metavar="FILE[@SECONDS]",
                   help="[L, text_dim] prompt embeddings; repeat with @SECONDS to switch prompts mid-stream")
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument("--fps", type=int, default=16)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--height", type=int, default=480)
    r.add_argument("--width", type=int, default=832)
    r.add_argument("--shift", type=float, default=5.0, help="flow-matching shift of the schedule (default 5)")
    r.add_argument("--steps", type=int, default=4, help="denoising steps per block (default 4)")
    r.add_argument("--timesteps", help="explicit comma-separated t list, overrides --shift/--steps")
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    r.add_argument("--modulation-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 residual/modulation numerics of the causal checkpoints (default: checkpoint metadata, else off)")
    r.add_argument("--device", default="cpu")
    r.add_argument("-o", "--output", required=True, help="output .mp4")
    r.add_argument("--json", action="store_true", help="print a JSON summary")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_geometry_args(r)
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("inspect", help="what a checkpoint holds: architecture, config, parameters, naming")
    i.add_argument("checkpoint")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    e = sub.add_parser("explain-cache", help="which frames each block attends to and which cache slots it writes")
    e.add_argument("--blocks", type=int, default=8)
    e.add_argument("--json", action="store_true")
    _add_geometry_args(e)
    e.set_defaults(func=cmd_explain_cache)

    c = sub.add_parser("convert", help="turn training checkpoints into one model.safetensors")
    csub = c.add_subparsers(dest="kind", required=True)
    sf = csub.add_parser("self-forcing", help="Self-Forcing / CausVid .pt (generator_ema or generator)")
    sf.add_argument("input")
    sf.add_argument("--which", default="auto", choices=["auto", "generator_ema", "generator", "model"])
    sf.add_argument("-o", "--output", required=True)
    ll = csub.add_parser("lora", help="LongLive base + LoRA, merged in fp32")
    ll.add_argument("--base", required=True)
    ll.add_argument("--lora", required=True)
    ll.add_argument("--alpha", type=float, help="LoRA alpha when the file does not store it")
    ll.add_argument("--rank", type=int, help="expected LoRA rank (checked)")
    ll.add_argument("-o", "--output", required=True)
    for sp in (sf, ll):
        sp.add_argument("--num-heads", type=int, help="attention heads, only for non-Wan sizes (Wan: dim/128)")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"arvc {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
