"""The text encoder of a model directory or a plan, loaded from its safetensors file."""
from __future__ import annotations

from pathlib import Path

from arvc.model.tiny_text import TextEncoderConfig, TinyTextEncoder

from .safetensors_io import check_finite, read_safetensors, write_safetensors_atomic

TEXT_FORMAT = "arvc-tiny-text"


def load_text_encoder(path: Path) -> TinyTextEncoder:
    """The tiny model's text encoder (arvc/model/tiny_text.py) from its safetensors file."""
    tensors, meta = read_safetensors(path)
    if meta.get("arvc.format") != TEXT_FORMAT or "arvc.config" not in meta:
        raise ValueError(f"{path}: not an arvc text encoder (metadata arvc.format must be 'arvc-tiny-text')")
    check_finite(path, tensors)
    enc = TinyTextEncoder(TextEncoderConfig.from_json(meta["arvc.config"]))
    enc.load_state_dict(tensors)
    return enc.eval()


def save_text_encoder(path: Path, encoder: TinyTextEncoder) -> Path:
    """The encoder's weights with the metadata load_text_encoder reads."""
    return write_safetensors_atomic(path, {k: v.contiguous() for k, v in encoder.state_dict().items()},
                                    {"arvc.format": TEXT_FORMAT, "arvc.config": encoder.cfg.to_json()})
