"""Wan2.1 VAE decoder: structure vs the reference checkpoint listing, streaming == one-shot, the
first-frame rule, diffusers names, and config inference from shapes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arvc.checkpoints.vae_names import infer_vae_config, to_original_vae_names
from arvc.model.config import VAE_PRESETS, WanVAEConfig
from arvc.model.vae import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMS_norm, WanVAEDecoder, init_random_weights_

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/wan2.1-vae-state-dict.txt"
TINY = VAE_PRESETS["test-tiny-vae"]
H, W = 3, 4  # tiny latent frame


@pytest.fixture(scope="module")
def reference_text() -> str:
    if not REFERENCE.exists():
        pytest.skip(f"reference listing {REFERENCE} not found (expected in the repo's sibling shared/ directory)")
    return REFERENCE.read_text()


def _meta_model(cfg: WanVAEConfig) -> WanVAEDecoder:
    with torch.device("meta"):
        return WanVAEDecoder(cfg)


def _init(model: WanVAEDecoder, seed: int = 0) -> WanVAEDecoder:
    """Shared random init plus a small head so the output is rarely clamped (clamping would hide differences)."""
    init_random_weights_(model, seed)
    with torch.no_grad():
        model.decoder.head[2].weight.mul_(0.1)
    return model


@pytest.fixture(scope="module")
def tiny() -> WanVAEDecoder:
    return _init(WanVAEDecoder(TINY))


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, TINY.z_dim, 5, H, W, generator=torch.Generator().manual_seed(1))


def _stream(model: WanVAEDecoder, z: torch.Tensor) -> list[torch.Tensor]:
    state = model.init_state(z.shape[0], z.shape[3], z.shape[4])
    return [model.decode_frame(z[:, :, i : i + 1], state) for i in range(z.shape[2])]


# ---- (1), (2) structure of the real Wan2.1 decoder --------------------------------------------------


def test_wan_decoder_matches_reference_names_shapes_and_printout(reference_text):
    ref = {
        m[1]: tuple(int(v) for v in m[2].split(",") if v.strip())
        for m in re.finditer(r"^\s+(\S+)\s+\(([\d, ]*)\)\s*$", reference_text, re.M)
    }
    ref_decoder = {k: s for k, s in ref.items() if k.startswith(("decoder.", "conv2."))}
    assert len(ref_decoder) == 108
    model = _meta_model(VAE_PRESETS["wan2.1-vae"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref_decoder

    header = dict(re.findall(r"(decoder|conv2) (\d+)", reference_text.splitlines()[0]))
    n_decoder = sum(v.numel() for k, v in model.state_dict().items() if k.startswith("decoder."))
    n_conv2 = sum(v.numel() for k, v in model.state_dict().items() if k.startswith("conv2."))
    assert (n_decoder, n_conv2) == (int(header["decoder"]), int(header["conv2"])) == (73295331, 272)
    n_conv3d = int(re.search(r"count_conv3d decoder (\d+)", reference_text)[1])
    assert sum(isinstance(m, CausalConv3d) for m in model.decoder.modules()) == n_conv3d == 33
    # The module printout (kernel sizes, paddings, Dropout, Identity shortcuts, upsample mode) is Wan's.
    assert repr(model.decoder) == reference_text[reference_text.index("Decoder3d(") :].rstrip()


def test_wan_has_32_state_tensors():
    model = _meta_model(VAE_PRESETS["wan2.1-vae"])
    shapes = model.state_shapes(1, 60, 104)
    assert model.num_state_tensors == len(shapes) == 32
    assert shapes[0] == (1, 16, 2, 60, 104)  # decoder.conv1 sees the latent
    assert shapes[-1] == (1, 96, 2, 480, 832)  # the head conv sees full resolution
    assert all(s[2] == 2 for s in shapes)
    # DESIGN.md: VAE streaming state ~1.8 GiB fp16 at 480x832.
    assert 1.7 < model.state_nbytes(1, 60, 104, torch.float16) / 2**30 < 1.85
    assert model.state_nbytes(2, 60, 104, torch.float32) == 4 * model.state_nbytes(1, 60, 104, torch.float16)


# ---- (3), (4), (8) streaming ------------------------------------------------------------------------


def test_streaming_equals_one_shot(tiny, latents):
    full = tiny.decode(latents)
    assert (full.abs() >= 1).float().mean() < 0.05 and full.std() > 0.05  # not degenerate, not saturated
    streamed = torch.cat(_stream(tiny, latents), dim=2)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max() <= 1e-5


def test_frame_counts_and_sizes(tiny, latents):
    outs = _stream(tiny, latents)
    assert [o.shape[2] for o in outs] == [1, 4, 4, 4, 4]
    assert all(o.shape[-2:] == (8 * H, 8 * W) and o.shape[:2] == (1, 3) for o in outs)
    for t in (1, 2, 5):
        assert tiny.decode(latents[:, :, :t]).shape == (1, 3, 1 + 4 * (t - 1), 8 * H, 8 * W)


def test_state_updated_in_place(tiny, latents):
    state = tiny.init_state(1, H, W)
    assert tiny.num_state_tensors == 32 and state.first
    ptrs = [t.data_ptr() for t in state.tensors]
    tiny.decode_frame(latents[:, :, :1], state)
    before = [t.clone() for t in state.tensors]
    tiny.decode_frame(latents[:, :, 1:2], state)
    assert [t.data_ptr() for t in state.tensors] == ptrs and not state.first
    assert all(not torch.equal(a, b) for a, b in zip(before, state.tensors))  # every conv advanced
    state.reset()
    assert state.first and all(not t.any() for t in state.tensors)
    with pytest.raises(ValueError, match="init_state"):
        tiny.decode_frame(torch.zeros(1, TINY.z_dim, 1, H + 1, W), state)


def test_stream_step_is_pure(tiny, latents):
    states = [t for t in tiny.init_state(1, H, W).tensors]
    frame, new = tiny.stream_step(latents[:, :, :1], states, first=True)
    assert all(not t.any() for t in states) and len(new) == len(states)
    assert [tuple(t.shape) for t in new] == [tuple(t.shape) for t in states]


def test_latents_are_denormalized_per_channel(tiny, latents):
    std = torch.tensor(TINY.latent_std).reshape(1, -1, 1, 1, 1)
    mean = torch.tensor(TINY.latent_mean).reshape(1, -1, 1, 1, 1)
    with torch.no_grad():
        expected = tiny.decoder(tiny.conv2(latents * std + mean)).clamp(-1, 1)
    assert torch.equal(tiny.decode(latents), expected)
    assert not any("latent" in k for k in tiny.state_dict())  # not part of Wan checkpoints


def test_default_latent_stats_are_wans(reference_text):
    stats = json.loads((REFERENCE.parent / "wan2.1-vae-latent-stats.json").read_text())
    assert WanVAEConfig().latent_mean == tuple(stats["mean"]) and WanVAEConfig().latent_std == tuple(stats["std"])


# ---- (5) the first-frame rule, checked independently ---------------------------------------------------


def test_resample_3d_first_frame_rule_by_hand():
    torch.manual_seed(0)
    up = Resample(6, "upsample3d").eval()
    x = torch.randn(1, 6, 3, 2, 2)
    out = up(x)  # x starts the video
    assert out.shape == (1, 3, 5, 4, 4)

    def spatial(f):  # [B, C, H, W] -> nearest x2 then the 3x3 conv
        conv = up.resample[1]
        return F.conv2d(f.repeat_interleave(2, -1).repeat_interleave(2, -2), conv.weight, conv.bias, padding=1)

    # Frame 0 bypasses time_conv; frames 1.. come from time_conv over x[1:] with a zero past.
    past = torch.cat([torch.zeros(1, 6, 2, 2, 2), x[:, :, 1:]], dim=2)
    tc = F.conv3d(past, up.time_conv.weight, up.time_conv.bias)  # [1, 12, 2, 2, 2]
    expected = [spatial(x[:, :, 0])]
    for t in range(2):
        expected += [spatial(tc[:, :6, t]), spatial(tc[:, 6:, t])]  # first channel half = earlier frame
    torch.testing.assert_close(out, torch.stack(expected, dim=2), rtol=1e-5, atol=1e-6)
    # time_conv never sees the first frame.
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    assert torch.equal(up(x2)[:, :, 1:], out[:, :, 1:])


def test_decoder_first_frame_rule_and_causality(tiny, latents):
    full = tiny.decode(latents)
    # The first latent alone gives exactly the first video frame; 2 latents give the first 5 frames.
    torch.testing.assert_close(tiny.decode(latents[:, :, :1]), full[:, :, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(tiny.decode(latents[:, :, :2]), full[:, :, :5], rtol=0, atol=1e-6)
    # Changing latent 2 leaves the frames of latents 0 and 1 alone and changes its own.
    z = latents.clone()
    z[:, :, 2] = torch.randn_like(z[:, :, 2])
    changed = tiny.decode(z)
    torch.testing.assert_close(changed[:, :, :5], full[:, :, :5], rtol=0, atol=1e-6)
    assert (changed[:, :, 5:9] - full[:, :, 5:9]).abs().max() > 1e-3
    # After the first frame the time_conv states are still zeros: it was skipped, not fed frame 0.
    state = tiny.init_state(1, H, W)
    tiny.decode_frame(latents[:, :, :1], state)
    time_convs = [m.time_conv.state_index for m in tiny.modules() if isinstance(m, Resample) and m.mode == "upsample3d"]
    assert len(time_convs) == 2
    assert all(not state.tensors[i].any() for i in time_convs)
    assert sum(bool(t.any()) for t in state.tensors) == 30  # every other conv stored frame 0's input


def test_building_blocks_by_hand():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 4, 3, 3)
    ref = F.conv3d(F.pad(x, (1, 1, 1, 1, 2, 0)), conv.weight, conv.bias)
    torch.testing.assert_close(conv(x), ref)
    norm = RMS_norm(4, images=False)
    with torch.no_grad():
        norm.gamma.uniform_(0.5, 1.5)
    y = torch.randn(2, 4, 3, 2, 2)
    torch.testing.assert_close(norm(y), y / y.pow(2).mean(1, keepdim=True).sqrt() * norm.gamma)
    attn = AttentionBlock(4).eval()
    f = torch.randn(1, 4, 2, 2, 3)
    frame = f[:, :, 1]
    qkv = attn.to_qkv(attn.norm(frame)).flatten(2)[0]  # [12, 6]
    q, k, v = qkv[:4].T, qkv[4:8].T, qkv[8:].T
    o = torch.softmax(q @ k.T / 2.0, -1) @ v  # [6, 4], scale 1/sqrt(4)
    expected = frame + attn.proj(o.T.reshape(1, 4, 2, 3))
    torch.testing.assert_close(attn(f)[:, :, 1], expected, rtol=1e-5, atol=1e-6)
    assert isinstance(ResidualBlock(2, 4).shortcut, CausalConv3d)


# ---- (6), (7) checkpoint names and config inference ---------------------------------------------------


def _to_diffusers(model: WanVAEDecoder, sd: dict) -> dict:
    """Wan -> diffusers names, written from diffusers' AutoencoderKLWan layout (not from vae_names)."""
    part = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2", "shortcut": "conv_shortcut"}
    where, block, j = {}, 0, 0
    for k, m in enumerate(model.decoder.upsamples):
        if isinstance(m, ResidualBlock):
            where[k] = f"decoder.up_blocks.{block}.resnets.{j}"
            j += 1
        else:
            where[k] = f"decoder.up_blocks.{block}.upsamplers.0"
            block, j = block + 1, 0
    out = {}
    for key, v in sd.items():
        if key.startswith("conv2."):
            new = "post_quant_conv." + key[6:]
        elif key.startswith("decoder.conv1."):
            new = "decoder.conv_in." + key[14:]
        elif key.startswith("decoder.head.0."):
            new = "decoder.norm_out." + key[15:]
        elif key.startswith("decoder.head.2."):
            new = "decoder.conv_out." + key[15:]
        elif key.startswith("decoder.middle.1."):
            new = "decoder.mid_block.attentions.0." + key[17:]
        else:
            m = re.match(r"decoder\.(middle|upsamples)\.(\d+)\.(residual\.\d|shortcut|resample\.1|time_conv)\.(\w+)$", key)
            assert m, key
            if m[1] == "middle":
                prefix = f"decoder.mid_block.resnets.{int(m[2]) // 2}"
            else:
                prefix = where[int(m[2])]
            new = f"{prefix}.{part.get(m[3], m[3])}.{m[4]}"
        out[new] = v
    return out


