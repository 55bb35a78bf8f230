"""Checkpoint reading, naming conventions, config inference and validation (arvc.checkpoints)."""
from __future__ import annotations

import ast
import json
import os
import re
import struct
from pathlib import Path

import pytest
import torch

from arvc.checkpoints.dit_names import to_diffusers_names, to_original_names
from arvc.checkpoints.infer import infer_wan_config
from arvc.checkpoints.load import describe_checkpoint, load_dit
from arvc.checkpoints.state_dicts import save_dit
from arvc.checkpoints.safetensors_io import (CheckpointError, read_safetensors, read_safetensors_header,
                                             write_safetensors_atomic)
from arvc.model.config import WAN_PRESETS, WanConfig
from arvc.model.dit import WanDiT, init_random_weights_

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/wan2.1-t2v-state-dict.txt"
TINY = WAN_PRESETS["test-tiny"]
SECTIONS = {"1.3b": "t2v-1.3B", "14b": "t2v-14B", "i2v": "i2v-14B"}


# -- helpers ---------------------------------------------------------------------------------------

def parse_reference() -> dict[str, dict]:
    """{section: {"tensors": n, "params": n, "entries": {name: shape}}} (block 0 listed only)."""
    if not REFERENCE.exists():
        pytest.skip(f"reference listing {REFERENCE} not present in this checkout")
    out: dict[str, dict] = {}
    cur = None
    for line in REFERENCE.read_text().splitlines():
        if m := re.match(r"===== (\S+): (\d+) tensors, (\d+) params", line):
            cur = out[m.group(1)] = {"tensors": int(m.group(2)), "params": int(m.group(3)), "entries": {}}
        elif cur is not None and (m := re.match(r"\s+([\w.]+)\s+(\([\d, ]*\))\s*$", line)):
            cur["entries"][m.group(1)] = tuple(ast.literal_eval(m.group(2)))
    return out


def expand_blocks(entries: dict[str, tuple], layers: int) -> dict[str, tuple]:
    """The listing shows block 0; every block has the same names and shapes."""
    out = {}
    for name, shape in entries.items():
        if name.startswith("blocks.0."):
            for i in range(layers):
                out[f"blocks.{i}." + name[len("blocks.0."):]] = shape
        else:
            out[name] = shape
    return out


def meta_sd(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def meta_wan(cfg: WanConfig) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(WanDiT(cfg).state_dict())


def tiny_state_dict(seed: int = 0, cfg: WanConfig = TINY) -> dict[str, torch.Tensor]:
    model = init_random_weights_(WanDiT(cfg), seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_metadata(cfg: WanConfig = TINY) -> dict[str, str]:
    return {"arvc.config": json.dumps(cfg.to_dict()), "arvc.num_heads": str(cfg.num_heads)}


def run_full(cfg: WanConfig, sd: dict[str, torch.Tensor], seed: int = 1) -> torch.Tensor:
    model = WanDiT(cfg)
    model.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g)
    t = torch.tensor([[900.0, 625.0]])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    with torch.no_grad():
        return model.forward_full(x, t, ctx)


@pytest.fixture
def tiny_file(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = tiny_state_dict()
    path = tmp_path / "tiny.safetensors"
    save_dit(path, sd, TINY)
    return path, sd


# -- the model's names and shapes are Wan's ----------------------------------------------------------

@pytest.mark.parametrize("size", ["1.3b", "14b"])
def test_meta_model_matches_reference_listing(size):
    ref = parse_reference()[SECTIONS[size]]
    cfg = WAN_PRESETS[f"wan2.1-t2v-{size}"]
    expected = expand_blocks(ref["entries"], cfg.num_layers)
    assert len(expected) == ref["tensors"]
    got = {k: tuple(v.shape) for k, v in meta_wan(cfg).items()}
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected)))[:10]
    assert got == expected
    params = sum(torch.Size(s).numel() for s in got.values())
    assert params == ref["params"] == cfg.param_count()


@pytest.mark.parametrize("size", ["1.3b", "14b"])
def test_infer_recovers_presets_from_shapes(size):
    cfg = WAN_PRESETS[f"wan2.1-t2v-{size}"]
    sd = meta_wan(cfg)
    assert infer_wan_config(sd) == cfg
    # the same shapes under diffusers names and a ComfyUI prefix
    diff = {"model.diffusion_model." + k: v for k, v in to_diffusers_names(sd).items()}
    named, info = to_original_names(diff)
    assert (info.convention, info.prefix) == ("diffusers", "model.diffusion_model.")
    assert infer_wan_config(named) == cfg


