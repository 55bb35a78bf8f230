"""Wan2.1 VAE encoder: size and names vs the reference checkpoint, one-shot == chunked (Wan's order),
the first-frame rule, causality, input checks, and gradients through the one-shot encode."""
from __future__ import annotations

import math

import pytest
import torch

from arvc.model.config import WanVAEConfig
from arvc.model.vae import init_random_weights_
from arvc.model.vae_encoder import Downsample, WanVAEEncoder

# Z_DIM 16 keeps the default (Wan) latent statistics valid; the channels are tiny.
TINY = WanVAEConfig(base_dim=4, z_dim=16)
H = W = 32  # -> 4 x 4 latents


def _init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    return init_random_weights_(model, seed)


@pytest.fixture(scope="module")
def tiny() -> WanVAEEncoder:
    return _init(WanVAEEncoder(TINY))


def _video(t: int, seed: int = 1, b: int = 1, h: int = H, w: int = W) -> torch.Tensor:
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- (1) the real Wan2.1 encoder's size and names ----------------------------------------------------


def test_wan_encoder_param_count_and_names():
    with torch.device("meta"):
        model = WanVAEEncoder(WanVAEConfig())
    sd = model.state_dict()
    assert all(k.startswith(("encoder.", "conv1.")) for k in sd)
    # From the header of shared/reference/wan2.1-vae-state-dict.txt: "encoder 53595872 ... conv1 1056",
    # "count_conv3d ... encoder 26", and 194 tensors of which 108 are the decoder's.
    assert sum(v.numel() for k, v in sd.items() if k.startswith("encoder.")) == 53_595_872
    assert sum(v.numel() for k, v in sd.items() if k.startswith("conv1.")) == 1_056
    assert sum(isinstance(m, torch.nn.Conv3d) for m in model.encoder.modules()) == 26
    assert len(sd) == 194 - 108
    # Wan's layout: 2 res blocks per level, downsamplers at 2 (2d), 5 and 8 (3d).
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert shapes["encoder.downsamples.2.resample.1.weight"] == (96, 96, 3, 3)
    assert "encoder.downsamples.2.time_conv.weight" not in shapes
    assert shapes["encoder.downsamples.5.time_conv.weight"] == (192, 192, 3, 1, 1)
    assert shapes["encoder.downsamples.8.time_conv.weight"] == (384, 384, 3, 1, 1)
    assert shapes["encoder.downsamples.3.shortcut.weight"] == (192, 96, 1, 1, 1)
    assert shapes["encoder.middle.1.to_qkv.weight"] == (1152, 384, 1, 1)
    assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3)
    assert shapes["conv1.weight"] == (32, 32, 1, 1, 1)


# ---- (2) one-shot == chunked --------------------------------------------------------------------------


@torch.no_grad()
def test_one_shot_equals_chunked(tiny):
    x = _video(9, b=2)
    mu, logvar = tiny.encode(x)
    mu_c, logvar_c = tiny.encode(x, chunked=True)
    assert mu.abs().mean() > 0.1 and logvar.abs().mean() > 0.1  # O(1), so the tolerance means something
    torch.testing.assert_close(mu_c, mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(logvar_c, logvar, rtol=0, atol=1e-5)


@torch.no_grad()
def test_downsample3d_first_frame_rule():
    # Output 0 is frame 0 alone; output j >= 1 is the time conv over frames (2j-2, 2j-1, 2j).
    down = _init(Downsample(4, "downsample3d"))
    x = torch.randn(1, 4, 9, 8, 8, generator=torch.Generator().manual_seed(2))
    y = down(x)
    assert y.shape == (1, 4, 5, 4, 4)
    s = torch.stack([down.resample(x[:, :, i]) for i in range(9)], dim=2)  # spatial only
    torch.testing.assert_close(y[:, :, 0], s[:, :, 0])
    for j in range(1, 5):
        torch.testing.assert_close(y[:, :, j : j + 1], down.time_conv(s[:, :, 2 * j - 2 : 2 * j + 1]))


# ---- (3) shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 5, 9])
@pytest.mark.parametrize("chunked", [False, True])
@torch.no_grad()
def test_shapes(tiny, t, chunked):
    mu, logvar = tiny.encode(_video(t, h=32, w=48), chunked=chunked)
    expected = (1, 16, 1 + (t - 1) // 4, 4, 6)
    assert mu.shape == expected and logvar.shape == expected


# ---- (4) causality ------------------------------------------------------------------------------------


@torch.no_grad()
def test_latent_j_depends_only_on_frames_up_to_4j(tiny):
    x = _video(9)
    ref = torch.cat(tiny.encode(x), dim=1)  # [1, 2z, 3, 4, 4]
    for f in range(9):
        y = x.clone()
        y[:, :, f] = -y[:, :, f]
        diff = (torch.cat(tiny.encode(y), dim=1) - ref).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
        first_affected = math.ceil(f / 4)
        assert (diff[:first_affected] <= 1e-6).all(), (f, diff)
        assert (diff[first_affected:] > 1e-3).all(), (f, diff)


# ---- (5) input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 8, 32, 32), r"1 \+ 4k"),
        ((1, 3, 2, 32, 32), r"1 \+ 4k"),
        ((1, 3, 5, 36, 32), "divisible by 8"),
        ((1, 3, 5, 32, 20), "divisible by 8"),
        ((1, 4, 5, 32, 32), r"\[B, 3, T, H, W\]"),
    ],
)
def test_bad_input_raises(tiny, shape, message):
    for chunked in (False, True):
        with pytest.raises(ValueError, match=message):
            tiny.encode(torch.zeros(shape), chunked=chunked)


# ---- (6) gradients ------------------------------------------------------------------------------------


def test_gradients_flow_through_one_shot_encode():
    model = _init(WanVAEEncoder(TINY)).train()
    mu, logvar = model.encode(_video(5))
    (mu.square().mean() + logvar.exp().mean()).backward()
    grad = model.encoder.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Every parameter (the 3D downsamplers' time convs included) receives a finite gradient.
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
