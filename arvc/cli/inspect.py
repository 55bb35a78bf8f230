"""`arvc inspect PLAN_OR_CHECKPOINT`: what a plan holds (manifest, memory, verification) or what a checkpoint is."""
from __future__ import annotations

import json

from .common import print_execution
from .contract import rich_console


def add_parser(sub) -> None:
    i = sub.add_parser("inspect", help="what a plan or checkpoint holds (plan: manifest, memory, verification)")
    i.add_argument("checkpoint", metavar="PLAN_OR_CHECKPOINT")
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-verify", action="store_true",
                   help="skip the plan files' SHA-256 (the report then says they were not verified)")
    i.set_defaults(func=command)


def command(args) -> int:
    from arvc.runtime.plan import is_plan

    if is_plan(args.checkpoint):
        return _inspect_plan(args)
    from arvc.checkpoints.load import describe_checkpoint

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


def _plan_summary(plan_dir, verify: bool) -> dict:
    from arvc.runtime.execution import ort_cpu_execution
    from arvc.runtime.manifest import json_of
    from arvc.runtime.plan import read_manifest

    m = read_manifest(plan_dir, verify_files=verify)  # a file that fails its check is refused, naming it
    mem, recipe = m.memory, m.recipe
    return {
        "plan": str(plan_dir), "schema_version": m.schema_version, "arvc_version": m.arvc_version,
        "created": m.created, "precision": m.precision, "target": json_of(m.target),
        "model": {k: getattr(m.model.dit, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len")},
        "text_encoder": m.model.text_encoder is not None, "numerics": json_of(m.numerics),
        "schedule": json_of(m.schedule), "geometry": json_of(m.geometry), "resolution": json_of(m.resolution),
        "stages": {name: stage.graph or json_of(stage.graphs) for name, stage in m.stages.items()},
        "memory_bytes": {"weights": sum(mem.weights_bytes.values()), "kv_cache": mem.kv_cache_bytes,
                         "activations (dit call, estimate)": mem.dit_activation_bytes_estimate,
                         "vae_state": mem.vae_state_bytes},
        "dit_weight_bytes_per_parameter": mem.dit_weight_bytes_per_parameter,
        "quantized_linear_bytes_per_parameter": mem.quantized_linear_bytes_per_parameter,
        "kv_cache": recipe.kv_cache, "kv_sink": recipe.kv_sink,
        "kv_bytes_per_cached_token": mem.kv_bytes_per_cached_token, "kv_bytes_per_sink_token": mem.kv_bytes_per_sink_token,
        "kv_bytes_vs_fp16": mem.kv_bytes_vs_fp16, "quantized_weights": len(recipe.quantized_weights),
        "activations": _activation_summary(recipe), "verification": m.verification, "versions": m.versions,
        "files": len(m.files), "files_verified": verify,
        "execution_ort_cpu": {stage: str(e) for stage, e in ort_cpu_execution(m).items()},
    }


def _activation_summary(recipe) -> str | None:
    """recipe: the plan's (runtime/manifest.PlanRecipe)."""
    from arvc.quant.activations import ACT_FORMAT_OF_WEIGHTS

    if not recipe.activations:
        return None
    n, cal = len(recipe.quantized_activations), recipe.calibration
    fmt = ACT_FORMAT_OF_WEIGHTS[recipe.weights]
    if recipe.activations == "dynamic":
        return f"{fmt}, dynamic per-token scales, {n} GEMM inputs"
    spread, over = cal["max_spread"], cal["held_out_overflow"] or {}
    return (f"{fmt}, static {recipe.act_scales} scales, {n} GEMM inputs; calibrated on {cal['prompts']} prompts x "
            f"{cal['blocks']} blocks ({cal['source']}); amax spread over timesteps up to {spread['ratio']}x "
            f"({spread['layer']}); held-out overflow per-layer {over.get('per-layer', 'n/a')}, per-timestep "
            f"{over.get('per-timestep', 'n/a')}")


def _inspect_plan(args) -> int:
    info = _plan_summary(args.checkpoint, verify=not args.no_verify)
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
    if info["files_verified"]:
        console.print(f"plan files: {info['files']} verified (size and SHA-256 as the manifest records)")
    else:
        console.print(f"[bold red]plan files: NOT verified[/] (--no-verify): {info['files']} files unchecked")
    print_execution(console, info["execution_ort_cpu"], "ort (CPU, the default backend; `arvc profile --backend` "
                                                        "tells another)")
    _print_parity(console, info["verification"])
    return 0


def _print_parity(console, v) -> None:
    """The compile-time parity gate's record; the manifest keeps it as written, so every value is checked here."""
    from rich.table import Table

    if not isinstance(v, dict):
        console.print("[bold red]parity verification: none recorded[/]")
        return
    if v.get("skipped"):
        console.print(f"[bold red]verification: skipped[/] ({v.get('reason')})")
        return
    passed = "passed" if v.get("passed") is True else "FAILED"
    vt = Table(title=f"parity verification at compile ({passed}, gate {v.get('min_psnr_db')} dB)")
    vt.add_column("measure")
    vt.add_column("value", justify="right")
    vt.add_row("blocks (prompt switch at)", f"{v.get('blocks')} ({v.get('prompt_switch_at_block')})")
    vt.add_row("max abs latent error", _number(v.get("max_abs_latent_error"), ".3e"))
    vt.add_row("frame PSNR (dB)", _number(v.get("frame_psnr_db"), ".2f"))
    stages = v.get("stages")
    for stage, r in (stages.items() if isinstance(stages, dict) else ()):
        vt.add_row(f"{stage} PSNR alone (dB)", _number(r.get("psnr_db") if isinstance(r, dict) else None, ".2f"))
    console.print(vt)


def _number(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"
