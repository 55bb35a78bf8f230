"""Wan2.1 VAE checkpoint names: diffusers -> original Wan, and the decoder config from tensor shapes.

Original Wan names (what ``arvc.model.vae.WanVAEDecoder`` uses)     diffusers ``AutoencoderKLWan``
  conv2.*                                                          post_quant_conv.*
  decoder.conv1.*                                                  decoder.conv_in.*
  decoder.middle.{0,2}.residual.{0,2,3,6}.*                        decoder.mid_block.resnets.{0,1}.{norm1,conv1,norm2,conv2}.*
  decoder.middle.1.{norm,to_qkv,proj}.*                            decoder.mid_block.attentions.0.{norm,to_qkv,proj}.*
  decoder.upsamples.K.residual.{0,2,3,6}.* / .shortcut.*           decoder.up_blocks.I.resnets.J.{norm1,conv1,norm2,conv2,conv_shortcut}.*
  decoder.upsamples.K.{resample.1,time_conv}.*                     decoder.up_blocks.I.upsamplers.0.{resample.1,time_conv}.*
  decoder.head.{0,2}.*                                             decoder.{norm_out,conv_out}.*
The flat index K counts, over the up blocks before I, their resnets plus their upsampler. Encoder-side
tensors (``encoder.*``, ``conv1.*`` / ``quant_conv.*``) are dropped: arvc only decodes.
"""
from __future__ import annotations

import math
import re

import torch

from arvc.model.config import WanVAEConfig

