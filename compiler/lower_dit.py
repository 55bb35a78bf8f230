"""Lower the Wan DiT to two ONNX graphs: ``text`` (once per prompt) and ``dit`` (one call on one block).

Written op by op rather than traced, so that the graph is the one a deployment wants: tokens stay 2D
``[N, dim]`` (batch 1), every linear is a Gemm on the stored ``[out, in]`` weight, attention is the
opset-23 ``Attention`` on 3D ``[1, N, dim]`` tensors (no head transposes), and each layer's KV cache is
a graph input whose ``ScatterND`` result is the matching output, so a caller that binds one buffer to
both gets an in-place cache write. Semantics are those of ``arvc.model.dit`` (tested for parity).

dit graph, per call (F frames of T tokens, N = F*T; cache of Nk = capacity_frames*T tokens):
  inputs  latents [1,C,F,H,W] f32 · timestep [1] f64 · cross_k_i / cross_v_i [1,L,dim]
          k_cache_i / v_cache_i [Nk,dim] (+ scale / block_scale parts and sink buffers of a quantized
          cache: compiler/lower_kv.py) · write_index [N,1] i64 (cache rows of the block's tokens)
          key_valid [Nk] bool (rows attended) · rope_q_cos / rope_q_sin [1,N,Dh/2]
          (relative RoPE only) rope_k_cos / rope_k_sin [1,Nk,Dh/2]
  outputs x0 [1,C,F,H,W] f32 (= latents - t/1000 * v) · k_cache_out_i / v_cache_out_i (and every part's _out)
  (host_time, the TensorRT graph: no f64; timestep is replaced by time_sinusoid [1,freq_dim] f32, sigma [1] f32
  and, with per-timestep activation scales, act_timestep_index [] i32, computed on the host from t)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from onnx import TensorProto

from arvc.model.config import WanConfig

from . import lower_kv
from .onnx_graph import ExternalWeights, GraphBuilder

F32, F64, I64, BOOL = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL


@dataclass(frozen=True)
class DitShapes:
    frames: int  # latent frames per call (frames per block)
    latent_h: int
    latent_w: int
    cache_frames: int  # capacity of the KV cache in latent frames
    rope: str  # "absolute" | "relative"
    kv_cache: str = "fp32"  # quant/kv.py KV_FORMATS: quantized once on write, per token and head
    kv_sink: str | None = None  # the sink frames' format when it differs from kv_cache (own buffers)
    sink_frames: int = 0

    def tokens_per_frame(self, cfg: WanConfig) -> int:
        return (self.latent_h // cfg.patch_size[1]) * (self.latent_w // cfg.patch_size[2])


def _rms(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    return g.op("RMSNormalization", [x, g.weight(weight)], axis=-1, epsilon=eps)


def _layer_norm(g: GraphBuilder, x: str, dim: int, eps: float, prefix: str | None = None) -> str:
    if prefix is None:  # Wan's affine-free LayerNorm
        scale, bias = g.const(np.ones(dim)), g.const(np.zeros(dim))
    else:
        scale, bias = g.weight(f"{prefix}.weight"), g.weight(f"{prefix}.bias")
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def _modulate(g: GraphBuilder, x: str, shift: str, scale: str) -> str:
    # x * (1 + scale) + shift; shift/scale: [1, dim] broadcast over the tokens
    return g.op("Add", [g.op("Mul", [x, g.op("Add", [scale, g.const(1.0)])]), shift])


def build_text_graph(cfg: WanConfig, weights: ExternalWeights, fp4_weights: str = "bitops"):
    """context [1, L, text_dim] -> cross_k_i, cross_v_i [1, L, dim] for every layer. fp4_weights: as
    build_dit_graph's ("qdq" for TensorRT's text graph)."""
    g = GraphBuilder("arvc_text", weights)
    g.fp4_weights = fp4_weights
    L, d = cfg.text_len, cfg.dim
    ctx = g.op("Reshape", [g.input("context", F32, [1, L, cfg.text_dim]), g.const([L, cfg.text_dim], np.int64)])
    h = g.op("Gelu", [g.linear(ctx, "text_embedding.0")], approximate="tanh")
    text = g.linear(h, "text_embedding.2")  # [L, dim]
    shape3 = g.const([1, L, d], np.int64)
    for i in range(cfg.num_layers):
        p = f"blocks.{i}.cross_attn"
        k = _rms(g, g.linear(text, f"{p}.k"), f"{p}.norm_k.weight", cfg.eps)
        g.output(g.op("Reshape", [k, shape3]), f"cross_k_{i}", F32, [1, L, d])
        g.output(g.op("Reshape", [g.linear(text, f"{p}.v"), shape3]), f"cross_v_{i}", F32, [1, L, d])
    return g.model()


def time_frequencies(freq_dim: int) -> np.ndarray:
    """[1, freq_dim/2] f64: the sinusoid's frequencies (the dit graph's constant; hosts computing the sinusoid
    themselves, as the TensorRT runtime does, must use exactly these)."""
    half = freq_dim // 2
    return np.power(10000.0, -np.arange(half, dtype=np.float64) / half)[None, :]


def _time_embedding(g: GraphBuilder, cfg: WanConfig, t: str, sinusoid: str | None = None) -> tuple[str, str]:
    # t: [1] f64 -> e [1, dim], e0 [6, dim]; the sinusoid is computed in f64 as the reference does
    # (or, host_time graphs, given: sinusoid [1, freq_dim] f32 = Cast(f32) of the f64 cos|sin)
    if sinusoid is None:
        arg = g.op("Mul", [g.op("Unsqueeze", [t, g.const([1], np.int64)]), g.const(time_frequencies(cfg.freq_dim), np.float64)])
        sinusoid = g.op("Cast", [g.op("Concat", [g.op("Cos", [arg]), g.op("Sin", [arg])], axis=1)], to=F32)
    s = sinusoid
    e = g.linear(g.silu(g.linear(s, "time_embedding.0")), "time_embedding.2")
    e0 = g.op("Reshape", [g.linear(g.silu(e), "time_projection.1"), g.const([6, cfg.dim], np.int64)])
    return e, e0


def _rotate(g: GraphBuilder, x3: str, cos: str, sin: str, heads: int) -> str:
    # Wan's RoPE rotates ADJACENT pairs (x[2i], x[2i+1]): the op's interleaved layout
    return g.op("RotaryEmbedding", [x3, cos, sin], interleaved=1, num_heads=heads)


@dataclass(frozen=True)
class CacheContext:
    """What a self-attention cache emitter needs: the graph, its sizes and the cache's graph inputs."""
    g: GraphBuilder
    cfg: WanConfig
    shapes: DitShapes
    N: int  # tokens of the block
    Nk: int  # rows of the (combined) cache
    sink_rows: int  # rows of the sink's own buffers (0: one set of buffers)
    regions: list  # [(region prefix, format, rows)] per set of buffers
    caches: list  # per layer: {"k"|"v": [per region: {part: input name}]}
    write_index: str  # [N, 1] i64
    key_valid: str  # [Nk] bool
    rope_k: tuple | None  # (rope_k_cos, rope_k_sin) [1, Nk, Dh/2] in relative mode


