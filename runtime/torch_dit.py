"""A plan's text and dit stages in PyTorch, on any device: what the torch backend runs.

arvc.model.dit's math on ``PlanOps`` (batch 1, tokens kept 2D ``[N, dim]``, as the plan's graphs), built from the
tensors the plan stores, so ORT and this backend compute the same function and a parity test can compare them:

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arvc.model import dit as wan
from arvc.model.config import WanConfig
from arvc.quant.activations import QMAX, ActQuant
from arvc.quant.format_table import COMPUTE_FORMATS, E4M3_MAX, FORMATS

DTYPES = {name: FORMATS[name].torch_dtype for name in COMPUTE_FORMATS}


def fp8_gemm_supported(device: torch.device) -> bool:
    """torch._scaled_mm with row-wise scales: CUDA sm_89+ (Ada, Hopper, Blackwell); also CPU (tests)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= FORMATS["fp8"].native_sm
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


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


class PlanDiT:
    """The text and dit stages of one plan on one device. ``tensors``: the plan's dit.safetensors content."""

    def __init__(self, cfg: WanConfig, tensors: dict[str, torch.Tensor], weight_formats: dict[str, str],
                 act_quant: dict[str, ActQuant], act_timesteps: tuple[float, ...], device: torch.device,
                 dtype: torch.dtype, fp8_gemm: bool, modulation_bf16: bool = False):
        from arvc.quant.weights import dequantize_weight

        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.modulation_bf16 = modulation_bf16
        self.act_timesteps = torch.tensor(act_timesteps or (0.0,), dtype=torch.float64, device=device)
        linear_weight = (lambda n, t: n.endswith(".weight") and t.dim() == 2)
        # norms, biases, modulation and the patch embedding: fp32 on the device whatever their stored dtype
        self.vectors = {n: t.to(device=device, dtype=torch.float32) for n, t in tensors.items()
                        if not linear_weight(n, t) and not n.endswith(("weight_scale", "weight_scale_2"))}

        def linear(prefix: str) -> PlanLinear:
            # embeddings and the head are tiny next to the blocks and sensitive: fp32 in every compute dtype
            out_dtype = dtype if prefix.startswith("blocks.") else torch.float32
            fmt = weight_formats.get(prefix)
            stored = {s: tensors[f"{prefix}.weight{s}"] for s in ("", "_scale", "_scale_2")
                      if f"{prefix}.weight{s}" in tensors}
            q = act_quant.get(prefix)
            act = ActInput(q, device) if q is not None else None
            bias = self.vectors[f"{prefix}.bias"]
            if fmt == "fp8" and act is not None and act.format == "fp8" and fp8_gemm:
                return PlanLinear(None, bias, out_dtype, act, fp8=(stored[""].to(device), stored["_scale"].to(device)))
            w = dequantize_weight(stored, fmt) if fmt else stored[""].float()
            return PlanLinear(w.to(device), bias, out_dtype, act)

        self.linears = {n.rsplit(".", 1)[0]: linear(n.rsplit(".", 1)[0]) for n, t in tensors.items()
                        if linear_weight(n, t)}
        self.fp8_layers = [n for n, lin in self.linears.items() if lin.fp8 is not None]
        self.freqs = wan.sinusoid_frequencies(cfg.freq_dim).to(device)

    @torch.no_grad()
    def cross_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The text stage: context [1, L, text_dim] -> per layer (k, v) [L, dim] in the compute dtype."""
        ctx = context.reshape(-1, self.cfg.text_dim).to(self.device, torch.float32)
        return [(k.to(self.dtype), v.to(self.dtype)) for k, v in wan.text_kv(PlanOps(self), self.cfg, ctx)]

    @torch.no_grad()
    def forward(self, inp: DitInputs, cross: list, cache) -> torch.Tensor:
        """The dit stage, one call -> x0 [1, C, F, H, W] fp32 (the block's K/V written into ``cache`` on the way)."""
        v = wan.flow(PlanOps(self, inp, cache), self.cfg, inp.latents, inp.timestep, cross)
        return inp.latents - v * (inp.timestep / 1000.0).float()


class PlanOps:
    """arvc.model.dit's op vocabulary on a PlanDiT: batch 1, tokens [N, dim], one timestep per call. The residual
    stream, norms, modulation and time embedding stay fp32 (rounded to bf16 where the plan's graph rounds them,
    under bf16 modulation numerics: arvc/graphs/lower_dit.OnnxDitOps); GEMMs and attention run in the compute dtype."""

    def __init__(self, dit: PlanDiT, inp: DitInputs | None = None, cache=None):
        self.dit, self.inp, self.cache = dit, inp, cache
        self._md = (lambda x: x.to(torch.bfloat16).float()) if dit.modulation_bf16 else (lambda x: x)
        self.heads, self.eps = dit.cfg.num_heads, dit.cfg.eps
        self.t_index = torch.zeros(1, dtype=torch.int64, device=dit.device)  # the text stage has no timestep

    def patchify(self, latents):
        cfg = self.dit.cfg
        y = F.conv3d(latents, self.dit.vectors["patch_embedding.weight"], self.dit.vectors["patch_embedding.bias"],
                     stride=cfg.patch_size)  # [1, dim, F, h, w]
        return self._md(y.reshape(cfg.dim, -1).t().float())  # [N, dim] fp32 residual, tokens (frame, row, col)

    def unpatchify(self, out):
        cfg = self.dit.cfg
        _, _, f, hl, wl = self.inp.latents.shape
        p0, p1, p2 = cfg.patch_size
        u = out.float().reshape(f // p0, hl // p1, wl // p2, p0, p1, p2, cfg.out_channels).permute(6, 0, 3, 1, 4, 2, 5)
        return u.reshape(1, cfg.out_channels, f, hl, wl)

    def time_sinusoid(self, t):
        # t: [1] fp64 -> [1, freq_dim] fp32; also picks the calibrated timestep (per-timestep activation scales)
        arg = t[:, None] * self.dit.freqs[None]
        self.t_index = torch.argmin((self.dit.act_timesteps - t).abs()).reshape(1)  # ties: the first, as ONNX ArgMin
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).float()

    def time_modulation(self, e, e0):
        return self._md(e.float()), self._md(e0.float().reshape(6, -1))

    def modulation(self, name, e, parts):
        return self._md(self._md(self.dit.vectors[name].reshape(parts, -1)) + e).chunk(parts, dim=0)  # [1, dim] each

    def linear(self, x, prefix):
        return self.dit.linears[prefix](x, self.t_index)

    def rms_norm(self, x, prefix):
        return _rms(x, self.dit.vectors[f"{prefix}.weight"], self.eps)

    def layer_norm(self, x, prefix=None):
        w, b = (None, None) if prefix is None else (self.dit.vectors[f"{prefix}.weight"], self.dit.vectors[f"{prefix}.bias"])
        return self._md(F.layer_norm(x, (x.shape[-1],), w, b, self.eps))

    def modulate(self, x, shift, scale):
        md = self._md
        return md(md(x * md(1 + scale)) + shift)

    def residual(self, x, y, gate=None):
        md = self._md
        return md(x + (md(y.float()) if gate is None else md(md(y.float()) * gate)))

    def gelu(self, x):
        return F.gelu(x.float(), approximate="tanh")

    def silu(self, x):
        return F.silu(x.float())

    def self_attention(self, layer, q, k, v):
        inp = self.inp
        q = rotate_pairs(q, inp.q_cos, inp.q_sin, self.heads)
        if inp.k_cos is None:  # absolute RoPE: K is cached rotated
            k = rotate_pairs(k, inp.q_cos, inp.q_sin, self.heads)
        return self.cache.attend(layer, q, k, v, inp)  # [N, dim]

    def cross_attention(self, q, k, v):
        # q: [N, dim], k/v: [L, dim]; every text row attended (Wan uses no key mask)
        split = (lambda t: t.reshape(1, t.shape[0], self.heads, -1).transpose(1, 2))
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(q.shape[0], -1)
