"""`arvc run PLAN`: stream a video from a compiled plan on one of its backends (a checkpoint streams on the
PyTorch reference: arvc reference)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# the format table imports nothing heavy: argparse refuses a bad value before any heavy import
from arvc.quant.format_table import COMPUTE_FORMATS

from .common import (FPS, THREADS, add_frame_args, add_geometry_args, add_stream_args, check_stream_args,
                     plan_backend, print_execution, read_prompt_embeds, write_video)
from .contract import UsageError, recompile_hint, rerun_command, rich_console

# flags that a plan fixes at compile time (resolution, schedule, geometry, numerics): recognised only to name the
# compile command that changes them
_COMPILED_FLAGS = ("frames_per_block", "window", "sink", "max_frames", "rope", "shift", "steps", "timesteps",
                   "height", "width", "modulation_bf16", "vae")
# flags that `arvc reference` has no use for: it always runs the PyTorch reference
_PLAN_ONLY = ("--backend", "--threads", "--cache-ops", "--no-cuda-graph")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="stream a video from a compiled plan (arvc compile; checkpoints: arvc reference)")
    p.add_argument("plan", metavar="PLAN", help="a plan directory (arvc compile)")
    p.add_argument("--backend", choices=["torch", "ort", "tensorrt"],
                   help="ort (ONNX Runtime, CPU), torch (PyTorch + csrc kernels + CUDA graphs), tensorrt; "
                        "default: the plan's compile target")
    p.add_argument("--threads", type=THREADS, help="ONNX Runtime threads per stage, 0..256 (default 0: one per "
                                                  "physical core)")
    add_stream_args(p)
    p.add_argument("--fps", type=FPS, help="video frame rate: the plan's (default); another is refused")
    t = p.add_argument_group("torch backend (--backend torch, or a plan compiled with --target cuda)")
    t.add_argument("--device", help="cpu | cuda[:N] (default cuda)")
    t.add_argument("--dtype", choices=COMPUTE_FORMATS, help="compute dtype (default bf16 on CUDA)")
    t.add_argument("--cache-ops", choices=["auto", "csrc", "triton", "torch"], default="auto",
                   help="self-attention cache ops: the csrc or Triton kernel on the quantized cache (auto: the "
                        "faster, timed at load), or torch ops")
    t.add_argument("--no-cuda-graph", action="store_true", help="run the DiT eagerly")
    p.add_argument("--vae", help=argparse.SUPPRESS)
    p.add_argument("--modulation-bf16", action=argparse.BooleanOptionalAction, default=None, help=argparse.SUPPRESS)
    add_frame_args(p, hidden=True)
    add_geometry_args(p, hidden=True)
    p.set_defaults(func=command)


def _is_checkpoint(path) -> bool:
    """What `arvc reference` streams: a DiT .safetensors, or a directory holding model.safetensors."""
    path = Path(path)
    return (path.is_file() and path.suffix == ".safetensors") or (path / "model.safetensors").is_file()


def _backend_options(args) -> dict:
    if args.backend == "torch" or (args.backend is None and plan_backend(args.plan) == "torch"):
        return {"device": args.device, "dtype": args.dtype, "cache_ops": args.cache_ops,
                "cuda_graph": False if args.no_cuda_graph else None}
    if args.device or args.dtype or args.no_cuda_graph or args.cache_ops != "auto":
        raise UsageError("--device, --dtype, --cache-ops and --no-cuda-graph apply to the torch backend "
                         "(--backend torch)")
    return {}


def command(args) -> int:
    from arvc.runtime.plan import is_plan

    if not is_plan(args.plan) and _is_checkpoint(args.plan):
        raise UsageError(f"{args.plan} is a checkpoint; arvc run streams compiled plans (arvc compile makes one). "
                         f"Stream the checkpoint on the PyTorch reference: "
                         f"`{rerun_command(args, command='reference', drop=_PLAN_ONLY)}`")
    given = {f"--{k.replace('_', '-')}": getattr(args, k) for k in _COMPILED_FLAGS if getattr(args, k) is not None}
    if given:
        raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} fixed when a plan is compiled; "
                         f"{recompile_hint(args.plan, given)}")
    specs = check_stream_args(args)
    options = _backend_options(args)
    from arvc.runtime.plan_session import load

    try:
        session = load(args.plan, threads=args.threads, backend=args.backend, **options)
    except RuntimeError as e:  # a backend this machine cannot run (no CUDA, no TensorRT): the request is the problem
        raise UsageError(str(e)) from None
    prompts = [(start, read_prompt_embeds(p)) for start, p in specs] if args.prompt_embeds else specs
    fps = args.fps or session.fps
    if fps != session.fps:
        raise UsageError(f"this plan was compiled for {session.fps} fps; --fps {fps} would change its timing")
    total = round(args.seconds * fps)
    if total < 1:
        raise UsageError(f"--seconds {args.seconds:g} at {fps} fps is less than one frame; give a longer video")
    frames = session.stream(prompts[0][1], frames=total, seed=args.seed, switches=prompts[1:])
    written, _, _ = write_video((frame[None] for frame in frames), args.output, session.width, session.height, fps,
                                total, args.quiet)
    st = session.stats
    summary = {"output": str(args.output), "plan": str(args.plan), "backend": session.backend.name,
               "frames": written, "fps_video": fps, "seconds_wall": round(st.wall_s, 3),
               "frames_per_second": round(written / st.wall_s, 3),
               "time_to_first_frame_s": round(st.first_frame_s or 0.0, 3), "blocks": st.blocks,
               "dit_s": round(st.dit_s, 3), "vae_s": round(st.vae_s, 3), "overlap": round(st.overlap, 3),
               "execution": {stage: str(e) for stage, e in session.backend.execution().items()}}
    print(json.dumps(summary) if args.json else
          f"wrote {summary['output']}: {written} frames in {st.wall_s:.1f} s "
          f"({summary['frames_per_second']:.2f} fps, first frame after {summary['time_to_first_frame_s']:.2f} s, "
          f"VAE/DiT overlap {100 * st.overlap:.0f} %)")
    if not args.json and not args.quiet:
        print_execution(rich_console(), summary["execution"], summary["backend"])
    return 0
