"""The tiny model's text encoder: word embeddings + a small transformer, producing a [L, text_dim]
context the way umT5 does for Wan (one row per word, zero rows after the prompt)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .stream_inputs import prompt_words


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab: tuple[str, ...]
    dim: int = 64
    layers: int = 2
    heads: int = 4
    max_len: int = 16

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "vocab": list(self.vocab)})

    @classmethod
    def from_json(cls, s: str) -> "TextEncoderConfig":
        d = json.loads(s)
        return cls(**{**d, "vocab": tuple(d["vocab"])})


class TinyTextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.index = {w: i for i, w in enumerate(cfg.vocab)}
        self.embed = nn.Embedding(len(cfg.vocab), cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def tokenize(self, text: str) -> list[int]:
        return [self.index[w] for w in prompt_words(text, self.index, self.cfg.max_len)]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # ids: [B, max_len] (padding arbitrary), lengths: [B] -> context [B, max_len, dim], zero after each prompt
        b, n = ids.shape
        pad = torch.arange(n, device=ids.device)[None, :] >= lengths[:, None]  # [B, L] True = padding
        h = self.embed(ids) + self.pos[:n]
        # padding as a full [B*heads, L, L] mask (True = blocked), the same keys a key-padding mask blocks:
        # exporters lower it to a 4D attention mask, which ONNX Runtime's Attention requires
        full = pad[:, None, :].expand(b, n, n).repeat_interleave(self.cfg.heads, dim=0)
        h = self.norm(self.encoder(h, mask=full))
        return h.masked_fill(pad[..., None], 0.0)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        toks = [self.tokenize(p) for p in prompts]
        ids = torch.zeros(len(toks), self.cfg.max_len, dtype=torch.long)
        for i, t in enumerate(toks):
            ids[i, : len(t)] = torch.tensor(t)
        lengths = torch.tensor([len(t) for t in toks])
        return self(ids, lengths)
