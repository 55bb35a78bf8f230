"""Weight-only quantization of a DiT state dict by a recipe, in the layout plans store.

A quantized linear ``P.weight`` is stored as (NVIDIA's checkpoint names, so the layouts interoperate):
- int8:  ``P.weight`` int8 [out, in], ``P.weight_scale`` fp32 [out] (per output channel)
- fp8:   ``P.weight`` float8_e4m3fn [out, in], ``P.weight_scale`` fp32 [out]
- nvfp4: ``P.weight`` uint8 [out, in/2] (packed E2M1), ``P.weight_scale`` float8_e4m3fn [out, in/16],
         ``P.weight_scale_2`` fp32 []
Everything else (biases, norms, modulation, and the layers the recipe skips) stays fp32.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Callable

import torch

from .format_table import QUANTIZED_FORMATS
from .formats import NVFP4, Fp8E4M3, Int8

# The block linears: where nearly all parameters and FLOPs are.
QUANTIZABLE = re.compile(r"^blocks\.\d+\.((self_attn|cross_attn)\.[qkvo]|ffn\.[02])\.weight$")


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    layer = name.rsplit(".weight", 1)[0]
    return any(fnmatch.fnmatchcase(layer, pattern) for pattern in skip)


def quantize_weight(w: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """[out, in] weight -> {suffix: tensor} with suffixes '', '_scale', ('_scale_2')."""
    if fmt == "int8":
        f = Int8("per_channel").encode(w)
        return {"": f["data"], "_scale": f["scale"]}
    if fmt == "fp8":
        f = Fp8E4M3("per_channel").encode(w)
        return {"": f["data"].view(torch.float8_e4m3fn), "_scale": f["scale"]}
    if fmt == "nvfp4":
        f = NVFP4().encode(w)
        return {"": f["weight"], "_scale": f["weight_scale"].view(torch.float8_e4m3fn), "_scale_2": f["weight_scale_2"]}
    raise ValueError(f"no weight quantizer for format {fmt!r}; choose one of {QUANTIZED_FORMATS}")


def dequantize_weight(stored: dict[str, torch.Tensor], fmt: str) -> torch.Tensor:
    if fmt == "int8":
        return Int8("per_channel").decode({"data": stored[""], "scale": stored["_scale"]})
    if fmt == "fp8":
        return Fp8E4M3("per_channel").decode({"data": stored[""].view(torch.uint8), "scale": stored["_scale"]})
    if fmt == "nvfp4":
        return NVFP4().decode({"weight": stored[""], "weight_scale": stored["_scale"].view(torch.uint8),
                               "weight_scale_2": stored["_scale_2"]})
    raise ValueError(f"no weight decoder for format {fmt!r}; choose one of {QUANTIZED_FORMATS}")


def quantize_state_dict(sd: dict[str, torch.Tensor], fmt: str, skip: tuple[str, ...],
                        format_of: Callable[[str], str] | None = None) -> tuple[dict, list[str]]:
    """-> (tensors to store, names of the quantized weights). ``format_of(layer)`` picks a per-layer
    format (a recipe's layer_formats); default ``fmt`` for every layer."""
    out, quantized = {}, []
    for name, t in sd.items():
        if QUANTIZABLE.match(name) and not is_skipped(name, skip):
            layer_fmt = format_of(name.rsplit(".weight", 1)[0]) if format_of else fmt
            for suffix, value in quantize_weight(t.float(), layer_fmt).items():
                out[name + suffix] = value.contiguous()
            quantized.append(name)
        else:
            out[name] = t.float().contiguous()
    return out, quantized


def fake_quantized_state_dict(sd: dict[str, torch.Tensor], fmt: str, skip: tuple[str, ...],
                              format_of: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """The fp32 weights a plan's graphs compute with (quantize then decode): the reference for lowering tests."""
    out = {}
    for name, t in sd.items():
        if QUANTIZABLE.match(name) and not is_skipped(name, skip):
            layer_fmt = format_of(name.rsplit(".weight", 1)[0]) if format_of else fmt
            out[name] = dequantize_weight(quantize_weight(t.float(), layer_fmt), layer_fmt)
        else:
            out[name] = t
    return out
