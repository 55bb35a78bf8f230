"""The Wan2.1 text-to-video DiT, written as the exact reference every arvc lowering is checked against.

Parameter names equal the original Wan checkpoints (see shared/reference). The forward follows
DESIGN section 1; tensors in comments: B batch, F latent frames, T tokens per frame, N = F*T tokens,
H heads, Dh head dim, L text tokens.

Dtypes: ``cd`` is the weights' (compute) dtype; ``md`` is the residual/modulation dtype, fp32 for the
original Wan and bf16 for the causal checkpoints (``Numerics.modulation_bf16``). The time embedding
and the head run in ``promote(md, cd)``, as Wan's fp32 autocast regions do.

Self-attention is delegated to a context object (``attend(layer, q, k, v)``) so that the same blocks
serve a full forward, a masked teacher-forcing forward and the cached causal call.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Numerics, WanConfig
from .rope import RotaryTable, rope_angles


class SelfAttentionContext(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [B, N, H, Dh] after RMSNorm, before RoPE -> [B, N, H, Dh]."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    # q: [B, Lq, H, Dh], k/v: [B, Lk, H, Dh], mask: bool [Lq, Lk] (True = attend); scale 1/sqrt(Dh)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


class FullAttention:
    """Every token attends to every token allowed by ``mask``, with RoPE from ``rope``."""

    def __init__(self, rope: RotaryTable, mask: torch.Tensor | None = None):
        self.rope, self.mask = rope, mask

    def attend(self, layer, q, k, v):
        return attention(self.rope.rotate(q), self.rope.rotate(k), v, self.mask)


def linear_in(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A linear computed in ``dtype`` whatever its weights' dtype (Wan's fp32 autocast regions)."""
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    # t: [M] (fractional allowed) -> [M, dim] float64, cos half first, frequencies 10000^(-k/half)
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    arg = torch.outer(t.to(torch.float64), freqs.to(t.device))
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 in every numerics mode (both Wan and the causal checkpoints do)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class _Projections(nn.Module):
    """q, k, v, o linears and the RMSNorms on q and k (over the full dim), as both attentions have."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(d, cfg.eps), RMSNorm(d, cfg.eps)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.heads, self.head_dim)  # [B, N, dim] -> [B, N, H, Dh]


class SelfAttention(_Projections):
    def forward(self, x: torch.Tensor, ctx: SelfAttentionContext, layer: int) -> torch.Tensor:
        q = self.split_heads(self.norm_q(self.q(x)))
        k = self.split_heads(self.norm_k(self.k(x)))
        v = self.split_heads(self.v(x))
        return self.o(ctx.attend(layer, q, k, v).flatten(2))


class CrossAttention(_Projections):
    def kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # text: [B, L, dim] -> k, v: [B, L, H, Dh]; computed once per prompt
        return self.split_heads(self.norm_k(self.k(text))), self.split_heads(self.v(text))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = self.split_heads(self.norm_q(self.q(x)))
        # all L text rows are attended, padding included (Wan uses no key mask)
        return self.o(attention(q, kv[0], kv[1]).flatten(2))


def _per_frame(x: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    # [B, N, D] -> [B, F, T, D], so per-frame modulation [B, F, 1, D] broadcasts
    return x.view(x.shape[0], -1, frame_tokens, x.shape[-1])


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.self_attn = SelfAttention(cfg)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))

    def _ln(self, x: torch.Tensor) -> torch.Tensor:
        # affine-free LayerNorm computed in fp32, returned in the residual dtype
        return F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def forward(self, x, e0, frame_tokens, self_ctx, layer, cross_kv):
        # x: [B, N, dim] (md); e0: [B, F, 6, dim] (md)
        md, cd = x.dtype, self.self_attn.q.weight.dtype
        mod = self.modulation.to(md).unsqueeze(1) + e0  # [B, F, 6, dim]
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.unsqueeze(2) for m in mod.unbind(2))  # [B, F, 1, dim]

        h = _per_frame(self._ln(x), frame_tokens) * (1 + scale1) + shift1
        y = self.self_attn(h.flatten(1, 2).to(cd), self_ctx, layer)
        x = (_per_frame(x, frame_tokens) + _per_frame(y.to(md), frame_tokens) * gate1).flatten(1, 2)

        n3 = F.layer_norm(x.float(), (x.shape[-1],), self.norm3.weight.float(), self.norm3.bias.float(), self.eps)
        x = x + self.cross_attn(n3.to(md).to(cd), cross_kv).to(md)

        h = _per_frame(self._ln(x), frame_tokens) * (1 + scale2) + shift2
        y = self.ffn(h.flatten(1, 2).to(cd))
        return (_per_frame(x, frame_tokens) + _per_frame(y.to(md), frame_tokens) * gate2).flatten(1, 2)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        self.head = nn.Linear(cfg.dim, cfg.patch_out)

    def forward(self, x, e, frame_tokens, acc_dtype):
        # x: [B, N, dim] (md); e: [B, F, dim] un-projected time embedding (md) -> [B, N, patch_out] fp32
        md = x.dtype
        mod = self.modulation.to(md).unsqueeze(1) + e.unsqueeze(2)  # [B, F, 2, dim]
        shift, scale = mod[:, :, 0:1], mod[:, :, 1:2]
        ln = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(md)
        h = (_per_frame(ln, frame_tokens) * (1 + scale) + shift).flatten(1, 2)
        return linear_in(self.head, h, acc_dtype).float()


class WanDiT(nn.Module):
    def __init__(self, cfg: WanConfig, numerics: Numerics = Numerics()):
        super().__init__()
        self.cfg, self.numerics = cfg, numerics
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    # -- dtypes -------------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def residual_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.numerics.modulation_bf16 else torch.float32

    @property
    def acc_dtype(self) -> torch.dtype:
        return torch.promote_types(self.residual_dtype, self.compute_dtype)

    # -- pieces shared by every path ----------------------------------------------------------
    def embed_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        # x: [B, C, F, H, W] -> tokens [B, F*h*w, dim] ordered (frame, row, col), grid (F, h, w)
        y = self.patch_embedding(x.to(self.compute_dtype))  # [B, dim, F, h, w]
        grid = tuple(y.shape[2:])
        return y.flatten(2).transpose(1, 2).to(self.residual_dtype), grid

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # t: [B, F] (fractional allowed) -> e: [B, F, dim], e0: [B, F, 6, dim], both md
        acc = self.acc_dtype
        s = sinusoidal_embedding(t.flatten(), self.cfg.freq_dim).to(acc)
        e = linear_in(self.time_embedding[2], F.silu(linear_in(self.time_embedding[0], s, acc)), acc)
        e0 = linear_in(self.time_projection[1], F.silu(e), acc)
        b, f = t.shape
        md = self.residual_dtype
        return e.view(b, f, -1).to(md), e0.view(b, f, 6, -1).to(md)

    def cross_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention K/V of a prompt. context: [B, L, text_dim]."""
        text = self.text_embedding(context.to(self.compute_dtype))  # [B, L, dim]
        return [blk.cross_attn.kv(text) for blk in self.blocks]

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        # out: [B, N, p0*p1*p2*C] with C fastest -> [B, C, F*p0, h*p1, w*p2]
        b = out.shape[0]
        f, h, w = grid
        p0, p1, p2 = self.cfg.patch_size
        c = self.cfg.out_channels
        u = out.view(b, f, h, w, p0, p1, p2, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return u.reshape(b, c, f * p0, h * p1, w * p2)

    def _frame_times(self, t: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must be a scalar, [B] or [B, F] = [{batch}, {frames}]; got {tuple(t.shape)}")
        return t

    def run(self, x, t, cross_kvs, self_ctx: SelfAttentionContext) -> torch.Tensor:
        """One DiT call: latents [B, C, F, H, W] at timesteps t -> flow prediction v (fp32, same shape)."""
        tokens, grid = self.embed_latents(x)
        frame_tokens = grid[1] * grid[2]
        e, e0 = self.embed_time(self._frame_times(t, x.shape[0], grid[0]))
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens, e0, frame_tokens, self_ctx, i, cross_kvs[i])
        return self.unpatchify(self.head(tokens, e, frame_tokens, self.acc_dtype), grid)

    def rope_table(self, frame_pos: torch.Tensor, grid_hw: tuple[int, int]) -> RotaryTable:
        return RotaryTable(rope_angles(self.cfg.rope_axis_dims, frame_pos, *grid_hw))

    # -- the three entry points ---------------------------------------------------------------
    def forward_full(self, x, t, context, frame_offset: int = 0) -> torch.Tensor:
        """Bidirectional attention over all frames (the original Wan forward)."""
        return self.forward_masked(x, t, context, mask=None, frame_offset=frame_offset)

    def forward_masked(self, x, t, context, mask: torch.Tensor | None, frame_offset: int = 0,
                       frame_positions: torch.Tensor | None = None) -> torch.Tensor:
        """All frames in one call with a token-level boolean mask [N, N] (True = attend).

        frame_positions: RoPE position of each latent frame (default frame_offset + 0..F-1); training
        sequences that hold a frame twice (clean context and its noisy copy) give both the same one."""
        f = x.shape[2] // self.cfg.patch_size[0]
        hw = (x.shape[3] // self.cfg.patch_size[1], x.shape[4] // self.cfg.patch_size[2])
        if frame_positions is None:
            frame_positions = torch.arange(frame_offset, frame_offset + f)
        rope = self.rope_table(frame_positions, hw)
        return self.run(x, t, self.cross_kv(context), FullAttention(rope, mask))

    def forward(self, x, t, context):
        return self.forward_full(x, t, context)


def velocity_to_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    # flow matching: x_t = (1 - sigma) x0 + sigma eps, v = eps - x0  =>  x0 = x_t - sigma v  (fp32)
    return x_t.float() - sigma * v.float()


@torch.no_grad()
def init_random_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with O(1) activations and non-trivial norms/modulation (tests, demos, benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2 and "modulation" not in name:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        elif "modulation" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        else:  # norm weights
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return model
