"""Lower the Wan DiT to two ONNX graphs: ``text`` (once per prompt) and ``dit`` (one call on one block).

Written op by op rather than traced, so that the graph is the one a deployment wants: tokens stay 2D
``[N, dim]`` (batch 1), every linear is a Gemm on the stored ``[out, in]`` weight, attention is the
opset-23 ``Attention`` on 3D ``[1, N, dim]`` tensors (no head transposes), and each layer's KV cache is
a graph input whose ``ScatterND`` result is the matching output, so a caller that binds one buffer to
both gets an in-place cache write. The math is ``arvc.model.dit``'s, run on ``OnnxDitOps``: each op of the model's
vocabulary adds its nodes here, so this file holds the graph's form, not a second copy of the model.

dit graph, per call (F frames of T tokens, N = F*T; cache of Nk = capacity_frames*T tokens):
  inputs  latents [1,C,F,H,W] f32 · timestep [1] f64 · cross_k_i / cross_v_i [1,L,dim]
          k_cache_i / v_cache_i [Nk,dim] (+ scale / block_scale parts and sink buffers of a quantized
          cache: arvc/graphs/lower_kv.py) · write_index [N,1] i64 (cache rows of the block's tokens)
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

from arvc.model import dit as wan
from arvc.model.config import WanConfig
from arvc.quant.kv import kv_regions

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

    @classmethod
    def of(cls, geometry, latent_hw: tuple[int, int], kv_cache: str, kv_sink: str | None) -> "DitShapes":
        """From a cache geometry (arvc/model/cache_geometry.py) and the plan's latent size and KV formats."""
        return cls(geometry.frames_per_block, *latent_hw, geometry.capacity_frames, geometry.rope, kv_cache, kv_sink,
                   geometry.sink)

    def tokens_per_frame(self, cfg: WanConfig) -> int:
        return (self.latent_h // cfg.patch_size[1]) * (self.latent_w // cfg.patch_size[2])


class OnnxDitOps:
    """arvc.model.dit's op vocabulary as ONNX nodes: batch 1, tokens [N, dim], one timestep per call.

    Self-attention is the graph's: RoPE from the per-call tables (K rotated before it is cached in absolute
    mode), then ``attend`` (a CacheAttention emitter: the cache write and the attention over the cache).
    ``modulation_bf16``: the residual stream, LayerNorm outputs, modulation and gates are rounded to bf16 where
    the reference computes them in bf16 (Numerics.modulation_bf16); tensors stay f32, holding bf16 values,
    since f32 arithmetic on two bf16 values rounded once to bf16 is what torch's bf16 ops compute."""

    def __init__(self, g: GraphBuilder, cfg: WanConfig, n_tokens: int = 0, attend=None, rope=None,
                 latent_shape=None, sinusoid: str | None = None, modulation_bf16: bool = False):
        self.g, self.cfg, self.attend, self.rope, self.sinusoid = g, cfg, attend, rope, sinusoid
        self.bf16 = modulation_bf16
        self.latent_shape = latent_shape  # [C, F, H, W]
        self.n = n_tokens
        if n_tokens:
            self.to3, self.to2 = g.const([1, n_tokens, cfg.dim], np.int64), g.const([n_tokens, cfg.dim], np.int64)

    def _md(self, x: str) -> str:
        """x in the residual dtype: rounded to bf16 (and back) under bf16 modulation numerics."""
        if not self.bf16:
            return x
        return self.g.op("Cast", [self.g.op("Cast", [x], to=TensorProto.BFLOAT16)], to=F32)

    def patchify(self, latents):
        # [1, C, F, H, W] -> [1, dim, F, h, w] -> tokens [N, dim] ordered (frame, row, col)
        g, cfg = self.g, self.cfg
        y = g.op("Conv", [latents, g.weight("patch_embedding.weight"), g.weight("patch_embedding.bias")],
                 kernel_shape=list(cfg.patch_size), strides=list(cfg.patch_size))
        return self._md(g.op("Transpose", [g.op("Reshape", [y, g.const([cfg.dim, self.n], np.int64)])], perm=[1, 0]))

    def unpatchify(self, out):
        # out [N, p0*p1*p2*C] (channels fastest) -> [1, C, F, H, W]
        g, cfg = self.g, self.cfg
        c, f, hl, wl = self.latent_shape
        p0, p1, p2 = cfg.patch_size
        u = g.op("Reshape", [out, g.const([f // p0, hl // p1, wl // p2, p0, p1, p2, cfg.out_channels], np.int64)])
        u = g.op("Transpose", [u], perm=[6, 0, 3, 1, 4, 2, 5])
        return g.op("Reshape", [u, g.const([1, cfg.out_channels, f, hl, wl], np.int64)])

    def time_sinusoid(self, t):
        # t: [1] f64 -> [1, freq_dim] f32, computed in f64 as the reference does (host_time graphs: given)
        if self.sinusoid is not None:
            return self.sinusoid
        g = self.g
        arg = g.op("Mul", [g.op("Unsqueeze", [t, g.const([1], np.int64)]),
                           g.const(time_frequencies(self.cfg.freq_dim), np.float64)])
        return g.op("Cast", [g.op("Concat", [g.op("Cos", [arg]), g.op("Sin", [arg])], axis=1)], to=F32)

    def time_modulation(self, e, e0):
        return self._md(e), self._md(self.g.op("Reshape", [e0, self.g.const([6, self.cfg.dim], np.int64)]))

    def modulation(self, name, e, parts):
        # -> parts x [1, dim]
        g = self.g
        param = self._md(g.op("Reshape", [g.weight(name), g.const([parts, self.cfg.dim], np.int64)]))
        return g.op("Split", [self._md(g.op("Add", [param, e]))], outputs=parts, axis=0, num_outputs=parts)

    def linear(self, x, prefix):
        return self.g.linear(x, prefix)

    def rms_norm(self, x, prefix):
        return self.g.op("RMSNormalization", [x, self.g.weight(f"{prefix}.weight")], axis=-1, epsilon=self.cfg.eps)

    def layer_norm(self, x, prefix=None):
        g, d = self.g, self.cfg.dim
        if prefix is None:  # Wan's affine-free LayerNorm
            scale, bias = g.const(np.ones(d)), g.const(np.zeros(d))
        else:
            scale, bias = g.weight(f"{prefix}.weight"), g.weight(f"{prefix}.bias")
        return self._md(g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=self.cfg.eps))

    def modulate(self, x, shift, scale):
        g, md = self.g, self._md
        return md(g.op("Add", [md(g.op("Mul", [x, md(g.op("Add", [scale, g.const(1.0)]))])), shift]))

    def residual(self, x, y, gate=None):
        g, md = self.g, self._md
        return md(g.op("Add", [x, md(y) if gate is None else md(g.op("Mul", [md(y), gate]))]))

    def gelu(self, x):
        return self.g.op("Gelu", [x], approximate="tanh")

    def silu(self, x):
        return self.g.silu(x)

    def self_attention(self, layer, q, k, v):
        g, (cos, sin, absolute) = self.g, self.rope
        q = _rotate(g, g.op("Reshape", [q, self.to3]), cos, sin, self.cfg.num_heads)
        if absolute:  # K is cached after RoPE, at absolute positions
            k = g.op("Reshape", [_rotate(g, g.op("Reshape", [k, self.to3]), cos, sin, self.cfg.num_heads), self.to2])
        return g.op("Reshape", [self.attend(layer, q, k, v), self.to2])

    def cross_attention(self, q, k, v):
        # k, v: the text stage's cross_k_i / cross_v_i [1, L, dim]
        H = self.cfg.num_heads
        attn = self.g.op("Attention", [self.g.op("Reshape", [q, self.to3]), k, v], q_num_heads=H, kv_num_heads=H)
        return self.g.op("Reshape", [attn, self.to2])


def build_text_graph(cfg: WanConfig, weights: ExternalWeights, fp4_weights: str = "bitops"):
    """context [1, L, text_dim] -> cross_k_i, cross_v_i [1, L, dim] for every layer. fp4_weights: as
    build_dit_graph's ("qdq" for TensorRT's text graph)."""
    g = GraphBuilder("arvc_text", weights)
    g.fp4_weights = fp4_weights
    L, d = cfg.text_len, cfg.dim
    ctx = g.op("Reshape", [g.input("context", F32, [1, L, cfg.text_dim]), g.const([L, cfg.text_dim], np.int64)])
    shape3 = g.const([1, L, d], np.int64)
    for i, (k, v) in enumerate(wan.text_kv(OnnxDitOps(g, cfg), cfg, ctx)):  # [L, dim] each
        g.output(g.op("Reshape", [k, shape3]), f"cross_k_{i}", F32, [1, L, d])
        g.output(g.op("Reshape", [v, shape3]), f"cross_v_{i}", F32, [1, L, d])
    return g.model()


def time_frequencies(freq_dim: int) -> np.ndarray:
    """[1, freq_dim/2] f64: the sinusoid's frequencies (the dit graph's constant; hosts computing the sinusoid
    themselves, as the TensorRT runtime does, must use exactly these)."""
    return wan.sinusoid_frequencies(freq_dim).numpy()[None, :]


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
    regions: tuple  # quant/kv.py KVRegion per set of buffers
    caches: list  # per layer: {"k"|"v": [per region: {part: input name}]}
    write_index: str  # [N, 1] i64
    key_valid: str  # [Nk] bool
    rope_k: tuple | None  # (rope_k_cos, rope_k_sin) [1, Nk, Dh/2] in relative mode


# An emitter factory: called once (after the shared inputs exist) -> attend(layer, q [1,N,dim] rotated,
# k [N,dim] (rotated in absolute mode), v [N,dim]) -> attention output [1,N,dim], the block's K/V written
# into layer's cache in place. arvc/graphs/lower_plugin.py swaps in TensorRT plugin nodes.
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
        reads = [lower_kv.write_and_read(g, r.format, b, idx, x2, H, r.rows, d)
                 for b, idx, r in zip(buffers, region_rows, regions)]
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
                    host_time: bool = False, fp4_weights: str = "bitops", modulation_bf16: bool = False):
    """act_quant: layer -> quant/activations.ActQuant, the GEMM inputs quantized (Q/DQ) in this graph.
    cache_attention: the self-attention cache emitter (default: standard ONNX ops, see CacheContext).
    host_time: no f64 anywhere: instead of ``timestep [1] f64`` the inputs ``time_sinusoid [1, freq_dim] f32``,
    ``sigma [1] f32`` and (per-timestep activation scales only) ``act_timestep_index [] i32``, which the host
    computes from t exactly as the default graph does (runtime/trt_backend.dit_host_feeds).
    fp4_weights: how NVFP4 weights are decoded, arvc/graphs/lower_quant.dequantize ("bitops": standard integer ops,
    what ONNX Runtime's CPU provider runs; "qdq": FLOAT4E2M1 DequantizeLinear, what TensorRT fuses).
    modulation_bf16: the checkpoint's Numerics.modulation_bf16 (see OnnxDitOps)."""
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
    regions = kv_regions(shapes.kv_cache, shapes.kv_sink, Nk, shapes.sink_frames * T)
    sink_rows = shapes.sink_frames * T if len(regions) > 1 else 0
    caches = [{kind: [lower_kv.cache_inputs(g, r.format, r.rows, d, H, kind, i, r.prefix) for r in regions]
               for kind in ("k", "v")} for i in range(cfg.num_layers)]
    write_index = g.input("write_index", I64, [N, 1])
    key_valid = g.input("key_valid", BOOL, [Nk])
    q_cos, q_sin = g.input("rope_q_cos", F32, [1, N, half_head]), g.input("rope_q_sin", F32, [1, N, half_head])
    k_cos = k_sin = None
    if shapes.rope == "relative":
        k_cos, k_sin = g.input("rope_k_cos", F32, [1, Nk, half_head]), g.input("rope_k_sin", F32, [1, Nk, half_head])

    attend = (cache_attention or standard_cache_attention)(CacheContext(
        g, cfg, shapes, N, Nk, sink_rows, regions, caches, write_index, key_valid,
        (k_cos, k_sin) if shapes.rope == "relative" else None))
    ops = OnnxDitOps(g, cfg, N, attend, (q_cos, q_sin, shapes.rope == "absolute"), [C, F, hl, wl], sinusoid,
                     modulation_bf16)
    v = wan.flow(ops, cfg, latents, t, cross)
    if sigma is None:
        sigma = g.op("Cast", [g.op("Div", [t, g.const(1000.0, np.float64)])], to=F32)
    g.output(g.op("Sub", [latents, g.op("Mul", [v, sigma])]), "x0", F32, [1, C, F, hl, wl])
    return g.model()
