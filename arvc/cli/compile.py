"""`arvc compile CHECKPOINT -o PLAN`: a checkpoint to a plan that passed the parity gate against the reference."""
from __future__ import annotations

import json
from pathlib import Path
import sys

# the format table imports nothing heavy: argparse refuses a bad value before any heavy import
from arvc.quant.format_table import KV_FORMATS, WEIGHT_FORMATS

from .common import SEED, add_frame_args, add_geometry_args, fill_defaults, geometry, schedule
from .contract import UsageError, gate_advice, rerun_command, rich_console

RECIPE_FLAG_DEFAULTS = {"precision": "fp32", "kv_cache": "none", "kv_sink_precision": "same", "activations": "none",
                        "act_scales": "per-layer", "calib_prompts": None, "calib_blocks": None}


def add_parser(sub) -> None:
    c = sub.add_parser("compile", help="compile a checkpoint to a verified plan (ONNX graphs + manifest)")
    c.add_argument("checkpoint", help="model directory (model.safetensors + vae.safetensors [+ model.json]) or DiT file")
    c.add_argument("-o", "--output", required=True, help="plan directory to write (atomically)")
    c.add_argument("--precision", choices=WEIGHT_FORMATS,
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
    c.add_argument("--fps", type=int, help="video frame rate (default: model.json, else 16)")
    c.add_argument("--min-psnr", type=float,
                   help="parity gate on decoded frames, dB (default: fp32 60, fp16 40, bf16 30, int8 35, fp8 32, "
                        "nvfp4 25; KV cache int8/fp8 38, nvfp4 28: the lowest that applies)")
    c.add_argument("--verify-blocks", type=int, help="blocks rolled out by the parity gate (default: >= 8, past the window)")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the parity gate (for models too big to run on this CPU; the manifest records that the "
                        "plan is unverified; check it with arvc eval on the target)")
    c.add_argument("--seed", type=SEED, default=0, help="noise seed of the parity rollout, 0..2^64-1 (default 0)")
    c.add_argument("--force", action="store_true", help="replace an existing plan at --output (only once the new one passes)")
    c.add_argument("--json", action="store_true", help="print the verification result as JSON")
    add_frame_args(c)
    add_geometry_args(c)
    c.set_defaults(func=command)


def _recipe_settings(args, model_defaults: dict) -> dict:
    """--recipe FILE fills the precision flags the command line left unset; explicit flags win. Without
    --recipe, a model directory's model.json may name its own recipe for the --precision asked for
    ("recipes": {"nvfp4": "recipes/nvfp4.json"}); --recipe none compiles without it."""
    from arvc.quant.recipe import read_recipe_file

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


def command(args) -> int:
    from arvc.compiler.compile import (CompileError, CompileOptions, OutputExists, OutputRefused, ParityGateRefused,
                                       compile_plan)
    from arvc.reference.models import resolve_checkpoint

    files = resolve_checkpoint(args.checkpoint)
    fill_defaults(args, files.defaults)
    recipe = _recipe_settings(args, files.defaults)
    opts = CompileOptions(geometry=geometry(args), schedule=schedule(args), height=args.height, width=args.width,
                          fps=args.fps, precision=args.precision, kv_cache=args.kv_cache,
                          kv_sink=args.kv_sink_precision, keep=recipe.get("keep"), layer_formats=recipe.get("layers"),
                          activations=args.activations, act_scales=args.act_scales, calib_prompts=args.calib_prompts,
                          calib_blocks=args.calib_blocks, sensitivity=args.sensitivity, target=args.target,
                          min_psnr=args.min_psnr, verify_blocks=args.verify_blocks, verify=not args.no_verify,
                          seed=args.seed, force=args.force)
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
    v, sens = manifest.verification, manifest.recipe.sensitivity
    if args.json:
        print(json.dumps({"plan": str(args.output), "verification": v, "sensitivity": sens}, indent=2))
        return 0
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
