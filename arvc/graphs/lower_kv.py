"""The KV cache in the dit graph: quantize a block's rows once on write, read the whole cache back per call.

Each layer's K and V are one set of buffers per format part (quant/kv.py): graph inputs whose ScatterND
results are the matching ``*_out`` outputs, so a caller that binds one buffer to both gets an in-place
write. Encoders are written with standard ops and reproduce quant/formats.py bit for bit:

- int8: Div, Round (half to even), Clip, Cast.
- fp8: QuantizeLinear to float8e4m3fn rounds (ties to even, saturating); the E4M3 bits are then
  rebuilt arithmetically from the rounded value (exponent by counting powers of two it reaches,
  mantissa by exact scaling), because ONNX has no bitcast and ORT's ScatterND takes no float8.
- nvfp4: E2M1 codes by counting rounding midpoints passed (ties to the even code), packed two per
  byte with exact integer arithmetic; block scales E4M3-rounded as for fp8.
Decoding uses 256-entry (E4M3) and 16-entry (E2M1) lookup tables: exact, and cheap next to attention.

With a separate sink format the sink frames live in their own buffers (sink rows + 1 scratch row) and
the ring in another (ring rows + 1 scratch row). Every call scatters its rows into both sets: rows that
belong to the other set go to its scratch row, which nothing reads. The split is computed in the graph
from ``write_index``, so the runtime's bookkeeping does not change.
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from arvc.quant.format_table import E2M1_VALUES, E4M3_MAX, NVFP4_BLOCK
from arvc.quant.kv import kv_parts

F32 = TensorProto.FLOAT
NP_TO_ONNX = {np.float32: F32, np.float16: TensorProto.FLOAT16, np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8}
E4M3_TABLE = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float().numpy()
E2M1_TABLE = np.array(list(E2M1_VALUES) + [-v for v in E2M1_VALUES], np.float32)


def cache_inputs(g, fmt: str, rows: int, dim: int, heads: int, kind: str, layer: int, region: str = "") -> dict:
    """Declare the buffers of one cache (K or V of one layer) as graph inputs, with their outputs."""
    names = {}
    for p in kv_parts(fmt, dim, heads):
        base = f"{kind}_{region}{p.name}"
        names[p.name] = g.input(f"{base}_{layer}", NP_TO_ONNX[p.dtype], [rows, p.width])
        g.outputs.append(helper.make_tensor_value_info(f"{base}_out_{layer}", NP_TO_ONNX[p.dtype], [rows, p.width]))
    return names


def write_and_read(g, fmt: str, buffers: dict, rows_index: str, x: str, heads: int, nk: int, dim: int) -> str:
    """Store x [N, dim] at ``rows_index`` [N, 1] in the buffers (in place) -> the whole cache as fp32 [nk, dim]."""
    stored = _encode(g, fmt, x, heads, dim)
    written = {}
    for part, value in stored.items():
        out = buffers[part].rsplit("_", 1)
        written[part] = g.op("ScatterND", [buffers[part], rows_index, value], out=f"{out[0]}_out_{out[1]}")
    return _decode(g, fmt, written, heads, nk, dim)


def split_rows(g, write_index: str, sink_rows: int, nk: int) -> tuple[str, str]:
    """write_index [N, 1] of the combined cache -> (sink buffer rows, ring buffer rows); misses go to scratch."""
    ring_rows = nk - sink_rows
    in_sink = g.op("Less", [write_index, g.const(sink_rows, np.int64)])
    sink_index = g.op("Where", [in_sink, write_index, g.const(sink_rows, np.int64)])
    ring_index = g.op("Where", [in_sink, g.const(ring_rows, np.int64),
                                g.op("Sub", [write_index, g.const(sink_rows, np.int64)])])
    return sink_index, ring_index


def first_rows(g, values: str, n: int) -> str:
    return g.op("Slice", [values, g.const([0], np.int64), g.const([n], np.int64), g.const([0], np.int64)])


# -- encoders: x [N, dim] fp32 -> {part: tensor} ----------------------------------------------------------
def _per_head(g, x: str, heads: int, dim: int) -> tuple[str, str]:
    xh = g.op("Reshape", [x, g.const([-1, heads, dim // heads], np.int64)])  # [N, H, Dh]
    amax = g.op("ReduceMax", [g.op("Abs", [xh]), g.const([2], np.int64)], keepdims=1)  # [N, H, 1]
    return xh, amax


def _scale_for(g, amax: str, qmax: float) -> str:
    return g.op("Where", [g.op("Greater", [amax, g.const(0.0)]), g.op("Div", [amax, g.const(qmax)]), g.const(1.0)])


def _rows(g, t: str, width: int) -> str:
    return g.op("Reshape", [t, g.const([-1, width], np.int64)])


def _encode(g, fmt: str, x: str, heads: int, dim: int) -> dict:
    if fmt == "fp32":
        return {"cache": x}
    if fmt == "fp16":
        return {"cache": g.op("Cast", [x], to=TensorProto.FLOAT16)}
    xh, amax = _per_head(g, x, heads, dim)
    if fmt == "int8":
        scale = _scale_for(g, amax, 127.0)
        q = g.op("Clip", [g.op("Round", [g.op("Div", [xh, scale])]), g.const(-127.0), g.const(127.0)])
        return {"cache": _rows(g, g.op("Cast", [q], to=TensorProto.INT8), dim), "scale": _rows(g, scale, heads)}
    if fmt == "fp8":
        scale = _scale_for(g, amax, E4M3_MAX)
        y = g.op("Div", [xh, scale])  # |y| <= 448 up to rounding; QuantizeLinear saturates like the clamp
        # the sign of 1/y is y's sign, -0 included (torch stores -0 as 0x80; Less(y, 0) would not see it)
        code = _e4m3_code(g, _e4m3_round(g, y), g.op("Less", [g.op("Reciprocal", [y]), g.const(0.0)]))
        return {"cache": _rows(g, g.op("Cast", [code], to=TensorProto.UINT8), dim), "scale": _rows(g, scale, heads)}
    if fmt == "nvfp4":
        return _encode_nvfp4(g, xh, amax, heads, dim)
    raise ValueError(f"KV-cache format {fmt!r} has no graph encoder")


def _e4m3_round(g, y: str) -> str:
    """fp32 values within +-448 -> the nearest E4M3 value (ties to even), still fp32."""
    one, zero = g.const(1.0), "e4m3_zero_point"  # the zero point's type selects the float8 output
    if zero not in g.initializers:
        g.initializers[zero] = helper.make_tensor(zero, TensorProto.FLOAT8E4M3FN, [], [0.0])
    return g.op("DequantizeLinear", [g.op("QuantizeLinear", [y, one, zero], saturate=1), one])


def _e4m3_code(g, r: str, negative: str | None) -> str:
    """E4M3 values r (exact, fp32) -> their byte codes as fp32 0..255.

    biased exponent E = how many of 2^-6 .. 2^8 |r| reaches (0 for subnormals); then
    |r| = 2^(max(E,1) - 10) * (8 [E > 0] + M), so M is an exact scaling of |r|.
    """
    mag = g.op("Abs", [r])
    powers = g.const(2.0 ** np.arange(-6, 9, dtype=np.float64))  # [15]
    reached = g.op("Cast", [g.op("GreaterOrEqual", [g.op("Unsqueeze", [mag, g.const([-1], np.int64)]), powers])], to=F32)
    exponent = g.op("ReduceSum", [reached, g.const([-1], np.int64)], keepdims=0)
    unit = g.op("Gather", [g.const(2.0 ** (np.maximum(np.arange(16), 1) - 10.0)),
                           g.op("Cast", [exponent], to=TensorProto.INT64)], axis=0)
    implicit = g.op("Mul", [g.op("Cast", [g.op("Greater", [exponent, g.const(0.0)])], to=F32), g.const(8.0)])
    mantissa = g.op("Sub", [g.op("Div", [mag, unit]), implicit])
    code = g.op("Add", [g.op("Mul", [exponent, g.const(8.0)]), mantissa])
    if negative is not None:
        code = g.op("Add", [code, g.op("Mul", [g.op("Cast", [negative], to=F32), g.const(128.0)])])
    return code


def _e2m1_code(g, v: str) -> str:
    """fp32 values (already scaled into E2M1's range) -> codes 0..15 as fp32; ties go to the even code."""
    mag = g.op("Unsqueeze", [g.op("Abs", [v]), g.const([-1], np.int64)])
    mids = [(a + b) / 2 for a, b in zip(E2M1_VALUES, E2M1_VALUES[1:])]
    passed = g.op("Cast", [g.op("Greater", [mag, g.const(mids)])], to=F32)
    tie_up = g.op("Cast", [g.op("Equal", [mag, g.const(mids[1::2])])], to=F32)  # 0.75, 1.75, 3.5 round up
    axis = g.const([-1], np.int64)
    code = g.op("Add", [g.op("ReduceSum", [passed, axis], keepdims=0), g.op("ReduceSum", [tie_up, axis], keepdims=0)])
    sign = g.op("Mul", [g.op("Cast", [g.op("Less", [v, g.const(0.0)])], to=F32), g.const(8.0)])
    return g.op("Add", [code, sign])


def _encode_nvfp4(g, xh: str, amax: str, heads: int, dim: int) -> dict:
    head_dim = dim // heads
    nb = head_dim // NVFP4_BLOCK
    scale_2 = _scale_for(g, amax, 6 * E4M3_MAX)  # [N, H, 1]
    blocks = g.op("Reshape", [xh, g.const([-1, heads, nb, NVFP4_BLOCK], np.int64)])  # [N, H, nb, 16]
    block_amax = g.op("ReduceMax", [g.op("Abs", [blocks]), g.const([3], np.int64)], keepdims=0)  # [N, H, nb]
    # Max/Min rather than Clip: ORT's Clip->QuantizeLinear fusion rejects float8 zero points
    raw = g.op("Min", [g.op("Max", [g.op("Div", [block_amax, g.op("Mul", [scale_2, g.const(6.0)])]),
                                    g.const(2.0**-9)]), g.const(E4M3_MAX)])
    block_scale = g.op("Where", [g.op("Greater", [block_amax, g.const(0.0)]), _e4m3_round(g, raw), g.const(1.0)])
    step = g.op("Unsqueeze", [g.op("Mul", [block_scale, scale_2]), g.const([-1], np.int64)])  # [N, H, nb, 1]
    codes = _e2m1_code(g, g.op("Div", [blocks, step]))  # [N, H, nb, 16]
    pairs = g.op("Reshape", [codes, g.const([-1, dim // 2, 2], np.int64)])
    even, odd = g.op("Split", [pairs], outputs=2, axis=2, num_outputs=2)
    packed = g.op("Add", [even, g.op("Mul", [odd, g.const(16.0)])])
    return {"cache": _rows(g, g.op("Cast", [packed], to=TensorProto.UINT8), dim // 2),
            "block_scale": _rows(g, g.op("Cast", [_e4m3_code(g, block_scale, None)], to=TensorProto.UINT8),
                                 dim // NVFP4_BLOCK),
            "scale": _rows(g, scale_2, heads)}


# -- decoders: the whole cache {part: [nk, width]} -> fp32 [nk, dim] ----------------------------------------
def _decode(g, fmt: str, parts: dict, heads: int, nk: int, dim: int) -> str:
    if fmt == "fp32":
        return parts["cache"]
    if fmt == "fp16":
        return g.op("Cast", [parts["cache"]], to=F32)
    per_head = g.const([nk, heads, dim // heads], np.int64)
    scale = g.op("Unsqueeze", [parts["scale"], g.const([2], np.int64)])  # [nk, H, 1]
    if fmt == "int8":
        values = g.op("Cast", [parts["cache"]], to=F32)
    elif fmt == "fp8":
        values = _lookup(g, E4M3_TABLE, parts["cache"])
    else:
        return _decode_nvfp4(g, parts, scale, heads, nk, dim)
    return _rows(g, g.op("Mul", [g.op("Reshape", [values, per_head]), scale]), dim)


def _lookup(g, table: np.ndarray, codes: str) -> str:
    return g.op("Gather", [g.const(table), g.op("Cast", [codes], to=TensorProto.INT64)], axis=0)


def _decode_nvfp4(g, parts: dict, scale_2: str, heads: int, nk: int, dim: int) -> str:
    packed = parts["cache"]  # [nk, dim/2]
    lo = g.op("BitwiseAnd", [packed, g.const(15, np.uint8)])
    hi = g.op("BitShift", [packed, g.const(4, np.uint8)], direction="RIGHT")
    axis = g.const([-1], np.int64)
    codes = g.op("Concat", [g.op("Unsqueeze", [lo, axis]), g.op("Unsqueeze", [hi, axis])], axis=-1)  # [nk, dim/2, 2]
    nb = dim // heads // NVFP4_BLOCK
    values = g.op("Reshape", [_lookup(g, E2M1_TABLE, codes), g.const([nk, heads, nb, NVFP4_BLOCK], np.int64)])
    block_scale = g.op("Reshape", [_lookup(g, E4M3_TABLE, parts["block_scale"]), g.const([nk, heads, nb], np.int64)])
    step = g.op("Mul", [block_scale, scale_2])  # [nk, H, nb] * [nk, H, 1]
    return _rows(g, g.op("Mul", [values, g.op("Unsqueeze", [step, axis])]), dim)
