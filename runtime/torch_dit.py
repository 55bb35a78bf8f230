"""A plan's text and dit stages in PyTorch, on any device: what the torch backend runs.

Op for op the graphs of compiler/lower_dit.py (batch 1, tokens kept 2D ``[N, dim]``), built from the tensors
the plan stores, so ORT and this backend compute the same function and a parity test can compare them:

- Linears: stored int8 / nvfp4 weights are decoded once at load into the compute dtype (weight-only, as
  ORT does); fp8 weights whose inputs the plan quantizes to fp8 stay fp8 and run as one
  ``torch._scaled_mm`` (per-token or per-tensor activation scale x per-channel weight scale) where the
  device has FP8 GEMMs. Activation Q/DQ follows quant/activations.py exactly (static, per-timestep table
  picked on the device, dynamic per token).
- The residual stream, LayerNorm / RMSNorm, modulation and the time embedding stay fp32 whatever the
  compute dtype; GEMMs and attention run in it (fp32 for parity, bf16 / fp16 for speed).
- Self-attention goes through a cache-ops object (runtime/torch_cache.py): the block's K/V are written
  into the plan's cache rows, then the block's queries attend every valid row, the fresh rows included.

Every per-call input lives in a preallocated ``DitInputs`` on the device, so the whole call can be
captured once as a CUDA graph and replayed with new inputs copied in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arvc.model.config import WanConfig
from arvc.quant.activations import QMAX, ActQuant
from arvc.quant.formats import E4M3_MAX

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fp8_gemm_supported(device: torch.device) -> bool:
    """torch._scaled_mm with row-wise scales: CUDA sm_89+ (Ada, Hopper, Blackwell); also CPU (tests)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


class ActInput:
    """Quantize a GEMM input as the plan's QuantizeLinear -> DequantizeLinear does (fp32 math)."""

    def __init__(self, q: ActQuant, device: torch.device):
        self.format, self.mode, self.qmax = q.format, q.mode, QMAX[q.format]
        self.scale = None if q.scale is None else q.scale.to(device=device, dtype=torch.float32)

    def scale_for(self, x: torch.Tensor, t_index: torch.Tensor) -> torch.Tensor:
        # -> [] (static), or [M, 1] (dynamic: one per token)
        if self.mode == "dynamic":
            amax = x.abs().amax(dim=-1, keepdim=True)
            return torch.where(amax > 0, amax / self.qmax, torch.ones_like(amax))
        return self.scale if self.scale.dim() == 0 else self.scale.index_select(0, t_index).squeeze(0)

    def codes(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        y = x / scale
        if self.format == "int8":
            return torch.round(y).clamp(-128, 127)
        return y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)

    def __call__(self, x: torch.Tensor, t_index: torch.Tensor) -> torch.Tensor:
        x = x.float()
        scale = self.scale_for(x, t_index)
        return self.codes(x, scale).float() * scale


