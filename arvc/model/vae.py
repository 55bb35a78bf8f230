"""The Wan2.1 causal 3D VAE, decoder side: one-shot and streaming (one latent frame at a time).

Module and parameter names are the original Wan code's (``conv2.*``, ``decoder.*``; class names too,
so ``repr(model.decoder)`` reads like Wan's printout), hence a Wan checkpoint loads with
``load_state_dict`` as is; ``arvc.checkpoints.vae_names`` converts diffusers names.

Streaming: every causal conv with a temporal kernel of 3 sees the previous 2 input frames, so its state
is those 2 frames, ``[B, C, 2, H, W]``, zeros before the video starts (the same zeros the one-shot
decode pads with). Wan2.1 has 32 such convs. The state is preallocated at a fixed size and updated in
place, so an exported graph / engine has static state shapes. ``stream_step`` is the pure function
(states in, new states out) behind ``decode_frame``.

First-frame rule: the 3D upsamplers skip their time_conv for the video's first latent frame (1 frame
stays 1 frame) and run it causally over the later frames only, starting from zeros. Hence
``1 + 4 * (T - 1)`` output frames for ``T`` latents.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from arvc.model.config import WanVAEConfig

CACHE_T = 2  # past frames a temporal-kernel-3 causal conv needs


class _Stream:
    """One streaming call's view of the state: stateful conv i reads ``states[i]``, leaves ``new[i]``."""

    def __init__(self, states: list[torch.Tensor]) -> None:
        self.states = states
        self.new = list(states)  # a conv that does not run (skipped time_conv) keeps its state


class CausalConv3d(nn.Conv3d):
    """Conv3d padded ``2 * pad_t`` frames on the past side only (spatial padding symmetric)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, padding=0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.pad_t = 2 * pt
        self.pad_hw = (pw, pw, ph, ph)
        if self.pad_t not in (0, CACHE_T):
            raise ValueError(f"causal temporal padding {self.pad_t} unsupported (state holds {CACHE_T} frames)")
        self.state_index: int | None = None  # position in the stream state, set by Decoder3d

    def forward(self, x: torch.Tensor, stream: _Stream | None = None) -> torch.Tensor:
        # x: [B, C, T, H, W] -> [B, C_out, T, H', W']
        if self.pad_t == 0:
            return super().forward(F.pad(x, self.pad_hw) if any(self.pad_hw) else x)
        if stream is None:  # whole sequence: the past before frame 0 is zeros
            return super().forward(F.pad(x, (*self.pad_hw, self.pad_t, 0)))
        x = torch.cat([stream.states[self.state_index], x], dim=2)  # [B, C, 2 + T, H, W]
        stream.new[self.state_index] = x[:, :, -CACHE_T:]
        return super().forward(F.pad(x, self.pad_hw) if any(self.pad_hw) else x)


class RMS_norm(nn.Module):  # noqa: N801 - Wan's class name
    """``normalize(x over channels) * sqrt(C) * gamma``; gamma [C, 1, 1, 1] (video) or [C, 1, 1] (images)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Upsample(nn.Upsample):
    """Nearest-exact upsampling computed in float (as Wan does), result cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_factor == (2.0, 2.0):
            # At an integer factor, nearest-exact and nearest pick the same source pixel (i // 2); the
            # nearest form lowers to one ONNX Resize instead of per-resolution index tables.
            return F.interpolate(x.float(), scale_factor=2.0, mode="nearest").type_as(x)
        return super().forward(x.float()).type_as(x)


def _run(seq: nn.Sequential, x: torch.Tensor, stream: _Stream | None) -> torch.Tensor:
    for layer in seq:
        x = layer(x, stream) if isinstance(layer, CausalConv3d) else layer(x)
    return x


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices 0..6 are part of the checkpoint names (residual.0.gamma, residual.2.weight, ...).
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, stream: _Stream | None = None) -> torch.Tensor:
        # x: [B, in, T, H, W] -> [B, out, T, H, W]
        return _run(self.residual, x, stream) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (over its H*W positions), head dim = C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, T, H, W]
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        # to_qkv channels are [q | k | v], C each.
        q, k, v = self.to_qkv(y).reshape(b * t, 3, c, h * w).transpose(-1, -2).unbind(1)  # [B*T, HW, C]
        # one head: [B*T, 1, HW, C] (the 4D form every exporter lowers); scale 1/sqrt(C)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = self.proj(y.transpose(-1, -2).reshape(b * t, c, h, w))
        return x + y.reshape(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """2x spatial upsampling per frame (channels halved); 'upsample3d' also doubles the frame count."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d"):
            raise ValueError(f"unsupported resample mode {mode!r}")
        self.mode = mode
        self.resample = nn.Sequential(
            Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, stream: _Stream | None = None, first: bool = True) -> torch.Tensor:
        # x: [B, C, T, H, W] -> [B, C/2, T', 2H, 2W]; T' = T (2d), 2T (3d), 2T - 1 (3d, x starts the video)
        if self.mode == "upsample3d":
            x = self._double_frames(x, stream, first)
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)

    def _double_frames(self, x: torch.Tensor, stream: _Stream | None, first: bool) -> torch.Tensor:
        # The video's first frame bypasses time_conv, and time_conv never sees it: its past starts as zeros.
        if first:
            head, x = x[:, :, :1], x[:, :, 1:]
            if x.shape[2] == 0:
                return head
        b, c, t, h, w = x.shape
        y = self.time_conv(x, stream)  # [B, 2C, T, H, W]
        # Channels split as (2, C): the first half is frame 2t, the second frame 2t+1.
        y = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return torch.cat([head, y], dim=2) if first else y


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0]))
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous Resample's conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if cfg.temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMS_norm(dims[-1], images=False), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

        # Number the stateful convs in execution order; record (channels, spatial scale vs the latent).
        self.state_specs: list[tuple[int, int]] = []
        scale = 1
        for block in (self.conv1, *self.middle, *self.upsamples, self.head):
            for m in block.modules():
                if isinstance(m, CausalConv3d) and m.pad_t:
                    m.state_index = len(self.state_specs)
                    self.state_specs.append((m.in_channels, scale))
            if isinstance(block, Resample):
                scale *= 2  # its time_conv runs before the spatial upsampling

    def forward(self, x: torch.Tensor, stream: _Stream | None = None, first: bool = True) -> torch.Tensor:
        # x: [B, z, T, h, w] -> [B, 3, T', 8h, 8w]
        x = self.conv1(x, stream)
        for block in self.middle:
            x = block(x, stream) if isinstance(block, ResidualBlock) else block(x)
        for block in self.upsamples:
            x = block(x, stream, first) if isinstance(block, Resample) else block(x, stream)
        return _run(self.head, x, stream)


