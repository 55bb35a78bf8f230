"""The Wan2.1 text-to-video DiT: its math, written once, and its parameters.

The forward (DESIGN section 1) is written here as functions of a small op vocabulary, ``DitOps``. Each
backend supplies the ops and nothing else: the reference below (``ReferenceOps``: batched torch, the
checkpoint's dtypes), the ONNX emitter (arvc/graphs/lower_dit.py: the ops add graph nodes) and the plan's torch
executor (runtime/torch_dit.py: the plan's stored tensors). Why a vocabulary rather than an exported
``nn.Module``: docs/model-ops.md.

Parameter names equal the original Wan checkpoints (see shared/reference). Values passed between ops are
opaque to the math (tensors, graph value names); what it fixes is the order of operations, which weights
they read and how the residual stream, modulation and gates combine. Shapes in the comments are the
reference's: B batch, F latent frames, T tokens per frame, N = F*T tokens, H heads, Dh head dim, L text
tokens. Linears are named by their prefix (``blocks.3.self_attn.q``), norms by theirs.

Dtypes of the reference: ``cd`` is the weights' (compute) dtype; ``md`` is the residual/modulation dtype,
fp32 for the original Wan and bf16 for the causal checkpoints (``Numerics.modulation_bf16``). The time
embedding and the head run in ``promote(md, cd)``, as Wan's fp32 autocast regions do.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Numerics, WanConfig
from .rope import RotaryTable, rope_angles


# -- the op vocabulary ---------------------------------------------------------------------------------------
class DitOps(Protocol):
    """What a backend supplies. ``x`` is the residual stream [B, N, dim]; every op returns a new value."""

    def patchify(self, latents): ...  # [B, C, F, H, W] -> tokens [B, N, dim], ordered (frame, row, col)
    def unpatchify(self, out): ...  # [B, N, p0*p1*p2*C] (C fastest) -> flow v [B, C, F, H, W]
    def time_sinusoid(self, t): ...  # t -> [B*F, freq_dim], cos half first
    def time_modulation(self, e, e0): ...  # shaped per frame: e [B, F, dim], e0 [B, F, 6, dim]
    def modulation(self, name: str, e, parts: int) -> list: ...  # parameter ``name`` + e, split in ``parts``
    def linear(self, x, prefix: str): ...
    def rms_norm(self, x, prefix: str): ...  # over the full dim
    def layer_norm(self, x, prefix: str | None = None): ...  # None: Wan's affine-free LayerNorm
    def modulate(self, x, shift, scale): ...  # x * (1 + scale) + shift, per frame
    def residual(self, x, y, gate=None): ...  # x + y * gate (per frame), or x + y
    def gelu(self, x): ...  # tanh approximation
    def silu(self, x): ...
    def self_attention(self, layer: int, q, k, v): ...  # after RMSNorm, before RoPE: RoPE, cache, attention
    def cross_attention(self, q, k, v): ...  # every text row attended (Wan uses no key mask)


def text_kv(ops: DitOps, cfg: WanConfig, context) -> list[tuple]:
    """Per-layer cross-attention K/V of a prompt, computed once per prompt. context: [B, L, text_dim]."""
    text = ops.linear(ops.gelu(ops.linear(context, "text_embedding.0")), "text_embedding.2")  # [B, L, dim]
    return [(ops.rms_norm(ops.linear(text, f"blocks.{i}.cross_attn.k"), f"blocks.{i}.cross_attn.norm_k"),
             ops.linear(text, f"blocks.{i}.cross_attn.v")) for i in range(cfg.num_layers)]


def time_embedding(ops: DitOps, t):
    """t -> e (un-projected, for the head), e0 (the six block modulations)."""
    s = ops.time_sinusoid(t)
    e = ops.linear(ops.silu(ops.linear(s, "time_embedding.0")), "time_embedding.2")
    return ops.time_modulation(e, ops.linear(ops.silu(e), "time_projection.1"))


def block(ops: DitOps, i: int, x, e0, cross: tuple):
    p = f"blocks.{i}"
    shift1, scale1, gate1, shift2, scale2, gate2 = ops.modulation(f"{p}.modulation", e0, 6)

    # self-attention over the frames the backend's context holds (the whole clip, or the cached window)
    h = ops.modulate(ops.layer_norm(x), shift1, scale1)
    sa = f"{p}.self_attn"
    q = ops.rms_norm(ops.linear(h, f"{sa}.q"), f"{sa}.norm_q")
    k = ops.rms_norm(ops.linear(h, f"{sa}.k"), f"{sa}.norm_k")
    v = ops.linear(h, f"{sa}.v")
    x = ops.residual(x, ops.linear(ops.self_attention(i, q, k, v), f"{sa}.o"), gate1)

    # cross-attention on the prompt's K/V (no modulation, no gate)
    ca = f"{p}.cross_attn"
    q = ops.rms_norm(ops.linear(ops.layer_norm(x, f"{p}.norm3"), f"{ca}.q"), f"{ca}.norm_q")
    x = ops.residual(x, ops.linear(ops.cross_attention(q, *cross), f"{ca}.o"))

    # feed-forward
    h = ops.modulate(ops.layer_norm(x), shift2, scale2)
    return ops.residual(x, ops.linear(ops.gelu(ops.linear(h, f"{p}.ffn.0")), f"{p}.ffn.2"), gate2)


def head(ops: DitOps, x, e):
    shift, scale = ops.modulation("head.modulation", e, 2)
    return ops.linear(ops.modulate(ops.layer_norm(x), shift, scale), "head.head")


def flow(ops: DitOps, cfg: WanConfig, latents, t, cross: list):
    """One DiT call: latents at timestep(s) t, prompt K/V ``cross`` -> the flow prediction v."""
    x = ops.patchify(latents)
    e, e0 = time_embedding(ops, t)
    for i in range(cfg.num_layers):
        x = block(ops, i, x, e0, cross[i])
    return ops.unpatchify(head(ops, x, e))


def velocity_to_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    # flow matching: x_t = (1 - sigma) x0 + sigma eps, v = eps - x0  =>  x0 = x_t - sigma v  (fp32)
    return x_t.float() - sigma * v.float()


def sinusoid_frequencies(freq_dim: int) -> torch.Tensor:
    """[freq_dim/2] float64: 10000^(-k/half), the time sinusoid's frequencies (every backend uses these)."""
    half = freq_dim // 2
    return torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)


