"""The causal block loop (arvc/model/causal.py CausalLoop) on the PyTorch reference DiT."""
from __future__ import annotations

import torch

from arvc.model.cache_geometry import CacheGeometry
from arvc.model.causal import CausalLoop
from arvc.model.dit import WanDiT, velocity_to_x0
from arvc.model.schedule import Schedule

from .kv_cache import KVCache


class CausalGenerator(CausalLoop):
    """The loop on the PyTorch reference DiT."""

    def __init__(self, model: WanDiT, geom: CacheGeometry, schedule: Schedule, latent_hw: tuple[int, int],
                 seed: int = 0, batch: int = 1, device="cpu", recache_sink: bool = False, kv_format: str = "fp32",
                 kv_sink_format: str | None = None):
        cfg = model.cfg
        ph, pw = cfg.patch_size[1:]
        if latent_hw[0] % ph or latent_hw[1] % pw:
            raise ValueError(f"latent size {latent_hw} must be divisible by the patch size {(ph, pw)}")
        super().__init__(geom, schedule, (batch, cfg.in_channels, geom.frames_per_block, *latent_hw), seed, device,
                         recache_sink)
        self.model, self.latent_hw, self.batch = model, latent_hw, batch
        self.cache = KVCache.for_model(model, geom, (latent_hw[0] // ph, latent_hw[1] // pw), batch, device,
                                       kv_format, kv_sink_format)
        self.cross_kv: list | None = None

    @torch.no_grad()
    def _set_context(self, context: torch.Tensor) -> None:
        """context: [B, L, text_dim] prompt embeddings (zero rows after the prompt)."""
        cfg = self.model.cfg
        if context.dim() == 2:
            context = context[None].expand(self.batch, -1, -1)
        if context.shape[-1] != cfg.text_dim:
            raise ValueError(f"prompt embeddings have width {context.shape[-1]}, the model expects {cfg.text_dim}")
        self.cross_kv = self.model.cross_kv(context.to(self.device))

    @torch.no_grad()
    def dit_call(self, x: torch.Tensor, t: float, frame_start: int) -> torch.Tensor:
        """One reference DiT call; returns the flow prediction v."""
        if self.cross_kv is None:
            raise RuntimeError("set_prompt() must be called before generating")
        self.cache.begin_call(frame_start, x.shape[2])
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        return self.model.run(x, tt, self.cross_kv, self.cache)

    def _denoise(self, x, t, frame_start):
        return velocity_to_x0(x, self.dit_call(x, t, frame_start), t / 1000.0)

    def _reset_cache(self, first_frame, keep_sink):
        self.cache.reset_for_recache(first_frame, keep_sink)
