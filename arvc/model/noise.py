"""Seeded noise that depends only on (seed, block, step), never on call order, and is the same bits in
Python and in C/C++ (runtime/include/arvc_noise.h; tests/test_noise.py checks them against each other).

Each draw (seed, block, step) is an infinite stream g[0], g[1], ... of float32 standard normals; a
tensor of shape S takes g[0 .. prod(S)-1] in C (row-major) order. So a block can be regenerated,
skipped, or computed on another backend or by the C runtime and still get the same noise.

The definition (the header states it in the same words; the two must agree bit for bit):

1. Key (64 bits): splitmix64(splitmix64(splitmix64(seed) ^ block) ^ step), uint64 arithmetic mod 2^64
   (splitmix64 below). Philox key words k0 = key & 0xFFFFFFFF, k1 = key >> 32. Distinct draws get
   unrelated keys, hence independent Philox streams.
2. Uniform bits: Philox4x32-10 (Salmon et al., SC'11). Word i of the stream is output word i % 4 of
   Philox(counter (j & 0xFFFFFFFF, j >> 32, 0, 0), key), j = i // 4. One round on (c0, c1, c2, c3):
   p0 = 0xD2511F53 * c0, p1 = 0xCD9E8D57 * c2 (64-bit products);
   (c0, c1, c2, c3) <- (hi(p1) ^ c1 ^ k0, lo(p1), hi(p0) ^ c3 ^ k1, lo(p0)); then k0 += 0x9E3779B9,
   k1 += 0xBB67AE85 (mod 2^32). Ten rounds.
3. Uniform: u = (x + 0.5) * 2^-32 in float64 (exact), in [2^-33, 1 - 2^-33]: never 0 nor 1.
4. Box-Muller in float64 on pairs: u1 = uniform(word 2p), u2 = uniform(word 2p + 1);
   r = sqrt(-2 ln u1); g[2p] = float32(r cos(2 pi u2)), g[2p + 1] = float32(r sin(2 pi u2)).

ln and sincos are not numpy's / libm's (their last ulp differs between implementations): they use
only float64 +, -, *, / and sqrt (IEEE, correctly rounded), exact bit operations and comparisons, in
the one order written in ``ln`` and ``sincos2pi`` below (numpy evaluates each operation separately, so
nothing is fused into an FMA; the C side is compiled with -ffp-contract=off for the same reason).
Relative error ~1e-16 (tests/test_noise.py checks < 1e-14 against math.log / cos / sin).

- ln(x): x = m * 2^e exactly from the bits, m in [1, 2); if m > SQRT2: m *= 0.5, e += 1.
  f = (m - 1) / (m + 1); s = f + f; z = f * f; p = L10; p = p * z + L9; ...; p = p * z + L1 with
  Lk = 1 / (2k + 1); lnm = s + s * (z * p); ln = e * LN2_HI + (e * LN2_LO + lnm).
- sincos(2 pi u): t = 4u; q = floor(t + 0.5) (0..4); w = t - q (exact, |w| <= 0.5); a = w * PIO2;
  z = a * a; ps = S8; ps = ps * z + S7 ... + S1, Sk = (-1)^k / (2k + 1)!; pc = C9; ... + C1,
  Ck = (-1)^k / (2k)!; sa = a + a * (z * ps); ca = 1 + z * pc; rotate by q mod 4:
  0: (sa, ca), 1: (ca, -sa), 2: (-sa, -ca), 3: (-ca, sa) as (sin, cos).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .stream_inputs import check_seed

_MASK = (1 << 64) - 1

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")
LN2_HI = float.fromhex("0x1.62e42p-1")
LN2_LO = float.fromhex("0x1.fdf473de6af28p-22")
PIO2 = float.fromhex("0x1.921fb54442d18p+0")
# Highest-order coefficient first (the Horner order). Every factorial here is < 2^53: exact as a float,
# so each quotient is the correctly rounded double, as the C side's 1.0 / 6.0 etc. constant folding.
LN_COEFFS = tuple(1.0 / float(2 * k + 1) for k in range(10, 0, -1))                   # L10 .. L1
SIN_COEFFS = tuple((-1.0) ** k / float(math.factorial(2 * k + 1)) for k in range(8, 0, -1))  # S8 .. S1
COS_COEFFS = tuple((-1.0) ** k / float(math.factorial(2 * k)) for k in range(9, 0, -1))      # C9 .. C1
_SIN_SIGN = np.array([1.0, 1.0, -1.0, -1.0])  # by quadrant q mod 4: sin = sa, ca, -sa, -ca
_COS_SIGN = np.array([1.0, -1.0, -1.0, 1.0])  # cos = ca, -sa, -ca, sa
CHUNK = 1 << 14  # Philox blocks per vectorized pass: its float64 temporaries stay in cache


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def draw_key(seed: int, block: int, step: int) -> int:
    """The 64-bit Philox key of draw (seed, block, step) (arguments taken mod 2^64, as uint64_t in C)."""
    return splitmix64(splitmix64(splitmix64(seed & _MASK) ^ (block & _MASK)) ^ (step & _MASK))


def philox4x32_10(counters: np.ndarray, key: int) -> np.ndarray:
    """Philox4x32-10 of each counter: counters [m, 4] uint32-valued, key 64 bits; returns [m, 4] uint32."""
    c = np.asarray(counters, dtype=np.uint64)
    c0, c1, c2, c3 = (np.ascontiguousarray(c[:, w]) for w in range(4))
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    m0, m1, lo = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    for _ in range(10):
        p0 = c0 * m0
        p1 = c2 * m1
        c0 = (p1 >> s32) ^ c1 ^ np.uint64(k0)
        c1 = p1 & lo
        c2 = (p0 >> s32) ^ c3 ^ np.uint64(k1)
        c3 = p0 & lo
        k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def uniform(x: np.ndarray) -> np.ndarray:
    """uint32 words -> float64 uniforms (x + 0.5) * 2^-32, exact, in (0, 1)."""
    u = np.asarray(x, dtype=np.uint32).astype(np.float64)
    u += 0.5
    u *= 2.0 ** -32
    return u


def _horner(z: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """c0 z^n + ... + cn, evaluated highest first, one rounding per multiply and per add (as the C side)."""
    p = np.full_like(z, coeffs[0])
    for c in coeffs[1:]:
        p *= z
        p += c
    return p


def ln(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float64s, by the fixed definition above (not numpy's log)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    e = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    m = ((bits & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000)).view(np.float64)
    big = m > SQRT2
    np.multiply(m, 0.5, out=m, where=big)
    e += big
    f = m - 1.0
    f /= m + 1.0
    s = f + f
    z = f * f
    p = _horner(z, LN_COEFFS)
    p *= z
    p *= s
    p += s  # lnm = s + s * (z * p): z * p, then s * that, then s + that
    ed = e.astype(np.float64)
    lo = ed * LN2_LO
    lo += p
    ed *= LN2_HI
    ed += lo
    return ed


def sincos2pi(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin(2 pi u), cos(2 pi u)) for float64 u in [0, 1), by the fixed definition above."""
    t = np.asarray(u, dtype=np.float64) * 4.0
    q = np.floor(t + 0.5)
    a = t - q
    a *= PIO2
    z = a * a
    ps, pc = _horner(z, SIN_COEFFS), _horner(z, COS_COEFFS)
    ps *= z
    ps *= a
    sa = a + ps  # a + a * (z * ps)
    pc *= z
    ca = pc + 1.0  # 1 + z * pc (addition commutes exactly)
    quad = q.astype(np.int64) & 3
    swap = (quad & 1).astype(bool)
    sin = np.where(swap, ca, sa)
    cos = np.where(swap, sa, ca)
    sin *= _SIN_SIGN.take(quad)  # multiplying by +-1 is exact
    cos *= _COS_SIGN.take(quad)
    return sin, cos


