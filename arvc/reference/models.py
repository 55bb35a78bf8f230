"""Build the PyTorch reference modules from checkpoint files, and read prompt embeddings (the text encoder's
loader is arvc/checkpoints/text.py: plans load it too)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arvc.model.config import Numerics, WanConfig
from arvc.model.dit import WanDiT
from arvc.model.vae import WanVAEDecoder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CheckpointFiles:
    dit: Path
    vae: Path | None
    text_encoder: Path | None = None
    defaults: dict = field(default_factory=dict)  # model.json: resolution, fps, schedule, cache geometry


def resolve_checkpoint(path: str | Path, vae: str | Path | None = None) -> CheckpointFiles:
    """A checkpoint is a DiT safetensors file, or a model directory: model.safetensors, optional
    vae.safetensors and text_encoder.safetensors, and optional model.json with the model's run defaults."""
    p = Path(path)
    if p.is_dir():
        dit = p / "model.safetensors"
        if not dit.is_file():
            raise FileNotFoundError(f"{p} is a directory without model.safetensors; pass the DiT file itself")
        vae_path = Path(vae) if vae else (p / "vae.safetensors" if (p / "vae.safetensors").is_file() else None)
        text = p / "text_encoder.safetensors"
        defaults = {}
        if (p / "model.json").is_file():
            try:
                defaults = json.loads((p / "model.json").read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{p / 'model.json'} is not valid JSON ({e}); restore it from the model's release") from None
        return CheckpointFiles(dit, vae_path, text if text.is_file() else None, defaults)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return CheckpointFiles(p, Path(vae) if vae else None)


def load_dit_module(path: Path, dtype: str = "fp32", device: str = "cpu", modulation_bf16: bool | None = None) -> WanDiT:
    from arvc.checkpoints.load import load_dit

    ck = load_dit(path)
    numerics = Numerics(**json.loads(ck.metadata["arvc.numerics"])) if "arvc.numerics" in ck.metadata else Numerics()
    if modulation_bf16 is not None:
        numerics = Numerics(modulation_bf16=modulation_bf16)
    with torch.device("meta"):
        model = WanDiT(ck.config, numerics)
    model.load_state_dict({k: v.to(DTYPES[dtype]) for k, v in ck.state_dict.items()}, assign=True)
    return model.to(device).eval()


def load_vae_module(path: Path, dtype: str = "fp32", device: str = "cpu") -> WanVAEDecoder:
    from arvc.checkpoints.load import load_vae

    ck = load_vae(path)
    vae = WanVAEDecoder(ck.config)
    vae.load_state_dict(ck.state_dict)
    return vae.to(device=device, dtype=DTYPES[dtype]).eval()


def load_prompt_embeds(path: str | Path, cfg: WanConfig) -> torch.Tensor:
    """A safetensors file with one [L, text_dim] tensor (or key 'context'); zero-padded to the model's
    text length as Wan pads umT5 output. Returns [1, text_len, text_dim] fp32."""
    from arvc.checkpoints.safetensors_io import read_safetensors

    tensors, _ = read_safetensors(path)
    if "context" in tensors:
        emb = tensors["context"]
    elif len(tensors) == 1:
        emb = next(iter(tensors.values()))
    else:
        raise ValueError(f"{path}: holds {sorted(tensors)}; store the prompt embeddings as the only tensor or as 'context'")
    if emb.dim() == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.dim() != 2 or emb.shape[1] != cfg.text_dim:
        raise ValueError(f"{path}: prompt embeddings must be [L, {cfg.text_dim}] for this model; got {tuple(emb.shape)}")
    if emb.shape[0] > cfg.text_len:
        raise ValueError(f"{path}: {emb.shape[0]} prompt tokens exceed the model's {cfg.text_len}; truncate the prompt")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{path}: prompt embeddings contain NaN or infinity")
    out = torch.zeros(1, cfg.text_len, cfg.text_dim)
    out[0, : emb.shape[0]] = emb.float()
    return out