def test_diffusers_names_round_trip_bit_identical(tiny, latents):
    sd = tiny.state_dict()
    diff = _to_diffusers(tiny, sd)
    diff["encoder.conv_in.weight"] = torch.zeros(1)  # encoder side is dropped
    diff["quant_conv.weight"] = torch.zeros(1)
    back, convention = to_original_vae_names(diff)
    assert convention == "diffusers"
    assert set(back) == set(sd)
    assert all(back[k] is sd[k] for k in sd)
    other = WanVAEDecoder(TINY)
    other.load_state_dict(back, strict=True)
    assert torch.equal(other.eval().decode(latents), tiny.decode(latents))
    # Original names (plus encoder keys) pass through.
    same, convention = to_original_vae_names({**sd, "encoder.conv1.weight": torch.zeros(1), "conv1.bias": torch.zeros(1)})
    assert convention == "wan" and set(same) == set(sd)
    with pytest.raises(ValueError, match="mixed"):
        to_original_vae_names({**sd, "decoder.conv_in.bias": torch.zeros(1)})


def test_diffusers_names_of_the_wan_layout():
    model = _meta_model(VAE_PRESETS["wan2.1-vae"])
    diff = _to_diffusers(model, model.state_dict())
    back, _ = to_original_vae_names(diff)
    # Spot checks against diffusers' scripts/convert_wan_to_diffusers.py.
    for d, w in [
        ("post_quant_conv.weight", "conv2.weight"),
        ("decoder.conv_in.weight", "decoder.conv1.weight"),
        ("decoder.mid_block.resnets.1.norm2.gamma", "decoder.middle.2.residual.3.gamma"),
        ("decoder.mid_block.attentions.0.to_qkv.weight", "decoder.middle.1.to_qkv.weight"),
        ("decoder.up_blocks.0.upsamplers.0.time_conv.weight", "decoder.upsamples.3.time_conv.weight"),
        ("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.upsamples.4.shortcut.weight"),
        ("decoder.up_blocks.1.resnets.2.conv2.bias", "decoder.upsamples.6.residual.6.bias"),
        ("decoder.up_blocks.2.upsamplers.0.resample.1.weight", "decoder.upsamples.11.resample.1.weight"),
        ("decoder.up_blocks.3.resnets.2.conv1.weight", "decoder.upsamples.14.residual.2.weight"),
        ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
        ("decoder.conv_out.bias", "decoder.head.2.bias"),
    ]:
        assert back[w] is diff[d]
    assert set(back) == set(model.state_dict())


