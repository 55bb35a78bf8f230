"""compiler/planner.py: DESIGN section 1's memory figures, FLOPs against torch's counter on the reference
model, weight and KV bytes against what a real plan stores and allocates, the fit verdict, the CLI."""
import json

import pytest
import torch

from arvc.compiler.planner import (GB, GIB, GPUS, PlanInputs, dit_call_flops, dit_weight_bytes, inputs_from,
                                   plan_memory, vae_frame_cost)
from arvc.model.config import WAN_PRESETS, WanConfig, WanVAEConfig

from conftest import SMALL_CFG_ARGS


def rel(a, b):
    return abs(a - b) / b


@pytest.mark.parametrize("window,sink,kv_gib", [(0, 0, 5.62), (12, 3, 3.21)])
def test_design_section_1_memory_figures(window, sink, kv_gib):
    """Wan2.1-1.3B, bf16, 480x832 (1560 tokens per latent frame): weights 2.84 GB, KV 5.62 GiB (21-frame
    global cache) or 3.21 GiB (12-frame window), VAE streaming state ~1.8 GiB fp16 -- within 1 %."""
    r = plan_memory(inputs_from("wan2.1-t2v-1.3b", precision="bf16", kv_cache="fp16", window=window, sink=sink,
                                max_frames=21), "h100")
    assert r["config"]["tokens_per_frame"] == 1560
    assert rel(r["memory"]["dit_weights"] / GB, 2.84) < 0.01
    assert rel(r["memory"]["kv_cache"] / GIB, kv_gib) < 0.01
    assert rel(r["memory"]["vae_state"] / GIB, 1.8) < 0.03  # DESIGN says "~1.8"; 1.76 GiB counted
    assert r["memory_detail"]["vae"]["state_tensors"] == 32
    assert rel(r["memory_detail"]["vae"]["params"] / 1e6, 73) < 0.01  # decoder 73 M (DESIGN)


def test_krea_14b_like_on_rtx5090():
    """14B preset at 480x832, window 12, fp8 KV: nvfp4 and fp8 weights both fit in 32 GB; bf16 does not."""
    for precision, fits in (("nvfp4", True), ("fp8", True), ("bf16", False)):
        r = plan_memory(inputs_from("wan2.1-t2v-14b", precision=precision, kv_cache="fp8", window=12, sink=3),
                        "rtx5090")
        assert r["fits"] is fits, r["verdict"]
        assert (r["headroom_bytes"] > 0) is fits
    r = plan_memory(inputs_from("wan2.1-t2v-14b", precision="nvfp4", kv_cache="fp8"), "rtx5090")
    assert r["config"]["gemm_rate"] == "fp4" and r["roofline"]["steady_block"]["fps_bound"] > 0


def test_fit_verdict_flips_with_the_gpu():
    inp = inputs_from("wan2.1-t2v-14b", precision="bf16", kv_cache="fp16")
    assert plan_memory(inp, "h100")["fits"] and not plan_memory(inp, "rtx4090")["fits"]
    assert "does NOT fit" in plan_memory(inp, "rtx4090")["verdict"]


def test_hopper_has_no_fp4_and_falls_back_to_fp8():
    inp = inputs_from("wan2.1-t2v-1.3b", precision="nvfp4", kv_cache="fp8")
    h = plan_memory(inp, "h100")
    assert h["config"]["gemm_rate"] == "fp8" and any("no FP4" in n for n in h["notes"])
    assert plan_memory(inp, "b200")["config"]["gemm_rate"] == "fp4"
    assert all(("fp4" in g.peak) == (g.arch == "Blackwell") for g in GPUS.values())


def test_roofline_first_block_vs_steady_state():
    r = plan_memory(inputs_from("wan2.1-t2v-1.3b", window=12, sink=3), "h200")
    first, steady = r["roofline"]["first_block"], r["roofline"]["steady_block"]
    assert first["video_frames"] == 1 + 4 * 2 and steady["video_frames"] == 4 * 3
    assert first["keys_attended"] == 4680 and steady["keys_attended"] == 12 * 1560
    assert steady["dit_calls"] == 5
    t = steady["time_per_block_s"]
    assert t == pytest.approx(5 * steady["dit_call"]["time_s"] + steady["vae_time_s"])
    assert steady["fps_bound"] == pytest.approx(12 / t)


class _CachedAttention:
    """Self-attention over ``past`` cached rows followed by the block's own (the planner's Nk = past + N)."""

    def __init__(self, past: int, cfg: WanConfig):
        g = torch.Generator().manual_seed(0)
        self.k = torch.randn(1, past, cfg.num_heads, cfg.head_dim, generator=g)
        self.v = torch.randn(1, past, cfg.num_heads, cfg.head_dim, generator=g)

    def attend(self, layer, q, k, v):
        from arvc.model.dit import attention

        return attention(q, torch.cat([self.k, k], 1), torch.cat([self.v, v], 1))


