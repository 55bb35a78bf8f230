"""`arvc compile`: checkpoint -> plan.

Stages: load + validate -> write weights -> export graphs (onnx.checker) -> open with the target
backend -> parity gate against the PyTorch reference -> seal the manifest -> rename into place.
Everything is built in a temporary directory beside the target; the target path only ever holds a
complete, verified plan (or whatever was there before).
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from arvc.version import __version__
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.model.stream_inputs import check_seed
from arvc.quant.format_table import FORMATS, QUANTIZED_FORMATS
from arvc.quant.recipe import Recipe, default_min_psnr, recipe_for
from arvc.runtime.manifest import (FileEntry, Manifest, Memory, Model, PlanRecipe, Resolution, Source, Stage, Stages,
                                   Target, TextEncoderSpec, VaeGraphs)
from arvc import atomic
from arvc.runtime.plan import MANIFEST, free_plan_path, seal_manifest, sha256_file


class CompileError(RuntimeError):
    """The compiler refused to write a plan because of its input (options, checkpoint, output path); the message
    says why and what to change. The CLI exits 2."""


class ParityGateRefused(CompileError):
    """The plan was built but does not match the reference closely enough; nothing was written. The CLI exits 3."""


class OutputExists(CompileError):
    """The output already holds a plan (or is an empty directory) and --force was not given."""


class OutputRefused(CompileError):
    """The output is not a plan that may be replaced (the checkpoint itself, inside it, a file, a link, other
    files, an unreadable plan), --force or not; ``suggested_output`` is a free path the plan could go to."""

    def __init__(self, message: str, suggested_output: Path | None = None):
        super().__init__(message)
        self.suggested_output = suggested_output


@dataclass(frozen=True)
class CompileOptions:
    geometry: CacheGeometry
    schedule: Schedule
    height: int
    width: int
    fps: int = 16
    precision: str = "fp32"
    kv_cache: str = "fp32"  # quant/format_table.py KV_FORMATS ("none" = fp32)
    kv_sink: str | None = None  # the sink frames' KV format, None / "same" = kv_cache
    keep: dict | None = None  # layer pattern -> why it stays full precision (recipe file)
    layer_formats: dict | None = None  # layer pattern -> weight format (recipe file)
    sensitivity: bool = False  # sweep the layers and keep the worst at full precision to meet min_psnr
    activations: str | None = None  # None / "none" | static | dynamic (quant/activations.py)
    act_scales: str = "per-layer"  # static: per-layer | per-timestep
    calib_prompts: str | None = None  # calibration prompts file (compiler/calibrate.py), None: the defaults
    calib_blocks: int | None = None  # blocks per calibration rollout (default: the parity gate's length)
    target: str = "cpu"
    min_psnr: float | None = None
    verify_blocks: int | None = None
    verify: bool = True  # False: no parity gate (models too big for the CPU gate); the manifest says so
    seed: int = 0
    force: bool = False


NOT_VERIFIED = ("compiled with --no-verify: this plan was NOT checked against the reference; measure it with "
                "arvc eval (on the machine it targets) before trusting its output")

# --target -> the backend `arvc run` uses for the plan by default (runtime/backends.py)
TARGET_BACKENDS = {"cpu": "ort", "cuda": "torch", "tensorrt": "tensorrt"}


def _memory_estimate(cfg, geom: CacheGeometry, tokens_per_frame: int, recipe: Recipe) -> dict:
    from arvc.quant.kv import kv_row_bytes

    from .planner import kv_cache_bytes

    n = geom.frames_per_block * tokens_per_frame
    nk = geom.capacity_frames * tokens_per_frame
    row = kv_row_bytes(recipe.kv_cache, cfg.dim, cfg.num_heads)  # one layer's K (or V) for one token
    per_layer = 2 * cfg.num_layers
    sink_row = kv_row_bytes(recipe.kv_sink, cfg.dim, cfg.num_heads) if recipe.kv_sink else row
    kv = kv_cache_bytes(cfg, geom, tokens_per_frame, recipe.kv_cache, recipe.kv_sink)
    # peak live activations of one dit call (fp32): residual + a few [N, dim] temporaries, the FFN
    # hidden layer, and the attention probabilities of one layer over the cache
    act = 4 * (6 * n * cfg.dim + n * cfg.ffn_dim + cfg.num_heads * n * nk + 2 * nk * cfg.dim)
    return {"kv_cache_bytes": kv, "kv_bytes_per_cached_token": per_layer * row,
            "kv_bytes_per_sink_token": per_layer * sink_row,
            "kv_bytes_vs_fp16": round(row / (2 * cfg.dim), 4), "dit_activation_bytes_estimate": act}


def _quantized_bytes_per_parameter(stored: dict, quantized: list[str], original: dict) -> float | None:
    """Bytes of the quantized linears as stored (scales included) per parameter: what the format costs."""
    if not quantized:
        return None
    nbytes = sum(t.numel() * t.element_size() for name in quantized for k, t in stored.items()
                 if k in (name, f"{name}_scale", f"{name}_scale_2"))
    return round(nbytes / sum(original[name].numel() for name in quantized), 4)


def compile_plan(checkpoint: str | Path, output: str | Path, opts: CompileOptions,
                 log: Callable[[str], None] = print) -> Manifest:
    from arvc.checkpoints.text import load_text_encoder
    from arvc.reference.models import load_dit_module, load_vae_module, resolve_checkpoint

    shown, output = output, _check_output(checkpoint, output, opts.force)  # before any work: nothing to lose there
    _check_options(opts)
    try:
        recipe = recipe_for(opts.precision, opts.kv_cache, opts.kv_sink, opts.keep, opts.layer_formats,
                            opts.activations, opts.act_scales)
    except ValueError as e:
        raise CompileError(str(e)) from None
    if opts.act_scales == "per-timestep" and recipe.activations != "static":
        raise CompileError("--act-scales per-timestep applies to static activation scales; pass --activations static")
    if opts.sensitivity and recipe.weights not in QUANTIZED_FORMATS:
        raise CompileError(f"--sensitivity sweeps quantized layers; --precision {opts.precision} quantizes none")
    if recipe.kv_sink and not opts.geometry.sink:
        raise CompileError(f"--kv-sink-precision {recipe.kv_sink} needs sink frames; this geometry has none "
                           "(pass --window and --sink, or drop --kv-sink-precision)")
    if opts.target not in TARGET_BACKENDS:
        raise CompileError(f"--target {opts.target}: unknown; choose one of {', '.join(TARGET_BACKENDS)}")
    log(f"compiling {checkpoint} -> {shown} ({opts.precision}, target {opts.target})")  # the options are valid
    t_all = time.perf_counter()

    def step(name: str, t0: float) -> float:
        log(f"  {name:<34} {time.perf_counter() - t0:6.1f} s")
        return time.perf_counter()

    t0 = time.perf_counter()
    files = resolve_checkpoint(checkpoint)
    if files.vae is None:
        raise CompileError(f"{checkpoint}: no VAE; a plan needs one (put vae.safetensors beside model.safetensors)")
    dit = load_dit_module(files.dit, "fp32")
    vae = load_vae_module(files.vae, "fp32")
    encoder = load_text_encoder(files.text_encoder) if files.text_encoder else None
    cfg, geom = dit.cfg, opts.geometry
    s = vae.config.spatial_factor
    ph, pw = cfg.patch_size[1:]
    if opts.height % (s * ph) or opts.width % (s * pw):
        raise CompileError(f"{opts.height}x{opts.width} is not a multiple of {s * ph}x{s * pw} (VAE factor {s} x patch)")
    if vae.config.z_dim != cfg.out_channels:
        raise CompileError(f"VAE has {vae.config.z_dim} latent channels but the DiT produces {cfg.out_channels}")
    latent_hw = (opts.height // s, opts.width // s)
    resolution = Resolution.derive(opts.height, opts.width, opts.fps, latent_hw, cfg, geom)
    t0 = step("load + validate", t0)
    # activations first: the sensitivity sweep measures layers with their inputs quantized too
    act = _activation_quant(dit, encoder, recipe, opts, latent_hw, files, log) if recipe.activations else None
    if act is not None:
        t0 = step("activation calibration" if recipe.activations == "static" else "activation layers", t0)
    sensitivity = None
    if opts.sensitivity:
        from .sensitivity import keep_sensitive_layers

        recipe, sensitivity = keep_sensitive_layers(dit, vae, encoder, recipe, opts, latent_hw, log, act)
        t0 = step("sensitivity sweep", t0)
    if act is not None:  # layers the sweep kept at full precision keep full-precision inputs too
        act["layers"] = {n: q for n, q in act["layers"].items() if not _is_kept(n, recipe.skip)}

    with atomic.write_errors(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temp_dir(output, ".compiling")  # removed on any exit, and by the next compile here if killed
    with atomic.discarded_on_error(tmp), atomic.write_errors(output):
        manifest = _build(tmp, dit, vae, encoder, recipe, opts, resolution, files, step, t0, act, sensitivity)
        t0 = time.perf_counter()
        if opts.verify:
            try:
                manifest = replace(manifest, verification=_verify(tmp, manifest, dit, vae, encoder, opts, log))
            except ParityGateRefused as refusal:
                from .gate_advice import measure_way_out

                atomic.discard(tmp)  # the refused plan goes before the advice is measured
                refusal.advice.update(measure_way_out(refusal.advice, dit, vae, encoder, recipe, opts, latent_hw, act,
                                                      output, log))
                raise
            t0 = step("parity gate vs reference", t0)
        else:
            manifest = replace(manifest, verification={"skipped": True, "passed": None, "reason": NOT_VERIFIED})
            log(f"  WARNING: {NOT_VERIFIED}")
        _write_manifest(tmp, manifest)
        atomic.sync_tree(tmp)
        with atomic.signals_deferred():  # a swap with an old plan never stops halfway
            _replace(tmp, output, opts.force)
        atomic.committed(tmp)
        atomic.fsync_dir(output.parent)
    log(f"  {'total':<34} {time.perf_counter() - t_all:6.1f} s")
    return manifest


# Rollouts the compile runs (parity gate, calibration): a typo of a few digits must not mean days of work
MAX_ROLLOUT_BLOCKS = 1024


def _check_options(opts: CompileOptions) -> None:
    """The options' ranges (docs/plan-validation.md), before any work: a height of 0 would otherwise fail deep in
    the graph lowering, a seed of 2^64 be masked. The cache geometry and schedule check their own ranges."""
    for flag, value, lo, hi in (("--height", opts.height, 1, 8192), ("--width", opts.width, 1, 8192),
                                ("--fps", opts.fps, 1, 240),
                                ("--verify-blocks", opts.verify_blocks, 1, MAX_ROLLOUT_BLOCKS),
                                ("--calib-blocks", opts.calib_blocks, 1, MAX_ROLLOUT_BLOCKS)):
        if value is not None and not (isinstance(value, int) and lo <= value <= hi):
            raise CompileError(f"{flag} {value}: give an integer in {lo}..{hi}")
    try:
        check_seed(opts.seed)
    except ValueError as e:
        raise CompileError(f"--seed: {e}") from None
    if opts.min_psnr is not None and math.isnan(opts.min_psnr):
        raise CompileError("--min-psnr nan: every comparison with NaN is false, so nothing would fail the gate; "
                           "give the threshold in dB")


def _write_manifest(plan_dir: Path, manifest: Manifest) -> None:
    data = manifest.to_json()
    Manifest.from_json(data)  # read back as arvc reads it: a plan this arvc cannot read is never written
    (plan_dir / MANIFEST).write_text(seal_manifest(data))


def _build(tmp: Path, dit, vae, encoder, recipe: Recipe, opts: CompileOptions, resolution: Resolution, files, step,
           t0, act: dict | None, sensitivity: dict | None) -> Manifest:
    import onnx
    import onnxruntime

    from arvc.checkpoints.safetensors_io import non_finite_tensors, write_safetensors_atomic
    from arvc.checkpoints.text import save_text_encoder
    from arvc.graphs.lower_dit import DitShapes, build_dit_graph, build_text_graph
    from .lower_traced import build_text_encoder_graph, build_vae_graphs
    from arvc.graphs.onnx_graph import OPSET, ExternalWeights, save_checked

    cfg, geom, latent_hw = dit.cfg, opts.geometry, (resolution.latent_h, resolution.latent_w)
    if opts.target == "tensorrt":  # the TensorRT dit graph reads the cache through the arvc kernels
        from arvc.graphs.lower_plugin import plugin_problem

        problem = plugin_problem(recipe.kv_cache, recipe.kv_sink, recipe.activations, recipe.act_scales)
        if problem:
            raise CompileError(problem)
    if recipe.weights not in QUANTIZED_FORMATS:
        dtype = FORMATS[recipe.weights].torch_dtype
        original = dit.state_dict()
        stored, quantized = {k: v.to(dtype) for k, v in original.items()}, []
        overflowed = [k for k in non_finite_tensors(stored) if bool(torch.isfinite(original[k]).all())]  # the cast's
        if overflowed:
            names = ", ".join(list(overflowed)[:5]) + (f" and {len(overflowed) - 5} more" if len(overflowed) > 5 else "")
            raise CompileError(f"--precision {recipe.weights}: {len(overflowed)} weight tensor(s) overflow the format's "
                               f"range and would be stored as infinity ({names}); compile with --precision bf16 "
                               "(fp32's range) or fp32")
    else:
        from arvc.quant.weights import quantize_state_dict

        stored, quantized = quantize_state_dict(dit.state_dict(), recipe.weights, recipe.skip, recipe.weight_format)
    write_safetensors_atomic(tmp / "dit.safetensors", stored)
    write_safetensors_atomic(tmp / "vae.safetensors", vae.state_dict())
    if encoder is not None:
        save_text_encoder(tmp / "text_encoder.safetensors", encoder)  # with its config: the torch backend loads it
    t0 = step("write weights", t0)

    layers = [n.rsplit(".weight", 1)[0] for n in quantized]
    dit_w = ExternalWeights(tmp / "dit.safetensors", {layer: recipe.weight_format(layer) for layer in layers})
    shapes = DitShapes.of(geom, latent_hw, recipe.kv_cache, recipe.kv_sink)
    save_checked(build_text_graph(cfg, dit_w), tmp / "text.onnx")
    act_table, act_timesteps = (act["layers"], act["timesteps"]) if act else ({}, ())
    save_checked(build_dit_graph(cfg, shapes, dit_w, act_table, act_timesteps,
                                 modulation_bf16=dit.numerics.modulation_bf16), tmp / "dit.onnx")
    if opts.target == "tensorrt":  # its form is derived at load (runtime/trt_graphs.py): check here that it builds
        from arvc.graphs.lower_plugin import build_dit_plugin_graph

        probe = tmp / "dit_trt.onnx"
        save_checked(build_dit_plugin_graph(cfg, shapes, dit_w, act_table, act_timesteps,
                                            dit.numerics.modulation_bf16), probe)
        probe.unlink()
    t0 = step("lower text + dit graphs", t0)
    for name, model in build_vae_graphs(vae, latent_hw, ExternalWeights(tmp / "vae.safetensors")).items():
        save_checked(model, tmp / f"{name}.onnx")
    dit_weights = dict(weights="dit.safetensors", weights_dtype=recipe.weights, compute=recipe.compute)
    stages = {"text": Stage(graph="text.onnx", **dit_weights), "dit": Stage(graph="dit.onnx", **dit_weights),
              "vae": Stage(graphs=VaeGraphs("vae_first.onnx", "vae.onnx"), weights="vae.safetensors",
                           weights_dtype="fp32", compute="fp32")}
    text_encoder = None
    if encoder is not None:
        save_checked(build_text_encoder_graph(encoder, ExternalWeights(tmp / "text_encoder.safetensors")),
                     tmp / "text_encoder.onnx")
        stages["text_encoder"] = Stage(graph="text_encoder.onnx", weights="text_encoder.safetensors",
                                       weights_dtype="fp32", compute="fp32")
        text_encoder = TextEncoderSpec(tuple(encoder.cfg.vocab), encoder.cfg.max_len, encoder.cfg.dim)
    t0 = step("lower vae (+ text encoder) graphs", t0)

    vae_state = sum(c * 2 * latent_hw[0] * sc * latent_hw[1] * sc for c, sc in vae.decoder.state_specs) * 4
    weights_bytes = {n: (tmp / n).stat().st_size for n in sorted(os.listdir(tmp)) if n.endswith(".safetensors")}
    memory = Memory(**_memory_estimate(cfg, geom, resolution.tokens_per_frame, recipe), weights_bytes=weights_bytes,
                    quantized_linear_bytes_per_parameter=_quantized_bytes_per_parameter(stored, quantized,
                                                                                        dit.state_dict()),
                    vae_state_bytes=2 * vae_state,  # two state sets, used in turn
                    dit_weight_bytes_per_parameter=round(weights_bytes["dit.safetensors"] / cfg.param_count(), 4))
    manifest = Manifest(
        arvc_version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=Source(str(files.dit), sha256_file(files.dit)),
        model=Model(cfg, vae.config, text_encoder), numerics=dit.numerics, schedule=opts.schedule, geometry=geom,
        resolution=resolution, precision=recipe.name,
        recipe=PlanRecipe.of(recipe, quantized_weights=tuple(quantized), kept_layers=_kept_layers(dit, recipe),
                             quantized_activations=tuple(sorted(act_table)),
                             calibration=act["calibration"] if act else None, sensitivity=sensitivity),
        stages=Stages(**stages), memory=memory,
        # every plan keeps its ONNX graphs, so any backend can run it; the target names the default one
        target=Target(opts.target, TARGET_BACKENDS[opts.target], ("CPUExecutionProvider",), OPSET),
        versions={"arvc": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "torch": torch.__version__, "python": platform.python_version()},
        files={n: FileEntry(sha256_file(tmp / n), (tmp / n).stat().st_size)
               for n in sorted(os.listdir(tmp)) if n.endswith((".onnx", ".safetensors"))},
        verification=None)
    _write_manifest(tmp, manifest)  # the parity gate loads the plan from tmp
    return manifest


def _kept_layers(dit, recipe: Recipe) -> dict:
    """Every layer left at full precision by a quantized recipe, and why (manifest: the recipe actually used)."""
    import fnmatch

    if recipe.weights not in QUANTIZED_FORMATS:
        return {}
    why, kept = dict(recipe.keep), {}
    for name, t in dit.state_dict().items():
        layer = name.rsplit(".weight", 1)[0]
        pattern = next((p for p in recipe.skip if fnmatch.fnmatchcase(layer, p)), None)
        if name.endswith(".weight") and t.dim() >= 2 and pattern is not None:  # linears and the patch conv
            kept[layer] = why.get(pattern, "default: embeddings and head are tiny and sensitive")
    return kept


def _activation_quant(dit, encoder, recipe: Recipe, opts: CompileOptions, latent_hw, files, log) -> dict:
    """-> {"layers": layer -> ActQuant, "timesteps": calibrated timesteps, "calibration": record or None}."""
    from arvc.quant.recipe import act_quant_table

    from .calibrate import activation_layers, calibrate, calibration_prompts
    from .sensitivity import quantizable_layers
    from .verify import default_blocks

    layers = activation_layers(quantizable_layers(dit, recipe.skip))
    if not layers:
        raise CompileError("--activations: every quantizable GEMM is kept at full precision; nothing to quantize")
    calibration = None
    if recipe.activations == "static":
        try:
            card = files.defaults.get("calibration_prompts")  # the model directory's own list (model.json)
            path, what = ((opts.calib_prompts, "--calib-prompts") if opts.calib_prompts or not card else
                          (files.dit.parent / card, 'model.json "calibration_prompts"'))
            prompts = calibration_prompts(dit.cfg, encoder, path, what=what)
        except ValueError as e:
            raise CompileError(str(e)) from None
        blocks = opts.calib_blocks or default_blocks(opts.geometry)
        calibration = calibrate(dit, layers, prompts, opts.geometry, opts.schedule, latent_hw, blocks, opts.seed, log)
        calibration["source"] = str(opts.calib_prompts) if opts.calib_prompts else "default prompts"
        m, over = calibration["max_spread"], calibration["held_out_overflow"] or {}
        log(f"  calibration: {len(prompts)} prompts x {blocks} blocks; amax spread over timesteps up to {m['ratio']}x "
            f"({m['layer']}); held-out rollouts beyond the calibrated range: per-layer "
            f"{over.get('per-layer', 'n/a')}, per-timestep {over.get('per-timestep', 'n/a')}; using {recipe.act_scales}")
    table = act_quant_table(recipe, calibration, layers)
    return {"layers": table, "timesteps": tuple(calibration["timesteps"]) if calibration else (),
            "calibration": calibration}


def _is_kept(layer: str, skip: tuple[str, ...]) -> bool:
    from arvc.quant.weights import is_skipped

    return is_skipped(f"{layer}.weight", skip)


def _verify(tmp: Path, manifest: Manifest, dit, vae, encoder, opts: CompileOptions, log) -> dict:
    """The parity gate's record; ParityGateRefused when the plan is too far from the reference."""
    from arvc.runtime.plan_session import PlanSession

    from .verify import default_blocks, diverged_stage, run_parity

    min_psnr = opts.min_psnr if opts.min_psnr is not None else default_min_psnr(
        opts.precision, manifest.recipe.kv_cache, manifest.recipe.kv_sink)
    blocks = opts.verify_blocks or default_blocks(opts.geometry)
    session = PlanSession(tmp, verify=False, backend="ort")  # the gate runs where compile runs: the CPU
    result = run_parity(session, dit, vae, blocks, opts.seed, encoder)
    bad = diverged_stage(result, min_psnr)
    result.update({"min_psnr_db": min_psnr, "passed": bad is None,
                   "reference": "arvc PyTorch reference, fp32 weights, same seed and noise"})
    log(f"  parity: {blocks} blocks, prompt switch at block {result['prompt_switch_at_block']}: latent max abs error "
        f"{result['max_abs_latent_error']:.2e}, frame PSNR {result['frame_psnr_db']:.1f} dB "
        f"(text {result['stages']['text']['psnr_db']:.1f}, vae {result['stages']['vae']['psnr_db']:.1f} dB)")
    if bad:
        stage_psnr = result["stages"].get(bad.split()[0], {}).get("psnr_db", result["frame_psnr_db"])
        refusal = ParityGateRefused(f"parity gate failed: stage '{bad}' diverged from the reference ({stage_psnr:.1f} dB "
                                    f"< --min-psnr {min_psnr:.1f} dB; frame PSNR {result['frame_psnr_db']:.1f} dB, "
                                    f"latent max abs error {result['max_abs_latent_error']:.2e}). No plan was written.")
        compared = [result["frame_psnr_db"]] + [r["psnr_db"] for r in result["stages"].values()]
        refusal.advice = {"stage": bad.split()[0], "psnr_db": min(compared), "min_psnr_db": min_psnr,
                          "non_finite": bool(result.get("non_finite"))}
        raise refusal
    return result


