"""The torch backend runs a plan as ONNX Runtime does: parity on the CPU for every weight / KV / activation
recipe and both RoPE modes, the FP8 GEMM path, prompt switches, and the errors a user can hit.

fp32 compute: the two backends differ only in summation order, so unquantized plans' decoded frames agree
to >= 100 dB (measured ~129). Where a quantizer sits between the GEMMs, that last-bit difference can move a
value across a rounding boundary: one int8 / nvfp4 step is rare and small (>= 60 dB, the selftest's bar),
but a dynamic FP8 activation scale is the row's amax, so a flip rescales a whole row's codes by up to one
E4M3 step (1/8) and the 3-block rollout carries it: measured 129 dB with one noise stream and 54-55 dB with
another, hence 50 dB there."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.runtime.plan_session import load
from arvc.runtime.torch_backend import TorchBackend

# (weights, kv cache, activations, rope, the PSNR floor in dB)
RECIPES = [
    ("fp32", "fp32", None, "absolute", 100.0),
    ("fp16", "fp16", None, "relative", 100.0),
    ("int8", "int8", "static", "absolute", 60.0),
    ("fp8", "fp8", "dynamic", "relative", 50.0),  # dynamic FP8 activations: see the module docstring
    ("nvfp4", "nvfp4", None, "relative", 60.0),
]


@pytest.fixture(scope="module")
def plans(small_ckpt, tmp_path_factory):
    ckpt, _ = small_ckpt
    out = {}
    root = tmp_path_factory.mktemp("torch_backend_plans")
    for weights, kv, act, rope, _ in RECIPES:
        path = root / f"{weights}-{kv}-{act}-{rope}.plan"
        opts = CompileOptions(CacheGeometry(3, 6, 3, rope=rope), Schedule((1000.0, 500.0)), 32, 32, precision=weights,
                              kv_cache=kv, activations=act, min_psnr=0.0, verify_blocks=2)
        compile_plan(ckpt, path, opts, log=lambda _m: None)
        out[(weights, kv, act, rope)] = path
    return out


def _context(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 32)).astype(np.float32)


def _video(session, frames: int = 28, switch: bool = True) -> np.ndarray:
    # 28 frames = 8 latent frames = 3 blocks: enough to fill the 6-frame window, evict, and switch prompts
    switches = [(0.9, _context(1))] if switch else []
    return np.stack(list(session.stream(_context(0), frames=frames, seed=3, switches=switches, raw=True)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 200.0 if mse == 0 else 10 * np.log10(4.0 / mse)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "-".join(str(x) for x in r[:4]))
def test_torch_backend_matches_onnx_runtime(plans, recipe):
    *key, floor = recipe
    plan = plans[tuple(key)]
    reference = _video(load(plan, backend="ort"))
    session = load(plan, backend="torch", device="cpu", cache_ops="torch")
    assert session.backend.name == "torch" and session.backend.dtype == torch.float32
    got = _video(session)
    assert got.shape == reference.shape
    assert _psnr(reference, got) >= floor


@pytest.mark.parametrize("recipe", RECIPES[1:], ids=lambda r: "-".join(str(x) for x in r[:4]))
def test_csrc_cache_kernels_match_onnx_runtime(plans, recipe):
    """The csrc CPU kernels hold the cache in the plan's format (quantized on write, decoded and -- relative
    RoPE -- rotated inside attention): the same frames as ORT, and the plan's bytes per cached row."""
    from arvc.quant.kv import kv_row_bytes

    *key, floor = recipe
    plan = plans[tuple(key)]
    reference = _video(load(plan, backend="ort"))
    session = load(plan, backend="torch", device="cpu", cache_ops="csrc")
    assert session.backend.cache_ops == "csrc"
    assert _psnr(reference, _video(session)) >= floor
    cfg, rows = session.cfg, session.backend.cache_rows
    assert session.backend.kv_cache_bytes == 2 * cfg.num_layers * rows * kv_row_bytes(key[1], cfg.dim, cfg.num_heads)


def test_fp8_gemm_path_matches_the_plans_qdq(plans):
    """fp8 weights x fp8 activations as one torch._scaled_mm (CPU has it) equal Q/DQ + fp32 GEMM."""
    plan = plans[("fp8", "fp8", "dynamic", "relative")]
    reference = _video(load(plan, backend="ort"), switch=False)
    session = load(plan, backend="ort")
    session.backend = TorchBackend(plan, session.manifest, device="cpu", fp8_gemm=True)
    assert len(session.backend.dit.fp8_layers) == 8 * 2  # q k v o of both attentions, ffn.0/2: 8 per layer, 2 layers
    assert _psnr(reference, _video(session, switch=False)) >= 50.0  # dynamic FP8 inputs: see the module docstring


def test_bf16_compute_is_close_but_not_identical(plans):
    plan = plans[("fp32", "fp32", None, "absolute")]
    reference = _video(load(plan, backend="ort"), switch=False)
    got = _video(load(plan, backend="torch", device="cpu", dtype="bf16"), switch=False)
    assert 25.0 <= _psnr(reference, got) < 100.0  # bf16 rounding is visible, and bounded


def test_quantized_cache_emulation_holds_decoded_rows(plans):
    """The torch cache ops keep decode(encode(x)) of every written row: the int8 cache's rows take at most
    255 distinct values per (token, head) and equal quant/kv.py's round trip."""
    from arvc.quant.kv import kv_round_trip

    plan = plans[("int8", "int8", "static", "absolute")]
    session = load(plan, backend="torch", device="cpu", cache_ops="torch")
    _video(session, frames=5, switch=False)
    k = session.backend.cache.buffers[0, 0]  # layer 0, K: [rows, dim]
    filled = k[k.abs().sum(1) > 0].reshape(-1, session.cfg.num_heads, session.cfg.head_dim)
    assert filled.shape[0] > 0
    torch.testing.assert_close(kv_round_trip(filled, "int8"), filled, rtol=0, atol=1e-6)


def test_errors_name_the_problem_and_the_fix(plans, monkeypatch):
    plan = plans[("fp32", "fp32", None, "absolute")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device.*--device cpu"):
        load(plan, backend="torch")
    with pytest.raises(ValueError, match="csrc kernels hold .*fp32.*cache_ops='torch'"):
        load(plan, backend="torch", device="cpu", cache_ops="csrc")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # tests/test_triton_attention.py may have set it
    with pytest.raises(ValueError, match="Triton attention kernel runs on CUDA"):
        load(plans[("int8", "int8", "static", "absolute")], backend="torch", device="cpu", cache_ops="triton")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        load(plan, backend="torch", device="cpu", cuda_graph=True)
    with pytest.raises(RuntimeError, match="fp8 GEMMs need a CUDA GPU"):
        TorchBackend(plan, load(plan, backend="ort").manifest, device="meta", fp8_gemm=True)


def test_a_plan_with_a_text_encoder_streams_from_text_on_the_torch_backend(tiny_plan):
    """The compiled tiny plan's text encoder loads in the torch backend (its weights file carries the encoder's
    config; before, compile wrote it bare and the torch backend refused every plan with a text encoder), and
    encodes a prompt as the plan's ONNX graph does."""
    ort_session, torch_session = load(tiny_plan[0]), load(tiny_plan[0], backend="torch", device="cpu")
    prompt = "a red circle moving right"
    assert np.allclose(torch_session.context_for(prompt), ort_session.context_for(prompt), atol=1e-5)
    res = tiny_plan[1].resolution
    assert next(iter(torch_session.stream(prompt, frames=1, seed=0))).shape == (res.height, res.width, 3)
