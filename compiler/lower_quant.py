"""Quantized weights in a graph: stored as quant/weights.py lays them out, decoded with standard ops.

- int8 and fp8: ``DequantizeLinear(weight, weight_scale, axis=0)`` right before the GEMM. This weight
  Q/DQ pattern is the one TensorRT's strongly typed builder fuses into a low-precision GEMM; ONNX
  Runtime's CPU provider folds it into fp32 weights at load (weight-only quantization there).
- nvfp4: ONNX Runtime's CPU provider has no FP4 DequantizeLinear, so the packed bytes are decoded with
  BitwiseAnd / BitShift, a 16-entry Gather table, and the E4M3 block scales via DequantizeLinear with the
  fp32 global scale.
"""
from __future__ import annotations

import numpy as np

from arvc.quant.formats import E2M1_VALUES


def dequantize(g, name: str, fmt: str) -> str:
    """Values of the quantized weight ``name`` as fp32 [out, in] (graph value name)."""
    scale = g.initializer(f"{name}_scale")
    w = g.initializer(name)
    if fmt in ("int8", "fp8"):
        return g.op("DequantizeLinear", [w, scale], axis=0)
    out, half = g.weights.shape(name)
    cols = 2 * half
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
