"""Self-Forcing .pt conversion and LongLive LoRA merging (arvc.checkpoints.convert)."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from arvc.checkpoints.convert import classify_pickle, convert_self_forcing, convert_vae, merge_lora, safe_torch_load
from arvc.checkpoints.dit_names import to_diffusers_names
from arvc.checkpoints.load import describe_checkpoint, load_dit, load_vae
from arvc.checkpoints.safetensors_io import CheckpointError, read_safetensors, write_safetensors_atomic
from arvc.cli import main as arvc_main
from arvc.model.config import WAN_PRESETS, WanConfig, WanVAEConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.vae import WanVAEDecoder
from arvc.model.vae_encoder import WanVAEEncoder

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


# -- Wan VAE .pth and "what is this pickle?" -------------------------------------------------------

TINY_VAE = WanVAEConfig(base_dim=4)  # Wan's layout and 16-channel latent (its statistics apply), tiny widths


def tiny_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Encoder + decoder in original Wan names, as Wan2.1_VAE.pth stores them."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for model in (WanVAEEncoder(TINY_VAE), WanVAEDecoder(TINY_VAE)):
        sd.update({k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()})
    return sd


def run_cli(command: str) -> int:
    """Run a suggested command exactly as printed (it must start with 'arvc ')."""
    argv = shlex.split(command)
    assert argv[0] == "arvc", command
    return arvc_main(argv[1:])


def backticked_commands(message: str) -> list[str]:
    return re.findall(r"`(arvc [^`]*)`", message)


def wan_to_diffusers_vae(sd: dict[str, torch.Tensor], cfg: WanVAEConfig) -> dict[str, torch.Tensor]:
    """Original Wan VAE names -> diffusers AutoencoderKLWan names, written from diffusers' layout."""
    part = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
            "shortcut": "conv_shortcut"}
    up, k = {}, 0  # decoder.upsamples.K -> up_blocks.I.{resnets.J | upsamplers.0}
    for i in range(len(cfg.dim_mult)):
        for j in range(cfg.num_res_blocks + 1):
            up[k], k = f"up_blocks.{i}.resnets.{j}", k + 1
        if i < len(cfg.dim_mult) - 1:
            up[k], k = f"up_blocks.{i}.upsamplers.0", k + 1
    fixed = {"conv1": "quant_conv", "conv2": "post_quant_conv", "encoder.conv1": "encoder.conv_in",
             "decoder.conv1": "decoder.conv_in", "encoder.head.0": "encoder.norm_out",
             "encoder.head.2": "encoder.conv_out", "decoder.head.0": "decoder.norm_out",
             "decoder.head.2": "decoder.conv_out", "encoder.middle.1": "encoder.mid_block.attentions.0",
             "decoder.middle.1": "decoder.mid_block.attentions.0"}
    out = {}
    for key, v in sd.items():
        module, param = key.rsplit(".", 1)
        head = next((f for f in fixed if module == f or module.startswith(f + ".")), None)
        if head is not None:
            out[fixed[head] + key[len(head):]] = v
            continue
        m = re.match(r"(encoder|decoder)\.(middle|downsamples|upsamples)\.(\d+)\.(.+)$", module)
        assert m, key
        side, seq, n, rest = m[1], m[2], int(m[3]), part.get(m[4], m[4])
        where = {"middle": f"mid_block.resnets.{n // 2}", "downsamples": f"down_blocks.{n}",
                 "upsamples": up[n]}[seq]
        out[f"{side}.{where}.{rest}.{param}"] = v
    return out


def assert_vae_file(path: Path, sd: dict[str, torch.Tensor]) -> None:
    """The written file loads (load_vae, WanVAEEncoder, inspect) and holds exactly the original tensors."""
    vae = load_vae(path)
    assert vae.config == TINY_VAE
    decoder = {k: v for k, v in sd.items() if k.startswith(("decoder.", "conv2."))}
    assert_same(vae.state_dict, decoder)
    WanVAEDecoder(vae.config).load_state_dict(vae.state_dict, strict=True)
    stored, metadata = read_safetensors(path)
    assert_same(stored, sd)  # encoder kept, bit for bit, in Wan names
    encoder = WanVAEEncoder(vae.config)
    encoder.load_state_dict({k: v for k, v in stored.items() if k.startswith(("encoder.", "conv1."))}, strict=True)
    assert metadata["arvc.converted_by"] == "convert_vae" and metadata["arvc.encoder"] == "kept"
    info = describe_checkpoint(path)
    assert info["architecture"] == "wan2.1-vae" and info["problems"] == []