def test_infer_vae_config_from_shapes(tiny):
    wan = _meta_model(VAE_PRESETS["wan2.1-vae"]).state_dict()
    assert infer_vae_config(wan) == VAE_PRESETS["wan2.1-vae"]
    assert infer_vae_config(_to_diffusers(_meta_model(WanVAEConfig()), wan)) == WanVAEConfig()
    sd = tiny.state_dict()
    assert infer_vae_config(sd, TINY.latent_mean, TINY.latent_std) == TINY
    with pytest.raises(ValueError, match="latent_mean"):
        infer_vae_config(sd)  # z_dim 4: the statistics are not in the checkpoint
    other = WanVAEConfig(base_dim=4, z_dim=16, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_upsample=(False, True))
    assert infer_vae_config(_meta_model(other).state_dict()) == other


def test_infer_vae_config_errors_name_the_key():
    wan = dict(_meta_model(VAE_PRESETS["wan2.1-vae"]).state_dict())
    bad = dict(wan)
    bad["decoder.upsamples.5.residual.6.weight"] = torch.empty(384, 383, 3, 3, 3, device="meta")
    with pytest.raises(ValueError) as e:
        infer_vae_config(bad)
    msg = str(e.value)
    assert "decoder.upsamples.5.residual.6.weight" in msg and "(384, 384, 3, 3, 3)" in msg and "(384, 383, 3, 3, 3)" in msg

    missing = dict(wan)
    del missing["decoder.middle.1.proj.bias"]
    with pytest.raises(ValueError, match=r"missing key 'decoder\.middle\.1\.proj\.bias' \(expected shape \(384,\)\)"):
        infer_vae_config(missing)
    extra = {**wan, "decoder.extra.weight": torch.empty(2, device="meta")}
    with pytest.raises(ValueError, match="unexpected key 'decoder.extra.weight'"):
        infer_vae_config(extra)
    no_conv1 = {k: v for k, v in wan.items() if not k.startswith("decoder.conv1.")}
    with pytest.raises(ValueError, match="missing key 'decoder.conv1.weight'"):
        infer_vae_config(no_conv1)
    with pytest.raises(ValueError, match="no Wan2.1 VAE decoder keys"):
        infer_vae_config({"blocks.0.weight": torch.zeros(1)})
