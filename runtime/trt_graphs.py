"""TensorRT's form of a plan's text and dit graphs: derived from the plan when the backend loads, never stored in it.

A plan holds the canonical graphs (dit.onnx, text.onnx) and the weights. TensorRT needs another form of the two:
the cache ops as arvc plugin nodes, no FP64 (the time sinusoid computed on the host), NVFP4 weights as FP4
Q/DQ rather than bit ops (arvc/graphs/lower_plugin.py). Both are built here from the plan's weights and manifest
with the same op vocabulary as dit.onnx, and cached under the engine cache, keyed by the plan's hash (the sha256
of its sealed manifest.json, which covers every file's sha256) and DERIVATION_VERSION: a plan is derived once
per machine, and a changed plan, or a changed derivation, never reuses another's graphs.

The derived graphs reference the plan's weights file as external data by its name, as dit.onnx does, and are
parsed with the plan's folder as their location (``TrtGraphs.weights_dir``): no weight is copied or linked (ONNX
refuses external data behind a link). A derivation is built in a scratch folder and renamed into place.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from arvc import atomic
from .manifest import Manifest

DERIVATION_VERSION = 1  # bump when the derived form changes


@dataclass(frozen=True)
class TrtGraphs:
    text: Path  # text_trt.onnx
    dit: Path  # dit_trt.onnx
    weights_dir: Path  # the plan: where their external data lives


def plan_hash(plan_dir: Path) -> str:
    return hashlib.sha256((Path(plan_dir) / "manifest.json").read_bytes()).hexdigest()


def derive_trt_graphs(plan_dir: Path, manifest: Manifest, cache_root: Path, log=lambda _m: None) -> TrtGraphs:
    """The plan's TensorRT graphs, from the cache or built now (raises ValueError when the recipe has none)."""
    from arvc.graphs.lower_plugin import plugin_problem

    r = manifest.recipe
    problem = plugin_problem(r.kv_cache, r.kv_sink, r.activations, r.act_scales)
    if problem:
        raise ValueError(problem)
    plan_dir, cache_root = Path(plan_dir).resolve(), Path(cache_root)
    folder = cache_root / f"plan-{plan_hash(plan_dir)[:32]}-v{DERIVATION_VERSION}"
    graphs = TrtGraphs(folder / "text_trt.onnx", folder / "dit_trt.onnx", plan_dir)
    if graphs.text.is_file() and graphs.dit.is_file():
        return graphs
    log(f"deriving the TensorRT text and dit graphs of {plan_dir} into {folder}")
    cache_root.mkdir(parents=True, exist_ok=True)
    scratch = atomic.temp_dir(folder, ".deriving")  # removed on any exit, or as stale by the next derivation
    try:
        _build(plan_dir, manifest, scratch)
        try:
            os.rename(scratch, folder)
            atomic.committed(scratch)
        except OSError:  # another process derived it first: its copy is the same
            if not (graphs.text.is_file() and graphs.dit.is_file()):
                raise
    finally:
        if scratch.exists():
            atomic.discard(scratch)
    return graphs


def _build(plan_dir: Path, manifest: Manifest, out: Path) -> None:
    from arvc.graphs.lower_dit import DitShapes, build_text_graph
    from arvc.graphs.lower_plugin import build_dit_plugin_graph
    from arvc.graphs.onnx_graph import ExternalWeights

    cfg, r = manifest.model.dit, manifest.recipe
    shapes = DitShapes.of(manifest.geometry, manifest.latent_hw, r.kv_cache, r.kv_sink)
    weights = ExternalWeights(plan_dir / manifest.stages.dit.weights, r.weight_formats)
    act, act_timesteps = r.act_quant()
    _save(build_dit_plugin_graph(cfg, shapes, weights, act, act_timesteps,
                                 manifest.numerics.modulation_bf16), out / "dit_trt.onnx")
    _save(build_text_graph(cfg, weights, fp4_weights="qdq"), out / "text_trt.onnx")


def _save(model, path: Path) -> None:
    # no onnx.checker here: it resolves external data beside the file, and the weights are the plan's; `arvc
    # compile --target tensorrt` checks the same graph, built by the same code, where the weights are
    path.write_bytes(model.SerializeToString())
