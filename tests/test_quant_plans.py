"""Weight-quantized plans (int8 / fp8 / nvfp4 block linears): the graphs decode exactly what the
format stores. Reference: the fp32 model with its weights replaced by decode(encode(w))."""
import numpy as np
import pytest
import torch

import arvc
from arvc.checkpoints.safetensors_io import read_safetensors_header
from arvc.compiler.compile import CompileError, CompileOptions, compile_plan
from arvc.compiler.verify import run_parity
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.schedule import Schedule
from arvc.quant.weights import fake_quantized_state_dict

from conftest import SMALL_CFG_ARGS
from quant_parity import assert_quantized_parity

CFG = WanConfig(**SMALL_CFG_ARGS)


@pytest.fixture
def ckpt(small_ckpt):
    return small_ckpt


@pytest.mark.parametrize("fmt,dtypes", [("int8", {"I8", "F32"}), ("fp8", {"F8_E4M3", "F32"}),
                                        ("nvfp4", {"U8", "F8_E4M3", "F32"})])
def test_quantized_plan_decodes_exactly_what_the_format_stores(ckpt, tmp_path, fmt, dtypes):
    d, vae = ckpt
    opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0)), 32, 32, precision=fmt, min_psnr=0.0,
                          verify_blocks=4)
    manifest = compile_plan(d, tmp_path / "q.plan", opts, log=lambda _m: None)
    header, _ = read_safetensors_header(tmp_path / "q.plan" / "dit.safetensors")
    assert {e["dtype"] for e in header.values()} == dtypes
    recipe = manifest.recipe
    assert recipe.weights == fmt and "head.head" in recipe.skip
    assert len(recipe.quantized_weights) == CFG.num_layers * 10  # q,k,v,o x 2 attentions + 2 FFN linears
    assert header["head.head.weight"]["dtype"] == "F32"  # skipped layers stay full precision
    bpp = manifest.memory.dit_weight_bytes_per_parameter
    assert bpp < {"int8": 2.6, "fp8": 2.6, "nvfp4": 2.1}[fmt]  # fp32 is 4; biases/norms/skips stay fp32 here
    # the quantized linears alone, scales included: 1 byte + 4 per output row (0.53x of fp16), or
    # NVFP4's 4.5 bits + one fp32 scale_2 per tensor (0.28x of fp16)
    q = manifest.memory.quantized_linear_bytes_per_parameter
    assert (1.0 < q < 1.07) if fmt != "nvfp4" else (0.5625 < q < 0.565)

    ref = WanDiT(CFG)
    sd = init_random_weights_(WanDiT(CFG), seed=2).state_dict()
    ref.load_state_dict(fake_quantized_state_dict(sd, fmt, recipe.skip))
    session = arvc.load(tmp_path / "q.plan")
    result = run_parity(session, ref.eval(), vae.eval(), blocks=4)
    assert result["max_abs_latent_error"] <= 1e-4 and result["frame_psnr_db"] >= 60.0


@pytest.mark.parametrize("kv,sink,rope", [("int8", None, "absolute"), ("int8", None, "relative"),
                                           ("fp8", None, "absolute"), ("nvfp4", None, "relative"),
                                           ("nvfp4", "fp32", "relative"), ("fp8", "fp16", "absolute")])
def test_quantized_kv_cache_plan_equals_the_reference_with_the_same_cache_format(ckpt, tmp_path, kv, sink, rope):
    """The graph's encoders (quantize once on write) and decoders reproduce quant/kv.py's round trip, also
    across window evictions and with the sink in its own format."""
    d, vae = ckpt
    opts = CompileOptions(CacheGeometry(3, 6, 3, rope=rope), Schedule((1000.0, 500.0)), 32, 32, kv_cache=kv,
                          kv_sink=sink, min_psnr=0.0, verify_blocks=4)
    m = compile_plan(d, tmp_path / "kv.plan", opts, log=lambda _m: None)
    assert m.recipe.kv_cache == kv and m.recipe.kv_sink == sink
    assert m.precision == f"fp32+kv-{kv}" + (f"+sink-{sink}" if sink else "")
    # bytes per cached row: the format's payload + one fp32 scale per head (vs 4 * dim in fp32)
    dim, heads = CFG.dim, CFG.num_heads
    row = {"int8": dim + 4 * heads, "fp8": dim + 4 * heads, "nvfp4": dim // 2 + dim // 16 + 4 * heads}[kv]
    assert m.memory.kv_bytes_per_cached_token == 2 * CFG.num_layers * row
    rows, tpf = m.cache_rows, m.tokens_per_frame
    if sink is None:
        assert m.memory.kv_cache_bytes == 2 * CFG.num_layers * rows * row
    else:  # sink rows + scratch in the sink format, ring rows + scratch in the cache's
        sink_row = {"fp32": 4 * dim, "fp16": 2 * dim}[sink]
        sink_rows = 3 * tpf
        assert m.memory.kv_cache_bytes == 2 * CFG.num_layers * ((sink_rows + 1) * sink_row +
                                                                       (rows - sink_rows + 1) * row)
    session = arvc.load(tmp_path / "kv.plan")
    assert sum(a.nbytes for a in session.backend.kv_arrays) == m.memory.kv_cache_bytes
    ref = init_random_weights_(WanDiT(CFG), seed=2).eval()
    # ORT's and torch's GEMMs differ in the last fp32 bit; where that moves a value across a rounding boundary
    # of the cache format one code flips (an int8 step, an fp16 ulp) and a free rollout amplifies it. So the
    # rows each call writes are compared code for code (equal, or a certified one-step flip the reference then
    # follows), and the latents are held to the fp32 plan's bounds (tests/quant_parity.py)
    result = assert_quantized_parity(tmp_path / "kv.plan", tmp_path / "trace", ref, vae.eval(),
                                     blocks=5, reference_kv=kv, reference_kv_sink=sink)  # evicts twice
    assert {f"kv {kv}"} | ({f"kv {sink}"} if sink not in (None, "fp32") else set()) <= set(result["codes"])


def test_kv_sink_precision_needs_a_sink(ckpt, tmp_path):
    d, _ = ckpt
    opts = CompileOptions(CacheGeometry(3, 0, 0), Schedule((1000.0, 500.0)), 32, 32, kv_cache="fp8", kv_sink="fp32")
    with pytest.raises(CompileError, match="needs sink frames"):
        compile_plan(d, tmp_path / "x.plan", opts, log=lambda _m: None)
    assert not (tmp_path / "x.plan").exists()