def _check_output(checkpoint: str | Path, output: str | Path, force: bool) -> Path:
    """Refuse, before any work, an output whose replacement could lose data; -> the output as an absolute path.

    Refused (OutputRefused, --force or not): the checkpoint being compiled (the same path, a path inside its
    directory, or a directory holding it or any of its weight files), and anything at the output that is not
    an arvc plan: a file, a link, a directory of other files, a plan whose manifest does not read (corrupt,
    edited, a newer schema) or that holds files its manifest does not list. Without --force, a readable plan
    (or an empty directory) is refused with OutputExists; with it, replaced once the new plan is done."""
    from arvc.reference.models import resolve_checkpoint

    shown = str(output)
    out = Path(os.path.abspath(output))  # the link itself, not its target, if the output is a symbolic link
    out_real = out.resolve()
    ckpt_real = Path(checkpoint).resolve()
    beside = free_plan_path(ckpt_real.parent / f"{ckpt_real.stem if ckpt_real.is_file() else ckpt_real.name}.plan")
    fix = f"choose another -o outside the model (e.g. -o {beside})"
    if out_real == ckpt_real:
        raise OutputRefused(f"output {shown} is the checkpoint being compiled ({checkpoint}); writing the plan there "
                            f"would destroy the model: {fix}", beside)
    if ckpt_real.is_dir() and out_real.is_relative_to(ckpt_real):
        raise OutputRefused(f"output {shown} is inside the checkpoint directory {checkpoint}; a plan is never "
                            f"written into the model it is compiled from: {fix}", beside)
    sources = [ckpt_real]
    try:  # the weight files themselves: a model directory may link them in from elsewhere
        files = resolve_checkpoint(checkpoint)
        sources += [Path(f).resolve() for f in (files.dit, files.vae, files.text_encoder) if f is not None]
    except (OSError, ValueError):
        pass  # an unreadable checkpoint is reported, with its own message, when it is loaded
    for src in sources:
        if src == out_real or src.is_relative_to(out_real):
            raise OutputRefused(f"output {shown} holds the checkpoint being compiled ({src}); replacing it would "
                                f"delete the model: {fix}", beside)
    _check_target(out, shown, force)
    return out


