"""TensorRT's explicit-quantization rules for a W8A8 linear, checked on a graph (docs/integer-gemm.md cites them).

The plan's dit graph is what ONNX Runtime runs and what a TensorRT builder would read: its W8A8 linears must be in
the form both fuse into an integer GEMM. For each layer (the GEMM node named after it, arvc/graphs/onnx_graph.py):

1. the GEMM is a MatMul whose inputs both come from a DequantizeLinear, the weight's through one Transpose
   at most (the column-major weight form);
2. the weight's DequantizeLinear reads an int8 initializer [out, in] with a per-channel fp32 scale of length out
   on axis 0 (the output channel), and no zero point or a zero one: TensorRT's INT8 is symmetric;
3. the activation's DequantizeLinear reads a QuantizeLinear's int8 output with one (per-tensor) scale, the same
   scale and zero point as that QuantizeLinear, and a zero point of 0.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper


def placement_problems(model, layers: list[str]) -> list[str]:
    """What in ``model`` (an onnx.ModelProto, weights external or not) breaks rules 1-3 for ``layers``."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    by_name = {n.name: n for n in g.node if n.name}
    problems = []

    def values(name: str):
        t = inits.get(name)
        return None if t is None or t.data_location == TensorProto.EXTERNAL else numpy_helper.to_array(t)

    def zero(dq, i: int) -> bool:
        if len(dq.input) <= i or not dq.input[i]:
            return True
        z = values(dq.input[i])
        return z is not None and not np.any(z)

    def attr(node, key: str, default):
        return next((a.i for a in node.attribute if a.name == key), default)

    for layer in layers:
        gemm = by_name.get(layer)
        if gemm is None or gemm.op_type != "MatMul":
            problems.append(f"{layer}: no MatMul node named after it ({gemm.op_type if gemm else 'none'})")
            continue
        act, weight = (producer.get(i) for i in gemm.input)
        if weight is not None and weight.op_type == "Transpose":
            weight = producer.get(weight.input[0])
        missing = [role for role, dq in (("activation", act), ("weight", weight))
                   if dq is None or dq.op_type != "DequantizeLinear"]
        if missing:
            problems += [f"{layer}: its {role} input does not come from a DequantizeLinear" for role in missing]
            continue
        w = inits.get(weight.input[0])
        scale = inits.get(weight.input[1])
        if w is None or w.data_type != TensorProto.INT8 or len(w.dims) != 2:
            problems.append(f"{layer}: the weight's DequantizeLinear does not read an int8 [out, in] initializer")
        elif scale is None or list(scale.dims) != [w.dims[0]] or attr(weight, "axis", 1) != 0:
            problems.append(f"{layer}: the weight scale is not per output channel (length {w.dims[0]}, axis 0)")
        if not zero(weight, 2):
            problems.append(f"{layer}: the weight's zero point is not 0 (TensorRT's INT8 is symmetric)")
        q = producer.get(act.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            problems.append(f"{layer}: the activation's DequantizeLinear does not read a QuantizeLinear")
            continue
        if list(q.input[1:]) != list(act.input[1:]):
            problems.append(f"{layer}: the activation's QuantizeLinear and DequantizeLinear differ in scale or zero point")
        s = inits.get(act.input[1])
        if s is not None and len(s.dims) > 0 and int(np.prod(s.dims)) != 1:
            problems.append(f"{layer}: the activation scale is not per tensor")
        z = inits.get(act.input[2]) if len(act.input) > 2 else None
        if z is None or z.data_type != TensorProto.INT8 or not zero(act, 2):
            problems.append(f"{layer}: the activation's zero point is not an int8 0")
    return problems
