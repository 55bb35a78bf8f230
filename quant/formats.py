"""Stored quantized formats: INT8, FP8 E4M3 and NVFP4 (DESIGN section 3), one class each.

Each format declares the fields it stores (name, dtype, shape rule) and encodes / decodes exactly; the
C layouts with size asserts are in ``csrc/quant_formats.h``, and quant/format_table.py is the one table
both agree on. Encoders refuse non-finite input: a NaN or infinity in a weight or activation is a bug
upstream, and silently clamping it would hide that.

Granularity (``axis``): the scale is shared along every dimension except the kept ones.
- ``per_channel`` (weights [out, in]): one scale per output row.
- ``per_token``: one scale per row of the last dimension (activations, KV cache rows).
- ``per_tensor``: one scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .format_table import E2M1_VALUES, E4M3_MAX, NVFP4_BLOCK

GRANULARITIES = ("per_tensor", "per_channel", "per_token")


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what}: {bad} non-finite value(s) (NaN/inf) in the input; quantization needs finite "
                         "numbers, so fix the tensor upstream (check the checkpoint or the calibration rollout)")


def _amax(x: torch.Tensor, granularity: str) -> torch.Tensor:
    a = x.abs().float()
    if granularity == "per_tensor":
        return a.amax().reshape(1)
    if granularity == "per_channel":  # weights [out, in, ...]: a row of outputs shares a scale
        return a.reshape(a.shape[0], -1).amax(dim=1)
    if granularity == "per_token":
        return a.amax(dim=-1)
    raise ValueError(f"granularity {granularity!r} unknown; choose one of {GRANULARITIES}")


def _expand(scale: torch.Tensor, x: torch.Tensor, granularity: str) -> torch.Tensor:
    if granularity == "per_tensor":
        return scale.reshape([1] * x.dim())
    if granularity == "per_channel":
        return scale.reshape(-1, *[1] * (x.dim() - 1))
    return scale.unsqueeze(-1)


def _scaled(x: torch.Tensor, granularity: str, qmax: float, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (scale = amax / qmax per group, 1 for an all-zero group; x / scale in fp32)."""
    _check_finite(x, f"{fmt} encode")
    amax = _amax(x, granularity)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return scale, x.float() / _expand(scale, x, granularity)


