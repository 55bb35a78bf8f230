"""Quantized weights in a graph: stored as quant/weights.py lays them out, decoded with standard ops.

- int8 and fp8: ``DequantizeLinear(weight, weight_scale, axis=0)`` right before the GEMM. This weight
  Q/DQ pattern is the one TensorRT's strongly typed builder fuses into a low-precision GEMM; ONNX
  Runtime's CPU provider folds it into fp32 weights at load (weight-only quantization there).
- nvfp4: ONNX Runtime's CPU provider has no FP4 DequantizeLinear, so the packed bytes are decoded with
  BitwiseAnd / BitShift, a 16-entry Gather table, and the E4M3 block scales via DequantizeLinear with the
  fp32 global scale.
  With ``g.fp4_weights == "qdq"`` (the TensorRT dit graph) instead the pattern TensorRT fuses into an FP4 GEMM:
  the packed bytes as a FLOAT4E2M1 [out, in] initializer (the same external bytes: ONNX packs 4-bit
  elements two per byte, element 2i in the low nibble, which is the plan's layout), and
  ``DequantizeLinear(w, DequantizeLinear(weight_scale, weight_scale_2), axis=1, block_size=16)``.
- activations (``quantize_activation``): QuantizeLinear -> DequantizeLinear on the GEMM input, static
  (calibrated constant, or a per-timestep table indexed by the call's timestep) or dynamic (per token).
- W8A8 (int8 weights and int8 activations, ``integer_linear``): ``MatMul(DQ(Q(x)), Transpose(DQ(W)))``, then
  the bias ``Add`` (docs/integer-gemm.md). The Transpose after the weight's DequantizeLinear is the
  column-major weight form NVIDIA's exporter writes for TensorRT; ONNX Runtime folds it into the int8
  initializer and fuses the pattern into MatMulIntegerToFloat, an integer GEMM, as long as MatMulAddFusion
  (disabled in the sessions arvc opens) has not turned MatMul + Add into a Gemm first. A per-row
  (dynamic) scale is applied around the integer GEMM: ``Q(x / s, 1)`` then ``MatMul(...) * s``, since ORT's
  MatMulIntegerToFloat takes one activation scale; the codes are those of ``Q(x, s)``.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from arvc.quant.format_table import E2M1_VALUES, FORMATS, NVFP4_BLOCK


def dequantize(g, name: str, fmt: str) -> str:
    """Values of the quantized weight ``name`` as fp32 [out, in] (graph value name)."""
    scale = g.initializer(f"{name}_scale")
    w = g.initializer(name)
    if not FORMATS[fmt].block:  # one scale per output channel
        return g.op("DequantizeLinear", [w, scale], axis=0)
    out, half = g.weights.shape(name)
    cols = 2 * half
    if getattr(g, "fp4_weights", "bitops") == "qdq":
        fp4 = g.initializers[name]
        fp4.data_type, fp4.dims[:] = TensorProto.FLOAT4E2M1, [out, cols]  # same external bytes, 2 codes a byte
        block_scale = g.op("DequantizeLinear", [scale, g.initializer(f"{name}_scale_2")])  # [out, in/16] f32
        return g.op("DequantizeLinear", [w, block_scale], axis=1, block_size=NVFP4_BLOCK)
    lo = g.op("BitwiseAnd", [w, g.const(15, np.uint8)])
    hi = g.op("BitShift", [w, g.const(4, np.uint8)], direction="RIGHT")
    axis = g.const([-1], np.int64)
    codes = g.op("Concat", [g.op("Unsqueeze", [lo, axis]), g.op("Unsqueeze", [hi, axis])], axis=-1)  # [out, in/2, 2]
    codes = g.op("Cast", [g.op("Reshape", [codes, g.const([out, cols], np.int64)])], to=7)  # int64
    table = g.const(list(E2M1_VALUES) + [-v for v in E2M1_VALUES])
    values = g.op("Gather", [table, codes], axis=0)  # [out, in]
    block_scale = g.op("DequantizeLinear", [scale, g.initializer(f"{name}_scale_2")])  # [out, in/16]
    blocks = g.op("Mul", [g.op("Reshape", [values, g.const([out, cols // 16, 16], np.int64)]),
                          g.op("Unsqueeze", [block_scale, axis])])
    return g.op("Reshape", [blocks, g.const([out, cols], np.int64)])


def _zero_point(g, fmt: str, shape: list[int]) -> str:
    """A zero point of the activation format: its element type selects QuantizeLinear's output type."""
    if fmt == "int8":
        return g.const(np.zeros(shape, np.int8), np.int8)
    name = f"e4m3_zero_point_{'x'.join(map(str, shape)) or 'scalar'}"
    if name not in g.initializers:
        g.initializers[name] = helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, shape, [0.0] * int(np.prod(shape)))
    return name