def gaussian(seed: int, block: int, step: int, n: int) -> np.ndarray:
    """g[0 .. n-1] of draw (seed, block, step): float32 standard normals (== arvc_noise_fill). A seed outside
    0..2^64-1 is refused: masking it would give another seed's video."""
    seed = check_seed(seed)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    key = draw_key(seed, block, step)
    out = np.empty(n + (-n) % 4, dtype=np.float32).reshape(-1, 2)  # rows: pairs (g[2p], g[2p + 1])
    blocks = len(out) // 2
    for start in range(0, blocks, CHUNK):
        j = np.arange(start, min(start + CHUNK, blocks), dtype=np.uint64)
        counters = np.zeros((len(j), 4), dtype=np.uint64)
        counters[:, 0] = j & np.uint64(0xFFFFFFFF)
        counters[:, 1] = j >> np.uint64(32)
        words = philox4x32_10(counters, key).reshape(-1, 2)  # pairs (word 2p, word 2p + 1)
        r = ln(uniform(words[:, 0]))
        r *= -2.0
        np.sqrt(r, out=r)
        sin, cos = sincos2pi(uniform(words[:, 1]))
        cos *= r
        sin *= r
        rows = out[2 * start: 2 * start + len(r)]
        rows[:, 0] = cos
        rows[:, 1] = sin
    return out.reshape(-1)[:n]


def block_noise(seed: int, block: int, step: int, shape, device="cpu") -> torch.Tensor:
    """fp32 standard normal noise for denoising step ``step`` of block ``block``: g[0 .. prod(shape)-1]
    of draw (seed, block, step), laid out in C order."""
    shape = tuple(int(s) for s in shape)
    g = gaussian(seed, block, step, math.prod(shape))
    return torch.from_numpy(g).reshape(shape).to(device)