@dataclass
class VAEStreamState:
    """Streaming decoder state: the last 2 input frames of each stateful conv, updated in place."""

    tensors: list[torch.Tensor]  # tensors[i]: [B, C_i, 2, h * s_i, w * s_i], zeros before the first frame
    first: bool = True  # the next latent frame is the video's first (temporal upsampling skipped)

    def reset(self) -> None:
        for t in self.tensors:
            t.zero_()
        self.first = True

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


class WanVAEDecoder(nn.Module):
    """Latents [B, z, T, h, w] -> pixels in [-1, 1]: de-normalize, ``conv2``, ``decoder``, clamp."""

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WanVAEConfig()
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)
        # Not in Wan checkpoints, so kept out of the state dict.
        shape = (1, config.z_dim, 1, 1, 1)
        self.register_buffer("latent_mean", torch.tensor(config.latent_mean).reshape(shape), persistent=False)
        self.register_buffer("latent_std", torch.tensor(config.latent_std).reshape(shape), persistent=False)

    @property
    def num_state_tensors(self) -> int:
        return len(self.decoder.state_specs)

    def _decode(self, z: torch.Tensor, stream: _Stream | None, first: bool) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"expected latents [B, {self.config.z_dim}, T, h, w], got {tuple(z.shape)}")
        z = z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)
        return self.decoder(self.conv2(z), stream, first).clamp(-1.0, 1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable one-shot decode (training); same result as ``decode``."""
        return self._decode(z, None, first=True)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Whole video at once: z [B, z, T, h, w] -> [B, 3, 1 + 4 * (T - 1), 8h, 8w] (Wan config)."""
        return self._decode(z, None, first=True)

    # ---- streaming -------------------------------------------------------------------------------

    def state_shapes(self, batch: int, h: int, w: int) -> list[tuple[int, int, int, int, int]]:
        """Shapes of the state tensors for latents of spatial size h x w."""
        return [(batch, c, CACHE_T, h * s, w * s) for c, s in self.decoder.state_specs]

    def state_nbytes(self, batch: int, h: int, w: int, dtype: torch.dtype = torch.float16) -> int:
        itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
        return sum(math.prod(s) for s in self.state_shapes(batch, h, w)) * itemsize

    def init_state(
        self, batch: int, h: int, w: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> VAEStreamState:
        p = self.conv2.weight
        dtype, device = dtype or p.dtype, device or p.device
        return VAEStreamState([torch.zeros(s, dtype=dtype, device=device) for s in self.state_shapes(batch, h, w)])

    def stream_step(
        self, z: torch.Tensor, states: list[torch.Tensor], first: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pure streaming step (the exportable one): z [B, z, T, h, w] (usually T = 1) and states ->
        pixels [B, 3, 1 + 4(T-1) if first else 4T, 8h, 8w] and the new states (nothing is modified)."""
        if len(states) != self.num_state_tensors:
            raise ValueError(f"expected {self.num_state_tensors} state tensors, got {len(states)}")
        stream = _Stream(states)
        return self._decode(z, stream, first), stream.new

    @torch.no_grad()
    def decode_frame(self, z: torch.Tensor, state: VAEStreamState) -> torch.Tensor:
        """Next latent frame(s) z [B, z, 1, h, w] -> pixels [B, 3, 1 (first frame) or 4, 8h, 8w].

        ``state``'s tensors are overwritten in place (their storage never changes)."""
        b, _, _, h, w = z.shape
        expected = self.state_shapes(b, h, w)
        if [tuple(t.shape) for t in state.tensors] != expected:
            raise ValueError(
                f"stream state does not fit latents of shape {tuple(z.shape)}; create it with init_state({b}, {h}, {w})"
            )
        x, new = self.stream_step(z, state.tensors, state.first)
        for buf, value in zip(state.tensors, new):
            if value is not buf:
                buf.copy_(value)
        state.first = False
        return x


@torch.no_grad()
def init_random_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights that keep activations O(1) (default init shrinks them layer by layer) and
    non-trivial gammas (tests, benchmarks); works for the encoder and the decoder."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 1.5 / m.weight[0].numel() ** 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, RMS_norm):
            m.gamma.copy_(0.5 + torch.rand(m.gamma.shape, generator=g))
    return model.eval()