def _check_target(out: Path, shown: str, force: bool) -> None:
    """What is at ``out`` may be replaced: nothing, an empty directory or a readable arvc plan (with --force)."""
    from arvc.runtime.plan import PlanError, read_manifest

    if not os.path.lexists(out):
        return
    keep = "--force replaces only an existing arvc plan, never anything else"
    free = free_plan_path(out.with_name(f"{out.stem if out.is_file() else out.name}.plan"))
    other = f"choose another -o (e.g. -o {free})"
    if out.is_symlink():
        raise OutputRefused(f"output {shown} is a symbolic link (to {os.readlink(out)}); {keep}: pass the plan's "
                            f"real path, or {other}", free)
    if not out.is_dir():
        raise OutputRefused(f"output {shown} is a file, not an arvc plan; {keep}: {other}, or delete the file "
                            "yourself if you no longer need it", free)
    entries = sorted(os.listdir(out))
    if entries and MANIFEST not in entries:
        raise OutputRefused(f"output {shown} is a directory that is not an arvc plan (no {MANIFEST}; it holds "
                            f"{_some(entries)}); {keep}: {other}, or empty it yourself", free)
    if entries:
        try:
            listed = read_manifest(out, folder=False).files
        except PlanError as e:
            raise OutputRefused(f"output {shown} holds a {MANIFEST} that does not read as an arvc plan ({e}); arvc "
                                "deletes only plans it can read: delete it yourself if it is an old plan you no "
                                f"longer need, or {other}", free) from None
        extra = [n for n in entries if n != MANIFEST and n not in listed]
        if extra:
            raise OutputRefused(f"output {shown} is an arvc plan that also holds files it does not list "
                                f"({_some(extra)}); replacing the plan would delete them: move them out of it, or "
                                f"{other}", free)
    if not force:
        what = "already exists" if entries else "already exists (an empty directory)"
        raise OutputExists(f"{shown} {what}; pass --force to replace it (the old plan stays until the new one passes)")


def _some(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _replace(new: Path, target: Path, force: bool = False) -> None:
    """Move the finished plan into place; an existing target is swapped out only after that succeeds. The
    target is checked again first: whatever appeared there during the compile is refused as at the start."""
    _check_target(target, str(target), force)
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    if atomic.exchange(new, target):
        # the temporary holds the old plan now: removed here, or on any exit, or (SIGKILL) by the next compile
        atomic.discard(new)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
