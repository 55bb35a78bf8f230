"""What several commands share: the format choices, the run settings of a checkpoint (resolution, schedule, cache
geometry) and the defaults they fall back to, prompt flags, and the loop that writes a stream to an MP4 under a
progress bar. Nothing heavy is imported here: `arvc --help` stays fast."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from arvc.model.stream_inputs import (check_fps, check_seconds, check_seed, check_switch_time, check_threads,
                                      shortened)

from .contract import UsageError, rich_console


# Built-in run defaults; a model directory's model.json overrides them, explicit flags override both.
RUN_DEFAULTS = {"height": 480, "width": 832, "fps": 16, "frames_per_block": 3, "window": 12, "sink": 3,
                "max_frames": 21, "rope": "absolute", "shift": 5.0, "steps": 4, "timesteps": None}


def _flag_type(check, parse=int):
    """An argparse type: the flag's text parsed, then checked by arvc.model.stream_inputs, so that argparse refuses
    a bad value (naming the flag) before anything loads."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shortened(text)} is not {'an integer' if parse is int else 'a number'}"
                                             ) from None
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


SEED, THREADS, SECONDS, FPS = (_flag_type(check_seed), _flag_type(check_threads), _flag_type(check_seconds, float),
                               _flag_type(check_fps))


def _hidden(help_text: str, hidden: bool) -> str:
    return argparse.SUPPRESS if hidden else help_text


