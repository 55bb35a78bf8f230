"""Seeded noise that depends only on (seed, block, step), never on call order.

Each draw seeds its own generator with splitmix64(seed, block, step), so a block can be regenerated,
skipped or computed on another backend and still get the same Gaussian noise.
"""
from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def draw_seed(seed: int, block: int, step: int) -> int:
    return splitmix64(splitmix64(splitmix64(seed & _MASK) ^ block) ^ step) & ((1 << 63) - 1)


def block_noise(seed: int, block: int, step: int, shape, device="cpu") -> torch.Tensor:
    """fp32 standard normal noise for denoising step ``step`` of block ``block``."""
    g = torch.Generator().manual_seed(draw_seed(seed, block, step))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)