# An emitter factory: called once (after the shared inputs exist) -> attend(layer, q [1,N,dim] rotated,
# k [N,dim] (rotated in absolute mode), v [N,dim]) -> attention output [1,N,dim], the block's K/V written
# into layer's cache in place. compiler/lower_plugin.py swaps in TensorRT plugin nodes.
CacheAttention = Callable[[CacheContext], Callable[[int, str, str, str], str]]


def standard_cache_attention(ctx: CacheContext) -> Callable[[int, str, str, str], str]:
    """ScatterND writes (quantized with standard ops), the whole cache decoded to fp32, opset-23 Attention."""
    g, N, Nk, sink_rows, regions = ctx.g, ctx.N, ctx.Nk, ctx.sink_rows, ctx.regions
    d, H = ctx.cfg.dim, ctx.cfg.num_heads
    mask = g.op("Expand", [g.op("Reshape", [ctx.key_valid, g.const([1, 1, 1, Nk], np.int64)]),
                           g.const([1, 1, N, Nk], np.int64)])
    k_rows3 = g.const([1, Nk, d], np.int64)
    region_rows = [ctx.write_index] if not sink_rows else list(lower_kv.split_rows(g, ctx.write_index, sink_rows, Nk))

    def cache_write(buffers: list, x2: str) -> str:  # -> every cached row, fp32 [Nk, dim]
        reads = [lower_kv.write_and_read(g, fmt, b, idx, x2, H, rows, d)
                 for b, idx, (_, fmt, rows) in zip(buffers, region_rows, regions)]
        if not sink_rows:
            return reads[0]
        return g.op("Concat", [lower_kv.first_rows(g, reads[0], sink_rows),
                               lower_kv.first_rows(g, reads[1], Nk - sink_rows)], axis=0)

    def attend(i: int, q: str, k: str, v: str) -> str:
        k_all, v_all = cache_write(ctx.caches[i]["k"], k), cache_write(ctx.caches[i]["v"], v)
        keys = g.op("Reshape", [k_all, k_rows3])
        if ctx.rope_k is not None:  # K cached un-rotated; window-relative positions applied here
            keys = _rotate(g, keys, *ctx.rope_k, H)
        return g.op("Attention", [q, keys, g.op("Reshape", [v_all, k_rows3]), mask], q_num_heads=H, kv_num_heads=H)

    return attend