def test_infer_refuses_i2v():
    ref = parse_reference()[SECTIONS["i2v"]]
    sd = meta_sd(expand_blocks(ref["entries"], 40))
    assert len(sd) == ref["tensors"]
    with pytest.raises(CheckpointError, match=r"image-to-video Wan2\.1 \(I2V\) is not supported; "
                                              "arvc compiles text-to-video causal generators"):
        infer_wan_config(sd)
    # also when it arrives in diffusers naming
    named, info = to_original_names(to_diffusers_names(sd))
    assert info.convention == "diffusers"
    with pytest.raises(CheckpointError, match="I2V"):
        infer_wan_config(named)


def test_head_count_rule():
    sd = meta_wan(TINY)  # dim 64: not Wan's head_dim-128 family
    with pytest.raises(CheckpointError, match=r"arvc\.num_heads") as e:
        infer_wan_config(sd)
    assert "dim 64" in str(e.value)
    assert infer_wan_config(sd, {"arvc.num_heads": "2"}).num_heads == 2
    assert infer_wan_config(sd, num_heads=4).num_heads == 4
    assert infer_wan_config(sd, tiny_metadata()) == TINY
    bad = tiny_metadata(WanConfig(**{**TINY.to_dict(), "patch_size": (1, 2, 2), "ffn_dim": 256}))
    with pytest.raises(CheckpointError, match="ffn_dim=256 but the tensor shapes say 128"):
        infer_wan_config(sd, bad)


# -- naming conventions ----------------------------------------------------------------------------

def test_diffusers_names_follow_diffusers_layout():
    sd = meta_wan(TINY)
    diff = to_diffusers_names(sd)
    # spot checks against diffusers' convert_wan_to_diffusers.py / transformer_wan.py
    assert diff["blocks.1.norm2.weight"].shape == sd["blocks.1.norm3.weight"].shape
    assert "blocks.1.norm3.weight" not in diff  # diffusers' norm3 (before the FFN) has no affine
    assert diff["blocks.0.scale_shift_table"].shape == (1, 6, TINY.dim)
    assert diff["scale_shift_table"].shape == (1, 2, TINY.dim)
    for k in ("blocks.0.attn1.to_out.0.weight", "blocks.0.attn2.norm_k.weight", "blocks.0.ffn.net.0.proj.bias",
              "blocks.0.ffn.net.2.weight", "condition_embedder.time_proj.weight", "proj_out.bias",
              "condition_embedder.text_embedder.linear_2.weight", "condition_embedder.time_embedder.linear_1.bias"):
        assert k in diff, k
    back, info = to_original_names(diff)
    assert info.convention == "diffusers" and back.keys() == sd.keys()
    assert all(back[k] is sd[k] for k in sd)


def test_naming_variants_give_identical_outputs(tmp_path):
    sd = tiny_state_dict()
    variants = {
        "wan.safetensors": (sd, "wan", ""),
        "diffusers.safetensors": (to_diffusers_names(sd), "diffusers", ""),
        "self_forcing.safetensors": ({"model." + k: v for k, v in sd.items()}, "wan", "model."),
        "comfy.safetensors": ({"model.diffusion_model." + k: v for k, v in to_diffusers_names(sd).items()},
                              "diffusers", "model.diffusion_model."),
        "compiled.safetensors": ({"_orig_mod." + k: v for k, v in sd.items()}, "wan", ""),
    }
    reference = run_full(TINY, sd)
    assert reference.abs().max() > 0
    for name, (tensors, convention, prefix) in variants.items():
        write_safetensors_atomic(tmp_path / name, tensors, tiny_metadata())
        ck = load_dit(tmp_path / name)
        assert (ck.convention, ck.prefix) == (convention, prefix), name
        assert ck.config == TINY
        assert ck.param_count == TINY.param_count()
        assert ck.dtypes == {"float32": TINY.param_count()}
        assert torch.equal(run_full(ck.config, ck.state_dict), reference), name


def test_modulation_without_leading_one_is_reshaped():
    sd = tiny_state_dict()
    flat = {k: (v[0] if k.endswith("modulation") else v) for k, v in sd.items()}
    named, _ = to_original_names(flat)
    assert named["blocks.0.modulation"].shape == (1, 6, TINY.dim)
    assert named["head.modulation"].shape == (1, 2, TINY.dim)


# -- save / describe ---------------------------------------------------------------------------------

def test_save_dit_records_config(tiny_file):
    path, sd = tiny_file
    tensors, metadata = read_safetensors(path)
    assert set(tensors) == set(sd)
    assert WanConfig.from_dict(json.loads(metadata["arvc.config"])) == TINY
    assert metadata["arvc.num_heads"] == "2"
    ck = load_dit(path)
    assert all(torch.equal(ck.state_dict[k], sd[k]) for k in sd)


