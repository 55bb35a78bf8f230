"""Attention over a quantized KV cache as a Triton flash-attention kernel: the same semantics and
argument checks as ``Kernels.attention`` (csrc ``arvc_attention_qcache_*``), written in Triton.

Each program takes BLOCK_M query rows of one head and walks the cache in tiles of BLOCK_N rows; every
tile is decoded from the cache's format in registers (fp16; int8 * scale; FP8 E4M3 bits * scale, the
E4M3 decoded arithmetically from its bits so it is exact and runs in Triton's interpreter; NVFP4 E2M1
nibbles * E4M3 block scale * scale_2) and never written to global memory. The score uses the
split-halves form: q and K are loaded as their even and odd elements ([rows, head_dim/2] each), the key
halves are rotated with the (cos, sin) tables when given, and q.K = q_even.K_even' + q_odd.K_odd', so the
adjacent-pair RoPE of the cached keys needs no register shuffle. P @ V is done the same way per half.
The softmax is online, in fp32, guarded for tiles (and rows) with no valid key.

Differences from ``Kernels.attention``: no fresh rows (``k_new`` / ``v_new`` are not supported here),
errors are ValueError / TypeError, and the all-invalid-keys check (a host read of key_valid) runs only
with ``check=True``; with ``check=False`` (CUDA graph capture) the call only enqueues the kernel and a
set with no valid key gives NaN outputs, as the csrc kernel does under ARVC_FLAG_NO_HOST_SYNC.

Triton is imported when this module is imported. On a machine without a GPU the kernel runs in Triton's
interpreter on CPU tensors: set ``TRITON_INTERPRET=1`` in the environment *before* the first import of
this module (the ``triton.jit`` decorator picks the interpreter at decoration time). The interpreter does
not handle bf16 CPU tensors correctly; use fp32 / fp16 q there.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from arvc.quant.format_table import KV_CODES

from .kernels import DTYPE_CODES, CacheTensors
from .kernels import check_tensor as _tensor
from .kernels import row_stride as _row_stride


MAX_HEAD_DIM = 256  # as csrc's ARVC_ATTN_MAX_HEAD_DIM
LOG2E = 1.4426950408889634
FMT_FP16, FMT_INT8, FMT_FP8, FMT_NVFP4 = (KV_CODES[f] for f in ("fp16", "int8", "fp8", "nvfp4"))


# ---- decoding ---------------------------------------------------------------------------------------

@triton.jit
def _e4m3(b):
    """E4M3 (fn) bits (int32 0..255) -> fp32, exactly: sign, exponent bias 7, 3 mantissa bits,
    subnormals; 0x7F / 0xFF are NaN."""
    mag = b & 0x7F
    ex = mag >> 3
    man = mag & 7
    # a normal value's fp32 bits: exponent ex - 7 + 127, mantissa bits at the top of fp32's 23
    normal = (((ex + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)
    sub = man.to(tl.float32) * 0.001953125  # man / 8 * 2^-6
    v = tl.where(ex == 0, sub, normal)
    v = tl.where(mag == 0x7F, float("nan"), v)
    return (v.to(tl.int32, bitcast=True) | ((b & 0x80) << 24)).to(tl.float32, bitcast=True)  # the sign, -0 too


@triton.jit
def _e2m1(c):
    """E2M1 code (int32 0..15) -> fp32: magnitude {0, .5, 1, 1.5, 2, 3, 4, 6}[c & 7], bit 3 the sign."""
    m = c & 7
    e = m >> 1
    half = (m & 1).to(tl.float32) * 0.5
    pow2 = tl.where(e == 1, 1.0, tl.where(e == 2, 2.0, 4.0))
    v = tl.where(e == 0, half, (1.0 + half) * pow2)
    return (v.to(tl.int32, bitcast=True) | ((c & 8) << 28)).to(tl.float32, bitcast=True)  # the sign, -0 too


@triton.jit
def _load_halves(data, block_scale, scale, rows, rmask, head, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                 FMT: tl.constexpr):
    """The cached (rows, head) values as fp32 (even elements, odd elements), [BLOCK_N, HEAD_DIM/2] each;
    rows int64 [BLOCK_N], rmask: rows to read (others give 0)."""
    HALF: tl.constexpr = HEAD_DIM // 2
    DIM: tl.constexpr = HEADS * HEAD_DIM
    i = tl.arange(0, HALF)
    m = rmask[:, None]
    if FMT == 4:  # NVFP4: byte i of the head holds elements 2i (low nibble) and 2i+1 (high nibble)
        byte = tl.load(data + rows[:, None] * (DIM // 2) + (head * HALF + i)[None, :], mask=m, other=0).to(tl.int32)
        blk = tl.load(block_scale + rows[:, None] * (DIM // 16) + ((head * HEAD_DIM + 2 * i) // 16)[None, :],
                      mask=m, other=0).to(tl.int32)
        s = tl.load(scale + rows * HEADS + head, mask=rmask, other=0.0)
        f = _e4m3(blk) * s[:, None]
        even = _e2m1(byte & 15) * f
        odd = _e2m1(byte >> 4) * f
    else:
        base = data + rows[:, None] * DIM + (head * HEAD_DIM + 2 * i)[None, :]
        ce = tl.load(base, mask=m, other=0)
        co = tl.load(base + 1, mask=m, other=0)
        if FMT == 1:  # fp16
            even = ce.to(tl.float32)
            odd = co.to(tl.float32)
        else:
            s = tl.load(scale + rows * HEADS + head, mask=rmask, other=0.0)[:, None]
            if FMT == 2:  # int8
                even = ce.to(tl.float32) * s
                odd = co.to(tl.float32) * s
            else:  # FP8 E4M3 bytes
                even = _e4m3(ce.to(tl.int32)) * s
                odd = _e4m3(co.to(tl.int32)) * s
    return even, odd


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


# ---- the kernel -------------------------------------------------------------------------------------

@triton.jit
def _attention_kernel(q, q_stride, out, out_stride, k_data, k_block, k_scale, v_data, v_block, v_scale, key_valid,
                      cos, sin, n_q, n_rows, qk_scale,
                      HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, FMT_K: tl.constexpr, FMT_V: tl.constexpr,
                      ROPE: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    qi = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    qmask = qi < n_q
    i = tl.arange(0, HALF)
    q_even_ptr = q + qi[:, None] * q_stride + (head * HEAD_DIM + 2 * i)[None, :]
    q_even = tl.load(q_even_ptr, mask=qmask[:, None], other=0.0)
    q_odd = tl.load(q_even_ptr + 1, mask=qmask[:, None], other=0.0)
    dot_ty = q_even.dtype

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc_even = tl.zeros([BLOCK_M, HALF], tl.float32)
    acc_odd = tl.zeros([BLOCK_M, HALF], tl.float32)

    for start in range(0, n_rows, BLOCK_N):
        rows = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        in_cache = rows < n_rows
        valid = (tl.load(key_valid + rows, mask=in_cache, other=0) != 0) & in_cache
        k_even, k_odd = _load_halves(k_data, k_block, k_scale, rows, valid, head, HEADS, HEAD_DIM, FMT_K)
        if ROPE:
            t = rows[:, None] * HALF + i[None, :]
            c = tl.load(cos + t, mask=valid[:, None], other=0.0)
            s = tl.load(sin + t, mask=valid[:, None], other=0.0)
            k_even, k_odd = k_even * c - k_odd * s, k_even * s + k_odd * c
        score = _dot(q_even, tl.trans(k_even.to(dot_ty)), IEEE) + _dot(q_odd, tl.trans(k_odd.to(dot_ty)), IEEE)
        score = tl.where(valid[None, :], score * qk_scale, float("-inf"))  # log2 units
        m_new = tl.maximum(m_i, tl.max(score, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid key yet: keep everything 0
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(score - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_even, v_odd = _load_halves(v_data, v_block, v_scale, rows, valid, head, HEADS, HEAD_DIM, FMT_V)
        p_d = p.to(dot_ty)
        acc_even = acc_even * alpha[:, None] + _dot(p_d, v_even.to(dot_ty), IEEE)
        acc_odd = acc_odd * alpha[:, None] + _dot(p_d, v_odd.to(dot_ty), IEEE)
        m_i = m_new

    inv = 1.0 / l_i  # no valid key at all: 1/0, and 0 * inf = NaN as the csrc kernel gives
    o_even_ptr = out + qi[:, None] * out_stride + (head * HEAD_DIM + 2 * i)[None, :]
    o_ty = out.dtype.element_ty
    tl.store(o_even_ptr, (acc_even * inv[:, None]).to(o_ty), mask=qmask[:, None])
    tl.store(o_even_ptr + 1, (acc_odd * inv[:, None]).to(o_ty), mask=qmask[:, None])


# ---- the host side ----------------------------------------------------------------------------------

# whether triton.jit made the kernel an interpreted one (TRITON_INTERPRET was set when this module was imported)
INTERPRETED = type(_attention_kernel).__name__ == "InterpretedFunction"


def attention(q: torch.Tensor, k: CacheTensors, v: CacheTensors, key_valid: torch.Tensor, out: torch.Tensor,
              k_rope: tuple[torch.Tensor, torch.Tensor] | None = None, softmax_scale: float | None = None, *,
              check: bool = True, block_m: int | None = None, block_n: int | None = None,
              num_warps: int | None = None, num_stages: int | None = None) -> torch.Tensor:
    """out [n_q, heads*head_dim] = attention of q [n_q, heads*head_dim] over the cache rows j with
    key_valid[j] != 0 (bool or uint8 [rows]) of the k / v caches (CacheTensors, any of fp16 / int8 / fp8 /
    nvfp4, k and v may differ), as Kernels.attention without fresh rows (k_new / v_new are not supported).

    q, out: fp32 / fp16 / bf16 (out in q's dtype), rows may be strided, the last dim contiguous.
    k_rope: (cos, sin) fp32 [rows, head_dim/2] contiguous, rotating each decoded cached key on adjacent
    pairs, or None when the keys are cached rotated. softmax_scale: default 1/sqrt(head_dim).
    check: read key_valid back to the host and refuse a set with no valid key (ValueError); pass False
    inside CUDA graph capture (the outputs are then NaN if no key is valid).
    block_m / block_n / num_warps / num_stages: launch tuning (defaults 64 / 64 / 4 / 2); block_m and
    block_n are powers of two >= 16. Returns out."""
    for name, c in (("k", k), ("v", v)):
        if not isinstance(c, CacheTensors):
            raise TypeError(f"{name}: expected CacheTensors, got {type(c).__name__}")
    device = k.device
    if v.device != device:
        raise ValueError(f"v is on {v.device}, k on {device}")
    if device.type != "cuda" and not (device.type == "cpu" and INTERPRETED):
        raise ValueError(f"the Triton attention runs on CUDA tensors (or on the CPU under TRITON_INTERPRET=1, "
                         f"set before importing this module); the caches are on {device}")
    if (k.heads, k.head_dim, k.rows) != (v.heads, v.head_dim, v.rows):
        raise ValueError(f"k and v caches differ in shape: heads/head_dim/rows {(k.heads, k.head_dim, k.rows)} vs "
                         f"{(v.heads, v.head_dim, v.rows)}")
    heads, head_dim, rows = k.heads, k.head_dim, k.rows
    if head_dim < 32 or head_dim > MAX_HEAD_DIM or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim}: the Triton attention takes a power of two in [32, {MAX_HEAD_DIM}]")
    dim = heads * head_dim
    _tensor("q", q, device, DTYPE_CODES, (None, dim))
    _tensor("out", out, device, (q.dtype,), (q.shape[0], dim))
    _tensor("key_valid", key_valid, device, (torch.uint8, torch.bool), (rows,))
    if q.shape[0] == 0:
        raise ValueError("q: no query rows")
    if device.type == "cpu" and q.dtype == torch.bfloat16:
        raise ValueError("q: bf16 on the CPU is not supported by Triton's interpreter; use fp32 or fp16")
    if k_rope is not None:
        if not isinstance(k_rope, (tuple, list)) or len(k_rope) != 2:
            raise ValueError("k_rope: expected a (cos, sin) pair")
        for name, t in zip(("k_rope cos", "k_rope sin"), k_rope):
            _tensor(name, t, device, (torch.float32,), (rows, head_dim // 2))
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
    block_m = block_m or 64
    block_n = block_n or 64
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} {b}: expected a power of two >= 16")
    if check and not bool(key_valid.any()):
        raise ValueError("key_valid: no valid key, the softmax would be over nothing")
    valid = key_valid.view(torch.uint8) if key_valid.dtype == torch.bool else key_valid
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
    cos, sin = k_rope if k_rope is not None else (q, q)  # placeholders, never read
    part = (lambda c, t: t if t is not None else c.data)  # an unused part's pointer: never read
    grid = (triton.cdiv(q.shape[0], block_m), heads)
    _attention_kernel[grid](
        q, _row_stride(q), out, _row_stride(out),
        k.data, part(k, k.block_scale), part(k, k.scale), v.data, part(v, v.block_scale), part(v, v.scale), valid,
        cos, sin, q.shape[0], rows, scale * LOG2E,
        HEADS=heads, HEAD_DIM=head_dim, FMT_K=KV_CODES[k.fmt], FMT_V=KV_CODES[v.fmt], ROPE=k_rope is not None,
        IEEE=q.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps or 4, num_stages=num_stages or 2)
    return out
