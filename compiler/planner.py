"""Memory and roofline planner: what a configuration needs on a target GPU, and the frame rate its
FLOPs and bytes allow (DESIGN sections 1 and 6). Nothing is measured; everything is counted.

Notation: d = dim, f = ffn_dim, H = heads, Ly = layers, L = text tokens (512), T = tokens per latent
frame ((height/8/2) x (width/8/2): 1560 at 480x832), F = latent frames per block, N = F*T query tokens
of one DiT call, Nk = keys attended by a call (its own block included): F*T for the first block,
capacity*T in steady state (window mode: (sink + ring) frames = window; global mode: max_frames, the
last block before the cache is full, i.e. the worst case). Sizes: GB = 1e9 bytes, GiB = 2^30 bytes.

Memory (bytes, resident while streaming)
- DiT weights. Every tensor of the state dict (shapes from the config, a meta-device WanDiT):
  block linears that the recipe quantizes (quant/weights.py QUANTIZABLE minus the recipe's skip):
      int8 / fp8:  out*in * 1 + out * 4                      (per-output-channel fp32 scale)
      nvfp4:       out*in / 2 + out*in/16 * 1 + 4            (E2M1 pairs, E4M3 scale per 16, fp32 scale_2)
  every other tensor (DEFAULT_SKIP: patch/time/text embeddings, head; norms, biases, modulation, and
  any kept layer) at ``kept_bytes`` per element: 4 for an fp32 plan, 2 for a bf16 / fp16 plan; for a
  quantized plan the plan file stores them in fp32 but the GPU runtime holds them in its bf16 compute
  dtype (runtime/torch_backend.py), so the planner counts 2 bytes (``kept_dtype`` overrides: "fp32"
  gives exactly the bytes of the plan's dit.safetensors).
- KV cache: kv_row_bytes(fmt, d, H) (quant/kv.py) x cache rows x Ly x 2 (K and V), cache rows =
  capacity_frames * T. With a sink format of its own, exactly what runtime/ort_backend.py allocates:
  Ly*2*((sink*T + 1)*row_sink + (capacity*T - sink*T + 1)*row) (one scratch row per region).
- VAE decoder weights: its parameters (conv2 + decoder, a meta-device WanVAEDecoder) x 2 bytes (fp16).
- VAE streaming state: the 32 causal-conv states [C_i, 2, h*s_i, w*s_i] x 2 bytes (fp16), one set
  (the GPU runtime updates it in place; the CPU ORT backend keeps two sets in turn).
- Peak activations of one DiT call (FlashAttention-style attention: no score matrix is stored):
      residual 4*N*d (fp32)
      + max(FFN:  2*N*d (its input) + 2 * 2*N*f (hidden and GELU output, compute dtype 2 bytes),
            attn: 4 * 2*N*d (q, k, v, output) + [without flash: 2 * 2*H*N*Nk scores and probabilities])
  plus the call's latents in/out (fp32, negligible).
- Text K/V per prompt: Ly x 2 x L x d x 2 bytes (bf16).
- Runtime reserve: 1 GiB for the CUDA context and GEMM / attention workspaces (an assumption).
Total vs the GPU's memory (datasheet GB, taken as decimal GB, the conservative reading): fits when
total <= capacity; headroom = capacity - total.

FLOPs of one DiT call (multiply-add = 2 FLOPs; only matrix products are counted, exactly what
torch.utils.flop_counter counts on the reference model: norms, RoPE, GELU, modulation and biases are
left out, < 1 % of the total at Wan sizes):
    patch embed      2 * N * d * (in_channels * pt*ph*pw)
    time embedding   2 * F * (freq_dim*d + d*d + 6*d*d)         (t is per latent frame)
    per layer        self q,k,v,o   4 * 2*N*d*d
                     cross q,o      2 * 2*N*d*d                  (cross K/V: once per prompt, excluded)
                     FFN            2 * 2*N*d*f
                     self-attention 4 * N * Nk * d               (Q K^T and P V over the attended keys)
                     cross-attention 4 * N * L * d
    head             2 * N * d * patch_out
  Per prompt (reported, not per call): text embedding 2*L*(text_dim*d + d*d) + cross K/V Ly * 2 * 2*L*d*d.

Bytes of one DiT call: the DiT weights once (as held, above), the KV cache read (Nk rows) and the
block's rows written (N rows) for Ly layers x (K, V), the text K/V read once, and activation traffic
approximated as Ly * N * (20*d + 2*f) * 2 bytes (every GEMM / attention input and output read or
written once in the compute dtype, plus about ten passes of [N, d] for the norms, modulation, gates
and residual) -- an approximation, stated as such.

VAE decoder per latent frame: FLOPs and bytes from walking the real decoder's layers on the meta
device with the plan's latent size (forward hooks): each Conv2d/Conv3d 2 * out.numel() * in/groups *
prod(kernel); the middle attention 4 * (h*w)^2 * C per frame (Q K^T and P V); bytes = weights (fp16) +
the state read and written + every conv output written once and read once (fp16). The first latent
frame (1 video frame, temporal upsampling skipped) and a steady one (4 video frames) are walked
separately.

Roofline: time of a stage = max(FLOPs / peak FLOP/s, bytes / memory bandwidth), peaks DENSE (no
2:4 sparsity) from each vendor's datasheet (URLs next to the numbers). The block GEMMs run at the
weight precision's tensor-core rate (fp32 / bf16 / fp16 plans: the bf16 rate -- the GPU runtime
computes in bf16; int8 / fp8: the int8 / fp8 rate, i.e. W8A8 GEMMs; nvfp4: the fp4 rate on Blackwell,
and the fp8 rate on GPUs without FP4 tensor cores (Hopper, Ada) -- a stated fallback); attention,
the embeddings, head and VAE at the bf16 rate. Per block: (steps + 1) DiT calls (denoising + the
cache call) + F VAE frames, summed (one GPU: overlapping the VAE with the DiT hides latency, not
work). frames per second bound = video frames / time per block, with 1 + 4*(F-1) video frames for
the first block (and Nk = F*T) and 4*F in steady state (Nk at capacity).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from arvc.model.config import WAN_PRESETS, WanConfig, WanVAEConfig

GB = 1e9
GIB = float(2**30)
T = 1e12

RUNTIME_RESERVE = 1 * 2**30


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    arch: str
    memory: float  # bytes (datasheet GB x 1e9)
    bandwidth: float  # bytes / s
    peak: dict  # compute format -> dense FLOP/s (or OP/s for int8)
    sources: tuple[str, ...]

    @property
    def has_fp4(self) -> bool:
        return "fp4" in self.peak


# Every peak is DENSE: the datasheets print "with sparsity" (2:4) figures that are twice these.
GPUS: dict[str, GPU] = {
    "h100": GPU(
        "h100", "NVIDIA H100 SXM", "Hopper",
        memory=80 * GB,  # 80 GB HBM3 -- https://www.nvidia.com/en-us/data-center/h100/
        bandwidth=3.35e12,  # 3.35 TB/s -- https://www.nvidia.com/en-us/data-center/h100/
        peak={"bf16": 989.5 * T,  # 1,979 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h100/
              "fp16": 989.5 * T,  # 1,979 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h100/
              "fp8": 1979 * T,  # 3,958 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h100/
              "int8": 1979 * T},  # 3,958 TOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h100/
        sources=("https://www.nvidia.com/en-us/data-center/h100/",)),
    "h200": GPU(
        "h200", "NVIDIA H200 SXM", "Hopper",
        memory=141 * GB,  # 141 GB HBM3e -- https://www.nvidia.com/en-us/data-center/h200/
        bandwidth=4.8e12,  # 4.8 TB/s -- https://www.nvidia.com/en-us/data-center/h200/
        peak={"bf16": 989.5 * T,  # 1,979 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h200/
              "fp16": 989.5 * T,  # 1,979 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h200/
              "fp8": 1979 * T,  # 3,958 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h200/
              "int8": 1979 * T},  # 3,958 TOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/h200/
        sources=("https://www.nvidia.com/en-us/data-center/h200/",)),
    "b200": GPU(
        "b200", "NVIDIA B200 (HGX B200, per GPU)", "Blackwell",
        memory=180 * GB,  # 1,440 GB total / 8 GPUs -- https://www.nvidia.com/en-us/data-center/dgx-b200/
        bandwidth=8.0e12,  # 64 TB/s total / 8 GPUs -- https://www.nvidia.com/en-us/data-center/dgx-b200/
        peak={"bf16": 2250 * T,  # 36 PFLOPS (8 GPUs, sparsity) / 8 / 2 -- https://www.nvidia.com/en-us/data-center/hgx/
              "fp16": 2250 * T,  # 36 PFLOPS (8 GPUs, sparsity) / 8 / 2 -- https://www.nvidia.com/en-us/data-center/hgx/
              "fp8": 4500 * T,  # 72 PFLOPS (8 GPUs, sparsity) / 8 / 2 -- https://www.nvidia.com/en-us/data-center/hgx/
              "int8": 4500 * T,  # 72 POPS (8 GPUs, sparsity) / 8 / 2 -- https://www.nvidia.com/en-us/data-center/hgx/
              "fp4": 9000 * T},  # 144 PFLOPS (8 GPUs, sparsity) / 8 / 2 -- https://www.nvidia.com/en-us/data-center/hgx/
        sources=("https://www.nvidia.com/en-us/data-center/hgx/", "https://www.nvidia.com/en-us/data-center/dgx-b200/")),
    "rtx5090": GPU(
        "rtx5090", "NVIDIA GeForce RTX 5090", "Blackwell",
        memory=32 * GB,  # 32 GB GDDR7 -- https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/
        bandwidth=1.792e12,  # 1,792 GB/s -- https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
        # FP32-accumulate rates (the DiT accumulates in fp32), dense column of the whitepaper's RTX 5090 table:
        peak={"bf16": 209.5 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
              "fp16": 209.5 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
              "fp8": 419 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
              "int8": 838 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
              "fp4": 1676 * T},  # 3,352 AI TOPS (FP4, sparsity) / 2 -- https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf
        sources=("https://images.nvidia.com/aem-dam/Solutions/geforce/blackwell/nvidia-rtx-blackwell-gpu-architecture.pdf",
                 "https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/")),
    "l40s": GPU(
        "l40s", "NVIDIA L40S", "Ada",
        memory=48 * GB,  # 48 GB GDDR6 -- https://www.nvidia.com/en-us/data-center/l40s/
        bandwidth=864e9,  # 864 GB/s -- https://www.nvidia.com/en-us/data-center/l40s/
        peak={"bf16": 362.05 * T,  # 733 TFLOPS with sparsity -> 362.05 dense -- https://www.nvidia.com/en-us/data-center/l40s/
              "fp16": 362.05 * T,  # https://www.nvidia.com/en-us/data-center/l40s/
              "fp8": 733 * T,  # 1,466 TFLOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/l40s/
              "int8": 733 * T},  # 1,466 TOPS with sparsity / 2 -- https://www.nvidia.com/en-us/data-center/l40s/
        sources=("https://www.nvidia.com/en-us/data-center/l40s/",)),
    "rtx4090": GPU(
        "rtx4090", "NVIDIA GeForce RTX 4090", "Ada",
        memory=24 * GB,  # 24 GB GDDR6X -- https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
        bandwidth=1008e9,  # 1,008 GB/s -- https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
        # FP32-accumulate rates, dense column of the whitepaper's RTX 4090 table:
        peak={"bf16": 165.2 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
              "fp16": 165.2 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
              "fp8": 330.3 * T,  # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
              "int8": 660.6 * T},  # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
        sources=("https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",)),
}


def get_gpu(key: str) -> GPU:
    try:
        return GPUS[key.lower()]
    except KeyError:
        raise ValueError(f"unknown GPU {key!r}; choose one of {', '.join(GPUS)}") from None


@dataclass(frozen=True)
class PlanInputs:
    """Everything the planner needs; built from a preset, a checkpoint or a plan (see ``inputs_from``)."""

    cfg: WanConfig
    vae: WanVAEConfig = field(default_factory=WanVAEConfig)
    precision: str = "bf16"
    kv_cache: str = "fp16"
    kv_sink: str | None = None
    window: int = 12
    sink: int = 3
    max_frames: int = 21
    frames_per_block: int = 3
    height: int = 480
    width: int = 832
    steps: int = 4
    skip: tuple[str, ...] | None = None  # None: the recipe's (DEFAULT_SKIP for quantized precisions)
    layer_formats: tuple[tuple[str, str], ...] = ()
    kept_dtype: str | None = None  # None: the runtime's (fp32 plan: fp32, otherwise bf16)
    flash: bool = True
    source: str = ""

    def __post_init__(self) -> None:
        from arvc.quant.format_table import KV_FORMATS, WEIGHT_FORMATS

        if self.precision not in WEIGHT_FORMATS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(WEIGHT_FORMATS)}")

        for fmt in (self.kv_cache, self.kv_sink or self.kv_cache):
            if fmt not in KV_FORMATS:
                raise ValueError(f"unknown KV-cache format {fmt!r}; choose one of {', '.join(KV_FORMATS)}")
        if self.kv_sink and not (self.window and self.sink):
            raise ValueError("a sink KV format needs a sink (--window > 0 and --sink > 0)")
        self.geometry()  # validates window / sink / frames

    def geometry(self):
        from arvc.model.cache_geometry import CacheGeometry

        return CacheGeometry(self.frames_per_block, self.window, self.sink if self.window else 0, self.max_frames)

    @property
    def latent_hw(self) -> tuple[int, int]:
        s = self.vae.spatial_factor
        if self.height % (s * self.cfg.patch_size[1]) or self.width % (s * self.cfg.patch_size[2]):
            raise ValueError(f"{self.height}x{self.width} is not a multiple of {s * self.cfg.patch_size[1]} "
                             "(VAE factor x patch size)")
        return self.height // s, self.width // s

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.latent_hw
        return (h // self.cfg.patch_size[1]) * (w // self.cfg.patch_size[2])


# -- memory ------------------------------------------------------------------------------------------

def _dit_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    from arvc.checkpoints.state_dicts import expected_dit_shapes

    return expected_dit_shapes(cfg)


def quantized_linear_bytes(out_features: int, in_features: int, fmt: str) -> int:
    """Stored bytes of one quantized [out, in] weight, scales included (quant/weights.py layouts)."""
    from arvc.quant.format_table import FORMATS, QUANTIZED_FORMATS

    if fmt not in QUANTIZED_FORMATS:
        raise ValueError(f"no quantized layout for {fmt!r}; choose one of {QUANTIZED_FORMATS}")
    f, n = FORMATS[fmt], out_features * in_features
    if f.block:  # a 1-byte (E4M3) scale per block, one fp32 scale_2
        return n * f.bits // 8 + n // f.block + 4
    return n * f.bits // 8 + 4 * out_features  # one fp32 scale per output channel


def kept_bytes_per_element(precision: str, kept_dtype: str | None) -> int:
    from arvc.quant.format_table import COMPUTE_FORMATS, FORMATS, QUANTIZED_FORMATS

    if kept_dtype is None:
        kept_dtype = "bf16" if precision in QUANTIZED_FORMATS else precision
    if kept_dtype not in COMPUTE_FORMATS:
        raise ValueError(f"kept dtype {kept_dtype!r} unknown; choose one of {', '.join(COMPUTE_FORMATS)}")
    return FORMATS[kept_dtype].bits // 8


def dit_weight_bytes(cfg: WanConfig, precision: str, kept_dtype: str | None = None,
                     skip: tuple[str, ...] | None = None, layer_formats: tuple = ()) -> dict:
    """-> {"total", "quantized" (bytes of the quantized linears incl. scales), "kept", "quantized_params",
    "kept_params", "kept_bytes_per_element"}."""
    from arvc.quant.format_table import QUANTIZED_FORMATS
    from arvc.quant.recipe import DEFAULT_SKIP, Recipe
    from arvc.quant.weights import QUANTIZABLE, is_skipped

    kb = kept_bytes_per_element(precision, kept_dtype)
    quantize = precision in QUANTIZED_FORMATS
    skip = DEFAULT_SKIP if skip is None else tuple(skip)
    recipe = Recipe("planner", precision, layer_formats=tuple(layer_formats)) if quantize else None
    q = k = qp = kp = 0
    for name, shape in _dit_shapes(cfg).items():
        n = math.prod(shape)
        if quantize and QUANTIZABLE.match(name) and not is_skipped(name, skip):
            q += quantized_linear_bytes(shape[0], shape[1], recipe.weight_format(name.rsplit(".weight", 1)[0]))
            qp += n
        else:
            k += n * kb
            kp += n
    return {"total": q + k, "quantized": q, "kept": k, "quantized_params": qp, "kept_params": kp,
            "kept_bytes_per_element": kb}


def kv_cache_bytes(cfg: WanConfig, geom, tokens_per_frame: int, kv_cache: str, kv_sink: str | None = None) -> int:
    from arvc.quant.kv import kv_row_bytes
    from arvc.quant.kv import kv_regions

    regions = kv_regions(kv_cache, kv_sink, geom.capacity_frames * tokens_per_frame, geom.sink * tokens_per_frame)
    return 2 * cfg.num_layers * sum(r.rows * kv_row_bytes(r.format, cfg.dim, cfg.num_heads) for r in regions)


def _vae_meta(vae_cfg: WanVAEConfig):
    import torch

    from arvc.model.vae import WanVAEDecoder

    with torch.device("meta"):
        return WanVAEDecoder(vae_cfg).half()


def vae_memory(vae_cfg: WanVAEConfig, latent_hw: tuple[int, int]) -> dict:
    m = _vae_meta(vae_cfg)
    params = sum(p.numel() for p in m.parameters())
    return {"weights": 2 * params, "params": params, "state": m.state_nbytes(1, *latent_hw),
            "state_tensors": m.num_state_tensors}


def dit_activation_bytes(cfg: WanConfig, n: int, nk: int, flash: bool = True) -> int:
    d, f = cfg.dim, cfg.ffn_dim
    ffn = 2 * n * d + 2 * 2 * n * f
    attn = 4 * 2 * n * d + (0 if flash else 2 * 2 * cfg.num_heads * n * nk)
    return 4 * n * d + max(ffn, attn)


def text_kv_bytes(cfg: WanConfig) -> int:
    return cfg.num_layers * 2 * cfg.text_len * cfg.dim * 2


# -- FLOPs and bytes ---------------------------------------------------------------------------------

def dit_call_flops(cfg: WanConfig, frames: int, tokens_per_frame: int, nk: int) -> dict:
    """Matrix-product FLOPs of one DiT call on ``frames`` latent frames attending ``nk`` keys."""
    d, f, L = cfg.dim, cfg.ffn_dim, cfg.text_len
    n = frames * tokens_per_frame
    p = cfg.patch_size
    per_layer_gemm = 4 * 2 * n * d * d + 2 * 2 * n * d * d + 2 * 2 * n * d * f
    out = {
        "patch_embed": 2 * n * d * cfg.in_channels * p[0] * p[1] * p[2],
        "time_embed": 2 * frames * (cfg.freq_dim * d + d * d + 6 * d * d),
        "block_gemms": cfg.num_layers * per_layer_gemm,
        "self_attention": cfg.num_layers * 4 * n * nk * d,
        "cross_attention": cfg.num_layers * 4 * n * L * d,
        "head": 2 * n * d * cfg.patch_out,
    }
    out["total"] = sum(out.values())
    return out


def prompt_flops(cfg: WanConfig) -> int:
    d, L = cfg.dim, cfg.text_len
    return 2 * L * (cfg.text_dim * d + d * d) + cfg.num_layers * 2 * 2 * L * d * d


def dit_call_bytes(cfg: WanConfig, weights: int, n: int, nk: int, kv_row: int) -> dict:
    out = {"weights": weights,
           "kv_read": 2 * cfg.num_layers * nk * kv_row,
           "kv_write": 2 * cfg.num_layers * n * kv_row,
           "text_kv": text_kv_bytes(cfg),
           "activations": cfg.num_layers * n * (20 * cfg.dim + 2 * cfg.ffn_dim) * 2}
    out["total"] = sum(out.values())
    return out


def vae_frame_cost(vae_cfg: WanVAEConfig, latent_hw: tuple[int, int], first: bool) -> dict:
    """FLOPs and bytes of decoding one latent frame, by walking the decoder's layers on the meta device."""
    import torch
    import torch.nn as nn

    from arvc.model.vae import AttentionBlock

    m = _vae_meta(vae_cfg)
    flops = {"conv": 0, "attention": 0}
    act = [0]

    def conv_hook(mod, inp, out):
        k = math.prod(mod.kernel_size)
        flops["conv"] += 2 * out.numel() * (mod.in_channels // mod.groups) * k
        act[0] += 2 * out.numel() * out.element_size()  # written once, read once

    def attn_hook(mod, inp, out):
        b, c, t, h, w = inp[0].shape
        flops["attention"] += b * t * 4 * (h * w) ** 2 * c

    hooks = [mm.register_forward_hook(conv_hook) for mm in m.modules() if isinstance(mm, (nn.Conv2d, nn.Conv3d))]
    hooks += [mm.register_forward_hook(attn_hook) for mm in m.modules() if isinstance(mm, AttentionBlock)]
    h, w = latent_hw
    states = [torch.zeros(s, device="meta", dtype=torch.float16) for s in m.state_shapes(1, h, w)]
    z = torch.zeros(1, vae_cfg.z_dim, 1, h, w, device="meta", dtype=torch.float16)
    with torch.no_grad():
        pixels, _ = m.stream_step(z, states, first)
    for hk in hooks:
        hk.remove()
    weights = 2 * sum(p.numel() for p in m.parameters())
    state = m.state_nbytes(1, h, w)
    total_flops = flops["conv"] + flops["attention"]
    return {"flops": total_flops, "flops_conv": flops["conv"], "flops_attention": flops["attention"],
            "bytes": weights + 2 * state + act[0], "video_frames": int(pixels.shape[2])}


# -- the plan ----------------------------------------------------------------------------------------

def gemm_format(precision: str, gpu: GPU) -> tuple[str, str | None]:
    """-> (tensor-core rate used for the block GEMMs, a note when it is a fallback)."""
    if precision in ("fp32", "bf16"):
        return "bf16", ("fp32 plan: GEMMs counted at the bf16 rate (the GPU runtime computes in bf16); "
                        "weights read at 4 bytes") if precision == "fp32" else None
    if precision == "fp16":
        return "fp16", None
    if precision == "nvfp4":
        if gpu.has_fp4:
            return "fp4", None
        return "fp8", f"{gpu.name} ({gpu.arch}) has no FP4 tensor cores: nvfp4 weights computed at the fp8 rate"
    return precision, None


def _stage_time(flops_by_rate: list[tuple[float, float]], nbytes: float, gpu: GPU) -> dict:
    compute = sum(fl / rate for fl, rate in flops_by_rate)
    memory = nbytes / gpu.bandwidth
    return {"compute_s": compute, "memory_s": memory, "time_s": max(compute, memory),
            "bound": "compute" if compute >= memory else "memory"}


def plan_memory(inp: PlanInputs, gpu_key: str) -> dict:
    from arvc.quant.format_table import QUANTIZED_FORMATS
    from arvc.quant.kv import kv_row_bytes

    gpu = get_gpu(gpu_key)
    cfg, geom, tpf = inp.cfg, inp.geometry(), inp.tokens_per_frame
    fpb = geom.frames_per_block
    n = fpb * tpf
    nk_steady = geom.capacity_frames * tpf
    notes = []

    w = dit_weight_bytes(cfg, inp.precision, inp.kept_dtype, inp.skip, inp.layer_formats)
    kv = kv_cache_bytes(cfg, geom, tpf, inp.kv_cache, inp.kv_sink)
    vae = vae_memory(inp.vae, inp.latent_hw)
    act = dit_activation_bytes(cfg, n, nk_steady, inp.flash)
    text = text_kv_bytes(cfg)
    memory = {"dit_weights": w["total"], "kv_cache": kv, "vae_weights": vae["weights"], "vae_state": vae["state"],
              "dit_activations_peak": act, "text_kv": text, "runtime_reserve": RUNTIME_RESERVE}
    total = sum(memory.values())
    kept_note = {4: "fp32", 2: "bf16/fp16"}[w["kept_bytes_per_element"]]
    notes.append(f"kept (unquantized) tensors counted at {w['kept_bytes_per_element']} bytes ({kept_note})"
                 + (" as the GPU runtime holds them; the plan file stores them in fp32"
                    if inp.precision in QUANTIZED_FORMATS and inp.kept_dtype is None else ""))
    if not inp.flash:
        notes.append("attention without flash: the score and probability matrices [H, N, Nk] are counted")
    if not geom.window:
        notes.append(f"global cache: holds {geom.max_frames} latent frames and overflows after that")

    # roofline
    fmt, fallback = gemm_format(inp.precision, gpu)
    if fallback:
        notes.append(fallback)
    peak_g, peak_b = gpu.peak[fmt], gpu.peak["bf16"]
    row = kv_row_bytes(inp.kv_cache, cfg.dim, cfg.num_heads)

    def block(nk: int, first: bool) -> dict:
        fl = dit_call_flops(cfg, fpb, tpf, nk)
        other = fl["total"] - fl["block_gemms"]
        by = dit_call_bytes(cfg, w["total"], n, nk, row)
        call = _stage_time([(fl["block_gemms"], peak_g), (other, peak_b)], by["total"], gpu)
        calls = inp.steps + 1
        vf_first = vae_frame_cost(inp.vae, inp.latent_hw, True) if first else None
        vf = vae_frame_cost(inp.vae, inp.latent_hw, False)
        frames = [vf_first] + [vf] * (fpb - 1) if first else [vf] * fpb
        vae_t = sum(_stage_time([(x["flops"], peak_b)], x["bytes"], gpu)["time_s"] for x in frames)
        video = sum(x["video_frames"] for x in frames)
        t = calls * call["time_s"] + vae_t
        return {"keys_attended": nk, "dit_call_flops": fl, "dit_call_bytes": by, "dit_call": call,
                "dit_calls": calls, "dit_time_s": calls * call["time_s"],
                "vae_frames": fpb, "vae_time_s": vae_t, "vae_flops_per_frame": vf["flops"],
                "vae_bytes_per_frame": vf["bytes"], "video_frames": video, "time_per_block_s": t,
                "fps_bound": video / t}

    first, steady = block(n, True), block(nk_steady, False)
    fits = total <= gpu.memory
    return {
        "source": inp.source,
        "gpu": {"key": gpu.key, "name": gpu.name, "arch": gpu.arch, "memory_bytes": gpu.memory,
                "bandwidth_bytes_per_s": gpu.bandwidth, "peak_dense_flops": dict(gpu.peak), "sources": list(gpu.sources)},
        "config": {"model": cfg.to_dict(), "precision": inp.precision, "kv_cache": inp.kv_cache, "kv_sink": inp.kv_sink,
                   "geometry": geom.to_dict(), "height": inp.height, "width": inp.width, "tokens_per_frame": tpf,
                   "tokens_per_block": n, "cache_tokens": nk_steady, "steps": inp.steps, "flash_attention": inp.flash,
                   "gemm_rate": fmt},
        "memory": memory,
        "memory_detail": {"dit_weights": w, "kv_row_bytes": row, "vae": vae},
        "total_bytes": total,
        "fits": fits,
        "headroom_bytes": gpu.memory - total,
        "verdict": (f"fits on {gpu.name}: {total / GB:.2f} GB of {gpu.memory / GB:.0f} GB, "
                    f"{(gpu.memory - total) / GB:.2f} GB headroom") if fits else
                   (f"does NOT fit on {gpu.name}: {total / GB:.2f} GB needed, {gpu.memory / GB:.0f} GB available "
                    f"({(total - gpu.memory) / GB:.2f} GB short)"),
        "prompt_flops": prompt_flops(cfg),
        "roofline": {"first_block": first, "steady_block": steady},
        "notes": notes,
    }


# -- inputs ------------------------------------------------------------------------------------------

def inputs_from(source: str, **overrides) -> PlanInputs:
    """A preset name, a checkpoint (file or model directory) or a plan directory -> PlanInputs.
    ``overrides``: PlanInputs fields given explicitly (None values are ignored)."""
    from arvc.runtime.plan import is_plan

    given = {k: v for k, v in overrides.items() if v is not None}
    if is_plan(source):
        from arvc.runtime.plan import read_manifest

        m = read_manifest(source, verify_files=False)
        g, rec = m.geometry, m.recipe
        base = dict(cfg=m.model.dit, vae=m.model.vae, precision=rec.weights, kv_cache=rec.kv_cache,
                    kv_sink=rec.kv_sink, window=g.window, sink=g.sink, max_frames=g.max_frames,
                    frames_per_block=g.frames_per_block, height=m.resolution.height, width=m.resolution.width,
                    steps=len(m.schedule.timesteps), skip=rec.skip, layer_formats=rec.layer_formats,
                    source=f"plan {source}")
    elif source in WAN_PRESETS:
        base = dict(cfg=WAN_PRESETS[source], source=f"preset {source}")
    elif Path(source).exists():
        from arvc.checkpoints.load import describe_checkpoint
        from arvc.reference.models import resolve_checkpoint

        files = resolve_checkpoint(source)
        info = describe_checkpoint(files.dit)
        if info["architecture"] != "wan2.1-dit":
            raise ValueError(f"{source}: a {info['architecture']} checkpoint; pass the DiT (or a model directory)")
        base = dict(cfg=WanConfig.from_dict(info["config"]), source=f"checkpoint {files.dit}")
        md = dict(files.defaults or {})
        md.update(md.pop("geometry", {}) or {})
        for k in ("window", "sink", "max_frames", "frames_per_block", "height", "width"):
            if k in md:
                base[k] = md[k]
        if files.vae is not None:
            vinfo = describe_checkpoint(files.vae)
            base["vae"] = WanVAEConfig.from_dict(vinfo["config"])
    else:
        raise ValueError(f"{source!r} is neither a plan directory, a checkpoint nor a model preset; presets: "
                         f"{', '.join(WAN_PRESETS)}")
    base.update(given)
    if base.get("window") == 0:
        base["sink"] = 0
    return PlanInputs(**base)


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)