@pytest.mark.parametrize("past_frames", [0, 3])
def test_dit_call_flops_equal_torch_flop_counter_on_the_reference(past_frames):
    """FlopCounterMode on arvc.model.dit.WanDiT (a tiny real config, CPU) counts the same matrix-product
    FLOPs as the planner's formula; tolerance 0.1 % (they agree exactly). Attention runs on SDPA's math
    backend, whose Q K^T and P V products the counter sees (the CPU flash kernel is not registered with it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from arvc.model.dit import WanDiT, init_random_weights_

    cfg = WanConfig(**SMALL_CFG_ARGS)
    model = init_random_weights_(WanDiT(cfg), seed=0).eval()
    frames, h, w = 3, 8, 12
    tpf = (h // 2) * (w // 2)
    x = torch.randn(1, cfg.in_channels, frames, h, w)
    with torch.no_grad():
        kvs = model.cross_kv(torch.randn(1, cfg.text_len, cfg.text_dim))
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel([SDPBackend.MATH]):
            model.run(x, 500.0, kvs, _CachedAttention(past_frames * tpf, cfg))
    expected = dit_call_flops(cfg, frames, tpf, (past_frames + frames) * tpf)
    assert rel(counter.get_total_flops(), expected["total"]) < 1e-3, (counter.get_total_flops(), expected)


def test_vae_flops_walk_equals_torch_flop_counter():
    """The decoder walk (forward hooks on its convs + the middle attention) vs FlopCounterMode, tiny VAE."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from arvc.model.vae import WanVAEDecoder

    cfg = WanVAEConfig(base_dim=4)
    vae = WanVAEDecoder(cfg).eval()
    h, w = 4, 6
    for first in (True, False):
        counted = vae_frame_cost(cfg, (h, w), first)
        states = [torch.zeros(s) for s in vae.state_shapes(1, h, w)]
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            pixels, _ = vae.stream_step(torch.randn(1, cfg.z_dim, 1, h, w), states, first)
        assert counted["video_frames"] == pixels.shape[2] == (1 if first else 4)
        assert rel(counted["flops"], counter.get_total_flops()) < 1e-3


@pytest.mark.parametrize("fmt", ["int8", "fp8", "nvfp4"])
def test_quantized_weight_bytes_equal_what_quantize_state_dict_stores(fmt):
    from arvc.model.dit import WanDiT, init_random_weights_
    from arvc.quant.recipe import DEFAULT_SKIP
    from arvc.quant.weights import quantize_state_dict

    cfg = WanConfig(**SMALL_CFG_ARGS)
    sd = init_random_weights_(WanDiT(cfg), seed=1).state_dict()
    stored, quantized = quantize_state_dict(sd, fmt, DEFAULT_SKIP)
    got = dit_weight_bytes(cfg, fmt, kept_dtype="fp32")
    assert got["total"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert got["quantized_params"] == sum(sd[n].numel() for n in quantized)
    # as the GPU runtime holds a quantized plan: the kept tensors in bf16
    assert dit_weight_bytes(cfg, fmt)["kept"] == got["kept"] // 2


def test_plan_inputs_weights_and_kv_equal_the_plan_file_and_the_ort_allocation(small_ckpt, tmp_path):
    """A real small plan (fp8 weights, fp8 KV with an fp16 sink): the planner reads its manifest; the
    weight bytes (kept tensors fp32, as stored) equal its dit.safetensors tensors and the KV bytes equal
    what runtime/ort_backend allocates."""
    from arvc.checkpoints.safetensors_io import read_safetensors_header
    from arvc.compiler.compile import CompileOptions, compile_plan
    from arvc.model.cache_geometry import CacheGeometry
    from arvc.model.schedule import Schedule
    from arvc.runtime.ort_backend import OrtBackend
    from arvc.runtime.plan import read_manifest

    d, _ = small_ckpt
    plan = tmp_path / "p.plan"
    opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0)), 32, 32, precision="fp8", kv_cache="fp8",
                          kv_sink="fp16", verify=False)
    compile_plan(d, plan, opts, log=lambda _m: None)
    inp = inputs_from(str(plan), kept_dtype="fp32")
    assert (inp.precision, inp.kv_cache, inp.kv_sink, inp.window, inp.sink, inp.steps) == ("fp8", "fp8", "fp16", 6, 3, 2)
    r = plan_memory(inp, "l40s")
    header, _ = read_safetensors_header(plan / "dit.safetensors")
    file_bytes = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values())
    assert r["memory"]["dit_weights"] == file_bytes
    backend = OrtBackend(plan, read_manifest(plan), threads=1)
    assert r["memory"]["kv_cache"] == backend.kv_cache_bytes


def test_checkpoint_input_reads_the_config_from_shapes(small_ckpt):
    d, _ = small_ckpt
    inp = inputs_from(str(d))
    assert inp.cfg == WanConfig(**SMALL_CFG_ARGS)


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="h100, h200, b200, rtx5090, l40s, rtx4090"):
        plan_memory(inputs_from("wan2.1-t2v-1.3b"), "a100")
    with pytest.raises(ValueError, match="wan2.1-t2v-14b"):
        inputs_from("wan2.1-t2v-7b")
    with pytest.raises(ValueError, match="nvfp4"):
        PlanInputs(cfg=WAN_PRESETS["test-tiny"], precision="int4")


def test_cli_plan_memory_json(capsys):
    from arvc.cli import main

    assert main(["plan-memory", "wan2.1-t2v-1.3b", "--gpu", "h100", "--window", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert rel(out["memory"]["kv_cache"] / GIB, 5.62) < 0.01 and out["fits"] is True
    assert main(["plan-memory", "wan2.1-t2v-14b", "--gpu", "rtx5090", "--precision", "nvfp4", "--kv-cache", "fp8"]) == 0
    assert "fits on NVIDIA GeForce RTX 5090" in capsys.readouterr().out
    assert main(["plan-memory", "wan2.1-t2v-1.3b", "--gpu", "v100"]) == 2
    assert "choose one of" in capsys.readouterr().err
