"""Self-Forcing .pt conversion and LongLive LoRA merging (arvc.checkpoints.convert)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from arvc.checkpoints.convert import convert_self_forcing, merge_lora, safe_torch_load
from arvc.checkpoints.dit_names import to_diffusers_names
from arvc.checkpoints.load import load_dit
from arvc.checkpoints.safetensors_io import CheckpointError, read_safetensors, write_safetensors_atomic
from arvc.model.config import WAN_PRESETS, WanConfig
from arvc.model.dit import WanDiT, init_random_weights_

TINY = WAN_PRESETS["test-tiny"]
HEADS = TINY.num_heads  # dim 64 is outside Wan's head_dim-128 rule, so tests pass the head count
RANK, ALPHA = 4, 8.0    # alpha != rank so that the alpha/r scale is exercised


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    model = init_random_weights_(WanDiT(TINY), seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def block_linears(cfg: WanConfig = TINY) -> list[str]:
    with torch.device("meta"):
        model = WanDiT(cfg)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]


def inputs(cfg: WanConfig = TINY, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g)
    t = torch.tensor([[1000.0, 833.3]])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    return x, t, ctx


def forward(sd: dict[str, torch.Tensor], cfg: WanConfig = TINY) -> torch.Tensor:
    model = WanDiT(cfg)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return model.forward_full(*inputs(cfg))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# -- Self-Forcing training checkpoints --------------------------------------------------------------

@pytest.fixture
def self_forcing_pt(tmp_path) -> tuple[Path, dict, dict]:
    ema, gen = tiny_state_dict(0), {k: v.to(torch.bfloat16) for k, v in tiny_state_dict(1).items()}
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({
        "generator_ema": {"model." + k: v for k, v in ema.items()},
        "generator": {"model." + k: v for k, v in gen.items()},
        "critic": {"model." + k: torch.zeros(1) for k in list(ema)[:3]},
        "step": 600,
    }, path)
    return path, ema, gen


def test_convert_prefers_ema_and_round_trips(self_forcing_pt, tmp_path):
    pt, ema, gen = self_forcing_pt
    out = tmp_path / "sf.safetensors"
    info = convert_self_forcing(pt, out, num_heads=HEADS)
    assert info["which"] == "generator_ema" and info["prefix"] == "model."
    assert info["parameters"] == TINY.param_count()
    ck = load_dit(out)
    assert_same(ck.state_dict, ema)
    assert ck.config.dim == TINY.dim and ck.config.num_heads == HEADS and ck.config.num_layers == TINY.num_layers
    _, metadata = read_safetensors(out)
    assert metadata["arvc.source"] == "self_forcing_dmd.pt" and metadata["arvc.source_key"] == "generator_ema"

    convert_self_forcing(pt, out, which="generator", num_heads=HEADS)
    assert_same(load_dit(out).state_dict, gen)  # bf16 kept as stored
    convert_self_forcing(pt, out, which="generator_ema", num_heads=HEADS, dtype=torch.bfloat16)
    assert_same(load_dit(out).state_dict, {k: v.to(torch.bfloat16) for k, v in ema.items()})


def test_convert_strips_fsdp_wrappers(tmp_path):
    sd = tiny_state_dict()
    wrapped = {}
    for k, v in sd.items():  # FSDP-gathered EMA: blocks.N._fsdp_wrapped_module.<rest>
        parts = k.split(".")
        if parts[0] == "blocks":
            parts.insert(2, "_fsdp_wrapped_module")
        wrapped["model." + ".".join(parts)] = v
    pt = tmp_path / "ema.pt"
    torch.save({"generator_ema": wrapped}, pt)
    convert_self_forcing(pt, tmp_path / "o.safetensors", num_heads=HEADS)
    assert_same(load_dit(tmp_path / "o.safetensors").state_dict, sd)


def test_convert_refuses_arbitrary_objects(tmp_path):
    sd = {"model." + k: v for k, v in tiny_state_dict().items()}
    pt = tmp_path / "with_config.pt"
    torch.save({"generator_ema": sd, "config": argparse.Namespace(lr=1e-5)}, pt)
    with pytest.raises(CheckpointError, match="refused") as e:
        convert_self_forcing(pt, tmp_path / "o.safetensors", num_heads=HEADS)
    assert str(pt) in str(e.value) and "argparse.Namespace" in str(e.value)
    assert not (tmp_path / "o.safetensors").exists()

    class Payload:  # unpickling this would call open(marker, "w")
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"generator_ema": sd, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="never unpickles arbitrary objects"):
        safe_torch_load(evil)
    assert not (tmp_path / "pwned").exists()


def test_convert_errors(self_forcing_pt, tmp_path):
    pt, ema, _ = self_forcing_pt
    out = tmp_path / "o.safetensors"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        convert_self_forcing(junk, out)
    with pytest.raises(CheckpointError, match="has no 'model' entry"):
        convert_self_forcing(pt, out, which="model")
    other = tmp_path / "other.pt"
    torch.save({"state": {"w": torch.zeros(1)}, "optimizer": {}}, other)
    with pytest.raises(CheckpointError, match=r"no generator weights found.*'optimizer', 'state'"):
        convert_self_forcing(other, out)
    lora_only = tmp_path / "lora.pt"
    torch.save({"generator_lora": {"base_model.model.blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 64)}}, lora_only)
    with pytest.raises(CheckpointError, match="LoRA-only checkpoint.*merge_lora"):
        convert_self_forcing(lora_only, out)
    broken = tmp_path / "broken.pt"
    torch.save({"generator": {"model." + k: v for k, v in ema.items() if k != "blocks.0.ffn.2.bias"}}, broken)
    with pytest.raises(CheckpointError, match=r"missing tensors 1: blocks\.0\.ffn\.2\.bias") as e:
        convert_self_forcing(broken, out, num_heads=HEADS)
    assert str(broken) in str(e.value)
    convert_self_forcing(pt, out, num_heads=HEADS)
    with pytest.raises(CheckpointError, match="already safetensors"):
        convert_self_forcing(out, tmp_path / "again.safetensors")
    assert not out.with_name("again.safetensors").exists()


# -- LongLive LoRA ----------------------------------------------------------------------------------

def make_lora(seed: int = 7, rank: int = RANK) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{block linear: (A [r, in], B [out, r])} for every Linear in the blocks, as LongLive targets."""
    g = torch.Generator().manual_seed(seed)
    sd = tiny_state_dict()
    out = {}
    for name in block_linears():
        w_out, w_in = sd[name + ".weight"].shape
        out[name] = (torch.randn(rank, w_in, generator=g) * 0.2, torch.randn(w_out, rank, generator=g) * 0.2)
    return out