def test_wan_vae_pth_suggested_command_converts_it(tmp_path):
    sd = tiny_vae_state_dict()
    folder = tmp_path / "wan weights"  # a space: the suggested command must quote the paths
    folder.mkdir()
    pth = folder / "Wan2.1_VAE.pth"
    torch.save(sd, pth)
    out = folder / "Wan2.1_VAE.safetensors"

    words, command = classify_pickle(pth)
    assert "Wan2.1 VAE" in words and "encoder and decoder" in words
    assert command == f"arvc convert vae {shlex.quote(str(pth))} -o {shlex.quote(str(out))}"
    assert run_cli(command) == 0
    assert_vae_file(out, sd)

    # The DiT converter names the file for what it is and gives the same command.
    with pytest.raises(CheckpointError, match="This file is the Wan2.1 VAE") as e:
        convert_self_forcing(pth, tmp_path / "dit.safetensors")
    assert backticked_commands(str(e.value)) == [command]
    # Converting the converted file again is pointless, and said so.
    with pytest.raises(CheckpointError, match="already safetensors"):
        convert_vae(out, tmp_path / "again.safetensors")
    assert classify_pickle(out) == ("a safetensors file, not a pickle: arvc reads it directly", None)


def test_diffusers_named_vae_pickle_converts_to_wan_names(tmp_path):
    sd = tiny_vae_state_dict(seed=1)
    pth = tmp_path / "vae.pt"
    torch.save({"state_dict": wan_to_diffusers_vae(sd, TINY_VAE)}, pth)
    words, command = classify_pickle(pth)
    assert "diffusers names" in words and "under 'state_dict'" in words
    info = convert_vae(pth, tmp_path / "vae.safetensors")
    assert info["naming"] == "diffusers" and info["encoder"] == "kept" and info["tensors"] == len(sd)
    assert_vae_file(tmp_path / "vae.safetensors", sd)

    decoder_only = convert_vae(pth, tmp_path / "dec.safetensors", encoder=False)
    assert decoder_only["encoder"] == "dropped" and decoder_only["encoder_tensors"] == 0
    assert not any(k.startswith(("encoder.", "conv1.")) for k in read_safetensors(tmp_path / "dec.safetensors")[0])


def test_convert_vae_refusals(tmp_path, self_forcing_pt):
    pt, _, _ = self_forcing_pt
    out = tmp_path / "vae.safetensors"
    with pytest.raises(CheckpointError, match=r"not a Wan2.1 VAE checkpoint: this is a Self-Forcing / CausVid / "
                                              r"LongLive training checkpoint whose 'generator_ema' entry") as e:
        convert_vae(pt, out)
    assert str(pt) in str(e.value)

    lora = tmp_path / "lora.pt"
    torch.save({"generator_lora": peft_state_dict(make_lora())}, lora)
    with pytest.raises(CheckpointError, match=r"this is a LongLive LoRA checkpoint .*arvc convert lora --base") as e:
        convert_vae(lora, out)
    assert backticked_commands(str(e.value)) == []

    sd = tiny_vae_state_dict()
    bad = dict(sd)
    bad["decoder.head.2.bias"] = torch.zeros(7)
    torch.save(bad, tmp_path / "bad_dec.pth")
    with pytest.raises(CheckpointError, match=r"not a usable Wan2.1 VAE checkpoint: .*decoder\.head\.2\.bias"):
        convert_vae(tmp_path / "bad_dec.pth", out)
    half = {k: v for k, v in sd.items() if not k.startswith("encoder.middle.")}
    torch.save(half, tmp_path / "half_enc.pth")
    with pytest.raises(CheckpointError,
                       match=r"(?s)encoder tensors .* do not match .*missing tensors.*encoder\.middle\.") as e:
        convert_vae(tmp_path / "half_enc.pth", out)
    assert "encoder=False" in str(e.value)
    assert classify_pickle(tmp_path / "half_enc.pth")[1] is None  # the CLI command would fail: none is offered
    assert convert_vae(tmp_path / "half_enc.pth", out, encoder=False)["encoder"] == "dropped"
    out.unlink()

    with pytest.raises(CheckpointError, match="never unpickles"):
        convert_vae_with_object(tmp_path)
    assert not out.exists()