def test_describe_checkpoint(tmp_path):
    sd = tiny_state_dict()
    path = tmp_path / "d.safetensors"
    write_safetensors_atomic(path, {"model." + k: v.to(torch.bfloat16) for k, v in to_diffusers_names(sd).items()},
                             tiny_metadata())
    d = describe_checkpoint(path)
    assert d["architecture"] == "wan2.1-dit"
    assert d["preset"] == "test-tiny"
    assert WanConfig.from_dict(d["config"]) == TINY
    assert d["parameters"] == TINY.param_count()
    assert d["dtypes"] == {"bfloat16": TINY.param_count()}
    assert (d["naming"], d["prefix"]) == ("diffusers", "model.")
    assert d["problems"] == []


def test_write_is_atomic(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors_atomic(path, {"a": torch.ones(3)}, {"k": "v"})
    with pytest.raises(TypeError):
        write_safetensors_atomic(path, {"a": torch.zeros(3), "b": "not a tensor"})  # type: ignore[dict-item]
    tensors, metadata = read_safetensors(path)
    assert torch.equal(tensors["a"], torch.ones(3)) and metadata == {"k": "v"}
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]  # no temp file left behind
    # tensors sharing storage are written as separate copies
    base = torch.arange(6.0)
    write_safetensors_atomic(path, {"x": base, "y": base[:3]})
    assert torch.equal(read_safetensors(path)[0]["y"], torch.arange(3.0))


# -- every bad input gets a clear error -----------------------------------------------------------

def _write(tmp_path, sd, name="bad.safetensors"):
    path = tmp_path / name
    write_safetensors_atomic(path, sd, tiny_metadata())
    return path


def test_missing_key_is_listed(tmp_path):
    sd = tiny_state_dict()
    del sd["blocks.1.cross_attn.norm_k.weight"]
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError) as e:
        load_dit(path)
    msg = str(e.value)
    assert str(path) in msg and "missing tensors 1" in msg and "blocks.1.cross_attn.norm_k.weight" in msg


def test_unexpected_key_is_listed(tmp_path):
    sd = tiny_state_dict()
    sd["blocks.0.self_attn.extra.weight"] = torch.zeros(2)
    sd["lora_magnitude"] = torch.zeros(2)
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError) as e:
        load_dit(path)
    msg = str(e.value)
    assert str(path) in msg and "unexpected tensors 2" in msg
    assert "blocks.0.self_attn.extra.weight" in msg and "lora_magnitude" in msg


def test_many_missing_keys_are_counted(tmp_path):
    sd = {k: v for k, v in tiny_state_dict().items() if not k.startswith("blocks.1.")}
    sd["blocks.1.ffn.2.bias"] = torch.zeros(TINY.dim)  # keep block 1 in the layer count
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"missing tensors \d+: .* and \d+ more"):
        load_dit(path)


def test_shape_mismatch_shows_both_shapes(tmp_path):
    sd = tiny_state_dict()
    sd["blocks.1.ffn.0.weight"] = torch.zeros(100, TINY.dim)
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError) as e:
        load_dit(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "blocks.1.ffn.0.weight: expected (128, 64), found (100, 64)" in msg


def test_truncated_file(tiny_file, tmp_path):
    path, _ = tiny_file
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_dit(cut)
    assert str(cut) in str(e.value) and "fetch the file again" in str(e.value)
    cut.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(CheckpointError, match="truncated"):
        load_dit(cut)


def test_not_a_safetensors_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a safetensors file") as e:
        load_dit(junk)
    assert str(junk) in str(e.value)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_dit(tiny)


def test_invalid_header_json(tmp_path):
    bad = tmp_path / "hdr.safetensors"
    header = b'{"a": {"dtype": "F32", "shape": [1], '  # cut JSON
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"invalid safetensors header \(\d+ bytes\): not valid JSON") as e:
        load_dit(bad)
    assert str(bad) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(tmp_path / "nope.safetensors")


def test_pt_given_to_load_points_to_convert(tmp_path):
    pt = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in tiny_state_dict().items()}}, pt)
    with pytest.raises(CheckpointError) as e:
        load_dit(pt)
    msg = str(e.value)
    assert str(pt) in msg and "PyTorch checkpoint" in msg and "arvc convert" in msg
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="pickle.*not a Wan2.1 DiT, the Wan VAE or a LoRA.*no arvc command converts it"):
        load_dit(legacy)  # no suggestion that would fail on this file