def peft_state_dict(lora) -> dict[str, torch.Tensor]:
    # peft.get_peft_model_state_dict(PeftModel(CausalWanModel)) naming, as LongLive saves it
    sd = {}
    for target, (a, b) in lora.items():
        sd[f"base_model.model.{target}.lora_A.weight"] = a
        sd[f"base_model.model.{target}.lora_B.weight"] = b
    return sd


@pytest.fixture
def longlive(tmp_path):
    """LongLive-style base .pt ('generator', model. prefix) and lora.pt ('generator_lora')."""
    base = tiny_state_dict()
    lora = make_lora()
    base_pt, lora_pt = tmp_path / "longlive_base.pt", tmp_path / "lora.pt"
    # an EMA copy is present too; the LoRA was trained on "generator", which merge must pick
    torch.save({"generator": {"model." + k: v for k, v in base.items()},
                "generator_ema": {"model." + k: v + 1 for k, v in base.items()}, "step": 3000}, base_pt)
    torch.save({"generator_lora": peft_state_dict(lora),
                "critic_lora": {"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(1)},
                "step": 3000}, lora_pt)
    return base_pt, lora_pt, base, lora


class LoRALinear(nn.Module):
    """Unmerged LoRA: x @ W^T + b + (alpha / r) * (x @ A^T) @ B^T."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.a, self.b, self.scale = base, a, b, scale

    @property
    def weight(self) -> torch.Tensor:  # the blocks read their compute dtype from q.weight
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.base.weight.T + self.base.bias + self.scale * (x @ self.a.T) @ self.b.T


def unmerged_forward(base: dict[str, torch.Tensor], lora, alpha: float) -> torch.Tensor:
    model = WanDiT(TINY)
    model.load_state_dict(base, strict=True)
    for target, (a, b) in lora.items():
        parent_name, child = target.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), a, b, alpha / a.shape[0]))
    with torch.no_grad():
        return model.forward_full(*inputs())


def test_lora_targets_every_block_linear():
    names = block_linears()
    assert len(names) == 10 * TINY.num_layers  # q k v o (self, cross) + ffn.0 ffn.2
    assert "blocks.1.ffn.2" in names and "blocks.0.cross_attn.o" in names


def test_merge_equals_unmerged_computation(longlive, tmp_path):
    base_pt, lora_pt, base, lora = longlive
    out = tmp_path / "merged.safetensors"
    info = merge_lora(base_pt, lora_pt, out, alpha=ALPHA, rank=RANK, num_heads=HEADS)
    assert (info["alpha"], info["rank"], info["targets"], info["which"]) == (ALPHA, RANK, len(lora), "generator")
    merged = load_dit(out).state_dict

    expected = unmerged_forward(base, lora, ALPHA)
    got = forward(merged)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (forward(base) - expected).abs().max() > 1e-2  # the LoRA really changes the output

    _, metadata = read_safetensors(out)
    assert metadata["arvc.lora_alpha"] == str(ALPHA) and metadata["arvc.lora_rank"] == str(RANK)
    assert metadata["arvc.source"] == "longlive_base.pt" and metadata["arvc.lora_source"] == "lora.pt"
    untouched = [k for k in base if k.removesuffix(".weight") not in lora]
    assert all(torch.equal(merged[k], base[k]) for k in untouched)


def test_merge_in_bf16_casts_back_exactly(tmp_path):
    base = {k: v.to(torch.bfloat16) for k, v in tiny_state_dict().items()}
    lora = make_lora()
    base_file, lora_pt = tmp_path / "base.safetensors", tmp_path / "lora.pt"
    write_safetensors_atomic(base_file, base, {"arvc.num_heads": str(HEADS)})
    torch.save(peft_state_dict(lora), lora_pt)  # a bare peft state dict also works
    merge_lora(base_file, lora_pt, tmp_path / "m.safetensors", alpha=ALPHA)
    merged = load_dit(tmp_path / "m.safetensors").state_dict
    for target, (a, b) in lora.items():
        w = base[target + ".weight"]
        want = (w.float() + (ALPHA / RANK) * (b @ a)).to(torch.bfloat16)
        assert merged[target + ".weight"].dtype == torch.bfloat16
        assert torch.equal(merged[target + ".weight"], want), target


def test_diffusers_named_lora_safetensors_merges_the_same(longlive, tmp_path):
    base_pt, lora_pt, base, lora = longlive
    merge_lora(base_pt, lora_pt, tmp_path / "a.safetensors", alpha=ALPHA, num_heads=HEADS)
    # the same LoRA under diffusers module names and a 'transformer.' prefix, alpha in the metadata
    renamed = to_diffusers_names({t + ".weight": t for t in lora})
    sd = {}
    for diff_w, target in renamed.items():
        a, b = lora[target]
        stem = "transformer." + diff_w.removesuffix(".weight")
        sd[stem + ".lora_A.weight"], sd[stem + ".lora_B.weight"] = a, b
    diff_lora = tmp_path / "lora_diffusers.safetensors"
    write_safetensors_atomic(diff_lora, sd, {"lora_alpha": str(ALPHA)})
    merge_lora(base_pt, diff_lora, tmp_path / "b.safetensors", num_heads=HEADS)
    assert_same(load_dit(tmp_path / "a.safetensors").state_dict, load_dit(tmp_path / "b.safetensors").state_dict)
    with pytest.raises(CheckpointError, match=r"stores lora alpha \[8\.0\] but alpha=16"):
        merge_lora(base_pt, diff_lora, tmp_path / "c.safetensors", alpha=16, num_heads=HEADS)


def _lora_pt(tmp_path, sd: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "bad_lora.pt"
    torch.save({"generator_lora": sd}, path)
    return path


def test_merge_errors(longlive, tmp_path):
    base_pt, lora_pt, _, lora = longlive
    out = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="alpha is not stored in this file") as e:
        merge_lora(base_pt, lora_pt, out, num_heads=HEADS)
    assert str(lora_pt) in str(e.value) and "alpha=" in str(e.value)

    extra = dict(peft_state_dict(lora))
    extra["base_model.model.blocks.5.self_attn.q.lora_A.weight"] = torch.zeros(RANK, 64)
    extra["base_model.model.blocks.5.self_attn.q.lora_B.weight"] = torch.zeros(64, RANK)
    with pytest.raises(CheckpointError, match=r"LoRA targets not in the base model .*blocks\.5\.self_attn\.q"):
        merge_lora(base_pt, _lora_pt(tmp_path, extra), out, alpha=ALPHA, num_heads=HEADS)

    bad_rank = dict(peft_state_dict(lora))
    bad_rank["base_model.model.blocks.0.ffn.0.lora_B.weight"] = torch.zeros(TINY.ffn_dim, RANK - 1)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0: rank mismatch: A is \(4, 64\) \(rank 4\), B is \(128, 3\)"):
        merge_lora(base_pt, _lora_pt(tmp_path, bad_rank), out, alpha=ALPHA, num_heads=HEADS)

    with pytest.raises(CheckpointError, match="rank 4, expected rank=256"):
        merge_lora(base_pt, lora_pt, out, alpha=ALPHA, rank=256, num_heads=HEADS)

    wrong_shape = dict(peft_state_dict(lora))
    wrong_shape["base_model.model.blocks.1.ffn.2.lora_A.weight"] = torch.zeros(RANK, 7)
    with pytest.raises(CheckpointError, match=r"B @ A is \(64, 7\) but the base weight blocks\.1\.ffn\.2\.weight is \(64, 128\)"):
        merge_lora(base_pt, _lora_pt(tmp_path, wrong_shape), out, alpha=ALPHA, num_heads=HEADS)

    unpaired = dict(peft_state_dict(lora))
    del unpaired["base_model.model.blocks.0.self_attn.k.lora_B.weight"]
    with pytest.raises(CheckpointError, match=r"without both A and B 1: .*blocks\.0\.self_attn\.k"):
        merge_lora(base_pt, _lora_pt(tmp_path, unpaired), out, alpha=ALPHA, num_heads=HEADS)

    stray = dict(peft_state_dict(lora))
    stray["base_model.model.blocks.0.self_attn.q.bias"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"not LoRA A/B matrices 1: base_model\.model\.blocks\.0\.self_attn\.q\.bias"):
        merge_lora(base_pt, _lora_pt(tmp_path, stray), out, alpha=ALPHA, num_heads=HEADS)

    with pytest.raises(CheckpointError, match="LoRA file not found"):
        merge_lora(base_pt, tmp_path / "missing.pt", out, alpha=ALPHA, num_heads=HEADS)
    assert not out.exists()  # nothing is written when a merge fails
