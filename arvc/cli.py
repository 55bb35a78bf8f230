"""The `arvc` command line. Thin: every heavy import happens inside the subcommand that needs it. The exit codes,
error prefix, console and suggested commands are arvc/cli_contract.py's."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

from .cli_contract import (EXIT_INTEGRITY, EXIT_OK, EXIT_PARITY, EXIT_UNEXPECTED, EXIT_USAGE,  # noqa: F401 (API)
                           UsageError, exit_code, gate_advice, recompile_hint, rerun_command, rich_console)

# compiler/recipe.py's and quant/kv.py's lists (tests/test_cli_contract.py holds them equal), spelled out here
# so that argparse refuses a bad value before any heavy import or work
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "nvfp4")
KV_FORMATS = ("fp32", "fp16", "int8", "fp8", "nvfp4")


# Built-in run defaults; a model directory's model.json overrides them, explicit flags override both.
RUN_DEFAULTS = {"height": 480, "width": 832, "fps": 16, "frames_per_block": 3, "window": 12, "sink": 3,
                "max_frames": 21, "rope": "absolute", "shift": 5.0, "steps": 4, "timesteps": None}


def _add_geometry_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache geometry (default: the model's model.json, else LongLive's)")
    g.add_argument("--frames-per-block", type=int, help="latent frames per block (default 3)")
    g.add_argument("--window", type=int, help="latent frames attended incl. sink; 0 = global (default 12)")
    g.add_argument("--sink", type=int, help="first frames pinned in the cache (default 3; 0 with --window 0)")
    g.add_argument("--max-frames", type=int, help="capacity of a global cache (default 21)")
    g.add_argument("--rope", choices=["absolute", "relative"],
                   help="absolute: K stored rotated (<= 1024 frames); relative: window-relative, unbounded")


def _fill_defaults(args, model_defaults: dict | None = None) -> None:
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


def _geometry(args):
    from arvc.runtime.kv_cache import CacheGeometry

    sink = 0 if args.window == 0 else args.sink
    return CacheGeometry(args.frames_per_block, args.window, sink, args.max_frames, args.rope)


def _schedule(args):
    from arvc.runtime.schedule import Schedule

    if args.timesteps:
        return Schedule(tuple(float(t) for t in str(args.timesteps).split(",")))
    return Schedule.from_shift(args.shift, args.steps)


def _timed(specs: list[str], flag: str) -> list[tuple[float, str]]:
    """'VALUE' or 'VALUE@SECONDS' -> [(start_seconds, value)], sorted; the first must start at 0."""
    out = []
    for spec in specs:
        value, sep, at = spec.rpartition("@")
        try:
            out.append((float(at), value) if sep else (0.0, spec))
        except ValueError:
            out.append((0.0, spec))  # an '@' that is part of the value
    out.sort(key=lambda item: item[0])
    if out[0][0] != 0:
        raise UsageError(f"the first {flag} must start at 0 seconds")
    return out


def _prompt_contexts(args, files, cfg) -> list[tuple[float, "object"]]:
    """[(start_seconds, context [1, L, text_dim])] from --prompt (text encoder) or --prompt-embeds."""
    from arvc.runtime.torch_models import load_prompt_embeds, load_text_encoder

    if bool(args.prompt) == bool(args.prompt_embeds):
        raise UsageError("give prompts either as --prompt TEXT or as --prompt-embeds FILE (one of them)")
    if args.prompt_embeds:
        return [(start, load_prompt_embeds(p, cfg)) for start, p in _timed(args.prompt_embeds, "--prompt-embeds")]
    if files.text_encoder is None:
        raise UsageError(f"{args.checkpoint} has no text encoder (text_encoder.safetensors); "
                         "pass precomputed embeddings with --prompt-embeds FILE")
    import torch

    enc = load_text_encoder(files.text_encoder)
    with torch.no_grad():
        return [(start, enc.encode([text])) for start, text in _timed(args.prompt, "--prompt")]


def cmd_run(args) -> int:
    import time
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from arvc.runtime.torch_models import load_dit_module, load_vae_module, resolve_checkpoint
    from arvc.runtime.torch_stream import TorchStreamSession
    from arvc.runtime.video import Mp4Writer

    from arvc.runtime.plan import is_plan

    if is_plan(args.checkpoint):
        return cmd_run_plan(args)
    console = rich_console(stderr=True)
    if args.backend not in (None, "torch"):
        raise UsageError(f"backend {args.backend!r} needs a compiled plan (arvc compile); use --backend torch")
    if args.seconds <= 0:
        raise UsageError("--seconds must be > 0")
    args.device, args.dtype = args.device or "cpu", args.dtype or "fp32"
    files = resolve_checkpoint(args.checkpoint, args.vae)
    _fill_defaults(args, files.defaults)
    if files.vae is None:
        raise UsageError("no VAE: pass --vae VAE.safetensors (or put vae.safetensors beside model.safetensors)")
    dit = load_dit_module(files.dit, args.dtype, args.device, args.modulation_bf16)
    prompts = _prompt_contexts(args, files, dit.cfg)
    vae = load_vae_module(files.vae, "fp32" if args.device == "cpu" else args.dtype, args.device)
    session = TorchStreamSession(dit, vae, _geometry(args), _schedule(args), args.height, args.width,
                                 seed=args.seed, device=args.device)
    session.set_prompt(prompts[0][1])
    pending = prompts[1:]
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
                session.switch_prompt(pending.pop(0)[1])
    wall = time.perf_counter() - t_start
    summary = {"output": str(args.output), "frames": writer.frames_written, "fps_video": args.fps,
               "seconds_wall": round(wall, 3), "frames_per_second": round(writer.frames_written / wall, 3),
               "time_to_first_frame_s": round(first_frame_s or 0.0, 3)}
    print(json.dumps(summary) if args.json else
          f"wrote {summary['output']}: {summary['frames']} frames in {wall:.1f} s "
          f"({summary['frames_per_second']:.2f} fps, first frame after {summary['time_to_first_frame_s']:.2f} s)")
    return 0


# flags that a plan fixes at compile time (geometry, schedule, resolution, numerics)
_COMPILED_FLAGS = ("frames_per_block", "window", "sink", "max_frames", "rope", "shift", "steps", "timesteps",
                   "height", "width", "modulation_bf16", "vae")


def _plan_backend(plan) -> str:
    from arvc.runtime.plan import read_manifest

    return read_manifest(plan, verify_files=False).get("target", {}).get("backend", "ort")


def cmd_run_plan(args) -> int:
    import time
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from arvc.runtime.plan_session import load
    from arvc.runtime.video import Mp4Writer

    given = {f"--{k.replace('_', '-')}": getattr(args, k) for k in _COMPILED_FLAGS if getattr(args, k, None) is not None}
    if given:
        raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} fixed when a plan is compiled; "
                         f"{recompile_hint(args.checkpoint, given)}")
    options = {}
    if args.backend == "torch" or (args.backend is None and _plan_backend(args.checkpoint) == "torch"):
        options = {"device": args.device, "dtype": args.dtype, "cache_ops": args.cache_ops,
                   "cuda_graph": False if args.no_cuda_graph else None}
    elif args.device or args.dtype or args.no_cuda_graph or args.cache_ops != "auto":
        raise UsageError("--device, --dtype, --cache-ops and --no-cuda-graph apply to the torch backend "
                         "(--backend torch)")
    if args.seconds <= 0:
        raise UsageError("--seconds must be > 0")
    if bool(args.prompt) == bool(args.prompt_embeds):
        raise UsageError("give prompts either as --prompt TEXT or as --prompt-embeds FILE (one of them)")
    try:
        session = load(args.checkpoint, threads=args.threads, backend=args.backend, **options)
    except RuntimeError as e:  # a backend this machine cannot run (no CUDA, no TensorRT): the request is the problem
        raise UsageError(str(e)) from None
    if args.prompt_embeds:
        from arvc.checkpoints.safetensors_io import read_safetensors

        def embeds(path):
            tensors, _ = read_safetensors(path)
            if len(tensors) != 1 and "context" not in tensors:
                raise ValueError(f"{path}: holds {sorted(tensors)}; store the embeddings as the only tensor or as 'context'")
            return tensors.get("context", next(iter(tensors.values()))).float()

        prompts = [(start, embeds(p)) for start, p in _timed(args.prompt_embeds, "--prompt-embeds")]
    else:
        prompts = _timed(args.prompt, "--prompt")
    fps = args.fps or session.fps
    if fps != session.fps:
        raise UsageError(f"this plan was compiled for {session.fps} fps; --fps {fps} would change its timing")
    total = round(args.seconds * fps)
    console = rich_console(stderr=True)
    frames = session.stream(prompts[0][1], frames=total, seed=args.seed, switches=prompts[1:])
    with Mp4Writer(args.output, session.width, session.height, fps) as writer, Progress(
        TextColumn("[bold]generating"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
        TextColumn("{task.fields[fps]:.2f} fps"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task("gen", total=total, fps=0.0)
        t0 = time.perf_counter()
        for frame in frames:
            writer.write(frame[None])
            done = writer.frames_written
            bar.update(task, completed=done, fps=done / (time.perf_counter() - t0))
    st = session.stats
    summary = {"output": str(args.output), "plan": str(args.checkpoint), "backend": session.backend.name, "frames": writer.frames_written,
               "fps_video": fps, "seconds_wall": round(st.wall_s, 3),
               "frames_per_second": round(writer.frames_written / st.wall_s, 3),
               "time_to_first_frame_s": round(st.first_frame_s or 0.0, 3), "blocks": st.blocks,
               "dit_s": round(st.dit_s, 3), "vae_s": round(st.vae_s, 3), "overlap": round(st.overlap, 3)}
    print(json.dumps(summary) if args.json else
          f"wrote {summary['output']}: {summary['frames']} frames in {st.wall_s:.1f} s "
          f"({summary['frames_per_second']:.2f} fps, first frame after {summary['time_to_first_frame_s']:.2f} s, "
          f"VAE/DiT overlap {100 * st.overlap:.0f} %)")
    return 0


RECIPE_FLAG_DEFAULTS = {"precision": "fp32", "kv_cache": "none", "kv_sink_precision": "same", "activations": "none",
                        "act_scales": "per-layer", "calib_prompts": None, "calib_blocks": None}


def _recipe_settings(args, model_defaults: dict) -> dict:
    """--recipe FILE fills the precision flags the command line left unset; explicit flags win. Without
    --recipe, a model directory's model.json may name its own recipe for the --precision asked for
    ("recipes": {"nvfp4": "recipes/nvfp4.json"}); --recipe none compiles without it."""
    from arvc.compiler.recipe import read_recipe_file

    path = args.recipe
    if path == "none":
        path = args.recipe = None
    elif path is None and args.precision in (model_defaults.get("recipes") or {}):
        model_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
        path = str(model_dir / model_defaults["recipes"][args.precision])
        if not args.json:
            print(f"recipe: {path}, the model's own for --precision {args.precision} (--recipe none compiles "
                  "without it)", file=sys.stderr)
    try:
        settings = read_recipe_file(path) if path else {}
    except ValueError as e:
        raise UsageError(str(e)) from None
    if settings.get("calib_prompts"):  # a recipe's relative path is relative to the recipe file
        settings["calib_prompts"] = str(Path(path).parent / settings["calib_prompts"])
    for key, default in RECIPE_FLAG_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, settings.get(key, default))
    return settings


def cmd_compile(args) -> int:
    from arvc.compiler.compile import (CompileError, CompileOptions, OutputExists, OutputRefused, ParityGateRefused,
                                       compile_plan)
    from arvc.runtime.torch_models import resolve_checkpoint

    files = resolve_checkpoint(args.checkpoint)
    _fill_defaults(args, files.defaults)
    recipe = _recipe_settings(args, files.defaults)
    opts = CompileOptions(geometry=_geometry(args), schedule=_schedule(args), height=args.height, width=args.width,
                          fps=args.fps, precision=args.precision, kv_cache=args.kv_cache,
                          kv_sink=args.kv_sink_precision, keep=recipe.get("keep"), layer_formats=recipe.get("layers"),
                          activations=args.activations, act_scales=args.act_scales, calib_prompts=args.calib_prompts,
                          calib_blocks=args.calib_blocks,
                          sensitivity=args.sensitivity, target=args.target,
                          min_psnr=args.min_psnr,
                          verify_blocks=args.verify_blocks, verify=not args.no_verify, seed=args.seed, force=args.force)
    log = (lambda _msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    try:
        manifest = compile_plan(args.checkpoint, args.output, opts, log=log)
    except ParityGateRefused as e:
        raise ParityGateRefused(f"{e}{gate_advice(args, e)}") from None
    except OutputExists as e:
        raise CompileError(f"{e}: `{rerun_command(args, drop=('--force',), add=('--force',))}`") from None
    except OutputRefused as e:
        if e.suggested_output is None:
            raise
        other = rerun_command(args, drop=("-o", "--output", "--force"), add=("-o", str(e.suggested_output)))
        raise CompileError(f"{e}; to write the plan there: `{other}`") from None
    v, sens = manifest["verification"], manifest["recipe"].get("sensitivity")
    if args.json:
        print(json.dumps({"plan": str(args.output), "verification": v, "sensitivity": sens}, indent=2))
    else:
        if sens:
            _print_sensitivity(sens)
        if v.get("skipped"):
            print(f"wrote plan {args.output} WITHOUT verification: {v['reason']}")
            return 0
        print(f"wrote plan {args.output}: frame PSNR {v['frame_psnr_db']:.1f} dB, latent max abs error "
              f"{v['max_abs_latent_error']:.2e} over {v['blocks']} blocks (gate {v['min_psnr_db']:.0f} dB)")
    return 0


def _print_sensitivity(sens: dict) -> None:
    from rich.table import Table

    t = Table(title=f"sensitivity ({sens['format']}, {sens['blocks']} blocks; worst first)")
    t.add_column("layer", no_wrap=True, min_width=22)
    for col in ("SQNR (dB)", "latent PSNR, alone (dB)", "kept full precision"):
        t.add_column(col, justify="right")
    for r in sens["layers"]:
        t.add_row(r["layer"], f"{r['sqnr_db']:.2f}", f"{r['latent_psnr_db_alone']:.2f}",
                  "yes" if r["layer"] in sens["kept"] else "")
    rich_console(stderr=True).print(t)
    print(f"mixed recipe: {len(sens['kept'])} layer(s) kept full precision, frame PSNR {sens['frame_psnr_db']:.2f} dB "
          f"(target {sens['target_frame_psnr_db']:.1f}, {'met' if sens['met'] else 'NOT met'})", file=sys.stderr)


def _plan_summary(plan_dir) -> dict:
    from arvc.runtime.plan import read_manifest

    m = read_manifest(plan_dir)
    mem = m["memory"]
    weights = sum(mem["weights_bytes"].values())
    return {
        "plan": str(plan_dir), "schema_version": m["schema_version"], "arvc_version": m["arvc_version"],
        "created": m["created"], "precision": m["precision"], "target": m["target"],
        "model": {k: m["model"]["dit"][k] for k in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len")},
        "text_encoder": bool(m["model"]["text_encoder"]), "numerics": m["numerics"], "schedule": m["schedule"],
        "geometry": m["geometry"], "resolution": m["resolution"],
        "stages": {k: v.get("graph") or v.get("graphs") for k, v in m["stages"].items()},
        "memory_bytes": {"weights": weights, "kv_cache": mem["kv_cache_bytes"],
                         "activations (dit call, estimate)": mem["dit_activation_bytes_estimate"],
                         "vae_state": mem["vae_state_bytes"]},
        "dit_weight_bytes_per_parameter": mem.get("dit_weight_bytes_per_parameter"),
        "quantized_linear_bytes_per_parameter": mem.get("quantized_linear_bytes_per_parameter"),
        "kv_cache": m["recipe"].get("kv_cache", "fp32"), "kv_sink": m["recipe"].get("kv_sink"),
        "kv_bytes_per_cached_token": mem.get("kv_bytes_per_cached_token",
                                             mem["kv_cache_bytes"] // m["resolution"]["cache_tokens"]),
        "kv_bytes_per_sink_token": mem.get("kv_bytes_per_sink_token"),
        "kv_bytes_vs_fp16": mem.get("kv_bytes_vs_fp16"),
        "quantized_weights": len(m["recipe"].get("quantized_weights", [])),
        "activations": _activation_summary(m["recipe"]),
        "verification": m["verification"], "versions": m["versions"], "files": len(m["files"]),
    }


def _activation_summary(recipe: dict) -> str | None:
    from arvc.quant.activations import ACT_FORMAT_OF_WEIGHTS

    if not recipe.get("activations"):
        return None
    n, cal = len(recipe["quantized_activations"]), recipe.get("calibration")
    fmt = ACT_FORMAT_OF_WEIGHTS[recipe["weights"]]
    if recipe["activations"] == "dynamic":
        return f"{fmt}, dynamic per-token scales, {n} GEMM inputs"
    spread, over = cal["max_spread"], cal["held_out_overflow"] or {}
    return (f"{fmt}, static {recipe['act_scales']} scales, {n} GEMM inputs; calibrated on {cal['prompts']} prompts x "
            f"{cal['blocks']} blocks ({cal['source']}); amax spread over timesteps up to {spread['ratio']}x "
            f"({spread['layer']}); held-out overflow per-layer {over.get('per-layer', 'n/a')}, per-timestep "
            f"{over.get('per-timestep', 'n/a')}")


def _inspect_plan(args) -> int:
    info = _plan_summary(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.table import Table

    console = rich_console()
    t = Table(title=f"plan {args.checkpoint}", show_header=False)
    for k in ("schema_version", "arvc_version", "created", "precision", "target", "model", "text_encoder",
              "numerics", "schedule", "geometry", "resolution", "stages"):
        v = info[k]
        t.add_row(k, ", ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else str(v))
    console.print(t)
    mt = Table(title="memory")
    mt.add_column("category")
    mt.add_column("MiB", justify="right")
    for k, v in info["memory_bytes"].items():
        mt.add_row(k, f"{v / 2**20:.2f}")
    console.print(mt)
    q = info["quantized_linear_bytes_per_parameter"]
    console.print(f"DiT weight bytes per parameter: {info['dit_weight_bytes_per_parameter']} (all tensors); "
                  + (f"{q} in the {info['quantized_weights']} quantized linears, scales included "
                     f"({q / 2:.3f}x of fp16)" if q else "no quantized linears"))
    console.print(f"activations: {info['activations'] or 'fp32 (not quantized)'}")
    sink = f"; sink ({info['kv_sink']}): {info['kv_bytes_per_sink_token']}" if info["kv_sink"] else ""
    ratio = f" ({info['kv_bytes_vs_fp16']}x of fp16)" if info["kv_bytes_vs_fp16"] else ""
    console.print(f"KV cache ({info['kv_cache']}) bytes per cached token, all layers, K+V: "
                  f"{info['kv_bytes_per_cached_token']}{ratio}{sink}")
    v = info["verification"]
    if v.get("skipped"):
        console.print(f"[bold red]verification: skipped[/] ({v['reason']})")
        return 0
    vt = Table(title=f"verification ({'passed' if v['passed'] else 'FAILED'}, gate {v['min_psnr_db']} dB)")
    vt.add_column("measure")
    vt.add_column("value", justify="right")
    vt.add_row("blocks (prompt switch at)", f"{v['blocks']} ({v['prompt_switch_at_block']})")
    vt.add_row("max abs latent error", f"{v['max_abs_latent_error']:.3e}")
    vt.add_row("frame PSNR (dB)", f"{v['frame_psnr_db']:.2f}")
    for stage, r in v["stages"].items():
        vt.add_row(f"{stage} PSNR alone (dB)", f"{r['psnr_db']:.2f}")
    console.print(vt)
    return 0


def cmd_judge(args) -> int:
    from arvc.tiny.judge import judge_video

    result = judge_video(args.video, args.prompt)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"color {result['color']} ({'match' if result['color_match'] else 'MISMATCH'}), "
              f"direction {result['direction']} ({'match' if result['direction_match'] else 'MISMATCH'}), "
              f"object found in {100 * result['found_fraction']:.1f} % of {result['frames']} frames")
    return 0


def cmd_eval(args) -> int:
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
    result = evaluate(args.plan, args.blocks, args.prompts, args.seed, args.reference, args.threads, log,
                      backend=args.backend, **options)
    if plot:
        result["plot"] = str(plot_drift(result, plot))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
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
    if plot:
        console.print(f"drift plot: {result['plot']}")
    return 0


def cmd_profile(args) -> int:
    from arvc.runtime.profiler import chrome_trace, plot_timeline, profile_plan

    if args.seconds <= 0:
        raise UsageError(f"--seconds must be > 0 (got {args.seconds})")
    if args.prompt and args.prompt_embeds:
        raise UsageError("give --prompt or --prompt-embeds, not both")
    for path, ext in ((args.trace, ".json"), (args.plot, ".png")):
        if path and (not path.endswith(ext) or not Path(path).resolve().parent.is_dir()):
            raise UsageError(f"{path}: expected a {ext} file in an existing directory")
    prompt = args.prompt
    if args.prompt_embeds:
        from arvc.checkpoints.safetensors_io import read_safetensors

        tensors, _ = read_safetensors(args.prompt_embeds)
        prompt = tensors.get("context", next(iter(tensors.values()))).float()
    options = {"device": args.device} if args.device else {}  # the backend refuses it unless it reads it
    try:
        report, rec = profile_plan(args.plan, args.seconds, prompt, args.seed, not args.no_warmup, args.backend,
                                   **options)
    except RuntimeError as e:
        raise UsageError(str(e)) from None
    if args.trace:
        report["trace"] = str(chrome_trace(rec, args.trace))
    if args.plot:
        report["plot"] = str(plot_timeline(rec, args.plot, f"{args.plan} ({report['backend']}, {report['precision']})"))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.table import Table

    console = rich_console()
    ttff = report["time_to_first_frame_s"]
    console.print(f"{report['plan']}: {report['backend']}, {report['precision']}, {report['resolution']}; "
                  f"{report['frames']} frames in {report['wall_s']:.2f} s = {report['frames_per_second']} fps "
                  f"(steady {report['steady_frames_per_second']} fps), first frame after {ttff:.3f} s, "
                  f"DiT/VAE overlap {100 * report['overlap']:.0f} %")
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
    return 0


def cmd_selftest(args) -> int:
    from rich.table import Table

    from arvc.compiler.selftest import SELFTEST_PRECISIONS, run_selftest

    precisions = tuple(args.precisions.split(",")) if args.precisions else SELFTEST_PRECISIONS
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise UsageError(f"unknown precision(s) {unknown}; choose from {','.join(PRECISIONS)}")
    log = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    rows = run_selftest(args.target, precisions, log, device=args.device)
    passed = all(r["passed"] for r in rows)
    if args.json:
        print(json.dumps({"target": args.target, "passed": passed, "checks": rows}, indent=2))
    else:
        t = Table(title=f"arvc selftest --target {args.target}: {'PASS' if passed else 'FAIL'}")
        for col in ("precision", "stage", "PSNR vs reference (dB)", "needs (dB)", "result", "detail"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["precision"], r["stage"], "-" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}",
                      "-" if r["min_psnr_db"] is None else f"{r['min_psnr_db']:.0f}",
                      "pass" if r["passed"] else "FAIL", r["detail"])
        rich_console().print(t)
    if passed:
        return EXIT_OK
    # this machine cannot run the target at all: the request is the problem; else a check found a difference
    return EXIT_USAGE if all(r["stage"] == "backend" for r in rows) else EXIT_PARITY


def cmd_inspect(args) -> int:
    from arvc.checkpoints.load import describe_checkpoint
    from arvc.runtime.plan import is_plan

    if is_plan(args.checkpoint):
        return _inspect_plan(args)

    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    from rich.table import Table

    t = Table(title=str(args.checkpoint), show_header=False)
    for k, v in info.items():
        if k == "config" and isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        t.add_row(str(k), json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
    rich_console().print(t)
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

    _fill_defaults(args)
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
    from rich.table import Table

    mode = "global" if not geom.window else f"window {geom.window} (sink {geom.sink} + ring {geom.ring})"
    t = Table(title=f"KV cache: {mode}, {geom.frames_per_block} frames/block, {geom.capacity_frames} slots, RoPE {geom.rope}")
    for col in ("block", "frames", "writes slots", "attends frames", "evicted", "RoPE positions"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["block"]), _ranges(r["frames"]), _ranges(r["writes_slots"]), _ranges(r["attends_frames"]),
                  _ranges(r["evicted_frames"]) or "-", _ranges(r["rope_query_positions"]))
    rich_console().print(t)
    return 0


def cmd_convert(args) -> int:
    from arvc.checkpoints import convert

    if args.kind == "self-forcing":
        info = convert.convert_self_forcing(args.input, args.output, which=args.which, num_heads=args.num_heads)
    elif args.kind == "vae":
        info = convert.convert_vae(args.input, args.output)
    else:
        info = convert.merge_lora(args.base, args.lora, args.output, alpha=args.alpha, rank=args.rank,
                                  num_heads=args.num_heads)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_plan_memory(args) -> int:
    """Memory by category and the roofline frame-rate bound of a configuration on a target GPU."""
    from arvc.compiler.planner import GB, GIB, inputs_from, plan_memory, to_json

    if args.window == 0 and args.sink:
        raise ValueError("--sink needs a rolling window (--window > 0)")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arvc", description="Compile and stream causal video diffusion generators.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="stream a video from a compiled plan (or a checkpoint, on the PyTorch reference)")
    r.add_argument("checkpoint", metavar="PLAN_OR_CHECKPOINT",
                   help="a plan directory (arvc compile), or a DiT .safetensors / model directory for the reference")
    r.add_argument("--backend", choices=["torch", "ort", "tensorrt"],
                   help="plans: ort (ONNX Runtime, CPU), torch (PyTorch + csrc kernels + CUDA graphs), tensorrt; "
                        "default: the plan's compile target. Checkpoints run on the PyTorch reference (torch)")
    r.add_argument("--cache-ops", choices=["auto", "csrc", "triton", "torch"], default="auto",
                   help="torch backend: self-attention cache ops: the csrc or Triton kernel on the quantized cache "
                        "(auto: the faster, timed at load), or torch ops")
    r.add_argument("--no-cuda-graph", action="store_true", help="torch backend: run the DiT eagerly")
    r.add_argument("--threads", type=int, help="ONNX Runtime threads per stage (default: physical cores)")
    r.add_argument("--vae", help="Wan VAE .safetensors (original or diffusers names)")
    r.add_argument("--prompt", action="append", metavar="TEXT[@SECONDS]",
                   help="prompt text (models with a text encoder); repeat with @SECONDS to switch mid-stream")
    r.add_argument("--prompt-embeds", action="append", metavar="FILE[@SECONDS]",
                   help="[L, text_dim] prompt embeddings; repeat with @SECONDS to switch prompts mid-stream")
    r.add_argument("--seconds", type=float, default=5.0)
    r.add_argument("--fps", type=int, help="video frame rate (default: model.json, else 16)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--height", type=int, help="pixels (default: model.json, else 480)")
    r.add_argument("--width", type=int, help="pixels (default: model.json, else 832)")
    r.add_argument("--shift", type=float, help="flow-matching shift of the schedule (default 5)")
    r.add_argument("--steps", type=int, help="denoising steps per block (default 4)")
    r.add_argument("--timesteps", help="explicit comma-separated t list, overrides --shift/--steps")
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="compute dtype: the reference (default fp32) or the torch backend (default bf16 on CUDA)")
    r.add_argument("--modulation-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 residual/modulation numerics of the causal checkpoints (default: checkpoint metadata, else off)")
    r.add_argument("--device", help="cpu | cuda[:N]: the reference (default cpu) or the torch backend (default cuda)")
    r.add_argument("-o", "--output", required=True, help="output .mp4")
    r.add_argument("--json", action="store_true", help="print a JSON summary")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_geometry_args(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile a checkpoint to a verified plan (ONNX graphs + manifest)")
    c.add_argument("checkpoint", help="model directory (model.safetensors + vae.safetensors [+ model.json]) or DiT file")
    c.add_argument("-o", "--output", required=True, help="plan directory to write (atomically)")
    c.add_argument("--precision", choices=PRECISIONS,
                   help="DiT weights: fp32 (default) | fp16 | bf16 | int8 | fp8 | nvfp4 (quantized: the block linears)")
    c.add_argument("--recipe", help="JSON recipe file: precision settings and per-layer overrides (keep a layer at "
                                    "full precision, or another weight format); flags given here win. Default: the "
                                    "model directory's own recipe for --precision (model.json \"recipes\"), if any; "
                                    "none: without it")
    c.add_argument("--sensitivity", action="store_true",
                   help="measure each quantized layer (SQNR, end-to-end PSNR), keep the worst at full precision until "
                        "--min-psnr is met, and record the table in the manifest")
    c.add_argument("--kv-cache", choices=("none",) + KV_FORMATS,
                   help="KV cache storage: none (fp32) | fp16 | int8 | fp8 | nvfp4 (quantized once on write, one scale "
                        "per token and head)")
    c.add_argument("--kv-sink-precision", choices=("same",) + KV_FORMATS,
                   help="storage of the sink frames, which every later block attends to: same (as --kv-cache) | fp32 | "
                        "fp16 | int8 | fp8 | nvfp4")
    c.add_argument("--activations", choices=["static", "dynamic", "none"],
                   help="quantize the block GEMMs' inputs (int8 weights: int8, fp8/nvfp4 weights: fp8): static = "
                        "calibrated scales, dynamic = one scale per token at run time, none (default)")
    c.add_argument("--act-scales", choices=["per-layer", "per-timestep"],
                   help="static scales: one per layer (default) or one per denoising timestep and the cache call")
    c.add_argument("--calib-prompts", metavar="FILE",
                   help="calibration prompts, one per line (text, or a prompt-embeddings .safetensors path); "
                        "default: 4 prompts of the tiny model's world, else seeded embeddings")
    c.add_argument("--calib-blocks", type=int, help="blocks per calibration rollout (default: the parity gate's)")
    c.add_argument("--target", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                   help="the plan's default backend: cpu = ONNX Runtime, cuda = PyTorch + csrc kernels + CUDA "
                        "graphs, tensorrt = TensorRT engines (every plan keeps its ONNX graphs; arvc run --backend "
                        "picks another)")
    c.add_argument("--height", type=int, help="pixels (default: model.json, else 480)")
    c.add_argument("--width", type=int, help="pixels (default: model.json, else 832)")
    c.add_argument("--fps", type=int, help="video frame rate (default: model.json, else 16)")
    c.add_argument("--shift", type=float, help="flow-matching shift of the schedule (default 5)")
    c.add_argument("--steps", type=int, help="denoising steps per block (default 4)")
    c.add_argument("--timesteps", help="explicit comma-separated t list, overrides --shift/--steps")
    c.add_argument("--min-psnr", type=float,
                   help="parity gate on decoded frames, dB (default: fp32 60, fp16 40, bf16 30, int8 35, fp8 32, "
                        "nvfp4 25; KV cache int8/fp8 38, nvfp4 28: the lowest that applies)")
    c.add_argument("--verify-blocks", type=int, help="blocks rolled out by the parity gate (default: >= 8, past the window)")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the parity gate (for models too big to run on this CPU; the manifest records that the "
                        "plan is unverified; check it with arvc eval on the target)")
    c.add_argument("--seed", type=int, default=0, help="noise seed of the parity rollout")
    c.add_argument("--force", action="store_true", help="replace an existing plan at --output (only once the new one passes)")
    c.add_argument("--json", action="store_true", help="print the verification result as JSON")
    _add_geometry_args(c)
    c.set_defaults(func=cmd_compile)

    i = sub.add_parser("inspect", help="what a plan or checkpoint holds (plan: manifest, memory, verification)")
    i.add_argument("checkpoint")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    pm = sub.add_parser("plan-memory", help="memory by category and a roofline FPS bound for a target GPU (no GPU needed)")
    pm.add_argument("checkpoint", help="checkpoint (file or model directory), plan directory, or a preset: "
                                       "wan2.1-t2v-1.3b | wan2.1-t2v-14b")
    pm.add_argument("--gpu", required=True, help="h100 | h200 | b200 | rtx5090 | l40s | rtx4090")
    pm.add_argument("--precision", choices=PRECISIONS,
                    help="DiT weights (default: the plan's, else bf16)")
    pm.add_argument("--kv-cache", choices=KV_FORMATS,
                    help="KV-cache format (default: the plan's, else fp16 = 2 bytes like bf16)")
    pm.add_argument("--kv-sink-precision", choices=KV_FORMATS,
                    help="the sink frames' KV format when it differs")
    pm.add_argument("--height", type=int, help="video height (default: the plan's, else 480)")
    pm.add_argument("--width", type=int, help="video width (default: the plan's, else 832)")
    pm.add_argument("--steps", type=int, help="denoising steps per block (default: the plan's schedule, else 4)")
    pm.add_argument("--kept-dtype", choices=["fp32", "bf16", "fp16"],
                    help="bytes of the unquantized tensors (default: fp32 for fp32 weights, else bf16 as the GPU runtime holds them)")
    pm.add_argument("--no-flash-attention", action="store_true", help="count the attention score matrices")
    pm.add_argument("--json", action="store_true", help="print the whole result as JSON")
    g = pm.add_argument_group("cache geometry (default: the plan's, else window 12, sink 3)")
    g.add_argument("--frames-per-block", type=int, help="latent frames per block (default 3)")
    g.add_argument("--window", type=int, help="latent frames attended incl. sink; 0 = global")
    g.add_argument("--sink", type=int, help="first frames pinned in the cache")
    g.add_argument("--max-frames", type=int, help="capacity of a global cache (default 21)")
    pm.set_defaults(func=cmd_plan_memory)

    e = sub.add_parser("explain-cache", help="which frames each block attends to and which cache slots it writes")
    e.add_argument("--blocks", type=int, default=8)
    e.add_argument("--json", action="store_true")
    _add_geometry_args(e)
    e.set_defaults(func=cmd_explain_cache)

    j = sub.add_parser("judge", help="score a video of the tiny model's world against its prompt")
    j.add_argument("video")
    j.add_argument("--prompt", required=True)
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_judge)

    ev = sub.add_parser("eval", help="quality of a plan vs the fp32 reference: PSNR/SSIM/cosine per block, drift, judge")
    ev.add_argument("plan", help="plan directory (arvc compile)")
    ev.add_argument("--blocks", type=int, required=True, help="blocks rolled out per prompt")
    ev.add_argument("--prompts", type=int, default=8, help="prompts (one rollout each, seeds SEED..SEED+K-1)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--reference", help="checkpoint the plan was compiled from (default: the manifest's source; "
                                         "its SHA-256 must match)")
    ev.add_argument("--threads", type=int, help="ONNX Runtime threads per stage (default: physical cores)")
    ev.add_argument("--backend", choices=["ort", "torch", "tensorrt"], help="what runs the plan (default: its target)")
    ev.add_argument("--device", help="--backend torch: cpu | cuda[:N] (default cuda)")
    ev.add_argument("--plot", metavar="FILE.png", help="write the drift plot (frame PSNR and SSIM per block)")
    ev.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("profile", help="where a plan's time and memory go: per-stage latency, first frame, fps, "
                                        "block jitter, overlap, memory; Chrome trace and PNG timeline")
    pr.add_argument("plan", help="plan directory (arvc compile)")
    pr.add_argument("--seconds", type=float, default=5.0, help="video length streamed and measured (default 5)")
    pr.add_argument("--prompt", help="prompt text (plans with a text encoder; default: the plan's verification prompt)")
    pr.add_argument("--prompt-embeds", metavar="FILE", help="[L, text_dim] prompt embeddings (.safetensors)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--no-warmup", action="store_true", help="measure the first stream after loading (cold)")
    pr.add_argument("--backend", choices=["ort", "torch", "tensorrt"], help="what runs the plan (default: its target)")
    pr.add_argument("--device", help="--backend torch: cpu | cuda[:N]")
    pr.add_argument("--trace", metavar="FILE.json", help="write a Chrome trace (Perfetto, chrome://tracing)")
    pr.add_argument("--plot", metavar="FILE.png", help="write a PNG timeline")
    pr.add_argument("--json", action="store_true", help="print the report as JSON")
    pr.set_defaults(func=cmd_profile)

    st = sub.add_parser("selftest", help="build a small plan here, run it, and check every stage against the reference")
    st.add_argument("--target", default="cpu", help="cpu (ONNX Runtime) | cuda (torch backend) | tensorrt")
    st.add_argument("--device", help="--target cuda: the torch device (default cuda; cpu checks the same code "
                                     "path without a GPU)")
    st.add_argument("--precisions", help="comma-separated (default fp32,fp16,int8,fp8,nvfp4)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_selftest)

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
    va = csub.add_parser("vae", help="Wan2.1 VAE .pth (Wan2.1_VAE.pth) -> safetensors, encoder included")
    va.add_argument("input")
    va.add_argument("-o", "--output", required=True)
    for sp in (sf, ll):
        sp.add_argument("--num-heads", type=int, help="attention heads, only for non-Wan sizes (Wan: dim/128)")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    from arvc import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.add_argument("--version", action="version", version=f"arvc {__version__}")
    try:
        args = parser.parse_args(argv)  # argparse prints usage errors as "arvc <command>: error: ..."
    except SystemExit as e:  # --help, --version (0) and usage errors (2) return their code to main()'s caller
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    args.argv = argv
    prefix = f"arvc {args.command}: error:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - mapped to the exit-code contract; anything unknown is a bug
        code = exit_code(e)
        if code == EXIT_UNEXPECTED:
            import traceback

            traceback.print_exc()
            print(f"{prefix} unexpected {type(e).__name__}: {e} (a bug in arvc; the traceback above says where)",
                  file=sys.stderr)
        else:
            print(f"{prefix} {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