_ENCODER_PREFIXES = ("encoder.", "conv1.", "quant_conv.")
_WAN_PREFIXES = ("conv2.", "decoder.conv1.", "decoder.middle.", "decoder.upsamples.", "decoder.head.")
_DIFFUSERS_PREFIXES = (
    "post_quant_conv.", "decoder.conv_in.", "decoder.mid_block.", "decoder.up_blocks.", "decoder.norm_out.", "decoder.conv_out."
)
_RESNET_PARTS = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6", "conv_shortcut": "shortcut"}
_FIXED = {
    "post_quant_conv": "conv2",
    "decoder.conv_in": "decoder.conv1",
    "decoder.norm_out": "decoder.head.0",
    "decoder.conv_out": "decoder.head.2",
    "decoder.mid_block.attentions.0": "decoder.middle.1",
}
_MID_RESNET = re.compile(r"decoder\.mid_block\.resnets\.(\d+)\.(\w+)\.(\w+)$")
_UP_RESNET = re.compile(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)$")
_UP_SAMPLER = re.compile(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$")


def to_original_vae_names(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Decoder tensors of a Wan2.1 VAE state dict under original Wan names, and the input's naming
    convention ("wan" or "diffusers"). Tensors are passed through, not copied."""
    decoder_side = {k: v for k, v in sd.items() if not k.startswith(_ENCODER_PREFIXES)}
    wan = sorted(k for k in decoder_side if k.startswith(_WAN_PREFIXES))
    diff = sorted(k for k in decoder_side if k.startswith(_DIFFUSERS_PREFIXES))
    if wan and diff:
        raise ValueError(f"mixed VAE naming: original Wan keys (e.g. {wan[0]!r}) and diffusers keys (e.g. {diff[0]!r})")
    if not wan and not diff:
        sample = sorted(sd)[:3]
        raise ValueError(f"no Wan2.1 VAE decoder keys found (no 'decoder.conv1.*' or 'decoder.conv_in.*'); keys start {sample}")
    if wan:
        return decoder_side, "wan"
    if any(".upsampler." in k or "avg_shortcut" in k for k in decoder_side):
        raise ValueError("diffusers Wan2.2-style residual VAE ('upsampler'/'avg_shortcut') is not the Wan2.1 VAE; unsupported")

    # Flat position of each diffusers up block in Wan's decoder.upsamples sequence.
    resnets: dict[int, set[int]] = {}
    has_upsampler: set[int] = set()
    for k in decoder_side:
        if m := _UP_RESNET.match(k):
            resnets.setdefault(int(m[1]), set()).add(int(m[2]))
        elif m := _UP_SAMPLER.match(k):
            has_upsampler.add(int(m[1]))
    offset, start = 0, {}
    for i in range(max([*resnets, *has_upsampler], default=-1) + 1):
        start[i] = offset
        offset += len(resnets.get(i, ())) + (i in has_upsampler)

    out: dict[str, torch.Tensor] = {}
    for k, v in decoder_side.items():
        fixed = next((p for p in _FIXED if k.startswith(p + ".")), None)
        if fixed is not None:
            new = _FIXED[fixed] + k[len(fixed) :]
        elif (m := _MID_RESNET.match(k)) and m[2] in _RESNET_PARTS:
            new = f"decoder.middle.{2 * int(m[1])}.{_RESNET_PARTS[m[2]]}.{m[3]}"  # Wan: res, attn, res
        elif (m := _UP_RESNET.match(k)) and m[3] in _RESNET_PARTS:
            new = f"decoder.upsamples.{start[int(m[1])] + int(m[2])}.{_RESNET_PARTS[m[3]]}.{m[4]}"
        elif m := _UP_SAMPLER.match(k):
            i = int(m[1])
            new = f"decoder.upsamples.{start[i] + len(resnets.get(i, ()))}.{m[2]}"
        else:
            raise ValueError(f"unrecognised diffusers VAE key {k!r}")
        if new in out:
            raise ValueError(f"two keys map to {new!r} (second: {k!r})")
        out[new] = v
    return out, "diffusers"


def _need(sd: dict[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"not a Wan2.1 VAE decoder: missing key {key!r} ({what})")
    return tuple(sd[key].shape)


def infer_vae_config(
    sd: dict[str, torch.Tensor],
    latent_mean: tuple[float, ...] | None = None,
    latent_std: tuple[float, ...] | None = None,
) -> WanVAEConfig:
    """WanVAEConfig from the decoder's tensor shapes (either naming; encoder keys are ignored).

    Every decoder tensor is then checked against the model that config builds; a missing, extra or
    mis-shaped key raises ValueError naming it (expected vs found shape). Only base_dim * dim_mult
    products are visible in the weights, so base_dim is taken as their gcd (Wan: 96, (1, 2, 4, 4)).
    The latent statistics are not in the checkpoint: Wan2.1's are used for z_dim 16, otherwise pass them.
    """
    sd, _ = to_original_vae_names(sd)
    conv1 = _need(sd, "decoder.conv1.weight", "the decoder's input conv")
    _need(sd, "conv2.weight", "the 1x1x1 conv applied to the latent before the decoder")
    if len(conv1) != 5:
        raise ValueError(f"decoder.conv1.weight: expected a 5-D Conv3d weight, found shape {conv1}")
    z_dim = conv1[1]

    # decoder.upsamples is: R residual blocks, a resampler, R residual blocks, ..., R residual blocks.
    kinds: dict[int, str] = {}
    for k in sd:
        if m := re.match(r"decoder\.upsamples\.(\d+)\.(residual|shortcut|resample|time_conv)\.", k):
            kinds[int(m[1])] = "res" if m[2] in ("residual", "shortcut") else "up"
    if not kinds:
        raise ValueError("not a Wan2.1 VAE decoder: no 'decoder.upsamples.*' keys")
    if sorted(kinds) != list(range(len(kinds))):
        missing = sorted(set(range(max(kinds) + 1)) - set(kinds))
        raise ValueError(f"not a Wan2.1 VAE decoder: decoder.upsamples index(es) {missing} missing")
    seq = [kinds[i] for i in range(len(kinds))]
    levels, run = [], []
    for i, kind in enumerate(seq):
        if kind == "res":
            run.append(i)
        else:
            levels.append((run, i))
            run = []
    levels.append((run, None))
    n_res = {len(r) for r, _ in levels}
    if len(n_res) != 1 or 0 in n_res:
        raise ValueError(f"not a Wan2.1 VAE decoder: residual blocks per level {[len(r) for r, _ in levels]} are not equal")
    out_dims = [_need(sd, f"decoder.upsamples.{r[0]}.residual.3.gamma", "a residual block's second norm")[0] for r, _ in levels]
    temporal = tuple(f"decoder.upsamples.{up}.time_conv.weight" in sd for _, up in levels[:-1])

    base = math.gcd(*out_dims)
    if latent_mean is None and latent_std is None and z_dim == 16:
        latent_mean, latent_std = WanVAEConfig.latent_mean, WanVAEConfig.latent_std
    elif latent_mean is None or latent_std is None:
        raise ValueError(f"z_dim is {z_dim}, not Wan2.1's 16: the latent statistics are not in the checkpoint; pass latent_mean and latent_std")
    cfg = WanVAEConfig(
        base_dim=base,
        z_dim=z_dim,
        dim_mult=tuple(d // base for d in reversed(out_dims)),
        num_res_blocks=n_res.pop() - 1,
        temporal_upsample=temporal,
        latent_mean=tuple(latent_mean),
        latent_std=tuple(latent_std),
    )
    check_vae_state_dict(sd, cfg)
    return cfg


def check_vae_state_dict(sd: dict[str, torch.Tensor], cfg: WanVAEConfig) -> None:
    """Raise ValueError unless ``sd`` (original names, decoder side) has exactly the model's keys and shapes."""
    from arvc.model.vae import WanVAEDecoder  # late: the model module is heavier than the naming rules

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in WanVAEDecoder(cfg).state_dict().items()}
    problems = [f"missing key {k!r} (expected shape {s})" for k, s in expected.items() if k not in sd]
    problems += [f"unexpected key {k!r} (shape {tuple(sd[k].shape)})" for k in sd if k not in expected]
    problems += [
        f"{k!r}: expected shape {s}, found {tuple(sd[k].shape)}"
        for k, s in expected.items()
        if k in sd and tuple(sd[k].shape) != s
    ]
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        arch = f"base_dim={cfg.base_dim}, z_dim={cfg.z_dim}, dim_mult={cfg.dim_mult}, num_res_blocks={cfg.num_res_blocks}"
        raise ValueError(f"not a Wan2.1 VAE decoder ({arch}): " + "; ".join(problems[:8]) + more)
