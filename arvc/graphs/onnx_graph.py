"""A small ONNX graph builder whose weights live in a safetensors file beside the graph.

Why not re-serialize weights into each .onnx: a plan stores weights once. A safetensors file is an
8-byte header length, a JSON header, then raw little-endian tensors, which is exactly what ONNX's
external-data references (location, offset, length) can point at. Every graph of a stage therefore
names the same bytes in the plan's ``*.safetensors`` and no graph carries a copy.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from arvc.checkpoints.safetensors_io import read_safetensors_header
from arvc.quant.format_table import FORMATS

OPSET = 23
IR_VERSION = 11  # ONNX Runtime 1.31 reads IR <= 13; 11 is what opset 23 needs

# safetensors dtype -> ONNX element type: the formats' (quant/format_table.py), plus the index / mask types
ONNX_TYPES = {f.safetensors: getattr(TensorProto, f.onnx) for f in FORMATS.values()} | {
    "F64": TensorProto.DOUBLE, "I64": TensorProto.INT64, "BOOL": TensorProto.BOOL}


class ExternalWeights:
    """Tensors of one safetensors file, referenced (never copied) by graphs in the same directory.
    ``formats``: layer -> storage format of each quantized linear (the recipe's; a stored dtype alone does not
    say which format wrote it)."""

    def __init__(self, path: str | Path, formats: dict[str, str] | None = None):
        self.path, self.formats = Path(path), dict(formats or {})
        header, _ = read_safetensors_header(self.path)
        with open(self.path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
        self.data_start = 8 + header_len
        self.entries = header

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def dtype(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def shape(self, name: str) -> list[int]:
        return list(self.entries[name]["shape"])

    def tensor_proto(self, name: str, onnx_name: str | None = None) -> TensorProto:
        e = self.entries[name]
        if e["dtype"] not in ONNX_TYPES:
            raise ValueError(f"{self.path.name}: tensor {name} has dtype {e['dtype']}, which no arvc graph reads")
        begin, end = e["data_offsets"]
        t = TensorProto(name=onnx_name or name, data_type=ONNX_TYPES[e["dtype"]], dims=e["shape"])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.data_start + begin)),
                           ("length", str(end - begin))):
            t.external_data.add(key=key, value=value)
        return t


class GraphBuilder:
    def __init__(self, name: str, weights: ExternalWeights | None = None, compute_type: int = TensorProto.FLOAT):
        self.name, self.weights, self.compute_type = name, weights, compute_type
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self._weight_values: dict[str, str] = {}
        self._const_cache: dict[tuple, str] = {}
        self._ids = itertools.count()
        # activation quantization of GEMM inputs (arvc/graphs/lower_quant.py): layer -> ActQuant, set by a lowering
        self.act_quant: dict = {}
        self.act_rows, self.act_timesteps, self.timestep = 0, (), None

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: list) -> str:
        if value != name:
            self.op("Identity", [value], out=name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            name = self.fresh("const")
            self.initializers[name] = numpy_helper.from_array(arr, name)
            self._const_cache[key] = name
        return self._const_cache[key]

    def initializer(self, name: str) -> str:
        """A tensor of the weights file, as stored (external reference)."""
        if self.weights is None or name not in self.weights:
            raise KeyError(f"graph {self.name}: weight {name} is not in the plan's weights file")
        if name not in self.initializers:
            self.initializers[name] = self.weights.tensor_proto(name)
        return name

    def weight(self, name: str) -> str:
        """A checkpoint tensor in the compute type: a Cast for fp16/bf16 storage, a decode for quantized."""
        if name in self._weight_values:
            return self._weight_values[name]
        value = self.initializer(name)
        stored = self.weights.dtype(name)
        if f"{name}_scale" in self.weights:
            from .lower_quant import dequantize

            layer = name.rsplit(".weight", 1)[0]
            if layer not in self.weights.formats:
                raise KeyError(f"graph {self.name}: {name} is stored quantized, but no weight format was given for "
                               f"{layer} (ExternalWeights(formats=...), from the recipe)")
            value = dequantize(self, name, self.weights.formats[layer])
        elif ONNX_TYPES[stored] != self.compute_type:
            value = self.op("Cast", [name], to=self.compute_type)
        self._weight_values[name] = value
        return value

    def op(self, op_type: str, inputs: list[str], out: str | None = None, outputs: int = 1, **attrs):
        names = [out] if out else [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    # -- composite ops shared by the lowerings ---------------------------------------------------
    def linear(self, x: str, prefix: str) -> str:
        # x: [M, in] -> [M, out]; weight kept [out, in] as stored (transB), no transposed copy. The GEMM node is
        # named after the layer, so that ONNX Runtime's optimized graph tells which kernel each layer runs.
        q = self.act_quant.get(prefix)
        if q is not None:
            from .lower_quant import integer_linear, quantize_activation, runs_integer_gemm

            if runs_integer_gemm(q, self.weights.formats.get(prefix)):
                return integer_linear(self, x, prefix, q)
            x = quantize_activation(self, x, q, self.act_rows, self.act_timesteps, self.timestep)
        return self.op("Gemm", [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")], transB=1,
                       name=prefix)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, list(self.initializers.values()))
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="arvc")
        return m


def save_checked(model: onnx.ModelProto, path: Path) -> None:
    """Write a graph (weights stay external) and run the ONNX checker on the written file."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
