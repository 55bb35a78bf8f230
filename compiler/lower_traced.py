"""Stages lowered by tracing (torch.onnx dynamo exporter): the streaming VAE decoder and the tiny
model's text encoder. Their op mix (3D convs, upsampling, a transformer encoder) is what the exporter
does well; afterwards every initializer that is a checkpoint tensor is re-pointed at the plan's
safetensors file, so these graphs carry no weight copies either.

vae graphs (one latent frame per call; ``vae_first`` for the video's first latent frame, which yields
1 frame, ``vae`` for every later one, which yields 4):
  inputs  latent [1,z,1,h,w] f32 · state_i [1,C_i,2,h*s_i,w*s_i] f32 (i < number of causal convs)
  outputs pixels [1,3,1|4,8h,8w] f32 in [-1,1] · state_out_i (the next call's state_i)
text_encoder graph: ids [1,L] i64 · length [1] i64 -> context [1,L,text_dim] f32
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from arvc.graphs.onnx_graph import IR_VERSION, OPSET, ExternalWeights


class _VaeStep(torch.nn.Module):
    def __init__(self, vae, first: bool):
        super().__init__()
        self.vae, self.first = vae, first

    def forward(self, latent, *states):
        pixels, new = self.vae.stream_step(latent, list(states), self.first)
        # a state that passes through (the first frame skips time_conv) still gets its own output,
        # since the runtime reads and writes two different state sets
        return (pixels, *(n.clone() if n is s else n for n, s in zip(new, states)))


class _TextEncoder(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, ids, length):
        return self.enc(ids, length)


def _export(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str]) -> onnx.ModelProto:
    # The exporter narrates every phase on stdout and warns about torchvision ops we never use;
    # a compile prints its own progress instead.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, external_data=False, verbose=False,
                                    # unoptimized: the exporter's constant folding would store transposed
                                    # copies of weights; ONNX Runtime folds them in memory at load instead
                                    optimize=False)
    model = program.model_proto
    model.ir_version = IR_VERSION
    for node in model.graph.node:  # the exporter's per-node source traces: most of the file, no use to a plan
        del node.metadata_props[:]
    return model


def _externalize(model: onnx.ModelProto, weights: ExternalWeights, prefix: str) -> int:
    """Point initializers named ``prefix + checkpoint name`` with identical bytes at the weights file."""
    moved = 0
    for i, init in enumerate(model.graph.initializer):
        name = init.name[len(prefix):] if init.name.startswith(prefix) else None
        if name is None or name not in weights:
            continue
        ext = weights.tensor_proto(name, onnx_name=init.name)
        if list(init.dims) != weights.shape(name) or ext.data_type != init.data_type:
            continue
        stored = _read_external(weights, name, init)
        if not np.array_equal(stored, numpy_helper.to_array(init)):
            continue  # the exporter transformed this tensor; keep its own copy
        model.graph.initializer[i].CopyFrom(ext)
        moved += 1
    return moved


def _read_external(weights: ExternalWeights, name: str, like: onnx.TensorProto) -> np.ndarray:
    e = weights.entries[name]
    begin, end = e["data_offsets"]
    with open(weights.path, "rb") as f:
        f.seek(weights.data_start + begin)
        raw = f.read(end - begin)
    dtype = numpy_helper.to_array(like).dtype
    return np.frombuffer(raw, dtype=dtype).reshape(e["shape"])


def build_vae_graphs(vae, latent_hw: tuple[int, int], weights: ExternalWeights) -> dict[str, onnx.ModelProto]:
    h, w = latent_hw
    states = vae.init_state(1, h, w, dtype=torch.float32, device="cpu").tensors
    latent = torch.zeros(1, vae.config.z_dim, 1, h, w)
    n = len(states)
    ins = ["latent", *[f"state_{i}" for i in range(n)]]
    outs = ["pixels", *[f"state_out_{i}" for i in range(n)]]
    graphs = {}
    for name, first in (("vae_first", True), ("vae", False)):
        model = _export(_VaeStep(vae, first), (latent, *states), ins, outs)
        moved = _externalize(model, weights, "vae.")
        if moved == 0:
            raise RuntimeError(f"{name}: no VAE weight could be referenced from {weights.path.name}; export changed names")
        graphs[name] = model
    return graphs


def build_text_encoder_graph(encoder, weights: ExternalWeights) -> onnx.ModelProto:
    L = encoder.cfg.max_len
    ids = torch.zeros(1, L, dtype=torch.long)
    length = torch.tensor([1])
    model = _export(_TextEncoder(encoder), (ids, length), ["ids", "length"], ["context"])
    _externalize(model, weights, "enc.")
    return model