def runs_integer_gemm(q, weight_format: str | None) -> bool:
    """Whether a layer with activation quantization ``q`` lowers to ``integer_linear``."""
    return q.format == "int8" and weight_format == "int8"


def integer_linear(g, x: str, prefix: str, q) -> str:
    """x [rows, K] fp32 -> [rows, out]: the W8A8 linear ``prefix`` as an integer GEMM (module docstring)."""
    w = g.op("Transpose", [g.weight(f"{prefix}.weight")], perm=[1, 0])  # DQ(W) [out, in] -> [in, out]
    if q.mode == "dynamic":
        scale = _row_scale(g, x, q.format, keepdims=1)  # [rows, 1]
        one, zero = g.const(1.0), _zero_point(g, q.format, [])
        codes = g.op("QuantizeLinear", [g.op("Div", [x, scale]), one, zero])
        y = g.op("Mul", [g.op("MatMul", [g.op("DequantizeLinear", [codes, one, zero]), w], name=prefix), scale])
    else:
        x = quantize_activation(g, x, q, g.act_rows, g.act_timesteps, g.timestep)
        y = g.op("MatMul", [x, w], name=prefix)
    return g.op("Add", [y, g.weight(f"{prefix}.bias")])


def _row_scale(g, x: str, fmt: str, keepdims: int) -> str:
    """quant/activations.dynamic_scale in the graph: amax of each row / qmax (1 for an all-zero row)."""
    from arvc.quant.activations import QMAX

    amax = g.op("ReduceMax", [g.op("Abs", [x]), g.const([1], np.int64)], keepdims=keepdims)
    return g.op("Where", [g.op("Greater", [amax, g.const(0.0)]), g.op("Div", [amax, g.const(QMAX[fmt])]), g.const(1.0)])


def quantize_activation(g, x: str, q, rows: int, timesteps: tuple[float, ...], timestep: str | None) -> str:
    """x [rows, K] fp32 -> QuantizeLinear -> DequantizeLinear (the GEMM input pattern TensorRT's strongly
    typed builder fuses with the weight's DequantizeLinear into one low-precision GEMM).

    static: a constant scale, or (per timestep) the scale of the calibrated timestep nearest to the
    call's, picked in the graph; dynamic: one scale per row from the row's amax."""
    if q.mode == "dynamic":
        scale = _row_scale(g, x, q.format, keepdims=0)  # [rows]
        zp, axis = _zero_point(g, q.format, [rows]), {"axis": 0}
    elif q.scale.dim() == 0:
        scale, zp, axis = g.const(float(q.scale)), _zero_point(g, q.format, []), {}
    else:
        index = getattr(g, "act_timestep_index", None)  # host_time graphs: the host's ArgMin, an input
        if index is None:
            if timestep is None:
                raise ValueError("per-timestep activation scales need the graph's timestep input")
            distance = g.op("Abs", [g.op("Sub", [g.const(list(timesteps), np.float64), timestep])])
            index = g.op("ArgMin", [distance], axis=0, keepdims=0, select_last_index=0)  # ties: the first, as torch
        scale = g.op("Gather", [g.const(q.scale.numpy()), index], axis=0)
        zp, axis = _zero_point(g, q.format, []), {}
    quantized = g.op("QuantizeLinear", [x, scale, zp], saturate=1, **axis) if q.format == "fp8" else \
        g.op("QuantizeLinear", [x, scale, zp], **axis)
    return g.op("DequantizeLinear", [quantized, scale, zp], **axis)