def test_unknown_architecture(tmp_path):
    path = tmp_path / "other.safetensors"
    write_safetensors_atomic(path, {"encoder.layers.0.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(8, 4)})
    with pytest.raises(CheckpointError) as e:
        load_dit(path)
    msg = str(e.value)
    assert str(path) in msg and "not a Wan2.1 text-to-video DiT" in msg
    assert "lm_head.weight" in msg and "patch_embedding.weight" in msg
    with pytest.raises(CheckpointError, match="unknown architecture"):
        describe_checkpoint(path)


def test_i2v_file_is_refused(tmp_path):
    sd = tiny_state_dict()
    d = TINY.dim
    sd.update({"blocks.0.cross_attn.k_img.weight": torch.zeros(d, d), "blocks.0.cross_attn.v_img.weight": torch.zeros(d, d),
               "img_emb.proj.1.weight": torch.zeros(8, 8)})
    path = _write(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"image-to-video Wan2\.1 \(I2V\) is not supported") as e:
        load_dit(path)
    assert str(path) in str(e.value)


def test_two_models_in_one_file(tmp_path):
    sd = tiny_state_dict()
    both = {**{"generator." + k: v for k, v in sd.items()}, **{"critic." + k: v for k, v in sd.items()}}
    path = _write(tmp_path, both)
    with pytest.raises(CheckpointError, match="holds 2 models"):
        load_dit(path)


def test_vae_file_given_as_dit(tmp_path):
    path = tmp_path / "vae.safetensors"
    write_safetensors_atomic(path, {"decoder.conv1.weight": torch.zeros(4, 4, 3, 3, 3), "encoder.conv1.weight": torch.zeros(1),
                                    "conv2.weight": torch.zeros(4, 4, 1, 1, 1)})
    with pytest.raises(CheckpointError, match="looks like the Wan VAE"):
        load_dit(path)


# -- VAE --------------------------------------------------------------------------------------------

def test_load_vae_drops_encoder_and_validates(tmp_path):
    pytest.importorskip("arvc.checkpoints.vae_names", reason="vae_names.py not written yet")
    from arvc.checkpoints.load import load_vae
    from arvc.model.config import VAE_PRESETS
    from arvc.model.vae import WanVAEDecoder

    cfg = VAE_PRESETS["test-tiny-vae"]
    torch.manual_seed(0)
    sd = {k: torch.randn(v.shape) for k, v in WanVAEDecoder(cfg).state_dict().items()}
    full = {**sd, "encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3), "conv1.weight": torch.zeros(8, 8, 1, 1, 1)}
    path = tmp_path / "vae.safetensors"
    write_safetensors_atomic(path, full)
    # z_dim 4 is not Wan's 16, so the latent statistics must come from the caller ...
    with pytest.raises(CheckpointError, match="latent_mean"):
        load_vae(path)
    vae = load_vae(path, latent_mean=cfg.latent_mean, latent_std=cfg.latent_std)
    assert vae.config == cfg and vae.convention == "wan"
    assert vae.state_dict.keys() == sd.keys()
    assert vae.dropped == ["conv1.weight", "encoder.conv1.weight"]
    assert all(torch.equal(vae.state_dict[k], sd[k]) for k in sd)
    # ... or from the file's metadata
    write_safetensors_atomic(path, full, {"arvc.config": json.dumps(cfg.to_dict())})
    assert load_vae(path).config == cfg
    d = describe_checkpoint(path)
    assert d["architecture"] == "wan2.1-vae" and d["problems"] == []

    broken = dict(full)
    victim = sorted(sd)[3]
    del broken[victim]
    write_safetensors_atomic(path, broken, {"arvc.config": json.dumps(cfg.to_dict())})
    with pytest.raises(CheckpointError) as e:
        load_vae(path)
    assert str(path) in str(e.value) and victim in str(e.value)


def _with_header(path: Path, header: bytes, data: bytes = b"\0" * 16) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize("header, message", [
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested 100001 deep"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [null, null]}}', r"'a' has data_offsets \[None, None\]"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}', "has data_offsets"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}', "begin <= end"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', r"spans 4 bytes, but F32 \[2\] takes 8"),
    (b'{"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}', "has dtype 'F33'"),
    (b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "not a list of non-negative integers"),
    (b'{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 1]}}', "not a list of non-negative integers"),
    (b'{"a": {"dtype": "F32", "shape": [1]}}', "lacks dtype/shape/data_offsets"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}}', "'a' and 'b' overlap"),
    (b'{"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}', "truncated safetensors file"),
    (b'{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}', "not valid JSON"),
])
def test_a_malformed_header_is_a_checkpoint_error_naming_the_problem(tmp_path, header, message):
    """Headers are untrusted input: each of these was a traceback (RecursionError, TypeError) or went unnoticed."""
    path = _with_header(tmp_path / "bad.safetensors", header)
    with pytest.raises(CheckpointError, match=message) as e:
        describe_checkpoint(path)
    assert str(path) in str(e.value) and ("re-download" in str(e.value) or "fetch the file again" in str(e.value))


def test_a_sound_header_with_a_gap_between_tensors_reads(tmp_path):
    header = (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
              b'"b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}')
    entries, _ = read_safetensors_header(_with_header(tmp_path / "ok.safetensors", header))
    assert entries["b"] == {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}