@dataclass(frozen=True)
class Int8:
    """Symmetric INT8: code = clamp(round_half_even(x / scale), -127, 127), scale = amax / 127 (1 if amax = 0)."""

    granularity: str = "per_channel"
    fields = (("data", "int8", "x.shape"), ("scale", "float32", "one per group"))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scale, y = _scaled(x, self.granularity, 127.0, "int8")
        return {"data": torch.round(y).clamp(-127, 127).to(torch.int8), "scale": scale}

    def decode(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        return f["data"].float() * _expand(f["scale"], f["data"], self.granularity)


@dataclass(frozen=True)
class Fp8E4M3:
    """FP8 E4M3 (fn: max 448, no infinities): code = e4m3(clamp(x / scale, +-448)), scale = amax / 448."""

    granularity: str = "per_channel"
    fields = (("data", "uint8 (E4M3 bits)", "x.shape"), ("scale", "float32", "one per group"))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scale, y = _scaled(x, self.granularity, E4M3_MAX, "fp8")
        return {"data": y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8), "scale": scale}

    def decode(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        return f["data"].view(torch.float8_e4m3fn).float() * _expand(f["scale"], f["data"], self.granularity)


def e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values (already in range) to the nearest E4M3 value, ties to even, back in fp32."""
    return x.to(torch.float8_e4m3fn).float()


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """fp32 values -> 4-bit E2M1 codes (uint8 0..15): magnitude rounded to nearest, ties to the even
    code (0.25->0, 0.75->1.0, 1.25->1.0, 1.75->2, 2.5->2, 3.5->4, 5->4), saturating at 6; sign in bit 3,
    set for every negative input, including those that round to zero (-0, code 8), as modelopt does."""
    mag = v.abs()
    code = torch.zeros_like(mag, dtype=torch.uint8)
    for i in range(len(E2M1_VALUES) - 1):
        mid = (E2M1_VALUES[i] + E2M1_VALUES[i + 1]) / 2
        up = (mag > mid) | ((mag == mid) & ((i + 1) % 2 == 0))  # a tie goes to the even code of the pair
        code = code + up.to(torch.uint8)
    return code | (v < 0).to(torch.uint8) << 3


def e2m1_values(code: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32)
    return table[code.long()]


@dataclass(frozen=True)
class NVFP4:
    """NVFP4 as NVIDIA's tools store it (so plans interoperate with their checkpoints and TensorRT).

    Along the last dimension, blocks of 16: ``scale_2 = amax(x) / (6 * 448)`` (fp32, 1 for an all-zero
    tensor); ``block_scale = e4m3(clamp(block_amax / (6 * scale_2), 2^-9, 448))`` (1 for an all-zero
    block); code = E2M1 of ``x / (block_scale * scale_2)``; element 2i in the low nibble, 2i+1 high.

    ``granularity`` of scale_2: ``per_tensor`` (weights, as modelopt stores them) or ``per_token`` (one
    scale_2 per row of the last dimension: the KV cache, where rows are written one block at a time and
    a tensor-wide amax does not exist yet).
    """

    granularity: str = "per_tensor"
    fields = (("weight", "uint8 (two E2M1 codes)", "[..., n/2]"),
              ("weight_scale", "uint8 (E4M3 bits)", "[..., n/16]"), ("weight_scale_2", "float32", "[] or [...]"))

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_finite(x, "nvfp4 encode")
        if x.shape[-1] % NVFP4_BLOCK:
            raise ValueError(f"nvfp4: the last dimension ({x.shape[-1]}) must be a multiple of {NVFP4_BLOCK}; "
                             "keep this tensor at higher precision (recipe skip) or pad it")
        if self.granularity not in ("per_tensor", "per_token"):
            raise ValueError(f"nvfp4 granularity {self.granularity!r} unknown; choose per_tensor or per_token")
        xf = x.float()
        amax = _amax(xf, self.granularity)  # [1] or [...]
        scale_2 = torch.where(amax > 0, amax / (6 * E4M3_MAX), torch.ones_like(amax))
        s2 = scale_2.reshape(()) if self.granularity == "per_tensor" else scale_2.unsqueeze(-1)  # vs [..., nb]
        blocks = xf.reshape(*x.shape[:-1], -1, NVFP4_BLOCK)  # [..., nb, 16]
        block_amax = blocks.abs().amax(dim=-1)
        raw = (block_amax / (6 * s2)).clamp(2.0**-9, E4M3_MAX)
        block_scale = torch.where(block_amax > 0, e4m3_round(raw), torch.ones_like(raw))
        codes = e2m1_codes(blocks / (block_scale * s2).unsqueeze(-1)).reshape(*x.shape[:-1], -1)
        packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
        return {"weight": packed, "weight_scale": block_scale.to(torch.float8_e4m3fn).view(torch.uint8),
                "weight_scale_2": s2.squeeze(-1) if self.granularity == "per_token" else s2}

    def decode(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        packed = f["weight"]
        codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(*packed.shape[:-1], -1)
        vals = e2m1_values(codes).reshape(*codes.shape[:-1], -1, NVFP4_BLOCK)
        s2 = f["weight_scale_2"]
        scale = f["weight_scale"].view(torch.float8_e4m3fn).float() * (s2.unsqueeze(-1) if s2.dim() else s2)
        return (vals * scale.unsqueeze(-1)).reshape(codes.shape)


def stored_bits_per_element(fmt: str, shape: tuple[int, ...], granularity: str = "per_channel") -> float:
    """Bits per element including scales, as stored (NVFP4: 4 + 8/16 + 32/numel)."""
    numel = 1
    for s in shape:
        numel *= s
    if fmt == "nvfp4":
        return 4 + 8 / NVFP4_BLOCK + 32 / numel
    groups = {"per_tensor": 1, "per_channel": shape[0], "per_token": numel // shape[-1]}[granularity]
    return 8 + 32 * groups / numel


CODECS = {"int8": Int8, "fp8": Fp8E4M3, "nvfp4": NVFP4}  # quant/format_table.py's quantized formats
