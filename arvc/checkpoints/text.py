"""The text encoder of a model directory or a plan, loaded from its safetensors file."""
from __future__ import annotations

from pathlib import Path

from arvc.model.tiny_text import TextEncoderConfig, TinyTextEncoder

from .safetensors_io import check_finite, read_safetensors


def load_text_encoder(path: Path) -> TinyTextEncoder:
    """The tiny model's text encoder (arvc/model/tiny_text.py) from its safetensors file."""
    tensors, meta = read_safetensors(path)
    if meta.get("arvc.format") != "arvc-tiny-text" or "arvc.config" not in meta:
        raise ValueError(f"{path}: not an arvc text encoder (metadata arvc.format must be 'arvc-tiny-text')")
    check_finite(path, tensors)
    enc = TinyTextEncoder(TextEncoderConfig.from_json(meta["arvc.config"]))
    enc.load_state_dict(tensors)
    return enc.eval()
