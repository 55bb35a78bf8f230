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

from .formats import NVFP4, NVFP4_BLOCK, Fp8E4M3, Int8

KV_FORMATS = ("fp32", "fp16", "int8", "fp8", "nvfp4")


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
    if fmt == "fp32":
        return x
    if fmt == "fp16":
        return x.half().to(x.dtype)
    codec = {"int8": Int8("per_token"), "fp8": Fp8E4M3("per_token"), "nvfp4": NVFP4("per_token")}.get(fmt)
    if codec is None:
        raise ValueError(f"KV-cache format {fmt!r} unknown; choose one of {KV_FORMATS}")
    return codec.decode(codec.encode(x)).to(x.dtype)
