"""`arvc reference CHECKPOINT`: stream a video from a checkpoint on the PyTorch reference, uncompiled. Its own
command, not a form of `arvc run`: the reference takes the settings a plan fixes at compile time (resolution,
schedule, cache geometry, numerics) as flags, and none of a plan's backend options."""
from __future__ import annotations

import argparse
import json

# the format table imports nothing heavy: argparse refuses a bad value before any heavy import
from arvc.quant.format_table import COMPUTE_FORMATS

from .common import (FPS, add_frame_args, add_geometry_args, add_stream_args, check_resolution, check_stream_args,
                     fill_defaults, geometry, plan_backend, schedule, write_video)
from .contract import UsageError, rerun_command

HELP = ("stream a video from a checkpoint on the PyTorch reference: no compile, slow; the numerics every plan is "
        "checked against (plans: arvc run)")

# what a plan fixed when it was compiled: the `arvc run` suggested for a plan leaves them out
_FIXED_IN_A_PLAN = ("--vae", "--modulation-bf16", "--no-modulation-bf16", "--fps", "--height", "--width", "--shift",
                    "--steps", "--timesteps", "--frames-per-block", "--window", "--sink", "--max-frames", "--rope")


def add_parser(sub) -> None:
    p = sub.add_parser("reference", help=HELP, description=HELP)
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a DiT .safetensors, or a model directory (model.safetensors, vae.safetensors, optional "
                        "text_encoder.safetensors and model.json with its run defaults)")
    p.add_argument("--vae", help="Wan VAE .safetensors (original or diffusers names)")
    add_stream_args(p)
    p.add_argument("--fps", type=FPS, help="video frame rate, 1..240 (default: model.json, else 16)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] (default cpu)")
    p.add_argument("--dtype", choices=COMPUTE_FORMATS, default="fp32", help="compute dtype (default fp32)")
    p.add_argument("--modulation-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 residual/modulation numerics of the causal checkpoints (default: checkpoint metadata, "
                        "else off)")
    add_frame_args(p)
    add_geometry_args(p)
    p.set_defaults(func=command)


def _refuse_a_plan(args) -> None:
    backend = plan_backend(args.checkpoint)
    unused = () if backend == "torch" else ("--device", "--dtype")  # only the torch backend takes them
    given = {a.split("=", 1)[0] for a in args.argv}
    notes = [f"{', '.join(sorted(given & set(flags)))} left out: {why}"
             for flags, why in ((_FIXED_IN_A_PLAN, "fixed when the plan was compiled"),
                                (unused, f"not used by the plan's {backend} backend")) if given & set(flags)]
    note = f" ({'; '.join(notes)})" if notes else ""
    raise UsageError(f"{args.checkpoint} is a compiled plan; arvc reference streams checkpoints on the PyTorch "
                     f"reference. Stream the plan{note}: "
                     f"`{rerun_command(args, command='run', drop=_FIXED_IN_A_PLAN + unused)}`")


def _prompt_contexts(args, specs, files, cfg) -> list[tuple[float, object]]:
    """[(start_seconds, context [1, text_len, text_dim])] from --prompt (text encoder) or --prompt-embeds."""
    from arvc.checkpoints.text import load_text_encoder
    from arvc.reference.models import load_prompt_embeds

    if args.prompt_embeds:
        return [(start, load_prompt_embeds(p, cfg)) for start, p in specs]
    if files.text_encoder is None:
        raise UsageError(f"{args.checkpoint} has no text encoder (text_encoder.safetensors); "
                         "pass precomputed embeddings with --prompt-embeds FILE")
    import torch

    enc = load_text_encoder(files.text_encoder)
    with torch.no_grad():
        return [(start, enc.encode([text])) for start, text in specs]


def command(args) -> int:
    from arvc.runtime.plan import is_plan

    if is_plan(args.checkpoint):
        _refuse_a_plan(args)
    specs = check_stream_args(args)
    from arvc.reference.models import load_dit_module, load_vae_module, resolve_checkpoint
    from arvc.reference.stream import TorchStreamSession

    files = resolve_checkpoint(args.checkpoint, args.vae)
    fill_defaults(args, files.defaults)
    if files.vae is None:
        raise UsageError("no VAE: pass --vae VAE.safetensors (or put vae.safetensors beside model.safetensors)")
    geom, sched = geometry(args), schedule(args)  # refused here, before the model loads
    check_resolution(args)
    dit = load_dit_module(files.dit, args.dtype, args.device, args.modulation_bf16)
    prompts = _prompt_contexts(args, specs, files, dit.cfg)
    vae = load_vae_module(files.vae, "fp32" if args.device == "cpu" else args.dtype, args.device)
    session = TorchStreamSession(dit, vae, geom, sched, args.height, args.width, seed=args.seed, device=args.device)
    session.set_prompt(prompts[0][1])
    pending, total = prompts[1:], round(args.seconds * args.fps)

    def blocks():
        done = 0
        for r in session.stream(total):
            yield r.frames
            done += len(r.frames)
            while pending and pending[0][0] * args.fps <= done:  # a switch applies from the next block on
                session.switch_prompt(pending.pop(0)[1])

    frames, first_frame_s, wall = write_video(blocks(), args.output, args.width, args.height, args.fps, total,
                                              args.quiet)
    summary = {"output": str(args.output), "frames": frames, "fps_video": args.fps, "seconds_wall": round(wall, 3),
               "frames_per_second": round(frames / wall, 3), "time_to_first_frame_s": round(first_frame_s, 3)}
    print(json.dumps(summary) if args.json else
          f"wrote {summary['output']}: {frames} frames in {wall:.1f} s "
          f"({summary['frames_per_second']:.2f} fps, first frame after {first_frame_s:.2f} s)")
    return 0
