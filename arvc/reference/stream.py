"""Streaming generation on the PyTorch reference: DiT block loop + streaming VAE decode.

Frames are produced block by block and handed out as soon as each latent frame is decoded.
(The plan-based runtime with VAE/DiT overlap builds on the same interface.)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import latent_frames_for
from arvc.model.dit import WanDiT
from arvc.model.schedule import Schedule
from arvc.model.vae import WanVAEDecoder
from arvc.runtime.video import to_uint8_frames

from .causal import CausalGenerator


@dataclass
class BlockResult:
    block: int
    frames: np.ndarray  # uint8 [N, H, W, 3]
    dit_seconds: float
    vae_seconds: float


class TorchStreamSession:
    def __init__(self, dit: WanDiT, vae: WanVAEDecoder, geom: CacheGeometry, schedule: Schedule,
                 height: int, width: int, seed: int = 0, device: str = "cpu"):
        s = vae.config.spatial_factor
        ph, pw = dit.cfg.patch_size[1:]
        if height % (s * ph) or width % (s * pw):
            raise ValueError(
                f"{height}x{width} is not a multiple of {s * ph}x{s * pw} (VAE factor {s} x patch {ph}x{pw}); "
                f"try {height - height % (s * ph)}x{width - width % (s * pw)}"
            )
        if vae.config.z_dim != dit.cfg.out_channels:
            raise ValueError(f"VAE has {vae.config.z_dim} latent channels but the DiT produces {dit.cfg.out_channels}")
        self.dit, self.vae, self.device = dit, vae, device
        self.height, self.width = height, width
        self.latent_hw = (height // s, width // s)
        self.gen = CausalGenerator(dit, geom, schedule, self.latent_hw, seed=seed, device=device)
        self.vae_state = vae.init_state(1, *self.latent_hw, device=device)

    def set_prompt(self, context: torch.Tensor) -> None:
        self.gen.set_prompt(context)

    def switch_prompt(self, context: torch.Tensor) -> list[int]:
        return self.gen.switch_prompt(context)

    @torch.no_grad()
    def next_block(self) -> BlockResult:
        t0 = time.perf_counter()
        b = self.gen.block_index
        x0 = self.gen.next_block()  # [1, C, F, h, w]
        t1 = time.perf_counter()
        vae_dtype = self.vae.conv2.weight.dtype
        pixels = [self.vae.decode_frame(x0[:, :, i:i + 1].to(vae_dtype), self.vae_state) for i in range(x0.shape[2])]
        frames = to_uint8_frames(torch.cat(pixels, dim=2)[0])
        return BlockResult(b, frames, t1 - t0, time.perf_counter() - t1)

    def stream(self, video_frames: int) -> Iterator[BlockResult]:
        """Blocks until ``video_frames`` frames are out; the last block is trimmed to that count."""
        fpb = self.gen.geom.frames_per_block
        blocks = math.ceil(latent_frames_for(video_frames, self.vae.config.temporal_factor) / fpb)
        emitted = 0
        for _ in range(blocks):
            r = self.next_block()
            r.frames = r.frames[: video_frames - emitted]
            emitted += len(r.frames)
            yield r
