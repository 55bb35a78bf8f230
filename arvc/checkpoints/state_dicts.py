"""Wan2.1 state dicts against the models arvc builds: the names and shapes expected, a state dict's problems
in words, the preset a config matches, and writing a DiT with its config so that reloading needs no guessing.
Loading (load.py) and converting (convert.py) both check with these."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Mapping

import torch

from arvc.model.config import WAN_PRESETS, WanConfig, WanVAEConfig

from .dit_names import to_original_names
from .safetensors_io import CheckpointError, write_safetensors_atomic

LIST_LIMIT = 10
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Encoder-side tensors of a full Wan VAE file; arvc decodes only, so they are dropped, not errors.
VAE_ENCODER_PREFIXES = ("encoder.", "conv1.", "quant_conv.")


def list_names(names: list[str]) -> str:
    shown = ", ".join(names[:LIST_LIMIT])
    more = f" ... and {len(names) - LIST_LIMIT} more" if len(names) > LIST_LIMIT else ""
    return f"{len(names)}: {shown}{more}"


def dtype_summary(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for t in sd.values():
        counts[str(t.dtype).removeprefix("torch.")] += t.numel()
    return dict(counts)


def compare_state_dict(found: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                       allowed_extra: tuple[str, ...] = ()) -> list[str]:
    """Human-readable problems between a state dict and the expected {name: shape}."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and not k.startswith(allowed_extra)]
    mismatched = [f"{k}: expected {tuple(expected[k])}, found {tuple(found[k].shape)}"
                  for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k])]
    if missing:
        problems.append("missing tensors " + list_names(missing))
    if unexpected:
        problems.append("unexpected tensors " + list_names(unexpected))
    if mismatched:
        problems.append("shape mismatches " + list_names(mismatched))
    odd = sorted({str(t.dtype) for t in found.values() if t.dtype not in FLOAT_DTYPES})
    if odd:
        problems.append(f"unsupported dtypes {odd} (arvc loads float32/bfloat16/float16 weights; "
                        "pre-quantized checkpoints are not accepted as compile input)")
    return problems


def expected_dit_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    from arvc.model.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def expected_vae_shapes(cfg: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    from arvc.model.vae import WanVAEDecoder

    with torch.device("meta"):
        model = WanVAEDecoder(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mismatch_error(path: Path, what: str, problems: list[str]) -> CheckpointError:
    return CheckpointError(f"{path}: {what}:\n  - " + "\n  - ".join(problems))


def validate_dit(state_dict: Mapping[str, torch.Tensor], config: WanConfig) -> list[str]:
    """Problems of an original-named DiT state dict against ``config`` ([] when it is sound)."""
    return compare_state_dict(state_dict, expected_dit_shapes(config))


def save_dit(path: str | os.PathLike, sd: Mapping[str, torch.Tensor], config: WanConfig,
             extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write a DiT in original names, recording its config so reloading needs no guessing."""
    named, _ = to_original_names(sd)
    problems = validate_dit(named, config)
    if problems:
        raise mismatch_error(Path(path), "refusing to save a state dict that does not match its config", problems)
    metadata = {
        "arvc.format": "wan2.1-dit",
        "arvc.config": json.dumps(config.to_dict(), sort_keys=True),
        "arvc.num_heads": str(config.num_heads),
    }
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    return write_safetensors_atomic(path, named, metadata)


def preset_name(cfg: WanConfig) -> str | None:
    shape_fields = ("dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels",
                    "patch_size", "text_dim", "freq_dim")
    for name, preset in WAN_PRESETS.items():
        if all(getattr(preset, f) == getattr(cfg, f) for f in shape_fields):
            return name
    return None
