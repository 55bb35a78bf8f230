"""Checkpoints with bf16 modulation numerics (the causal Self-Forcing / LongLive / CausVid checkpoints) compile:
the plan's graphs round the residual stream, LayerNorm outputs, modulation and gates to bf16 exactly where the
reference computes them in bf16 (arvc/graphs/lower_dit.OnnxDitOps), and the torch backend does the same."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from arvc.checkpoints.safetensors_io import read_safetensors, write_safetensors_atomic
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.compiler.selftest import write_random_checkpoint
from arvc.compiler.verify import run_parity
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.reference.models import load_dit_module, load_vae_module
from arvc.runtime.plan_session import load


def _bf16_casts(graph_path) -> int:
    model = onnx.load(str(graph_path), load_external_data=False)
    return sum(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.BFLOAT16 for n in model.graph.node)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16_modulation")
    ckpt, _ = write_random_checkpoint(root / "fp32_numerics")
    causal = root / "bf16_numerics"
    causal.mkdir()
    tensors, meta = read_safetensors(ckpt / "model.safetensors")
    write_safetensors_atomic(causal / "model.safetensors", tensors, {**meta, "arvc.numerics": json.dumps({"modulation_bf16": True})})
    (causal / "vae.safetensors").write_bytes((ckpt / "vae.safetensors").read_bytes())
    opts = CompileOptions(CacheGeometry(3, 6, 3, rope="relative"), Schedule((1000.0, 500.0)), 32, 32, verify_blocks=3)
    out = {}
    for name, src in (("fp32", ckpt), ("bf16", causal)):
        out[name] = (src, root / f"{name}.plan", compile_plan(src, root / f"{name}.plan", opts, log=lambda _m: None))
    return out


def test_the_gate_passes_and_the_graph_rounds_where_the_reference_does(plans):
    src, plan, manifest = plans["bf16"]
    assert manifest.numerics.modulation_bf16 and manifest.verification["passed"]
    assert _bf16_casts(plan / "dit.onnx") > 0
    assert _bf16_casts(plans["fp32"][1] / "dit.onnx") == 0  # fp32 numerics: the graph has no rounding nodes


def test_the_rounding_is_what_matches_the_reference(plans):
    """The bf16 plan is much closer to the bf16-numerics reference than to the same weights in fp32 numerics:
    the rounding points are the reference's, not an approximation of them."""
    src, plan, _ = plans["bf16"]
    session = load(plan)
    vae = load_vae_module(src / "vae.safetensors")
    same = run_parity(session, load_dit_module(src / "model.safetensors"), vae, blocks=3)
    other = run_parity(session, load_dit_module(src / "model.safetensors", modulation_bf16=False), vae, blocks=3)
    # measured (AMD EPYC, AVX-512): the latents equal the bf16 reference's (200 dB, the cap), 59.6 dB vs fp32 numerics
    assert same["latent_psnr_db"] >= other["latent_psnr_db"] + 15


def test_torch_backend_matches_ort_on_a_bf16_numerics_plan(plans):
    _, plan, _ = plans["bf16"]
    ctx = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)

    def video(session):
        return np.stack(list(session.stream(ctx, frames=20, seed=3, raw=True)))

    a, b = video(load(plan)), video(load(plan, backend="torch", device="cpu"))
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    # measured 130.7 dB (AVX-512) and 130.5 dB (AVX2 kernels): a bf16 rounding flip moves one value by 2^-8 relative
    assert 10 * np.log10(4.0 / max(mse, 1e-30)) >= 40
