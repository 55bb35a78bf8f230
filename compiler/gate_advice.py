"""What to do when the parity gate refuses a quantized plan: measure the way out before saying no.

A refusal that only says "22.5 dB < 25 dB" leaves the user to guess. When the weights are quantized and the
DiT is what diverged, the layers to keep at full precision are the answer, and the sensitivity sweep
(compiler/sensitivity.py) finds them. The sweep costs about one reference rollout per quantizable layer, so
it runs here only when that is affordable (``AUTO_SWEEP_BUDGET_S``, estimated from one timed rollout); the
layers it keeps are written as a recipe file beside the output, so the advice is a command that runs as
printed (`arvc compile ... --recipe FILE`), and the CLI adds the --sensitivity and --min-psnr ways out.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from arvc import atomic
from arvc.quant.format_table import QUANTIZED_FORMATS
from arvc.quant.recipe import RECIPE_VERSION

AUTO_SWEEP_BUDGET_S = 240.0  # a refusal may take this much longer to name the layers to keep
DIT_STAGES = ("text", "dit", "dit+vae", "frames")  # stages the block linears move (text: cross-attention K/V)


def measure_way_out(refusal: dict, dit, vae, encoder, recipe, opts, latent_hw, act, output: Path, log) -> dict:
    """-> {"sweep": {...}} (layers kept, the PSNR they reach, the recipe file written) or {"sweep_skipped": why}
    or {} when keeping layers would not help (unquantized weights, another stage diverged, NaN/Inf)."""
    if recipe.weights not in QUANTIZED_FORMATS or opts.sensitivity or refusal["non_finite"]:
        return {}
    if refusal["stage"] not in DIT_STAGES:
        return {}
    from .sensitivity import keep_sensitive_layers, quantizable_layers, reference_prompts, rollout
    from .verify import default_blocks

    layers = quantizable_layers(dit, recipe.skip)
    if not layers:
        return {}
    blocks = opts.verify_blocks or default_blocks(opts.geometry)
    prompts = reference_prompts(dit.cfg, encoder)

    def timed_rollout() -> float:
        t0 = time.perf_counter()
        rollout(dit, opts.geometry, opts.schedule, latent_hw, prompts, blocks, opts.seed)
        return time.perf_counter() - t0

    rollouts = len(layers) + 2 * math.ceil(math.log2(len(layers) + 1)) + 3
    estimate = timed_rollout() * rollouts
    if estimate <= 3 * AUTO_SWEEP_BUDGET_S:  # the first rollout pays one-time costs: time a second one
        estimate = min(estimate, timed_rollout() * rollouts)
    if estimate > AUTO_SWEEP_BUDGET_S:
        return {"sweep_skipped": f"about {rollouts} rollouts, {estimate / 60:.0f} min here"}
    log(f"  the gate refused the {recipe.weights} plan; measuring which layers to keep at full precision "
        f"({len(layers)} layers, about {estimate:.0f} s)")
    found, result = keep_sensitive_layers(dit, vae, encoder, recipe, opts, latent_hw, log, act)
    sweep = {"kept": list(result["kept"]), "frame_psnr_db": result["frame_psnr_db"], "met": result["met"]}
    if result["met"]:
        sweep["recipe"] = str(write_recipe(found, opts, output))
        log(f"  wrote the measured recipe to {sweep['recipe']}")
    return {"sweep": sweep}


def write_recipe(recipe, opts, output: Path) -> Path:
    """The recipe as a recipe file (quant/recipe.py's format) beside ``output``, never over another file."""
    doc = {"format": "arvc-recipe", "version": RECIPE_VERSION, "precision": recipe.weights,
           "kv_cache": recipe.kv_cache, "activations": recipe.activations or "none", "act_scales": recipe.act_scales,
           "keep": dict(recipe.keep), "layers": dict(recipe.layer_formats)}
    if recipe.kv_sink:
        doc["kv_sink_precision"] = recipe.kv_sink
    if opts.calib_prompts:
        doc["calib_prompts"] = str(Path(opts.calib_prompts).resolve())
    if opts.calib_blocks:
        doc["calib_blocks"] = opts.calib_blocks
    stem = output.name.removesuffix(".plan")
    path, n = output.with_name(f"{stem}.recipe.json"), 2
    while path.exists() or path.is_symlink():
        path, n = output.with_name(f"{stem}.recipe-{n}.json"), n + 1
    with atomic.writing(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return path