def add_geometry_args(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    """hidden: recognised but left out of --help (`arvc run` refuses them, naming the compile that sets them)."""
    g = p.add_argument_group("cache geometry (default: the model's model.json, else LongLive's)")
    g.add_argument("--frames-per-block", type=int, help=_hidden("latent frames per block (default 3)", hidden))
    g.add_argument("--window", type=int, help=_hidden("latent frames attended incl. sink; 0 = global (default 12)", hidden))
    g.add_argument("--sink", type=int, help=_hidden("first frames pinned in the cache (default 3; 0 with --window 0)", hidden))
    g.add_argument("--max-frames", type=int, help=_hidden("capacity of a global cache (default 21)", hidden))
    g.add_argument("--rope", choices=["absolute", "relative"],
                   help=_hidden("absolute: K stored rotated (<= 1024 frames); relative: window-relative, unbounded",
                                hidden))


def add_frame_args(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    """Resolution and denoising schedule (hidden: as in add_geometry_args)."""
    g = p.add_argument_group("resolution and schedule (default: the model's model.json, else 480x832, shift 5, 4 steps)")
    g.add_argument("--height", type=int, help=_hidden("pixels (default: model.json, else 480)", hidden))
    g.add_argument("--width", type=int, help=_hidden("pixels (default: model.json, else 832)", hidden))
    g.add_argument("--shift", type=float, help=_hidden("flow-matching shift of the schedule (default 5)", hidden))
    g.add_argument("--steps", type=int, help=_hidden("denoising steps per block (default 4)", hidden))
    g.add_argument("--timesteps", help=_hidden("explicit comma-separated t list, overrides --shift/--steps", hidden))


def add_stream_args(p: argparse.ArgumentParser) -> None:
    """Prompts, length, seed and output of a streamed video (arvc run, arvc reference)."""
    p.add_argument("--prompt", action="append", metavar="TEXT[@SECONDS]",
                   help="prompt text (models with a text encoder); repeat with @SECONDS to switch mid-stream")
    p.add_argument("--prompt-embeds", action="append", metavar="FILE[@SECONDS]",
                   help="[L, text_dim] prompt embeddings; repeat with @SECONDS to switch prompts mid-stream")
    p.add_argument("--seconds", type=SECONDS, default=5.0, help="video length, at most 86400 (default 5)")
    p.add_argument("--seed", type=SEED, default=0, help="noise seed, 0..2^64-1 (default 0)")
    p.add_argument("-o", "--output", required=True, help="output .mp4")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_stream_args(args) -> list[tuple[float, str]]:
    """Refuses bad stream flags before any work; -> the --prompt texts (or --prompt-embeds files) with their
    start times."""
    if bool(args.prompt) == bool(args.prompt_embeds):
        raise UsageError("give prompts either as --prompt TEXT or as --prompt-embeds FILE (one of them)")
    check_video_output(args.output)
    if args.prompt_embeds:
        return timed(args.prompt_embeds, "--prompt-embeds", args.seconds)
    return timed(args.prompt, "--prompt", args.seconds)


def check_video_output(output: str) -> None:
    """Refuses an -o the video cannot be written to before any work, not after generating the whole video: a
    directory, another format, a place this process cannot create a file in (tried: a read-only filesystem or
    directory, whatever the process's rights)."""
    from arvc import atomic

    path = Path(output)
    if path.is_dir():
        raise UsageError(f"-o {output} is a directory; give the video's file name (e.g. -o {path / 'video.mp4'})")
    if path.suffix.lower() != ".mp4":
        raise UsageError(f"-o {output}: the video is written as MP4; give a name ending in .mp4")
    place = next(p for p in path.absolute().parents if p.exists())  # the writer makes the folders below it
    if not place.is_dir():
        raise UsageError(f"-o {output}: {place} is not a directory")
    try:
        fd, probe = atomic.temp_file(place / path.name, ".probe")
    except OSError as e:
        raise UsageError(f"-o {output}: cannot create a file in {place} ({e.strerror}); choose a writable -o") from None
    os.close(fd)
    atomic.discard(probe)


def fill_defaults(args, model_defaults: dict | None = None) -> None:
    """explicit flag > the model directory's model.json > RUN_DEFAULTS"""
    md = dict(model_defaults or {})
    md.update(md.pop("geometry", {}) or {})
    if "schedule" in md:
        md["timesteps"] = ",".join(str(t) for t in md.pop("schedule")["timesteps"])
    if getattr(args, "shift", None) is not None or getattr(args, "steps", None) is not None:
        md.pop("timesteps", None)  # an explicit --shift/--steps replaces the model's t list
    for key, value in RUN_DEFAULTS.items():
        if getattr(args, key, None) is None and hasattr(args, key):
            setattr(args, key, md.get(key, value))


def check_resolution(args) -> None:
    """--height, --width and --fps (flags or model.json) in the ranges a plan takes (docs/plan-validation.md), and
    at least one frame of video."""
    for flag, value, lo, hi in (("--height", args.height, 1, 8192), ("--width", args.width, 1, 8192),
                                ("--fps", args.fps, 1, 240)):
        if not lo <= value <= hi:
            raise UsageError(f"{flag} {value}: give {lo}..{hi}")
    if round(args.seconds * args.fps) < 1:
        raise UsageError(f"--seconds {args.seconds:g} at {args.fps} fps is less than one frame; give a longer video")


def geometry(args):
    from arvc.model.cache_geometry import CacheGeometry

    sink = 0 if args.window == 0 else args.sink
    return CacheGeometry(args.frames_per_block, args.window, sink, args.max_frames, args.rope)


def schedule(args):
    from arvc.model.schedule import Schedule

    if args.timesteps:
        return Schedule(tuple(float(t) for t in str(args.timesteps).split(",")))
    return Schedule.from_shift(args.shift, args.steps)


def timed(specs: list[str], flag: str, seconds: float) -> list[tuple[float, str]]:
    """'VALUE' or 'VALUE@SECONDS' -> [(start_seconds, value)], sorted; the first must start at 0, each switch
    within the ``seconds`` of video."""
    out = []
    for spec in specs:
        value, sep, at = spec.rpartition("@")
        try:
            start = float(at) if sep else None
        except ValueError:
            start = None  # an '@' that is part of the value
        if start is None:
            out.append((0.0, spec))
            continue
        try:
            out.append((check_switch_time(start, seconds), value))
        except ValueError as e:
            raise UsageError(f"{flag} {shortened(spec, 60)}: {e}") from None
    out.sort(key=lambda item: item[0])
    if out[0][0] != 0:
        raise UsageError(f"the first {flag} must start at 0 seconds")
    return out


def read_prompt_embeds(path):
    """A prompt-embeddings file for a plan: its one tensor, or the one named 'context', as fp32 (the plan checks
    the shape against its model)."""
    from arvc.checkpoints.safetensors_io import read_safetensors

    tensors, _ = read_safetensors(path)
    if len(tensors) != 1 and "context" not in tensors:
        raise ValueError(f"{path}: holds {sorted(tensors)}; store the embeddings as the only tensor or as 'context'")
    return tensors.get("context", next(iter(tensors.values()))).float()


def plan_backend(plan) -> str:
    """The backend a plan runs on by default: the one its compile target named."""
    from arvc.runtime.plan import read_manifest

    return read_manifest(plan, verify_files=False).target.backend


def write_video(batches, output, width: int, height: int, fps: int, total: int, quiet: bool):
    """Writes uint8 [N, H, W, 3] batches to ``output`` under a progress bar. Mp4Writer renames a finished file
    into place, so an error or Ctrl-C leaves nothing behind. Returns (frames, first-frame seconds, wall seconds)."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from arvc.runtime.video import Mp4Writer

    t0, first = time.perf_counter(), None
    with Mp4Writer(output, width, height, fps) as writer, Progress(
        TextColumn("[bold]generating"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
        TextColumn("{task.fields[fps]:.2f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=rich_console(stderr=True), disable=quiet,
    ) as bar:
        task = bar.add_task("gen", total=total, fps=0.0)
        for frames in batches:
            writer.write(frames)
            first = first or time.perf_counter() - t0
            done = writer.frames_written
            bar.update(task, completed=done, fps=done / (time.perf_counter() - t0))
    return writer.frames_written, first or 0.0, time.perf_counter() - t0


def print_result(result: dict, as_json: bool, table) -> int:
    """--json: the result as JSON on stdout (nothing else is printed there); otherwise ``table(result)``."""
    import json

    if as_json:
        print(json.dumps(result, indent=2))
    else:
        table(result)
    return 0


def print_execution(console, execution: dict[str, str], backend: str) -> None:
    """runtime/execution.py's verdicts, one line a stage; an emulated precision stands out."""
    console.print(f"precision on {backend}:")
    for stage, how in execution.items():
        verdict, _, detail = how.partition(": ")
        colour = "green" if verdict == "native" else "yellow" if verdict == "partly native" else "bold red"
        console.print(f"  {stage}: [{colour}]{verdict}[/] ({detail})")