def per_timestep_scales(act_quant: dict | None) -> bool:
    """Whether some quantized activation picks its scale by the call's timestep (a static per-timestep table)."""
    return any(q.mode != "dynamic" and q.scale.dim() > 0 for q in (act_quant or {}).values())


def build_dit_graph(cfg: WanConfig, shapes: DitShapes, weights: ExternalWeights, act_quant: dict | None = None,
                    act_timesteps: tuple[float, ...] = (), cache_attention: CacheAttention | None = None,
                    host_time: bool = False, fp4_weights: str = "bitops"):
    """act_quant: layer -> quant/activations.ActQuant, the GEMM inputs quantized (Q/DQ) in this graph.
    cache_attention: the self-attention cache emitter (default: standard ONNX ops, see CacheContext).
    host_time: no f64 anywhere: instead of ``timestep [1] f64`` the inputs ``time_sinusoid [1, freq_dim] f32``,
    ``sigma [1] f32`` and (per-timestep activation scales only) ``act_timestep_index [] i32``, which the host
    computes from t exactly as the default graph does (runtime/trt_backend.dit_host_feeds).
    fp4_weights: how NVFP4 weights are decoded, compiler/lower_quant.dequantize ("bitops": standard integer ops,
    what ONNX Runtime's CPU provider runs; "qdq": FLOAT4E2M1 DequantizeLinear, what TensorRT fuses)."""
    g = GraphBuilder("arvc_dit", weights)
    d, H, L = cfg.dim, cfg.num_heads, cfg.text_len
    C, F, hl, wl = cfg.in_channels, shapes.frames, shapes.latent_h, shapes.latent_w
    T = shapes.tokens_per_frame(cfg)
    N, Nk = F * T, shapes.cache_frames * T
    half_head = cfg.head_dim // 2

    latents = g.input("latents", F32, [1, C, F, hl, wl])
    if host_time:
        t = None
        sinusoid, sigma = g.input("time_sinusoid", F32, [1, cfg.freq_dim]), g.input("sigma", F32, [1])
        if per_timestep_scales(act_quant):
            g.act_timestep_index = g.input("act_timestep_index", TensorProto.INT32, [])
    else:
        t, sinusoid, sigma = g.input("timestep", F64, [1]), None, None
    g.fp4_weights = fp4_weights
    g.act_quant, g.act_rows, g.act_timesteps, g.timestep = dict(act_quant or {}), N, tuple(act_timesteps), t
    cross = [(g.input(f"cross_k_{i}", F32, [1, L, d]), g.input(f"cross_v_{i}", F32, [1, L, d]))
             for i in range(cfg.num_layers)]
    sink_rows = shapes.sink_frames * T if shapes.kv_sink else 0
    # split cache: sink rows + scratch in one set of buffers, ring rows + scratch in the other
    regions = [("", shapes.kv_cache, Nk)] if not sink_rows else \
        [("sink_", shapes.kv_sink, sink_rows + 1), ("", shapes.kv_cache, Nk - sink_rows + 1)]
    caches = [{kind: [lower_kv.cache_inputs(g, fmt, rows, d, H, kind, i, region) for region, fmt, rows in regions]
               for kind in ("k", "v")} for i in range(cfg.num_layers)]
    write_index = g.input("write_index", I64, [N, 1])
    key_valid = g.input("key_valid", BOOL, [Nk])
    q_cos, q_sin = g.input("rope_q_cos", F32, [1, N, half_head]), g.input("rope_q_sin", F32, [1, N, half_head])
    k_cos = k_sin = None
    if shapes.rope == "relative":
        k_cos, k_sin = g.input("rope_k_cos", F32, [1, Nk, half_head]), g.input("rope_k_sin", F32, [1, Nk, half_head])

    # patchify: [1, C, F, H, W] -> [1, dim, F, h, w] -> tokens [N, dim] ordered (frame, row, col)
    y = g.op("Conv", [latents, g.weight("patch_embedding.weight"), g.weight("patch_embedding.bias")],
             kernel_shape=list(cfg.patch_size), strides=list(cfg.patch_size))
    x = g.op("Transpose", [g.op("Reshape", [y, g.const([d, N], np.int64)])], perm=[1, 0])
    e, e0 = _time_embedding(g, cfg, t, sinusoid)

    to3 = g.const([1, N, d], np.int64)
    to2 = g.const([N, d], np.int64)
    attend = (cache_attention or standard_cache_attention)(CacheContext(
        g, cfg, shapes, N, Nk, sink_rows, regions, caches, write_index, key_valid,
        (k_cos, k_sin) if shapes.rope == "relative" else None))

    for i in range(cfg.num_layers):
        p = f"blocks.{i}"
        mod = g.op("Add", [g.op("Reshape", [g.weight(f"{p}.modulation"), g.const([6, d], np.int64)]), e0])
        shift1, scale1, gate1, shift2, scale2, gate2 = g.op("Split", [mod], outputs=6, axis=0, num_outputs=6)

        # self-attention over the cached window
        h = _modulate(g, _layer_norm(g, x, d, cfg.eps), shift1, scale1)
        sa = f"{p}.self_attn"
        q = _rotate(g, g.op("Reshape", [_rms(g, g.linear(h, f"{sa}.q"), f"{sa}.norm_q.weight", cfg.eps), to3]),
                    q_cos, q_sin, H)
        k = _rms(g, g.linear(h, f"{sa}.k"), f"{sa}.norm_k.weight", cfg.eps)
        if shapes.rope == "absolute":  # K is cached after RoPE, at absolute positions
            k = g.op("Reshape", [_rotate(g, g.op("Reshape", [k, to3]), q_cos, q_sin, H), to2])
        v = g.linear(h, f"{sa}.v")
        attn = attend(i, q, k, v)
        y = g.linear(g.op("Reshape", [attn, to2]), f"{sa}.o")
        x = g.op("Add", [x, g.op("Mul", [y, gate1])])

        # cross-attention on the prompt's cached K/V (no modulation, no gate)
        ca = f"{p}.cross_attn"
        n3 = _layer_norm(g, x, d, cfg.eps, f"{p}.norm3")
        q = g.op("Reshape", [_rms(g, g.linear(n3, f"{ca}.q"), f"{ca}.norm_q.weight", cfg.eps), to3])
        attn = g.op("Attention", [q, cross[i][0], cross[i][1]], q_num_heads=H, kv_num_heads=H)
        x = g.op("Add", [x, g.linear(g.op("Reshape", [attn, to2]), f"{ca}.o")])

        # feed-forward
        h = _modulate(g, _layer_norm(g, x, d, cfg.eps), shift2, scale2)
        y = g.linear(g.op("Gelu", [g.linear(h, f"{p}.ffn.0")], approximate="tanh"), f"{p}.ffn.2")
        x = g.op("Add", [x, g.op("Mul", [y, gate2])])

    # head on the un-projected time embedding, then unpatchify (channels fastest in the 64 outputs)
    hm = g.op("Add", [g.op("Reshape", [g.weight("head.modulation"), g.const([2, d], np.int64)]), e])
    shift, scale = g.op("Split", [hm], outputs=2, axis=0, num_outputs=2)
    out = g.linear(_modulate(g, _layer_norm(g, x, d, cfg.eps), shift, scale), "head.head")  # [N, 64]
    p0, p1, p2 = cfg.patch_size
    hp, wp = hl // p1, wl // p2
    u = g.op("Reshape", [out, g.const([F // p0, hp, wp, p0, p1, p2, cfg.out_channels], np.int64)])
    u = g.op("Transpose", [u], perm=[6, 0, 3, 1, 4, 2, 5])
    v = g.op("Reshape", [u, g.const([1, cfg.out_channels, F, hl, wl], np.int64)])
    if sigma is None:
        sigma = g.op("Cast", [g.op("Div", [t, g.const(1000.0, np.float64)])], to=F32)
    g.output(g.op("Sub", [latents, g.op("Mul", [v, sigma])]), "x0", F32, [1, C, F, hl, wl])
    return g.model()
