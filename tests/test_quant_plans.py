"""Weight-quantized plans (int8 / fp8 / nvfp4 block linears): the graphs decode exactly what the
format stores. Reference: the fp32 model with its weights replaced by decode(encode(w))."""
import numpy as np
import pytest
import torch

import arvc
from arvc.checkpoints.load import save_dit
from arvc.checkpoints.safetensors_io import read_safetensors_header, write_safetensors_atomic
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.compiler.verify import run_parity
from arvc.model.config import WanConfig, WanVAEConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.vae import WanVAEDecoder
from arvc.model.vae import init_random_weights_ as init_vae_
from arvc.quant.weights import fake_quantized_state_dict
from arvc.runtime.kv_cache import CacheGeometry
from arvc.runtime.schedule import Schedule

# in/ffn dims multiples of 16 (NVFP4 blocks)
CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("qckpt")
    save_dit(d / "model.safetensors", init_random_weights_(WanDiT(CFG), seed=2).state_dict(), CFG)
    vae = init_vae_(WanVAEDecoder(WanVAEConfig(base_dim=4)), seed=2)
    write_safetensors_atomic(d / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})
    return d, vae


@pytest.mark.parametrize("fmt,dtypes", [("int8", {"I8", "F32"}), ("fp8", {"F8_E4M3", "F32"}),
                                        ("nvfp4", {"U8", "F8_E4M3", "F32"})])
def test_quantized_plan_decodes_exactly_what_the_format_stores(ckpt, tmp_path, fmt, dtypes):
    d, vae = ckpt
    opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0)), 32, 32, precision=fmt, min_psnr=0.0,
                          verify_blocks=4)
    manifest = compile_plan(d, tmp_path / "q.plan", opts, log=lambda _m: None)
    header, _ = read_safetensors_header(tmp_path / "q.plan" / "dit.safetensors")
    assert {e["dtype"] for e in header.values()} == dtypes
    recipe = manifest["recipe"]
    assert recipe["weights"] == fmt and "head.head" in recipe["skip"]
    assert len(recipe["quantized_weights"]) == CFG.num_layers * 10  # q,k,v,o x 2 attentions + 2 FFN linears
    assert header["head.head.weight"]["dtype"] == "F32"  # skipped layers stay full precision
    bpp = manifest["memory"]["dit_weight_bytes_per_parameter"]
    assert bpp < {"int8": 2.6, "fp8": 2.6, "nvfp4": 2.1}[fmt]  # fp32 is 4; biases/norms/skips stay fp32 here

    ref = WanDiT(CFG)
    sd = init_random_weights_(WanDiT(CFG), seed=2).state_dict()
    ref.load_state_dict(fake_quantized_state_dict(sd, fmt, tuple(recipe["skip"])))
    session = arvc.load(tmp_path / "q.plan")
    result = run_parity(session, ref.eval(), vae.eval(), blocks=4)
    assert result["max_abs_latent_error"] <= 1e-4 and result["frame_psnr_db"] >= 60.0


@pytest.mark.parametrize("rope", ["absolute", "relative"])
def test_int8_kv_cache_plan_equals_the_reference_with_the_same_cache_format(ckpt, tmp_path, rope):
    d, vae = ckpt
    opts = CompileOptions(CacheGeometry(3, 6, 3, rope=rope), Schedule((1000.0, 500.0)), 32, 32, kv_cache="int8",
                          min_psnr=0.0, verify_blocks=4)
    m = compile_plan(d, tmp_path / "kv.plan", opts, log=lambda _m: None)
    assert m["recipe"]["kv_cache"] == "int8" and m["precision"] == "fp32+kv-int8"
    # bytes per cached row: dim int8 values + one fp32 scale per head (vs 4 * dim in fp32)
    rows = m["resolution"]["cache_tokens"]
    assert m["memory"]["kv_cache_bytes"] == 2 * CFG.num_layers * rows * (CFG.dim + 4 * CFG.num_heads)
    session = arvc.load(tmp_path / "kv.plan")
    assert {a.dtype for a in session.backend.kv_arrays} == {np.dtype(np.int8), np.dtype(np.float32)}
    ref = init_random_weights_(WanDiT(CFG), seed=2).eval()
    result = run_parity(session, ref, vae.eval(), blocks=4, reference_kv="int8")  # past the 6-frame window
    assert result["max_abs_latent_error"] <= 1e-4 and result["frame_psnr_db"] >= 60.0