def convert_vae_with_object(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({**tiny_vae_state_dict(), "args": argparse.Namespace(x=1)}, path)
    return convert_vae(path, tmp_path / "vae.safetensors")


# Wan-sized width (dim 1024 -> 8 heads by Wan's head_dim-128 rule), so no --num-heads is needed.
WAN_WIDE = WanConfig(dim=1024, ffn_dim=64, num_heads=8, num_layers=1, text_dim=32, text_len=8, freq_dim=32)


def test_self_forcing_pickle_suggested_command_converts_it(tmp_path):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(WAN_WIDE).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    ema = {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in shapes.items()}
    pt = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in ema.items()}, "critic": {}, "step": 600}, pt)
    words, command = classify_pickle(pt)
    assert words.startswith("a Self-Forcing / CausVid / LongLive training checkpoint whose 'generator_ema' entry "
                            "is a Wan2.1 DiT (dim 1024, 1 layers")
    out = tmp_path / "self_forcing_dmd.safetensors"
    assert command == f"arvc convert self-forcing {pt} -o {out}"
    assert run_cli(command) == 0
    ck = load_dit(out)
    assert ck.config.num_heads == 8
    assert_same(ck.state_dict, ema)

    # A plain DiT state dict pickle takes the same converter.
    plain = tmp_path / "dit.pth"
    torch.save(ema, plain)
    words, command = classify_pickle(plain)
    assert words.startswith("a plain state dict holding a Wan2.1 DiT")
    assert run_cli(command) == 0
    assert_same(load_dit(tmp_path / "dit.safetensors").state_dict, ema)


def test_classify_pickle_without_a_runnable_command(tmp_path, self_forcing_pt, longlive):
    pt, ema, _ = self_forcing_pt  # test-tiny: dim 64, the head count is not readable from the weights
    words, command = classify_pickle(pt)
    assert command is None and "--num-heads <heads>" in words and "`" not in words
    out = shlex.quote(str(pt.with_suffix(".safetensors")))
    # Filling in the one value the weights cannot give makes the described command work.
    assert run_cli(f"arvc convert self-forcing {shlex.quote(str(pt))} -o {out} --num-heads {HEADS}") == 0
    assert_same(load_dit(pt.with_suffix(".safetensors")).state_dict, ema)

    _, lora_pt, _, _ = longlive
    words, command = classify_pickle(lora_pt)
    assert command is None and "`" not in words
    assert words.startswith("a LongLive LoRA checkpoint ('generator_lora') (")
    assert f"arvc convert lora --base <base model> --lora {lora_pt}" in words
    assert "--alpha" in words and "rank 4" in words
    bare = tmp_path / "peft.pt"
    torch.save({**peft_state_dict(make_lora()), "lora_alpha": 8}, bare)
    words, command = classify_pickle(bare)
    assert command is None and words.startswith("a LoRA (") and "--alpha" not in words

    other = tmp_path / "other.pt"
    torch.save({"state": {"w": torch.zeros(1)}, "optimizer": {}}, other)
    words, command = classify_pickle(other)
    assert command is None and "no arvc command converts it" in words and "'optimizer'" in words
    torch.save({"w": torch.zeros(2)}, other)
    assert classify_pickle(other)[1] is None
    torch.save([torch.zeros(1)], other)
    assert classify_pickle(other) == (
        "a pickle holding a list, not a checkpoint dict; no arvc command converts it", None)

    evil = tmp_path / "evil.pt"
    torch.save({"generator_ema": {}, "args": argparse.Namespace(x=1)}, evil)
    words, command = classify_pickle(evil)
    assert command is None and "argparse.Namespace" in words and not words.startswith(str(evil))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    assert classify_pickle(junk)[1] is None
    with pytest.raises(CheckpointError, match="not found"):
        classify_pickle(tmp_path / "missing.pth")


def test_pickle_named_safetensors_gets_a_command_that_does_not_overwrite_it(tmp_path):
    sd = tiny_vae_state_dict()
    wrong = tmp_path / "vae.safetensors"  # a torch pickle under the wrong suffix
    torch.save(sd, wrong)
    words, command = classify_pickle(wrong)
    assert command == f"arvc convert vae {wrong} -o {tmp_path / 'vae.converted.safetensors'}"
    assert run_cli(command) == 0
    assert_vae_file(tmp_path / "vae.converted.safetensors", sd)
    assert_same(safe_torch_load(wrong), sd)  # the input is untouched
