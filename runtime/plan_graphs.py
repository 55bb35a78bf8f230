"""A plan's graphs against its manifest (docs/plan-validation.md, step 7): what a resealed manifest cannot hide.

``manifest_sha256`` is unkeyed, so a manifest that says 4096x4096 over graphs built for 128x128, or a dit.onnx
replaced by vae.onnx with its files entry rehashed, reads as a valid plan. The backends size every buffer from
the manifest and bind it to the graphs, so each stage graph's inputs and outputs must be exactly the ones the
manifest makes, name, element type and static shape, and its weights (external data) must come from files the
plan lists. The graphs are read without their weights: this costs milliseconds.
"""
from __future__ import annotations

from typing import Callable

from .manifest import Manifest, ManifestIntegrityError, is_plain_name

Signature = dict[str, tuple[int, tuple[int, ...]]]  # tensor name -> (ONNX element type, shape)


class GraphMismatch(ManifestIntegrityError):
    """A plan's graph file contradicts its manifest; ``file`` names it."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"integrity check failed: {problem}")
        self.file = file


def check_graphs(manifest: Manifest, read: Callable[[str], bytes]) -> None:
    """GraphMismatch naming the graph file whose inputs, outputs or external data the manifest contradicts.
    read: a plan file's name -> its bytes."""
    for stage, name, inputs, outputs in expected_graphs(manifest):
        graph = _load(name, read(name))
        for tensor in _tensors(graph.graph):
            for entry in tensor.external_data:
                # a location that is not UTF-8 reads as bytes: no plan file has such a name
                if entry.key == "location" and not (isinstance(entry.value, str) and is_plain_name(entry.value)
                                                    and entry.value in manifest.files):
                    raise GraphMismatch(name, f"its weight {tensor.name} is read from {entry.value!r}, which is not "
                                              "a file the plan lists; a plan's graphs read only the plan's own files, "
                                              "recompile it")
        _compare(name, stage, "input", _signature(graph.graph.input), inputs)
        _compare(name, stage, "output", _signature(graph.graph.output), outputs)


def expected_graphs(m: Manifest) -> list[tuple[str, str, Signature, Signature]]:
    """(stage, graph file, inputs, outputs) of every stage graph, as the manifest makes them."""
    from onnx import TensorProto as T

    from arvc.graphs.lower_kv import NP_TO_ONNX
    from arvc.quant.kv import kv_parts

    cfg, stages = m.model.dit, m.stages
    layers, d, L = range(cfg.num_layers), cfg.dim, cfg.text_len
    N, Nk, half = m.tokens_per_block, m.cache_rows, cfg.head_dim // 2
    cross = {f"cross_{kv}_{i}": (T.FLOAT, (1, L, d)) for i in layers for kv in "kv"}
    context = {"context": (T.FLOAT, (1, L, cfg.text_dim))}
    graphs = [("text", stages.text.graph, context, cross)]

    cache_in, cache_out = {}, {}
    for i in layers:
        for kind in "kv":
            for region in m.kv_regions():
                for part in kv_parts(region.format, d, cfg.num_heads):
                    spec = (NP_TO_ONNX[part.dtype], (region.rows, part.width))
                    cache_in[f"{kind}_{region.prefix}{part.name}_{i}"] = spec
                    cache_out[f"{kind}_{region.prefix}{part.name}_out_{i}"] = spec
    rope = {f"rope_q_{f}": (T.FLOAT, (1, N, half)) for f in ("cos", "sin")}
    if m.geometry.rope == "relative":
        rope.update({f"rope_k_{f}": (T.FLOAT, (1, Nk, half)) for f in ("cos", "sin")})
    latents = (T.FLOAT, m.latent_block_shape)
    dit_in = {"latents": latents, "timestep": (T.DOUBLE, (1,)), **cross, **cache_in,
              "write_index": (T.INT64, (N, 1)), "key_valid": (T.BOOL, (Nk,)), **rope}
    graphs.append(("dit", stages.dit.graph, dit_in, {"x0": latents, **cache_out}))

    states = [(T.FLOAT, s) for s in _vae_state_shapes(m)]
    vae_in = {"latent": (T.FLOAT, m.latent_frame_shape), **{f"state_{j}": s for j, s in enumerate(states)}}
    hw = (m.resolution.height, m.resolution.width)
    for graph, frames in ((stages.vae.graphs.first, 1), (stages.vae.graphs.steady, m.temporal_factor)):
        graphs.append(("vae", graph, vae_in, {"pixels": (T.FLOAT, (1, 3, frames, *hw)),
                                              **{f"state_out_{j}": s for j, s in enumerate(states)}}))
    te = m.model.text_encoder
    if te:
        graphs.append(("text_encoder", stages.text_encoder.graph,
                       {"ids": (T.INT64, (1, te.max_len)), "length": (T.INT64, (1,))}, context))
    return graphs


def _vae_state_shapes(m: Manifest) -> list[tuple[int, ...]]:
    """The streaming VAE's state tensors, from the decoder's own definition (built on the meta device: no memory)."""
    import torch

    from arvc.model.vae import WanVAEDecoder

    with torch.device("meta"):
        return WanVAEDecoder(m.model.vae).state_shapes(1, *m.latent_hw)


def _load(name: str, data: bytes):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.ModelProto.FromString(data)
    except DecodeError:
        raise GraphMismatch(name, "not an ONNX graph; the plan is corrupted, recompile it") from None


def _tensors(graph):
    """Every tensor a graph stores: initializers, and node attributes' (subgraphs included)."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _signature(values) -> Signature:
    def dims(v) -> tuple:  # a symbolic dimension never equals the manifest's number
        shape = v.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in shape)

    return {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in values}


def check_loaded(manifest: Manifest, sessions: dict) -> None:
    """What ONNX Runtime made of each graph (its inferred shapes win over the declared ones: a constant edited
    inside the graph shows here) must be what the manifest makes, before a buffer is sized by it, as the C
    runtime checks (runtime/src/ort_stages.cpp). sessions: graph file name -> onnxruntime.InferenceSession."""
    from onnx import TensorProto

    types = {f"tensor({name.lower()})": value for name, value in TensorProto.DataType.items()}

    def signature(values) -> Signature:
        return {v.name: (types.get(v.type, -1), tuple(d if isinstance(d, int) else "?" for d in v.shape))
                for v in values}

    for stage, name, inputs, outputs in expected_graphs(manifest):
        session = sessions[name]
        _compare(name, stage, "input", signature(session.get_inputs()), inputs)
        _compare(name, stage, "output", signature(session.get_outputs()), outputs)


def _compare(name: str, stage: str, kind: str, got: Signature, want: Signature) -> None:
    from onnx import TensorProto

    def shown(spec) -> str:
        known = spec[0] in TensorProto.DataType.values()  # a mutated graph may name any number
        return f"{TensorProto.DataType.Name(spec[0]).lower() if known else f'type {spec[0]}'} {list(spec[1])}"

    problem = None
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if missing:
        problem = f"has no {kind} {missing[0]!r} ({len(missing)} missing)"
    elif extra:
        problem = f"has an {kind} {extra[0]!r} the manifest does not make ({len(extra)} more than it makes)"
    else:
        wrong = next((n for n in want if got[n] != want[n]), None)
        if wrong:
            problem = f"{kind} {wrong!r} is {shown(got[wrong])}, but the manifest makes it {shown(want[wrong])}"
    if problem:
        raise GraphMismatch(name, f"the {stage} graph {problem}; the graph does not belong to this manifest "
                                  "(replaced, or the manifest edited): recompile the plan")
