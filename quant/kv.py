"""KV-cache storage formats: what one cached row (one token, all heads) holds, and its reference round trip.

Every quantized format scales per token and head, because a block's rows are quantized once, when they
are written, and never see the rest of the cache (a per-tensor scale would need the future):

    format  parts of one row ([dim] = heads * head_dim)                       bytes per row
    fp32    cache f32 [dim]                                                    4 dim
    fp16    cache f16 [dim]                                                    2 dim
    int8    cache i8 [dim]             + scale f32 [heads]                     dim + 4 heads
    fp8     cache u8 (E4M3 bits) [dim] + scale f32 [heads]                     dim + 4 heads
    nvfp4   cache u8 (E2M1 pairs) [dim/2] + block_scale u8 (E4M3) [dim/16]
            + scale f32 [heads] (NVFP4's scale_2, per token and head)          dim/2 + dim/16 + 4 heads

The part names are the plan's graph inputs (``k_cache_i``, ``k_block_scale_i``, ``k_scale_i``; the same
for ``v``) and its cache buffers. FP8 is held as uint8 bytes because ONNX Runtime's CPU ScatterND takes
no float8 tensors; the bytes are exactly E4M3's. The sink (``--kv-sink-precision``) may use another
format than the ring; its buffer then has the sink's rows plus one scratch row (see lower_kv).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .format_table import FORMATS, KV_FORMATS
from .format_table import NVFP4_BLOCK
from .formats import CODECS


@dataclass(frozen=True)
class KVPart:
    name: str  # "cache" | "block_scale" | "scale"
    dtype: type  # numpy dtype of the buffer
    width: int  # elements per cached row


def kv_parts(fmt: str, dim: int, heads: int) -> tuple[KVPart, ...]:
    if fmt == "fp32":
        return (KVPart("cache", np.float32, dim),)
    if fmt == "fp16":
        return (KVPart("cache", np.float16, dim),)
    if fmt == "int8":
        return KVPart("cache", np.int8, dim), KVPart("scale", np.float32, heads)
    if fmt == "fp8":
        return KVPart("cache", np.uint8, dim), KVPart("scale", np.float32, heads)
    if fmt == "nvfp4":
        if (dim // heads) % NVFP4_BLOCK:
            raise ValueError(f"nvfp4 KV cache: head_dim {dim // heads} is not a multiple of {NVFP4_BLOCK}; "
                             "use --kv-cache fp8 or int8 for this model")
        return (KVPart("cache", np.uint8, dim // 2), KVPart("block_scale", np.uint8, dim // NVFP4_BLOCK),
                KVPart("scale", np.float32, heads))
    raise ValueError(f"KV-cache format {fmt!r} unknown; choose one of {KV_FORMATS}")


def kv_row_bytes(fmt: str, dim: int, heads: int) -> int:
    return sum(np.dtype(p.dtype).itemsize * p.width for p in kv_parts(fmt, dim, heads))


def kv_round_trip(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """What the cache returns for rows ``x`` [..., heads, head_dim] stored in ``fmt``: decode(encode(x)),
    one scale per (token, head). The reference cache stores this, so it matches a plan's cache exactly."""
    if fmt not in KV_FORMATS:
        raise ValueError(f"KV-cache format {fmt!r} unknown; choose one of {KV_FORMATS}")
    f = FORMATS[fmt]
    if not f.quantized:  # a float cache rounds to its dtype
        return x.to(f.torch_dtype).to(x.dtype)
    codec = CODECS[f.name]("per_token")
    return codec.decode(codec.encode(x)).to(x.dtype)


@dataclass(frozen=True)
class KVRegion:
    """One set of buffers of a layer's K (or V) cache, named ``{k|v}_{prefix}{part}_{layer}`` in dit.onnx."""

    prefix: str  # "sink_": the sink's own buffers; "": the ring's (or the whole cache's)
    format: str  # a KV format
    rows: int


def kv_regions(kv_cache: str, kv_sink: str | None, cache_rows: int, sink_rows: int) -> tuple[KVRegion, ...]:
    """The buffers of one layer's K (or V) cache: one region; or, when the sink has its own format, the sink's
    rows + 1 scratch row and the ring's rows + 1 scratch row (a write to the other region lands on the scratch
    row and is never read: arvc/graphs/lower_kv.split_rows). The manifest, the graph and the backends read this."""
    if not (kv_sink and sink_rows):
        return (KVRegion("", kv_cache, cache_rows),)
    return KVRegion("sink_", kv_sink, sink_rows + 1), KVRegion("", kv_cache, cache_rows - sink_rows + 1)
