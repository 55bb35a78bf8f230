"""The Wan2.1 causal 3D VAE, encoder side: video -> (mu, logvar), one-shot (training) or chunked (as Wan).

Module and parameter names are Wan's (``encoder.*``, ``conv1.*``), so the encoder half of a Wan
checkpoint loads as is. The building blocks are the decoder's (``arvc.model.vae``); only the
downsampling resample is new here.

First-frame rule (the decoder's, mirrored): a 3D downsampler outputs the video's first frame alone, then
halves the frame count with a stride-2, kernel-3 time conv whose window for output j >= 1 is frames
(2j-2, 2j-1, 2j): each window starts on the previous window's last frame, frame 0 for the first.
Hence ``1 + 4k`` frames -> ``1 + k`` latents, and latent j sees frames <= 4j only.

Chunked (Wan's ``encode``): the first frame, then 4 frames at a time. Each kernel-3 causal conv keeps
the last 2 input frames it saw (zeros before the video), each 3D downsampler the last 1. The result
equals the one-shot encode, which computes all frames at once and is the one to train with.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from arvc.model.config import WanVAEConfig
from arvc.model.vae import CACHE_T, AttentionBlock, CausalConv3d, ResidualBlock, RMS_norm, _run, _Stream


class Downsample(nn.Module):
    """2x spatial downsampling per frame; 'downsample3d' also halves the frame count (first-frame rule).

    Wan's class is ``Resample`` (its modes 'downsample2d' / 'downsample3d'); the parameter names match."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("downsample2d", "downsample3d"):
            raise ValueError(f"unsupported resample mode {mode!r}")
        self.mode = mode
        # Padding right/bottom only, so output pixel i covers input pixels 2i..2i+2 (Wan's alignment).
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "downsample3d":
            # Wan's is a CausalConv3d with zero padding, i.e. a plain conv: the past comes from the
            # explicit previous frame below, never from padding.
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
            self.state_index: int | None = None  # its 1-frame stream state, set by Encoder3d

    def forward(self, x: torch.Tensor, stream: _Stream | None = None, first: bool = True) -> torch.Tensor:
        # x: [B, C, T, H, W] -> [B, C, T', H/2, W/2]
        # T' = T (2d); (T + 1) / 2 (3d, x starts the video, T odd); T / 2 (3d, a later chunk, T even)
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        x = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        if self.mode == "downsample2d":
            return x
        if stream is not None:
            past = stream.states[self.state_index]  # [B, C, 1, H/2, W/2]: the previous chunk's last frame
            stream.new[self.state_index] = x[:, :, -1:]
        if first:
            # Frame 0 passes alone and is also the first window's leading frame.
            return x if t == 1 else torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        return self.time_conv(torch.cat([past, x], dim=2))


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        temporal_downsample = tuple(reversed(cfg.temporal_upsample))  # Wan: (False, True, True)
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Downsample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        # 2 * z_dim channels: mu and logvar.
        self.head = nn.Sequential(RMS_norm(c, images=False), nn.SiLU(), CausalConv3d(c, 2 * cfg.z_dim, 3, padding=1))

        # Number the stateful convs in execution order; record (channels, frames kept, spatial divisor).
        self.state_specs: list[tuple[int, int, int]] = []
        scale = 1
        for block in (self.conv1, *self.downsamples, *self.middle, self.head):
            if isinstance(block, Downsample):
                scale *= 2  # its time_conv runs after the spatial downsampling
                if block.mode == "downsample3d":
                    block.state_index = len(self.state_specs)
                    self.state_specs.append((block.time_conv.in_channels, 1, scale))
                continue
            for m in block.modules():
                if isinstance(m, CausalConv3d) and m.pad_t:
                    m.state_index = len(self.state_specs)
                    self.state_specs.append((m.in_channels, CACHE_T, scale))

    def forward(self, x: torch.Tensor, stream: _Stream | None = None, first: bool = True) -> torch.Tensor:
        # x: [B, 3, T, H, W] -> [B, 2z, T', H/8, W/8]
        x = self.conv1(x, stream)
        for block in self.downsamples:
            x = block(x, stream, first) if isinstance(block, Downsample) else block(x, stream)
        for block in self.middle:
            x = block(x, stream) if isinstance(block, ResidualBlock) else block(x)
        return _run(self.head, x, stream)


class WanVAEEncoder(nn.Module):
    """Pixels in [-1, 1] -> raw (un-normalised) latent mean and log-variance: ``encoder``, ``conv1``."""

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WanVAEConfig()
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)

    def _check(self, x: torch.Tensor) -> None:
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if (t - 1) % tf:
            raise ValueError(f"frame count T must be 1 + {tf}k (the first frame, then groups of {tf}); got T = {t}")
        if h % sf or w % sf:
            raise ValueError(f"height and width must be divisible by {sf}; got {h}x{w}")

    def encode(self, x: torch.Tensor, chunked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, 1 + 4k, H, W] -> (mu, logvar), each [B, z, 1 + k, H/8, W/8] (Wan config).

        ``chunked=False``: all frames at once (differentiable; for training). ``chunked=True``: Wan's
        streaming order, the first frame and then 4 frames at a time (same result, less activation memory
        under ``torch.no_grad``)."""
        self._check(x)
        out = self._encode_chunked(x) if chunked else self.encoder(x)
        mu, logvar = self.conv1(out).chunk(2, dim=1)
        return mu, logvar

    forward = encode

    def _encode_chunked(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        states = [x.new_zeros(b, c, n, h // s, w // s) for c, n, s in self.encoder.state_specs]
        bounds = [0, *range(1, t + 1, self.config.temporal_factor)]  # [0, 1, 5, 9, ...]
        outs = []
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            stream = _Stream(states)
            outs.append(self.encoder(x[:, :, start:end], stream, first=i == 0))  # [B, 2z, 1, h, w]
            states = stream.new
        return torch.cat(outs, dim=2)
