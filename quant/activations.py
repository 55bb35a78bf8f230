"""Activation quantization of the block GEMMs' inputs: what a plan computes, emulated exactly in torch.

A quantized GEMM input is ``x -> QuantizeLinear -> DequantizeLinear`` (ONNX semantics: x / scale rounded
half to even and saturated to the code range; fp8 E4M3 saturates at +-448), then the GEMM on the
dequantized weight. The torch emulation here reproduces ONNX Runtime's result bit for bit (tested), so
a plan is checked against a reference that makes exactly the same rounding decisions.

- ``static``: one scale per layer (``per-layer``) or one per denoising timestep and the cache call
  (``per-timestep``), from calibration amax (quant/calibrate.py): scale = amax / qmax.
- ``dynamic``: one scale per token (row), computed from the row's amax at run time.

The activation format follows the layer's weight format: int8 -> int8 (W8A8), fp8 -> fp8, nvfp4 -> fp8
(W4A8: the E4M3 block scales of NVFP4 weights pair with fp8 activations on Blackwell and Hopper alike).
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .format_table import ACTIVATION_FORMATS, FORMATS, QUANTIZED_FORMATS
from .format_table import E4M3_MAX

ACT_MODES = ("static", "dynamic")
ACT_SCALES = ("per-layer", "per-timestep")
ACT_FORMAT_OF_WEIGHTS = {f: FORMATS[f].act_format for f in QUANTIZED_FORMATS}
QMAX = {f: FORMATS[f].qmax for f in ACTIVATION_FORMATS}
# Linears outside the per-block dit graph: the cross-attention K/V run once per prompt (text stage)
NOT_PER_CALL = ("blocks.*.cross_attn.k", "blocks.*.cross_attn.v")


@dataclass(frozen=True)
class ActQuant:
    """How one layer's input is quantized. ``scale``: static only, [] (per layer) or [S] (per timestep,
    ordered as ``timesteps``)."""

    format: str  # int8 | fp8
    mode: str  # static | dynamic
    scale: torch.Tensor | None = None


def is_per_call(layer: str) -> bool:
    return not any(fnmatch.fnmatchcase(layer, p) for p in NOT_PER_CALL)


def scale_from_amax(amax: torch.Tensor, fmt: str) -> torch.Tensor:
    """amax -> scale; an all-zero input gets scale 1 (nothing to represent, and no division by zero)."""
    amax = amax.float()
    return torch.where(amax > 0, amax / QMAX[fmt], torch.ones_like(amax))


def fake_quant(x: torch.Tensor, fmt: str, scale: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear with ``scale`` broadcast against x (fp32 result)."""
    y = x.float() / scale
    if fmt == "int8":
        return torch.round(y).clamp(-128, 127) * scale
    if fmt == "fp8":
        return y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale
    raise ValueError(f"activation format {fmt!r} unknown; choose one of {ACTIVATION_FORMATS}")


def dynamic_scale(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Per-token scales of x [..., K] -> [..., 1]."""
    return scale_from_amax(x.detach().abs().amax(dim=-1, keepdim=True), fmt)


def timestep_index(timesteps: tuple[float, ...], t: float) -> int:
    """The calibrated timestep nearest to t (the graph selects the same way: ArgMin |t - t_i|)."""
    return min(range(len(timesteps)), key=lambda i: (abs(timesteps[i] - t), i))


def quantize_input(x: torch.Tensor, q: ActQuant, timesteps: tuple[float, ...], t: float | None) -> torch.Tensor:
    if q.mode == "dynamic":
        return fake_quant(x, q.format, dynamic_scale(x, q.format))
    scale = q.scale
    if scale.dim() == 1:
        if t is None:
            raise RuntimeError("per-timestep activation scales need the current timestep")
        scale = scale[timestep_index(timesteps, t)]
    return fake_quant(x, q.format, scale)


@contextmanager
def tracking_timestep(dit):
    """Inside: ``state["t"]`` is the timestep of the DiT call in progress (per-timestep scales need it)."""
    state = {"t": None}
    original_run, shadowed = dit.run, dit.__dict__.get("run")  # nested trackers restore each other
    def run(x, t, *args, **kwargs):
        state["t"] = float(torch.as_tensor(t).reshape(-1)[0])
        return original_run(x, t, *args, **kwargs)

    dit.run = run
    try:
        yield state
    finally:
        if shadowed is None:
            del dit.run
        else:
            dit.run = shadowed


@contextmanager
def emulated(dit, layers: dict[str, ActQuant], timesteps: tuple[float, ...] = ()):
    """Inside: the reference DiT quantizes its GEMM inputs as a plan with these layers does."""
    modules = dict(dit.named_modules())
    with tracking_timestep(dit) as state:
        def hook(q: ActQuant):
            def fn(_module, args):
                return (quantize_input(args[0], q, timesteps, state["t"]).to(args[0].dtype), *args[1:])
            return fn

        handles = [modules[name].register_forward_pre_hook(hook(q)) for name, q in layers.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
