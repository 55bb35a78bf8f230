"""Activation quantization (Q/DQ on the block GEMMs' inputs) and its calibration.

The graph's Q/DQ is checked bit for bit against quant/activations.py's torch emulation; a compiled plan
against the reference DiT running the same emulation (same weights decode, same activation rounding),
code for code at every quantizer of a rollout (tests/quant_parity.py: why, and why not a latent bound)."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from arvc.compiler.calibrate import activation_layers, calibrate, calibration_prompts
from arvc.compiler.compile import CompileError, CompileOptions, compile_plan
from arvc.graphs.lower_quant import quantize_activation
from arvc.graphs.onnx_graph import GraphBuilder
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.schedule import Schedule
from arvc.quant.activations import ActQuant, fake_quant, quantize_input, scale_from_amax
from arvc.quant.weights import fake_quantized_state_dict

from conftest import SMALL_CFG_ARGS
from quant_parity import assert_quantized_parity

CFG = WanConfig(**SMALL_CFG_ARGS)
GEOM, SCHED = CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0))


def _run_qdq(q: ActQuant, x: np.ndarray, timesteps=(), t=None) -> np.ndarray:
    g = GraphBuilder("qdq")
    xi = g.input("x", TensorProto.FLOAT, list(x.shape))
    tt = g.input("timestep", TensorProto.DOUBLE, [1]) if timesteps else None
    g.output(quantize_activation(g, xi, q, x.shape[0], timesteps, tt), "y", TensorProto.FLOAT, list(x.shape))
    feeds = {"x": x} | ({"timestep": np.array([t], np.float64)} if timesteps else {})
    return ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_fake_quant_hand_vectors():
    s = torch.tensor(0.5)
    # int8: ties to even (1.25/0.5 = 2.5 -> 2, 0.75/0.5 = 1.5 -> 2), saturation at 127 * s and -128 * s
    x = torch.tensor([1.25, 0.75, -1.25, 100.0, -100.0, 0.0])
    assert fake_quant(x, "int8", s).tolist() == [1.0, 1.0, -1.0, 63.5, -64.0, 0.0]
    # fp8 E4M3: 448 * s saturates; -300 -> -288 (step 32 in [256, 512)); 17 / 1 -> 16 (3 mantissa bits: 16, 18 -> tie to even 16); subnormal 2^-9
    assert fake_quant(torch.tensor([1000.0, -150.0]), "fp8", s).tolist() == [224.0, -144.0]
    assert fake_quant(torch.tensor([17.0, 2.0 ** -9, 2.0 ** -11]), "fp8", torch.tensor(1.0)).tolist() == \
        [16.0, 2.0 ** -9, 0.0]
    assert scale_from_amax(torch.tensor([0.0, 254.0]), "int8").tolist() == [1.0, 2.0]


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_graph_qdq_equals_the_torch_emulation_bit_for_bit(fmt):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((24, 64)) * np.exp(rng.uniform(-3, 3, (24, 1)))).astype(np.float32)
    x[3] = 0.0  # an all-zero token: dynamic scale 1
    x[5, :4] = [2.5, -2.5, 3.5, 1e4]  # an outlier beyond the static range
    # exact ties at scale 0.5 (a power of two: x / scale is exact): int8 2.5, -2.5, 0.5, 4.5 -> 2, -2, 0, 4;
    # E4M3 17, -17, 25 -> 16, -16, 24 (half to even; half away from zero would differ in each)
    x[7, :8] = [1.25, -1.25, 0.25, 2.25, 8.5, -8.5, 12.5, 0.0]
    xt = torch.from_numpy(x)
    dynamic = ActQuant(fmt, "dynamic")
    assert np.array_equal(_run_qdq(dynamic, x), quantize_input(xt, dynamic, (), None).numpy())
    static = ActQuant(fmt, "static", scale_from_amax(torch.tensor(8.0), fmt))
    assert np.array_equal(_run_qdq(static, x), quantize_input(xt, static, (), None).numpy())
    halves = ActQuant(fmt, "static", torch.tensor(0.5))
    ties = quantize_input(xt, halves, (), None).numpy()
    assert np.array_equal(_run_qdq(halves, x), ties)
    assert ties[7, :7].tolist() == ([1.0, -1.0, 0.0, 2.0, 8.5, -8.5, 12.5] if fmt == "int8" else
                                    [1.25, -1.25, 0.25, 2.25, 8.0, -8.0, 12.0])
    steps = (1000.0, 500.0, 0.0)
    per_t = ActQuant(fmt, "static", scale_from_amax(torch.tensor([30.0, 8.0, 2.0]), fmt))
    for t in (1000.0, 500.0, 0.0, 260.0):  # 260 is nearest to 500: the graph and torch pick alike
        assert np.array_equal(_run_qdq(per_t, x, steps, t), quantize_input(xt, per_t, steps, t).numpy()), t


def _reference(fmt: str, manifest) -> WanDiT:
    ref = WanDiT(CFG)
    sd = init_random_weights_(WanDiT(CFG), seed=2).state_dict()
    ref.load_state_dict(fake_quantized_state_dict(sd, fmt, manifest.recipe.skip))
    return ref.eval()


@pytest.mark.parametrize("fmt,mode,scales", [("int8", "static", "per-layer"), ("fp8", "static", "per-timestep"),
                                             ("int8", "dynamic", "per-layer"), ("nvfp4", "dynamic", "per-layer")])
def test_plan_with_quantized_activations_equals_the_emulating_reference(small_ckpt, tmp_path, fmt, mode, scales):
    from arvc.quant.recipe import act_quant_table

    d, vae = small_ckpt
    opts = CompileOptions(GEOM, SCHED, 32, 32, precision=fmt, activations=mode, act_scales=scales, min_psnr=0.0,
                          verify_blocks=4, calib_blocks=3)
    m = compile_plan(d, tmp_path / "a.plan", opts, log=lambda _m: None)
    rec = m.recipe
    assert rec.activations == mode and rec.act_scales == scales
    # every per-call block GEMM's input is quantized; the text stage's cross-attention K/V are not
    assert len(rec.quantized_activations) == CFG.num_layers * 8
    assert not any(".cross_attn.k" in n or ".cross_attn.v" in n for n in rec.quantized_activations)
    cal = rec.calibration
    if mode == "static":
        assert cal["timesteps"] == [1000.0, 500.0, 0.0] and cal["blocks"] == 3 and cal["prompts"] == 4
        assert all(len(v) == 3 and min(v) > 0 for v in cal["amax"].values())
    else:
        assert cal is None
    table = act_quant_table(rec, cal, list(rec.quantized_activations))
    ref = _reference(fmt, m)
    # ORT's default graph optimizations on Q/DQ and the ops as ONNX defines them (exact_qdq)
    for exact in (False, True):
        # every GEMM input's codes equal the emulation's or are certified one-step flips (which the reference
        # then follows); end to end, the fp32 plan's bounds (1e-4 latent max abs, 60 dB frames)
        result = assert_quantized_parity(tmp_path / "a.plan", tmp_path / f"trace-{exact}", ref, vae.eval(), blocks=4,
                                         act_table=table, act_timesteps=rec.act_timesteps,
                                         exact_qdq=exact)
        assert result["codes"][f"activations {'int8' if fmt == 'int8' else 'fp8'}"]["codes"] > 0
    # and the quantization is really there: the fp32 reference differs measurably
    assert m.verification["frame_psnr_db"] < 100.0


def test_calibration_sees_every_step_and_the_cache_call_and_agrees_with_modelopt(small_ckpt):
    from modelopt.torch.quantization.calib import MaxCalibrator

    from arvc.quant.activations import tracking_timestep
    from arvc.reference.models import load_dit_module

    d, _ = small_ckpt
    dit = load_dit_module(d / "model.safetensors", "fp32")
    layers = activation_layers([f"blocks.0.{n}" for n in ("self_attn.q", "ffn.2", "cross_attn.k")])
    assert layers == ["blocks.0.self_attn.q", "blocks.0.ffn.2"]
    prompts = calibration_prompts(CFG, None, None, n=2)
    cal = calibrate(dit, layers, prompts, GEOM, SCHED, (4, 4), blocks=3, log=lambda _m: None)
    # the same rollouts observed by modelopt's max calibrators, one per (layer, timestep)
    modules = dict(dit.named_modules())
    calibrators = {(n, t): MaxCalibrator(num_bits=8) for n in layers for t in cal["timesteps"]}
    with tracking_timestep(dit) as state:
        hooks = [modules[n].register_forward_pre_hook(
            lambda _m, a, n=n: calibrators[(n, state["t"])].collect(a[0].detach().abs())) for n in layers]
        try:
            calibrate(dit, layers, prompts, GEOM, SCHED, (4, 4), blocks=3, log=lambda _m: None)
        finally:
            for h in hooks:
                h.remove()
    for n in layers:
        theirs = [float(calibrators[(n, t)].compute_amax()) for t in cal["timesteps"]]
        assert cal["amax"][n] == pytest.approx(theirs, rel=0, abs=0)
        assert cal["spread"][n] == pytest.approx(max(theirs) / min(theirs), abs=1e-3)
    over = cal["held_out_overflow"]
    assert 0 <= over["per-layer"] <= over["per-timestep"] <= 1  # a tighter range can only clip more


def test_held_out_overflow_hand_computed():
    from arvc.compiler.calibrate import _held_out_overflow

    # 2 rollouts x 1 layer x 2 timesteps. Leaving out rollout 0 (amax 3, 1): the other calibrates (2, 2)
    # per timestep -> t0 overflows; per layer 2 -> t0 overflows. Leaving out rollout 1 (2, 2): the
    # other gives (3, 1) -> t1 overflows per timestep; per layer 3 -> none.
    seen = np.array([[[3.0, 1.0]], [[2.0, 2.0]]])
    assert _held_out_overflow(seen) == {"per-timestep": 0.5, "per-layer": 0.25}
    assert _held_out_overflow(seen[:1]) is None


def test_activation_options_refuse_bad_input(small_ckpt, tmp_path):
    d, _ = small_ckpt

    def opts(**kw):
        return CompileOptions(GEOM, SCHED, 32, 32, min_psnr=0.0, verify_blocks=4, **kw)

    with pytest.raises(CompileError, match="--precision int8"):
        compile_plan(d, tmp_path / "x.plan", opts(precision="bf16", activations="static"), log=lambda _m: None)
    with pytest.raises(CompileError, match="--activations static"):
        compile_plan(d, tmp_path / "x.plan", opts(precision="int8", activations="dynamic", act_scales="per-timestep"),
                     log=lambda _m: None)
    with pytest.raises(CompileError, match="no such file"):
        compile_plan(d, tmp_path / "x.plan", opts(precision="int8", activations="static",
                                                  calib_prompts=str(tmp_path / "none.txt")), log=lambda _m: None)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(CompileError, match="no prompts"):
        compile_plan(d, tmp_path / "x.plan", opts(precision="int8", activations="static", calib_prompts=str(empty)),
                     log=lambda _m: None)
    text = tmp_path / "text.txt"
    text.write_text("a red circle\n")
    with pytest.raises(CompileError, match="no text encoder"):
        compile_plan(d, tmp_path / "x.plan", opts(precision="int8", activations="static", calib_prompts=str(text)),
                     log=lambda _m: None)
    assert not (tmp_path / "x.plan").exists()


def test_recipe_file_calibration_settings_reach_the_plan_and_inspect(small_ckpt, tmp_path):
    """calib_prompts in a recipe is relative to the recipe; its lines may name prompt-embedding files."""
    import json
    import subprocess
    import sys

    from arvc.checkpoints.safetensors_io import write_safetensors_atomic

    d, _ = small_ckpt
    rdir = tmp_path / "recipes"
    rdir.mkdir()
    for i in range(2):
        write_safetensors_atomic(rdir / f"p{i}.safetensors", {"context": torch.randn(5, CFG.text_dim)})
    (rdir / "calib.txt").write_text("# two prompts\np0.safetensors\np1.safetensors\n")
    (rdir / "r.json").write_text(json.dumps({"format": "arvc-recipe", "precision": "int8", "activations": "static",
                                             "act_scales": "per-timestep", "calib_prompts": "calib.txt",
                                             "calib_blocks": 2}))
    plan = tmp_path / "r.plan"
    cmd = [sys.executable, "-m", "arvc", "compile", str(d), "-o", str(plan), "--recipe", str(rdir / "r.json"),
           "--height", "32", "--width", "32", "--window", "6", "--sink", "3", "--timesteps", "1000,500",
           "--verify-blocks", "4", "--min-psnr", "0", "--json"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([sys.executable, "-m", "arvc", "inspect", str(plan), "--json"], check=True,
                         capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["precision"] == "int8+act-static-per-timestep"
    assert info["activations"].startswith("int8, static per-timestep scales, 16 GEMM inputs; calibrated on 2 prompts x "
                                          f"2 blocks ({rdir / 'calib.txt'})")
