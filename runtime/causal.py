"""The causal block loop (Self-Forcing; LongLive uses the same loop) on the PyTorch reference.

Per block of ``frames_per_block`` latent frames: start from noise; for each t of the schedule run the
DiT, take x0 = x_t - sigma v and re-noise to the next sigma with FRESH noise; after the last step run
the DiT once more on the clean x0 at t = 0 only to write the block's K/V into the cache.
"""
from __future__ import annotations

import torch

from arvc.model.dit import WanDiT, velocity_to_x0

from .kv_cache import CacheGeometry, KVCache
from .noise import block_noise
from .schedule import Schedule


class CausalGenerator:
    def __init__(self, model: WanDiT, geom: CacheGeometry, schedule: Schedule, latent_hw: tuple[int, int],
                 seed: int = 0, batch: int = 1, device="cpu", recache_sink: bool = False):
        cfg = model.cfg
        ph, pw = cfg.patch_size[1:]
        if latent_hw[0] % ph or latent_hw[1] % pw:
            raise ValueError(f"latent size {latent_hw} must be divisible by the patch size {(ph, pw)}")
        self.model, self.geom, self.schedule = model, geom, schedule
        self.latent_hw, self.seed, self.batch, self.device = latent_hw, seed, batch, device
        self.recache_sink = recache_sink
        self.cache = KVCache.for_model(model, geom, (latent_hw[0] // ph, latent_hw[1] // pw), batch, device)
        self.block_index = 0
        self.cross_kv: list | None = None
        # clean latents of the frames a prompt switch may re-run; bounded by the cache capacity
        self.history = torch.zeros(batch, cfg.in_channels, geom.capacity_frames, *latent_hw, device=device)

    @property
    def frames_done(self) -> int:
        return self.block_index * self.geom.frames_per_block

    def block_shape(self, frames: int | None = None) -> tuple[int, ...]:
        f = frames or self.geom.frames_per_block
        return (self.batch, self.model.cfg.in_channels, f, *self.latent_hw)

    @torch.no_grad()
    def set_prompt(self, context: torch.Tensor) -> None:
        """context: [B, L, text_dim] prompt embeddings (zero rows after the prompt)."""
        cfg = self.model.cfg
        if context.dim() == 2:
            context = context[None].expand(self.batch, -1, -1)
        if context.shape[-1] != cfg.text_dim:
            raise ValueError(f"prompt embeddings have width {context.shape[-1]}, the model expects {cfg.text_dim}")
        self.cross_kv = self.model.cross_kv(context.to(self.device))

    @torch.no_grad()
    def dit_call(self, x: torch.Tensor, t: float, frame_start: int) -> torch.Tensor:
        if self.cross_kv is None:
            raise RuntimeError("set_prompt() must be called before generating")
        self.cache.begin_call(frame_start, x.shape[2])
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        return self.model.run(x, tt, self.cross_kv, self.cache)

    @torch.no_grad()
    def next_block(self) -> torch.Tensor:
        """Generate the next block; returns its clean latents x0 [B, C, F, h, w] (fp32)."""
        b, f0 = self.block_index, self.frames_done
        shape = self.block_shape()
        x = block_noise(self.seed, b, 0, shape, self.device)
        sigmas = self.schedule.sigmas
        for i, (t, sigma) in enumerate(zip(self.schedule.timesteps, sigmas)):
            v = self.dit_call(x, t, f0)
            x0 = velocity_to_x0(x, v, sigma)
            if i + 1 < len(sigmas):
                s = sigmas[i + 1]
                x = (1 - s) * x0 + s * block_noise(self.seed, b, i + 1, shape, self.device)
        self.dit_call(x0, 0.0, f0)  # cache call: output discarded, K/V written
        self._remember(x0, f0)
        self.block_index += 1
        return x0

    def _remember(self, x0: torch.Tensor, f0: int) -> None:
        cap = self.history.shape[2]
        for i in range(x0.shape[2]):
            self.history[:, :, (f0 + i) % cap].copy_(x0[:, :, i])

    @torch.no_grad()
    def switch_prompt(self, context: torch.Tensor) -> list[int]:
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
        self.cache.reset_for_recache(start, keep_sink)
        cap, fpb = self.history.shape[2], g.frames_per_block
        f = start
        while f < cur:
            end = min(cur, (f // fpb + 1) * fpb)  # stay on block boundaries
            x0 = torch.stack([self.history[:, :, i % cap] for i in range(f, end)], dim=2)
            self.dit_call(x0, 0.0, f)
            f = end
        return list(range(start, cur))
