"""Manifests for tests: a small valid one built in memory (the readers' tests without compiling a plan), and
the check that the C reader and runtime/manifest.py read a compiled plan alike."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import onnx

from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import Numerics, WanConfig, WanVAEConfig
from arvc.model.schedule import Schedule
from arvc.quant.kv import kv_parts
from arvc.runtime.manifest import (FileEntry, Manifest, Memory, Model, PlanRecipe, Resolution, Source, Stage, Stages,
                                   Target, TextEncoderSpec, VaeGraphs)
from arvc.runtime.plan import MANIFEST, PlanError, PlanIntegrityError, read_manifest, seal_manifest

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)
GEOMETRY = CacheGeometry(3, 6, 3, rope="relative")
ARVC_ERR_PLAN, ARVC_ERR_INTEGRITY = 2, 3  # runtime/include/arvc.h


def sample_manifest(stages: tuple[str, ...] = (), **recipe) -> Manifest:
    """A 32x32 plan of CFG; ``recipe``: PlanRecipe fields (default fp32); ``stages``: optional stages it has
    (text_encoder) beside text, dit and vae."""
    recipe = PlanRecipe(**{"name": "sample", "weights": "fp32", **recipe})
    weights = dict(weights="dit.safetensors", weights_dtype=recipe.weights, compute="fp32")
    graphs = {s: Stage(graph=f"{s}.onnx", **weights) for s in ("text", "dit", *stages)}
    vae = Stage(graphs=VaeGraphs("vae_first.onnx", "vae.onnx"), weights="vae.safetensors", weights_dtype="fp32",
                compute="fp32")
    files = {f: FileEntry("0" * 64, 1) for s in [*graphs.values(), vae] for f in s.files}
    return Manifest(
        arvc_version="0", created="2026-01-01T00:00:00+00:00", source=Source("ckpt/model.safetensors", "0" * 64),
        model=Model(CFG, WanVAEConfig(base_dim=4),
                    TextEncoderSpec(("a", "b"), CFG.text_len, CFG.text_dim) if "text_encoder" in stages else None),
        numerics=Numerics(), schedule=Schedule((1000.0, 500.0)),
        geometry=GEOMETRY, resolution=Resolution.derive(32, 32, 16, (4, 4), CFG, GEOMETRY), precision=recipe.name,
        recipe=recipe, stages=Stages(**graphs, vae=vae),
        memory=Memory(kv_cache_bytes=0, kv_bytes_per_cached_token=0, kv_bytes_per_sink_token=0, kv_bytes_vs_fp16=1.0,
                      dit_activation_bytes_estimate=0, weights_bytes={}, quantized_linear_bytes_per_parameter=None,
                      vae_state_bytes=0, dit_weight_bytes_per_parameter=4.0),
        target=Target("cpu", "ort", ("CPUExecutionProvider",), 23), versions={}, files=files, verification=None)


def c_view(manifest: Manifest, plan_dir) -> dict:
    """What the C reader's arvc_plan_describe should say about a plan, from its Manifest."""
    cfg, te, stages = manifest.model.dit, manifest.model.text_encoder, manifest.stages
    path = (lambda name: f"{plan_dir}/{name}")
    return {
        "precision": manifest.precision, "geometry": asdict(manifest.geometry),
        "timesteps": list(manifest.schedule.timesteps), "resolution": asdict(manifest.resolution),
        "model": {"in_channels": cfg.in_channels, "text_dim": cfg.text_dim, "text_len": cfg.text_len,
                  "rope_max_positions": cfg.rope_max_positions, "patch_size": list(cfg.patch_size),
                  "rope_axis_dims": list(cfg.rope_axis_dims), "temporal_factor": manifest.temporal_factor},
        "text_encoder": None if te is None else {"vocab": list(te.vocab), "max_len": te.max_len},
        "graphs": {"text": path(stages.text.graph), "dit": path(stages.dit.graph), "vae_first": path(stages.vae.graphs.first),
                   "vae": path(stages.vae.graphs.steady),
                   "text_encoder": path(stages.text_encoder.graph) if stages.text_encoder else None},
        "kv_cache": manifest.recipe.kv_cache, "kv_sink": manifest.recipe.kv_sink, "sink_rows": manifest.sink_rows,
        "kv_regions": [asdict(r) for r in manifest.kv_regions()],
    }


def c_refusal(lib, plan: Path):
    """The C runtime's refusal of a plan (CApiError), or None: arvc_plan_describe, then arvc_open, which also checks
    the graphs against the manifest (docs/plan-validation.md step 7, as Python's read_manifest does)."""
    from arvc.runtime.capi import CApiError, CSession, describe_plan

    try:
        describe_plan(lib, plan)
        CSession(lib, plan, threads=1).close()
    except CApiError as e:
        return e
    return None


def check_readers_agree(lib, plan: Path) -> None:
    """The C reader and runtime/manifest.py accept the same plan (or refuse it alike: a plan a test broke on
    purpose) and read the same fields and cache layout, which dit.onnx's cache inputs have too; the
    manifest round-trips through Manifest byte for byte."""
    from arvc.runtime.capi import describe_plan

    try:
        manifest = read_manifest(plan)
    except PlanError as e:
        refused = c_refusal(lib, plan)
        assert refused is not None, f"{plan}: Python refuses it ({e}), C opens it"
        assert refused.status == (ARVC_ERR_INTEGRITY if isinstance(e, PlanIntegrityError) else ARVC_ERR_PLAN), \
            f"{plan}: Python refuses it ({e}), C says {refused}"
        return
    assert seal_manifest(manifest.to_json()) == (plan / MANIFEST).read_text(), plan
    assert describe_plan(lib, plan) == c_view(manifest, plan), plan
    dit = onnx.load(str(plan / manifest.stages.dit.graph), load_external_data=False)
    rows = {i.name: i.type.tensor_type.shape.dim[0].dim_value for i in dit.graph.input}
    cfg = manifest.model.dit
    for region in manifest.kv_regions():
        for part in kv_parts(region.format, cfg.dim, cfg.num_heads):
            for name in (f"{kind}_{region.prefix}{part.name}_{i}" for i in range(cfg.num_layers) for kind in "kv"):
                assert rows.pop(name) == region.rows, (plan, name)
    assert not [n for n in rows if n.startswith(("k_", "v_"))], (plan, "cache inputs kv_regions does not name")
