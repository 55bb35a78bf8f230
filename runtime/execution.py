"""How a plan's precisions execute on a backend and device: natively (the low-precision format reaches a kernel
made for it) or emulated (stored low-precision, computed in a wider type: a memory saving, not a speed-up).
`arvc inspect`, `arvc run` and `arvc profile` print it, so that an emulated plan is never taken for a fast one.

Each backend says what it built (``Backend.execution()``); for ONNX Runtime's CPU provider the claims are the
ones tests/test_integer_gemm.py checks on ORT's optimized graph (W8A8 layers: integer GEMMs; the rest: fp32).
"""
from __future__ import annotations

from dataclasses import dataclass

NATIVE, EMULATED, MIXED = "native", "emulated", "partly native"


@dataclass(frozen=True)
class StageExecution:
    verdict: str  # NATIVE | EMULATED | MIXED
    detail: str

    def __str__(self) -> str:
        return f"{self.verdict}: {self.detail}"


def _linears(recipe, native: set[str], native_kind: str, wide: str, stage_layers) -> StageExecution:
    """The verdict on a stage's quantized linears: those in ``native`` run ``native_kind``, the others decode
    their stored format into ``wide`` (weight-only)."""
    layers = [layer for layer in recipe.weight_formats if stage_layers(layer)]
    if not layers:
        return StageExecution(NATIVE, f"{wide} GEMMs (no quantized weights)")
    fast = [layer for layer in layers if layer in native]
    formats = sorted({recipe.weight_formats[layer] for layer in layers if layer not in native})
    slow = (f"{len(layers) - len(fast)} {'/'.join(formats)} linears decoded to {wide} at load, {wide} GEMMs "
            "(weight-only: memory saved, no speed-up)")
    if not fast:
        return StageExecution(EMULATED, slow)
    if len(fast) == len(layers):
        return StageExecution(NATIVE, f"{len(fast)} linears as {native_kind}")
    return StageExecution(MIXED, f"{len(fast)} linears as {native_kind}; {slow}")


def _kv(recipe, compute: str) -> StageExecution:
    formats = sorted({recipe.kv_cache, recipe.kv_sink or recipe.kv_cache})
    if set(formats) <= {compute}:
        return StageExecution(NATIVE, f"{compute} cache, attention in {compute}")
    return StageExecution(EMULATED, f"stored {'/'.join(formats)}, encoded and decoded around {compute} attention "
                                    "(memory saved, no speed-up)")


def _is_text_layer(layer: str) -> bool:
    return ".cross_attn.k" in layer or ".cross_attn.v" in layer


def ort_cpu_execution(manifest, exact_qdq: bool = False) -> dict[str, StageExecution]:
    """ONNX Runtime's CPU provider: W8A8 linears (int8 weights, int8 activations) run MLAS integer GEMMs
    (MatMulIntegerToFloat); every other format is decoded or Q/DQ-rounded in fp32 (no fp16, fp8 or fp4 GEMMs).
    exact_qdq (ORT's Q/DQ fusion off) runs the W8A8 linears in fp32 too."""
    from arvc.graphs.lower_quant import runs_integer_gemm

    recipe = manifest.recipe
    act, _ = recipe.act_quant()
    w8a8 = set() if exact_qdq else {layer for layer, q in act.items()
                                    if runs_integer_gemm(q, recipe.weight_formats.get(layer))}
    dit = _linears(recipe, w8a8, "int8 x int8 integer GEMMs (MatMulIntegerToFloat)", "fp32",
                   lambda layer: not _is_text_layer(layer))
    emulated_act = sorted({q.format for layer, q in act.items() if layer not in w8a8})
    if emulated_act:
        note = f"; {'/'.join(emulated_act)} activation Q/DQ rounded in fp32"
        dit = StageExecution(EMULATED if dit.verdict == EMULATED else MIXED, dit.detail + note)
    return {"text": _linears(recipe, set(), "", "fp32", _is_text_layer), "dit": dit, "kv_cache": _kv(recipe, "fp32"),
            "vae": StageExecution(NATIVE, "fp32 convolutions")}


def torch_execution(manifest, dit, dtype_name: str, device: str) -> dict[str, StageExecution]:
    """The torch backend as built (runtime/torch_dit.PlanDiT): fp8 x fp8 linears as torch._scaled_mm where the
    device has FP8 GEMMs, every other quantized linear decoded once to the compute dtype."""
    recipe = manifest.recipe
    native = set(dit.fp8_layers)
    where = f"{dtype_name} on {device}"
    return {"text": _linears(recipe, set(), "", where, _is_text_layer),
            "dit": _linears(recipe, native, "fp8 x fp8 GEMMs (torch._scaled_mm)", where,
                            lambda layer: not _is_text_layer(layer)),
            "kv_cache": _kv(recipe, dtype_name), "vae": StageExecution(NATIVE, f"{where} convolutions")}


def tensorrt_execution(manifest, capability: tuple[int, int]) -> dict[str, StageExecution]:
    """TensorRT (strongly typed, explicit quantization: the plan's fp32 types, its Q/DQ fused into low-precision
    GEMMs): int8 on every supported GPU, fp8 from sm_89 (Ada, Hopper), fp4 from sm_100 (Blackwell)."""
    recipe = manifest.recipe
    ok = {"int8": True, "fp8": capability >= (8, 9), "nvfp4": capability >= (10, 0)}
    native = {layer for layer, fmt in recipe.weight_formats.items() if ok.get(fmt)}
    sm = f"sm_{capability[0]}{capability[1]}"
    return {"text": _linears(recipe, native, f"low-precision GEMMs on {sm}", "fp32", _is_text_layer),
            "dit": _linears(recipe, native, f"low-precision GEMMs on {sm}", "fp32",
                            lambda layer: not _is_text_layer(layer)),
            "kv_cache": _kv(recipe, "fp32"), "vae": StageExecution(NATIVE, "fp32 convolutions")}
