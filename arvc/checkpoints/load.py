"""Load, validate and describe Wan2.1 DiT and VAE checkpoints (safetensors; state_dicts.py saves them).

Every loaded state dict is in original Wan names and is checked name-by-name and shape-by-shape
against the model arvc will build (``WanDiT`` / ``WanVAEDecoder`` on the meta device), and every
weight for NaN / infinity, so a bad file fails here, with the file named and the offending tensors
listed, not deep inside a compile (or, worse, as a plan that "passes" with NaN outputs).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from arvc.model.config import WanConfig, WanVAEConfig

from .dit_names import to_original_names
from .infer import infer_wan_config
from .safetensors_io import (CheckpointError, check_finite, meta_tensors_from_header, read_safetensors,
                             read_safetensors_header)
from .state_dicts import (VAE_ENCODER_PREFIXES, compare_state_dict, dtype_summary, expected_vae_shapes,
                          mismatch_error, preset_name, validate_dit)


@dataclass
class LoadedCheckpoint:
    path: Path
    state_dict: dict[str, torch.Tensor]  # original Wan names
    config: WanConfig
    convention: str                      # "wan" | "diffusers": how the file named its tensors
    prefix: str                          # prefix stripped from the file's names ("" if none)
    dtypes: dict[str, int]               # dtype name -> number of parameters stored in it
    param_count: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedVAE:
    path: Path
    state_dict: dict[str, torch.Tensor]  # original Wan names, decoder side only
    config: WanVAEConfig
    convention: str
    dtypes: dict[str, int]
    param_count: int
    dropped: list[str] = field(default_factory=list)  # encoder-side tensors not kept
    metadata: dict[str, str] = field(default_factory=dict)


def _read_header(path: Path):
    """The header, or the specific error (missing, .pt, truncated, ...) before any load; for a PyTorch
    pickle, also what it holds and the command that converts it."""
    try:
        return read_safetensors_header(path)
    except CheckpointError as e:
        from .convert import pickle_advice

        raise CheckpointError(f"{e}{pickle_advice(path)}") from None


def _normalise_dit(path: Path, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                   num_heads: int | None):
    try:
        named, info = to_original_names(sd)
        cfg = infer_wan_config(named, metadata, num_heads=num_heads)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return named, info, cfg


# -- DiT -------------------------------------------------------------------------------------------

def load_dit(path: str | os.PathLike, num_heads: int | None = None) -> LoadedCheckpoint:
    """Load a Wan2.1 T2V DiT from safetensors in any accepted naming; validate it fully."""
    path = Path(path)
    _read_header(path)
    sd, metadata = read_safetensors(path)
    named, info, cfg = _normalise_dit(path, sd, metadata, num_heads)
    problems = validate_dit(named, cfg)
    if problems:
        raise mismatch_error(path, f"does not match a Wan2.1 DiT with dim {cfg.dim}, {cfg.num_layers} layers", problems)
    check_finite(path, sd)  # names as the file spells them
    return LoadedCheckpoint(path=path, state_dict=named, config=cfg, convention=info.convention,
                            prefix=info.prefix, dtypes=dtype_summary(named),
                            param_count=sum(t.numel() for t in named.values()), metadata=metadata)


# -- VAE -------------------------------------------------------------------------------------------

def _vae_stats(metadata: Mapping[str, str], latent_mean, latent_std):
    # The per-channel latent statistics are not weights; a file saved by arvc may record them.
    if latent_mean is None and latent_std is None and "arvc.config" in metadata:
        try:
            stored = json.loads(metadata["arvc.config"])
        except json.JSONDecodeError:
            stored = {}
        if isinstance(stored, dict):
            latent_mean, latent_std = stored.get("latent_mean"), stored.get("latent_std")
    return latent_mean, latent_std


def _normalise_vae(path: Path, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                   latent_mean=None, latent_std=None):
    from .vae_names import infer_vae_config, to_original_vae_names

    latent_mean, latent_std = _vae_stats(metadata, latent_mean, latent_std)
    try:
        named, convention = to_original_vae_names(dict(sd))
        cfg = infer_vae_config(named, latent_mean=latent_mean, latent_std=latent_std)
    except (CheckpointError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a usable Wan2.1 VAE checkpoint: {e}") from None
    return named, convention, cfg


def load_vae(path: str | os.PathLike, latent_mean: tuple[float, ...] | None = None,
             latent_std: tuple[float, ...] | None = None) -> LoadedVAE:
    """Load the Wan2.1 VAE (decoder side) from safetensors; encoder tensors are dropped.

    latent_mean / latent_std: only for a non-16-channel latent (Wan2.1's are built in).
    """
    path = Path(path)
    _read_header(path)
    sd, metadata = read_safetensors(path)
    named, convention, cfg = _normalise_vae(path, sd, metadata, latent_mean, latent_std)
    expected = expected_vae_shapes(cfg)
    problems = compare_state_dict(named, expected, allowed_extra=VAE_ENCODER_PREFIXES)
    if problems:
        raise mismatch_error(path, "does not match the Wan2.1 VAE decoder", problems)
    kept = {k: v for k, v in named.items() if k in expected}
    dropped = sorted(k for k in sd if k.startswith(VAE_ENCODER_PREFIXES))
    check_finite(path, {k: v for k, v in sd.items() if not k.startswith(VAE_ENCODER_PREFIXES)})  # the decoder's
    return LoadedVAE(path=path, state_dict=kept, config=cfg, convention=convention,
                     dtypes=dtype_summary(kept), param_count=sum(t.numel() for t in kept.values()),
                     dropped=dropped, metadata=metadata)


# -- inspect ---------------------------------------------------------------------------------------

def describe_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """What a safetensors checkpoint holds, from its header alone (no tensor data is read).

    Returns architecture ("wan2.1-dit" | "wan2.1-vae"), config, parameter count, dtypes, naming
    convention, prefix, tensor count, metadata and ``problems`` (validation findings; empty when
    the file would load). Raises CheckpointError for unreadable files and unknown architectures.
    """
    from .infer import is_i2v, not_a_wan_dit_message

    path = Path(path)
    header, metadata = _read_header(path)
    sd = meta_tensors_from_header(header)
    base = {"path": str(path), "tensors": len(sd), "parameters": sum(t.numel() for t in sd.values()),
            "dtypes": dtype_summary(sd), "metadata": metadata}
    try:
        named, info = to_original_names(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    keys = list(named)
    if "patch_embedding.weight" in named or is_i2v(keys):
        _, info, cfg = _normalise_dit(path, sd, metadata, None)
        return {**base, "architecture": "wan2.1-dit", "preset": preset_name(cfg),
                "config": cfg.to_dict(), "naming": info.convention, "prefix": info.prefix,
                "problems": validate_dit(named, cfg)}
    if any(k.startswith("decoder.") for k in sd):
        vnamed, convention, vcfg = _normalise_vae(path, sd, metadata)
        problems = compare_state_dict(vnamed, expected_vae_shapes(vcfg), allowed_extra=VAE_ENCODER_PREFIXES)
        return {**base, "architecture": "wan2.1-vae", "preset": None, "config": vcfg.to_dict(),
                "naming": convention, "prefix": "", "problems": problems}
    raise CheckpointError(f"{path}: unknown architecture: " + not_a_wan_dit_message(list(sd)))
