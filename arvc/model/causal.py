"""The causal block loop (Self-Forcing; LongLive uses the same loop), once for every backend.

Per block of ``frames_per_block`` latent frames: start from noise; for each t of the schedule run the
DiT, take x0 = x_t - sigma v and re-noise to the next sigma with FRESH noise; after the last step run
the DiT once more on the clean x0 at t = 0 only to write the block's K/V into the cache.

``CausalLoop`` owns that arithmetic, the seeded noise, the clean-latent history and the prompt-switch
re-cache; a backend supplies three hooks (set the prompt, one DiT call returning x0, forget cache
slots). The PyTorch reference (arvc/reference/causal.py CausalGenerator) and the plan runtime implement
the same hooks, so both run the identical loop.
"""
from __future__ import annotations

import torch

from .cache_geometry import CacheGeometry
from .noise import block_noise
from .schedule import Schedule


class CausalLoop:
    def __init__(self, geom: CacheGeometry, schedule: Schedule, block_shape: tuple[int, ...], seed: int = 0,
                 device="cpu", recache_sink: bool = False):
        # block_shape: [B, C, frames_per_block, h, w]
        self.geom, self.schedule, self.seed, self.device = geom, schedule, seed, device
        self.recache_sink = recache_sink
        self._block_shape = tuple(block_shape)
        self.block_index = 0
        self.has_prompt = False
        b, c, _, h, w = block_shape
        # clean latents of the frames a prompt switch may re-run; bounded by the cache capacity
        self.history = torch.zeros(b, c, geom.capacity_frames, h, w, device=device)

    # -- backend hooks ----------------------------------------------------------------------------
    def _set_context(self, context) -> None:
        raise NotImplementedError

    def _denoise(self, x: torch.Tensor, t: float, frame_start: int) -> torch.Tensor:
        """One DiT call at timestep t on frames starting at ``frame_start``; writes their K/V; returns x0."""
        raise NotImplementedError

    def _reset_cache(self, first_frame: int, keep_sink: bool) -> None:
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------
    @property
    def frames_done(self) -> int:
        return self.block_index * self.geom.frames_per_block

    def block_shape(self, frames: int | None = None) -> tuple[int, ...]:
        b, c, f, h, w = self._block_shape
        return (b, c, frames or f, h, w)

    def set_prompt(self, context) -> None:
        self._set_context(context)
        self.has_prompt = True

    @torch.no_grad()
    def next_block(self) -> torch.Tensor:
        """Generate the next block; returns its clean latents x0 [B, C, F, h, w] (fp32)."""
        if not self.has_prompt:
            raise RuntimeError("set_prompt() must be called before generating")
        b, f0 = self.block_index, self.frames_done
        shape = self.block_shape()
        x = block_noise(self.seed, b, 0, shape, self.device)
        sigmas = self.schedule.sigmas
        for i, t in enumerate(self.schedule.timesteps):
            x0 = self._denoise(x, t, f0)
            if i + 1 < len(sigmas):
                s = sigmas[i + 1]
                x = (1 - s) * x0 + s * block_noise(self.seed, b, i + 1, shape, self.device)
        self._denoise(x0, 0.0, f0)  # cache call: output discarded, K/V written
        self._remember(x0, f0)
        self.block_index += 1
        return x0

    def _remember(self, x0: torch.Tensor, f0: int) -> None:
        cap = self.history.shape[2]
        for i in range(x0.shape[2]):
            self.history[:, :, (f0 + i) % cap].copy_(x0[:, :, i])

    @torch.no_grad()
    def switch_prompt(self, context) -> list[int]:
        """LongLive KV re-cache: new cross-attention K/V, then re-run the last min(window, frames so far)
        clean frames at t = 0 under the new prompt (sink kept unless recache_sink). Returns the frames re-run."""
        self.set_prompt(context)
        cur, g = self.frames_done, self.geom
        if cur == 0:
            return []
        start = cur - min(g.window, cur) if g.window else 0
        keep_sink = g.window > 0 and not self.recache_sink
        if keep_sink:
            start = max(start, g.sink)
        self._reset_cache(start, keep_sink)
        cap, fpb = self.history.shape[2], g.frames_per_block
        f = start
        while f < cur:
            end = min(cur, (f // fpb + 1) * fpb)  # stay on block boundaries
            x0 = torch.stack([self.history[:, :, i % cap] for i in range(f, end)], dim=2)
            self._denoise(x0, 0.0, f)
            f = end
        return list(range(start, cur))