# -- the reference: parameters and ops -----------------------------------------------------------------------
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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in fp32 in every numerics mode (both Wan and the causal checkpoints do)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class _Attention(nn.Module):
    """q, k, v, o linears and the RMSNorms on q and k (over the full dim): both attentions' parameters."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(d, cfg.eps), RMSNorm(d, cfg.eps)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.self_attn = _Attention(cfg)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = _Attention(cfg)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        self.head = nn.Linear(cfg.dim, cfg.patch_out)


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

    # -- entry points -------------------------------------------------------------------------
    def cross_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention K/V of a prompt. context: [B, L, text_dim] -> [B, L, dim] each."""
        return text_kv(ReferenceOps(self), self.cfg, context)

    def run(self, x, t, cross_kvs, self_ctx: SelfAttentionContext) -> torch.Tensor:
        """One DiT call: latents [B, C, F, H, W] at timesteps t (scalar, [B] or [B, F]) -> flow v (fp32)."""
        ops = ReferenceOps(self, self_ctx, grid=self.grid(x))
        return flow(ops, self.cfg, x, self._frame_times(t, x.shape[0], ops.grid[0]), cross_kvs)

    def forward_full(self, x, t, context, frame_offset: int = 0) -> torch.Tensor:
        """Bidirectional attention over all frames (the original Wan forward)."""
        return self.forward_masked(x, t, context, mask=None, frame_offset=frame_offset)

    def forward_masked(self, x, t, context, mask: torch.Tensor | None, frame_offset: int = 0,
                       frame_positions: torch.Tensor | None = None) -> torch.Tensor:
        """All frames in one call with a token-level boolean mask [N, N] (True = attend).

        frame_positions: RoPE position of each latent frame (default frame_offset + 0..F-1); training
        sequences that hold a frame twice (clean context and its noisy copy) give both the same one."""
        f, h, w = self.grid(x)
        if frame_positions is None:
            frame_positions = torch.arange(frame_offset, frame_offset + f)
        rope = RotaryTable(rope_angles(self.cfg.rope_axis_dims, frame_positions, h, w))
        return self.run(x, t, self.cross_kv(context), FullAttention(rope, mask))

    def forward(self, x, t, context):
        return self.forward_full(x, t, context)

    def grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (F, h, w) of latents [B, C, F, H, W]."""
        return tuple(n // p for n, p in zip(x.shape[2:], self.cfg.patch_size))

    def _frame_times(self, t: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps must be a scalar, [B] or [B, F] = [{batch}, {frames}]; got {tuple(t.shape)}")
        return t


class ReferenceOps:
    """DitOps on a WanDiT's parameters, batched, in the checkpoint's dtypes (see the module docstring).

    Linears and norms are called as the modules they are, so forward hooks on them (calibration, the
    sensitivity sweep, activation emulation) see every call. The time embedding and head linears run in
    the accumulation dtype instead of the weights' (Wan's autocast regions)."""

    FULL_PRECISION = ("time_embedding.", "time_projection.", "head.")

    def __init__(self, model: WanDiT, self_ctx: SelfAttentionContext | None = None, grid=None):
        self.model, self.ctx, self.grid = model, self_ctx, grid
        self.heads, self.eps = model.cfg.num_heads, model.cfg.eps
        self.md, self.cd, self.acc = model.residual_dtype, model.compute_dtype, model.acc_dtype
        self.frame_tokens = None if grid is None else grid[1] * grid[2]
        self._batch_frames = None

    def _per_frame(self, x: torch.Tensor) -> torch.Tensor:
        # [B, N, D] -> [B, F, T, D], so per-frame modulation [B, F, 1, D] broadcasts
        return x.view(x.shape[0], -1, self.frame_tokens, x.shape[-1])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.heads, -1)  # [B, N, dim] -> [B, N, H, Dh]

    def patchify(self, latents):
        y = self.model.patch_embedding(latents.to(self.cd))  # [B, dim, F, h, w]
        return y.flatten(2).transpose(1, 2).to(self.md)

    def unpatchify(self, out):
        b, (f, h, w) = out.shape[0], self.grid
        p0, p1, p2 = self.model.cfg.patch_size
        c = self.model.cfg.out_channels
        u = out.float().view(b, f, h, w, p0, p1, p2, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return u.reshape(b, c, f * p0, h * p1, w * p2)

    def time_sinusoid(self, t):
        # t: [B, F] (fractional allowed) -> [B*F, freq_dim], computed in float64 as Wan does
        self._batch_frames = t.shape
        arg = torch.outer(t.flatten().to(torch.float64), sinusoid_frequencies(self.model.cfg.freq_dim).to(t.device))
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).to(self.acc)

    def time_modulation(self, e, e0):
        b, f = self._batch_frames
        return e.view(b, f, -1).to(self.md), e0.view(b, f, 6, -1).to(self.md)

    def modulation(self, name, e, parts):
        # e: [B, F, parts or 1, dim] -> parts x [B, F, 1, dim]
        param = self.model.get_parameter(name).to(self.md).unsqueeze(1)
        mod = param + (e if e.dim() == 4 else e.unsqueeze(2))
        return [m.unsqueeze(2) for m in mod.unbind(2)]

    def linear(self, x, prefix):
        layer = self.model.get_submodule(prefix)
        if prefix.startswith(self.FULL_PRECISION):
            bias = None if layer.bias is None else layer.bias.to(self.acc)
            return F.linear(x.to(self.acc), layer.weight.to(self.acc), bias)
        return layer(x.to(self.cd))

    def rms_norm(self, x, prefix):
        return self.model.get_submodule(prefix)(x)

    def layer_norm(self, x, prefix=None):
        # computed in fp32, returned in the residual dtype
        if prefix is None:
            return F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        ln = self.model.get_submodule(prefix)
        return F.layer_norm(x.float(), (x.shape[-1],), ln.weight.float(), ln.bias.float(), self.eps).to(self.md)

    def modulate(self, x, shift, scale):
        return (self._per_frame(x) * (1 + scale) + shift).flatten(1, 2)

    def residual(self, x, y, gate=None):
        if gate is None:
            return x + y.to(self.md)
        return (self._per_frame(x) + self._per_frame(y.to(self.md)) * gate).flatten(1, 2)

    def gelu(self, x):
        return F.gelu(x, approximate="tanh")

    def silu(self, x):
        return F.silu(x)

    def self_attention(self, layer, q, k, v):
        return self.ctx.attend(layer, self._heads(q), self._heads(k), self._heads(v)).flatten(2)

    def cross_attention(self, q, k, v):
        return attention(self._heads(q), self._heads(k), self._heads(v)).flatten(2)


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