class PlanLinear:
    """y = x W^T + b for one stored linear; ``x`` fp32 or compute dtype [M, in] -> compute dtype [M, out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype, act: ActInput | None = None,
                 fp8: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.dtype, self.act = dtype, act
        self.bias = bias.to(dtype)
        self.weight = weight.to(dtype) if fp8 is None else None
        # fp8: (weight float8_e4m3fn [out, in], per-channel scale fp32 [1, out]); _scaled_mm wants B column-major
        self.fp8 = None if fp8 is None else (fp8[0].t(), fp8[1].reshape(1, -1).float())

    def __call__(self, x: torch.Tensor, t_index: torch.Tensor) -> torch.Tensor:
        if self.fp8 is not None:
            xf = x.float()
            scale = self.act.scale_for(xf, t_index)
            scale_a = scale.expand(x.shape[0], 1).contiguous() if scale.dim() == 0 else scale
            w, scale_b = self.fp8
            y = torch._scaled_mm(self.act.codes(xf, scale), w, scale_a=scale_a, scale_b=scale_b, out_dtype=self.dtype)
            return y + self.bias
        if self.act is not None:
            x = self.act(x, t_index)
        return F.linear(x.to(self.dtype), self.weight, self.bias)


@dataclass
class DitInputs:
    """The per-call inputs of the dit stage, preallocated on the device (a CUDA graph reads them in place)."""

    latents: torch.Tensor  # [1, C, F, H, W] fp32
    timestep: torch.Tensor  # [1] fp64
    write_rows: torch.Tensor  # [N] int64: cache row of each of the block's tokens
    write_rows_i32: torch.Tensor  # the same rows as int32 (the csrc kernels' index type), once per call
    key_valid: torch.Tensor  # [Nk] bool: cache rows attended
    q_cos: torch.Tensor  # [N, Dh/2] fp32 (also rotates K in absolute mode)
    q_sin: torch.Tensor
    k_cos: torch.Tensor | None  # [Nk, Dh/2] fp32, relative RoPE only
    k_sin: torch.Tensor | None

    @classmethod
    def allocate(cls, cfg: WanConfig, latent_shape, n_tokens: int, cache_rows: int, relative: bool, device):
        half = cfg.head_dim // 2
        f32 = dict(dtype=torch.float32, device=device)
        return cls(torch.zeros(latent_shape, **f32), torch.zeros(1, dtype=torch.float64, device=device),
                   torch.zeros(n_tokens, dtype=torch.int64, device=device),
                   torch.zeros(n_tokens, dtype=torch.int32, device=device),
                   torch.zeros(cache_rows, dtype=torch.bool, device=device),
                   torch.zeros(n_tokens, half, **f32), torch.zeros(n_tokens, half, **f32),
                   torch.zeros(cache_rows, half, **f32) if relative else None,
                   torch.zeros(cache_rows, half, **f32) if relative else None)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    # x: [N, dim]; adjacent pairs (x[2i], x[2i+1]) of each head rotated by the [N, Dh/2] tables, in fp32
    n = x.shape[0]
    xp = x.float().view(n, heads, -1, 2)
    c, s = cos[:, None], sin[:, None]  # [N, 1, Dh/2]
    even, odd = xp[..., 0], xp[..., 1]
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).view(n, -1).to(x.dtype)


def _layer_norm(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


class PlanDiT:
    """The text and dit stages of one plan on one device. ``tensors``: the plan's dit.safetensors content."""

    def __init__(self, cfg: WanConfig, tensors: dict[str, torch.Tensor], weight_formats: dict[str, str],
                 act_quant: dict[str, ActQuant], act_timesteps: tuple[float, ...], device: torch.device,
                 dtype: torch.dtype, fp8_gemm: bool):
        from arvc.quant.weights import dequantize_weight

        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.act_timesteps = torch.tensor(act_timesteps or (0.0,), dtype=torch.float64, device=device)
        f32 = dict(device=device, dtype=torch.float32)

        def vec(name: str) -> torch.Tensor:
            return tensors[name].to(**f32)

        def linear(prefix: str, dtype: torch.dtype = dtype) -> PlanLinear:
            fmt = weight_formats.get(prefix)
            stored = {s: tensors[f"{prefix}.weight{s}"] for s in ("", "_scale", "_scale_2")
                      if f"{prefix}.weight{s}" in tensors}
            q = act_quant.get(prefix)
            act = ActInput(q, device) if q is not None else None
            if fmt == "fp8" and act is not None and act.format == "fp8" and fp8_gemm:
                return PlanLinear(None, vec(f"{prefix}.bias"), dtype, act,
                                  fp8=(stored[""].to(device), stored["_scale"].to(device)))
            w = dequantize_weight(stored, fmt) if fmt else stored[""].float()
            return PlanLinear(w.to(device), vec(f"{prefix}.bias"), dtype, act)

        self.fp8_layers = [n for n, f in weight_formats.items() if f == "fp8" and n in act_quant and fp8_gemm
                           and act_quant[n].format == "fp8"]
        # embeddings and the head are tiny next to the blocks and sensitive: fp32 in every compute dtype
        fp32 = torch.float32
        self.patch_w, self.patch_b = vec("patch_embedding.weight"), vec("patch_embedding.bias")
        self.text_0, self.text_2 = linear("text_embedding.0", fp32), linear("text_embedding.2", fp32)
        self.time_0, self.time_2 = linear("time_embedding.0", fp32), linear("time_embedding.2", fp32)
        self.time_proj = linear("time_projection.1", fp32)
        self.blocks = []
        for i in range(cfg.num_layers):
            p = f"blocks.{i}"
            self.blocks.append({
                "modulation": vec(f"{p}.modulation").reshape(6, cfg.dim),
                **{f"sa_{n}": linear(f"{p}.self_attn.{n}") for n in "qkvo"},
                "sa_norm_q": vec(f"{p}.self_attn.norm_q.weight"), "sa_norm_k": vec(f"{p}.self_attn.norm_k.weight"),
                **{f"ca_{n}": linear(f"{p}.cross_attn.{n}") for n in "qkvo"},
                "ca_norm_q": vec(f"{p}.cross_attn.norm_q.weight"), "ca_norm_k": vec(f"{p}.cross_attn.norm_k.weight"),
                "norm3_w": vec(f"{p}.norm3.weight"), "norm3_b": vec(f"{p}.norm3.bias"),
                "ffn_0": linear(f"{p}.ffn.0"), "ffn_2": linear(f"{p}.ffn.2"),
            })
        self.head_mod = vec("head.modulation").reshape(2, cfg.dim)
        self.head = linear("head.head", fp32)
        half = cfg.freq_dim // 2
        self.freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half).to(device)
        self._no_t = torch.zeros(1, dtype=torch.int64, device=device)

    # -- text stage (once per prompt) -------------------------------------------------------------------
    @torch.no_grad()
    def cross_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """context [1, L, text_dim] -> per layer (k, v) [L, dim] in the compute dtype."""
        ctx = context.reshape(-1, self.cfg.text_dim).to(self.device, torch.float32)
        text = self.text_2(F.gelu(self.text_0(ctx, self._no_t).float(), approximate="tanh"), self._no_t)
        out = []
        for b in self.blocks:
            k = _rms(b["ca_k"](text, self._no_t).float(), b["ca_norm_k"], self.cfg.eps)
            out.append((k.to(self.dtype), b["ca_v"](text, self._no_t).to(self.dtype)))
        return out

    # -- dit stage (one call on one block) --------------------------------------------------------------
    def _time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # t: [1] fp64 -> e [1, dim] fp32, e0 [6, dim] fp32, and the calibrated-timestep index (per-timestep scales)
        arg = t[:, None] * self.freqs[None]
        s = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).float()
        t_index = torch.argmin((self.act_timesteps - t).abs()).reshape(1)  # ties: the first, as ONNX ArgMin
        e = self.time_2(F.silu(self.time_0(s, t_index).float()), t_index).float()
        e0 = self.time_proj(F.silu(e), t_index).float().reshape(6, -1)
        return e, e0, t_index

    @torch.no_grad()
    def forward(self, inp: DitInputs, cross: list, cache) -> torch.Tensor:
        """One dit call -> x0 [1, C, F, H, W] fp32 (the block's K/V written into ``cache`` on the way)."""
        cfg = self.cfg
        heads, eps = cfg.num_heads, cfg.eps
        latents = inp.latents
        _, c, f, hl, wl = latents.shape
        y = F.conv3d(latents, self.patch_w, self.patch_b, stride=cfg.patch_size)  # [1, dim, F, h, w]
        x = y.reshape(cfg.dim, -1).t().float()  # [N, dim] fp32 residual, tokens (frame, row, col)
        e, e0, t_index = self._time(inp.timestep)
        for i, b in enumerate(self.blocks):
            shift1, scale1, gate1, shift2, scale2, gate2 = (b["modulation"] + e0).chunk(6, dim=0)  # [1, dim] each

            h = _layer_norm(x, eps) * (1 + scale1) + shift1
            q = rotate_pairs(_rms(b["sa_q"](h, t_index), b["sa_norm_q"], eps), inp.q_cos, inp.q_sin, heads)
            k = _rms(b["sa_k"](h, t_index), b["sa_norm_k"], eps)
            if inp.k_cos is None:  # absolute RoPE: K is cached rotated
                k = rotate_pairs(k, inp.q_cos, inp.q_sin, heads)
            attn = cache.attend(i, q, k, b["sa_v"](h, t_index), inp)  # [N, dim]
            x = x + b["sa_o"](attn, t_index).float() * gate1

            n3 = _layer_norm(x, eps, b["norm3_w"], b["norm3_b"])
            q = _rms(b["ca_q"](n3, t_index), b["ca_norm_q"], eps)
            x = x + b["ca_o"](_cross_attention(q, *cross[i], heads), t_index).float()

            h = _layer_norm(x, eps) * (1 + scale2) + shift2
            x = x + b["ffn_2"](F.gelu(b["ffn_0"](h, t_index).float(), approximate="tanh"), t_index).float() * gate2

        shift, scale = (self.head_mod + e).chunk(2, dim=0)
        out = self.head(_layer_norm(x, eps) * (1 + scale) + shift, t_index).float()  # [N, 64]
        p0, p1, p2 = cfg.patch_size
        u = out.reshape(f // p0, hl // p1, wl // p2, p0, p1, p2, cfg.out_channels).permute(6, 0, 3, 1, 4, 2, 5)
        v = u.reshape(1, cfg.out_channels, f, hl, wl)
        return latents - v * (inp.timestep / 1000.0).float()


def _cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    # q: [N, dim], k/v: [L, dim]; every text row attended (Wan uses no key mask)
    split = (lambda t: t.reshape(1, t.shape[0], heads, -1).transpose(1, 2))
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(q.shape[0], -1)


def softmax_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
