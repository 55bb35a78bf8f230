"""The dit graph for TensorRT: each layer's self-attention cache ops as two plugin nodes (domain ``arvc``).

``build_dit_graph`` with ``plugin_cache_attention`` as its cache emitter: everything else (patchify, time
embedding, modulation, cross-attention, FFN, head, quantized weights and activations) is the plan's
``dit.onnx`` node for node. Where dit.onnx scatters the block's K/V with ScatterND, decodes the whole cache
back to fp32 with standard ops and runs the opset-23 ``Attention``, this graph has

  KVCacheWrite    (arvc, plugin_version "1", plugin_namespace "arvc") -> csrc arvc_kv_cache_write_cuda
    inputs   x [N, dim] f32 (the block's K or V rows) · row_index [N] i32 · the cache parts of one layer's
             K or V in quant/kv.py order: cache [Nk, w] (+ block_scale [Nk, dim/16] u8 for nvfp4)
             (+ scale [Nk, heads] f32 for int8/fp8/nvfp4)
    outputs  the same parts after the write; output j ALIASES input 2 + j (in place, TensorRT
             IPluginV3OneBuildV2::getAliasedInput), named like dit.onnx's ``k_cache_out_i`` etc.
    attrs    format (int: fp16 1, int8 2, fp8 3, nvfp4 4 = arvc_kv_format), heads, head_dim,
             plugin_version "1", plugin_namespace "arvc"

  AttentionQCache (arvc, "1", "arvc") -> csrc arvc_attention_qcache_cuda (n_new = 0)
    inputs   q [1, N, dim] f32 (after RoPE) · the K parts, then the V parts, as written by KVCacheWrite
             (so attention runs after both writes and sees the block's own rows, quantized, as
             dit.onnx does) · key_valid [Nk] u8 · relative RoPE only: rope_k_cos, rope_k_sin [1, Nk, Dh/2]
             f32, applied to the decoded cache keys
    outputs  out, q's shape and type: softmax(softmax_scale * q K^T over the valid rows) V, per head
    attrs    format, heads, head_dim, softmax_scale (float), rope_k (int: 1 when the k tables are inputs),
             plugin_version "1", plugin_namespace "arvc"

No FP64 (TensorRT has none): instead of dit.onnx's ``timestep [1] f64`` the graph takes ``time_sinusoid`` [1,
freq_dim] f32, ``sigma`` [1] f32 and, with per-timestep activation scales, ``act_timestep_index`` [] i32, which
the runtime computes from t exactly as dit.onnx does (runtime/trt_backend.dit_host_feeds; the parameters are
recorded in the model's metadata_props under HOST_FEEDS_KEY). NVFP4 weights are FLOAT4E2M1
DequantizeLinear (block 16) with a DequantizeLinear'd E4M3 scale (arvc/graphs/lower_quant.dequantize), the
pattern TensorRT fuses into an FP4 GEMM, on the same bytes as dit.onnx's bit-op decode.

The other graph inputs are dit.onnx's (same names, shapes and types: ``write_index`` stays [N,1] i64 and
``key_valid`` stays bool, so a runtime feeds both graphs alike); a Reshape+Cast gives the plugins int32 row
indices and a Cast uint8 validity. Plugins exist only for the formats the kernels implement: fp16, int8,
fp8, nvfp4, one set of buffers per cache (no separate sink format); ``plugin_problem`` says why not.

``reference_ops()`` returns onnx.reference implementations of both ops (torch + quant/kv.py math), so the
graph can be checked on a CPU against dit.onnx (tests/test_trt_plugin_graph.py).
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from arvc.model.config import WanConfig
from arvc.quant.format_table import KV_CODES
from arvc.quant.formats import CODECS
from arvc.quant.kv import kv_parts

from .lower_dit import CacheContext, DitShapes, build_dit_graph, per_timestep_scales
from .onnx_graph import ExternalWeights

PLUGIN_DOMAIN = "arvc"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "arvc"
WRITE_OP, ATTENTION_OP = "KVCacheWrite", "AttentionQCache"
PLUGIN_KV_FORMATS = tuple(KV_CODES)  # the caches the kernels hold
HOST_FEEDS_KEY = "arvc.host_feeds"  # metadata_props: JSON {"freq_dim", "act_timesteps"} for dit_host_feeds


def plugin_problem(kv_cache: str, kv_sink: str | None = None, activations: str | None = None,
                   act_scales: str = "per-layer") -> str | None:
    """Why a plan with this recipe has no TensorRT graph (None: it has one)."""
    if activations == "dynamic" or (activations == "static" and act_scales == "per-timestep"):
        # TensorRT's QuantizeLinear takes only build-time constant scales; a per-token or per-call scale
        # would be rejected at build time, or rewritten without the low-precision GEMM fusion
        what = "dynamic" if activations == "dynamic" else "per-timestep"
        return (f"--target tensorrt: {what} activation scales are computed at run time, and TensorRT's quantize "
                "layers take only build-time constant scales; use --activations static --act-scales per-layer "
                "(or weight-only quantization, --activations none) for TensorRT, or --target cuda for this recipe")
    if kv_cache not in KV_CODES:
        return (f"--target tensorrt needs a KV-cache format the arvc kernels implement "
                f"(--kv-cache {'|'.join(PLUGIN_KV_FORMATS)}); --kv-cache {kv_cache} has no cache kernel "
                "(fp32 caches are what the ONNX graph is for: use --target cpu, or --kv-cache fp16)")
    if kv_sink:
        return (f"--target tensorrt: --kv-sink-precision {kv_sink} keeps the sink in its own buffers, which the "
                "cache plugins do not read yet; drop --kv-sink-precision (the sink then uses --kv-cache's format)")
    return None


def plugin_cache_attention(ctx: CacheContext):
    """The CacheAttention emitter of arvc/graphs/lower_dit.py with the arvc plugins (see the module docstring)."""
    problem = plugin_problem(ctx.shapes.kv_cache, ctx.shapes.kv_sink if ctx.sink_rows else None)
    if problem:
        raise ValueError(problem)
    g, cfg, N = ctx.g, ctx.cfg, ctx.N
    fmt = ctx.shapes.kv_cache
    common = dict(format=KV_CODES[fmt], heads=cfg.num_heads, head_dim=cfg.head_dim,
                  plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
    rows = g.op("Cast", [g.op("Reshape", [ctx.write_index, g.const([N], np.int64)])], to=TensorProto.INT32)
    valid = g.op("Cast", [ctx.key_valid], to=TensorProto.UINT8)
    part_names = [p.name for p in kv_parts(fmt, cfg.dim, cfg.num_heads)]

    def write(buffers: dict, x: str) -> list[str]:
        ins = [buffers[p] for p in part_names]
        outs = [f"{b.rsplit('_', 1)[0]}_out_{b.rsplit('_', 1)[1]}" for b in ins]  # dit.onnx's output names
        g.nodes.append(helper.make_node(WRITE_OP, [x, rows, *ins], outs, name=g.fresh("kv_cache_write"),
                                        domain=PLUGIN_DOMAIN, **common))
        return outs

    def attend(i: int, q: str, k: str, v: str) -> str:
        (k_buffers,), (v_buffers,) = ctx.caches[i]["k"], ctx.caches[i]["v"]
        k_parts, v_parts = write(k_buffers, k), write(v_buffers, v)
        extra = list(ctx.rope_k) if ctx.rope_k is not None else []
        out = g.fresh("attention_qcache")
        g.nodes.append(helper.make_node(ATTENTION_OP, [q, *k_parts, *v_parts, valid, *extra], [out], name=out,
                                        domain=PLUGIN_DOMAIN, softmax_scale=1.0 / math.sqrt(cfg.head_dim),
                                        rope_k=int(bool(extra)), **common))
        return out

    return attend


def build_dit_plugin_graph(cfg: WanConfig, shapes: DitShapes, weights: ExternalWeights,
                           act_quant: dict | None = None, act_timesteps: tuple[float, ...] = (),
                           modulation_bf16: bool = False) -> onnx.ModelProto:
    """dit.onnx with the cache ops as arvc plugins (raises ValueError when plugin_problem has an answer)."""
    problem = plugin_problem(shapes.kv_cache, shapes.kv_sink)
    if problem:
        raise ValueError(problem)
    model = build_dit_graph(cfg, shapes, weights, act_quant, act_timesteps, cache_attention=plugin_cache_attention,
                            host_time=True, fp4_weights="qdq", modulation_bf16=modulation_bf16)
    model.graph.name = "arvc_dit_trt"
    model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    # what the host computes from t (runtime/trt_backend.dit_host_feeds), recorded in the graph it feeds
    host = {"freq_dim": cfg.freq_dim,
            "act_timesteps": [float(t) for t in act_timesteps] if per_timestep_scales(act_quant) else []}
    onnx.helper.set_model_props(model, {HOST_FEEDS_KEY: json.dumps(host)})
    return model


# -- CPU reference implementations (onnx.reference), the kernels' semantics in torch -------------------------
_FORMAT_NAMES = {v: k for k, v in KV_CODES.items()}


def _codec(fmt: str):
    return CODECS[fmt]("per_token")


def reference_encode(fmt: str, x, heads: int) -> list[np.ndarray]:
    """x [n, dim] f32 -> the parts of n cache rows (quant/kv.py order), as quant/formats.py encodes them."""
    import torch

    x = torch.as_tensor(np.asarray(x, np.float32))
    n, dim = x.shape
    if fmt == "fp16":
        return [x.half().numpy()]
    e = _codec(fmt).encode(x.reshape(n, heads, dim // heads))
    if fmt == "nvfp4":
        return [e["weight"].reshape(n, -1).numpy(), e["weight_scale"].reshape(n, -1).numpy(),
                e["weight_scale_2"].reshape(n, heads).float().numpy()]
    data = e["data"].reshape(n, dim)
    return [data.numpy(), e["scale"].reshape(n, heads).float().numpy()]


def reference_decode(fmt: str, parts: list[np.ndarray], heads: int, head_dim: int):
    """Cache parts -> fp32 torch [rows, heads, head_dim]."""
    import torch

    t = [torch.from_numpy(np.ascontiguousarray(p)) for p in parts]
    rows = t[0].shape[0]
    if fmt == "fp16":
        return t[0].float().reshape(rows, heads, head_dim)
    if fmt == "nvfp4":
        return _codec(fmt).decode({"weight": t[0].reshape(rows, heads, -1), "weight_scale": t[1].reshape(rows, heads, -1),
                                   "weight_scale_2": t[2]}).float()
    data = t[0].view(torch.int8) if fmt == "int8" else t[0].view(torch.uint8)
    return _codec(fmt).decode({"data": data.reshape(rows, heads, head_dim), "scale": t[1]}).float()


def reference_ops() -> list:
    """onnx.reference OpRun classes for KVCacheWrite and AttentionQCache (pass as ReferenceEvaluator new_ops)."""
    import torch
    from onnx.reference.op_run import OpRun

    class KVCacheWrite(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, x, row_index, *parts, format=None, heads=None, head_dim=None, plugin_version=None,
                 plugin_namespace=None):
            fmt = _FORMAT_NAMES[int(format)]
            idx = np.asarray(row_index).reshape(-1).astype(np.int64)
            outs = [np.array(p, copy=True) for p in parts]
            for out, new in zip(outs, reference_encode(fmt, x, int(heads))):
                out[idx] = new.astype(out.dtype, copy=False)
            return tuple(outs)

    class AttentionQCache(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, q, *rest, format=None, heads=None, head_dim=None, softmax_scale=None, rope_k=None,
                 plugin_version=None, plugin_namespace=None):
            fmt = _FORMAT_NAMES[int(format)]
            heads, head_dim = int(heads), int(head_dim)
            n_parts = len(kv_parts(fmt, heads * head_dim, heads))
            k_parts, v_parts = rest[:n_parts], rest[n_parts:2 * n_parts]
            valid = np.asarray(rest[2 * n_parts]).astype(bool)
            keys = reference_decode(fmt, list(k_parts), heads, head_dim)  # [Nk, H, Dh]
            vals = reference_decode(fmt, list(v_parts), heads, head_dim)
            if int(rope_k or 0):
                cos = torch.from_numpy(np.asarray(rest[2 * n_parts + 1], np.float32).reshape(-1, 1, head_dim // 2))
                sin = torch.from_numpy(np.asarray(rest[2 * n_parts + 2], np.float32).reshape(-1, 1, head_dim // 2))
                a, b = keys[..., 0::2], keys[..., 1::2]  # adjacent pairs (x[2i], x[2i+1])
                keys = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).reshape(keys.shape)
            qt = torch.from_numpy(np.asarray(q, np.float32))
            qh = qt.reshape(-1, heads, head_dim)  # [N, H, Dh]
            scores = torch.einsum("nhd,khd->hnk", qh, keys) * float(softmax_scale)
            scores = scores.masked_fill(~torch.from_numpy(valid)[None, None, :], float("-inf"))
            out = torch.einsum("hnk,khd->nhd", torch.softmax(scores, dim=-1), vals)
            return (out.reshape(qt.shape).numpy().astype(np.float32),)

    return [KVCacheWrite, AttentionQCache]
