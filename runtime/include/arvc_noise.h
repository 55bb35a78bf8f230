/* arvc_noise.h: the seeded Gaussian noise of the arvc runtimes, header-only (C99 and C++17).
 *
 * This is the C/C++ twin of arvc/model/noise.py; the two MUST agree bit for bit (tests/test_noise.py
 * compares them), so any change here is a change there, in the same words.
 *
 * Stream. The noise of (seed, block, step) is an infinite sequence g[0], g[1], ... of float32
 * standard normals; a tensor of shape S takes g[0 .. prod(S)-1] in C (row-major) order.
 *
 * 1. Key (64 bits): splitmix64(splitmix64(splitmix64(seed) ^ block) ^ step), all uint64 arithmetic
 *    mod 2^64, where splitmix64(x): x += 0x9E3779B97F4A7C15; x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9;
 *    x = (x ^ (x >> 27)) * 0x94D049BB133111EB; return x ^ (x >> 31).
 *    Philox key words: k0 = key & 0xFFFFFFFF, k1 = key >> 32.
 * 2. Uniform bits: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers: as easy as
 *    1, 2, 3"). Counter for word i of the stream: c = (j & 0xFFFFFFFF, j >> 32, 0, 0) with j = i / 4;
 *    word i is output word i % 4 of Philox(c, key). One round on (c0, c1, c2, c3) with key (k0, k1):
 *    p0 = 0xD2511F53 * c0, p1 = 0xCD9E8D57 * c2 (64-bit products);
 *    (c0, c1, c2, c3) <- (hi(p1) ^ c1 ^ k0, lo(p1), hi(p0) ^ c3 ^ k1, lo(p0)); then the key is bumped,
 *    k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32). Ten rounds (round r uses key + r * bump).
 * 3. Uniform: u = (x + 0.5) * 2^-32 in double, exact, in [2^-33, 1 - 2^-33]: never 0 nor 1.
 * 4. Gaussian pairs (Box-Muller, float64): for p = 0, 1, ...: u1 = uniform(word 2p),
 *    u2 = uniform(word 2p + 1); r = sqrt(-2 * ln(u1)); g[2p] = (float)(r * cos(2 pi u2)),
 *    g[2p + 1] = (float)(r * sin(2 pi u2)) (round to nearest even). An odd n drops the last g[n].
 *
 * ln and sincos are NOT libm's (whose last ulp differs between implementations, and from numpy's):
 * they use only IEEE double +, -, *, / and sqrt (all correctly rounded), exact bit operations and
 * exact comparisons, each in the one order written below; relative error ~1e-16.
 *
 *  ln(x), x a positive normal double: split x = m * 2^e exactly from the bits (m in [1, 2)); if
 *    m > SQRT2 (0x1.6a09e667f3bcdp+0) then m = m * 0.5, e = e + 1 (so m in [0.707, 1.414]).
 *    f = (m - 1.0) / (m + 1.0); s = f + f; z = f * f;
 *    p = L10; p = p * z + L9; ... ; p = p * z + L1    with Lk = 1.0 / (2k + 1)   (k = 10 .. 1)
 *    lnm = s + s * (z * p)                              (= 2 atanh f = ln m)
 *    ln = e * LN2_HI + (e * LN2_LO + lnm), LN2_HI = 0x1.62e42p-1, LN2_LO = 0x1.fdf473de6af28p-22.
 *  sincos(2 pi u), u in [0, 1) with at most 50 significant bits (uniforms have 33): the reduction is
 *    done on u, exactly: t = 4.0 * u; q = floor(t + 0.5) (an integer 0..4; t + 0.5 is exact;
 *    computed as a truncating integer conversion, t + 0.5 > 0);
 *    w = t - q (exact, in [-0.5, 0.5]); a = w * PIO2, PIO2 = 0x1.921fb54442d18p+0 (|a| <= pi/4);
 *    z = a * a;
 *    ps = S8; ps = ps * z + S7; ... ; ps = ps * z + S1   with Sk = (-1)^k / (2k + 1)!   (k = 8 .. 1)
 *    pc = C9; pc = pc * z + C8; ... ; pc = pc * z + C1   with Ck = (-1)^k / (2k)!       (k = 9 .. 1)
 *    sa = a + a * (z * ps); ca = 1.0 + z * pc;
 *    by q mod 4: 0: (sin, cos) = (sa, ca); 1: (ca, -sa); 2: (-sa, -ca); 3: (-ca, sa).
 *  The coefficients are the correctly rounded doubles of those fractions, written 1.0 / 6.0 etc.
 *  (every factorial used is below 2^53, so exact as a double, and the quotient is correctly rounded).
 *
 * Bit-equality needs IEEE binary64 evaluation with no excess precision (FLT_EVAL_METHOD 0: x86-64
 * SSE2, aarch64; not x87) and NO contraction of a * b + c into a fused multiply-add: compile every
 * translation unit that includes this header with -ffp-contract=off (GCC and Clang; CMake target
 * arvc_noise adds it), and never with -ffast-math. FMA rounds once where the definition rounds twice,
 * so a contracted build gives different last bits in float64 (measured with -mfma -ffp-contract=fast:
 * ln differs in ~0.1% of inputs, sin/cos in ~5%); a float32 output flips only where that crosses a
 * float32 rounding boundary (~2^-29 per value: rare, not never), so the bit-exact tests cannot be
 * relied on to catch it; the flag is the guarantee.
 */
#ifndef ARVC_NOISE_H
#define ARVC_NOISE_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "arvc_noise.h: -ffast-math breaks the bit-exact noise definition"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "arvc_noise.h: needs FLT_EVAL_METHOD == 0 (no excess precision; e.g. SSE2, not x87)"
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define ARVC_PHILOX_M0 0xD2511F53u
#define ARVC_PHILOX_M1 0xCD9E8D57u
#define ARVC_PHILOX_W0 0x9E3779B9u
#define ARVC_PHILOX_W1 0xBB67AE85u

static inline uint64_t arvc_noise_splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* The 64-bit Philox key of draw (seed, block, step). */
static inline uint64_t arvc_noise_key(uint64_t seed, uint64_t block, uint64_t step) {
  return arvc_noise_splitmix64(arvc_noise_splitmix64(arvc_noise_splitmix64(seed) ^ block) ^ step);
}

/* Philox4x32-10: out = the 4 words of counter ctr under key (key[0], key[1]). */
static inline void arvc_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  int r;
  for (r = 0; r < 10; ++r) {
    uint64_t p0 = (uint64_t)ARVC_PHILOX_M0 * c0, p1 = (uint64_t)ARVC_PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += ARVC_PHILOX_W0;
    k1 += ARVC_PHILOX_W1;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* A 32-bit word as a uniform double in (0, 1): (x + 0.5) * 2^-32, exact. */
static inline double arvc_noise_uniform(uint32_t x) {
  return ((double)x + 0.5) * 0x1p-32;
}

/* Natural log of a positive normal double (see the definition above). */
static inline double arvc_noise_ln(double x) {
  uint64_t bits, mbits;
  int64_t e;
  double m, f, s, z, p;
  memcpy(&bits, &x, sizeof bits);
  e = (int64_t)((bits >> 52) & 0x7FF) - 1023;
  mbits = (bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull;
  memcpy(&m, &mbits, sizeof m);
  if (m > 0x1.6a09e667f3bcdp+0) {
    m = m * 0.5;
    e = e + 1;
  }
  f = (m - 1.0) / (m + 1.0);
  s = f + f;
  z = f * f;
  p = 1.0 / 21.0;
  p = p * z + 1.0 / 19.0;
  p = p * z + 1.0 / 17.0;
  p = p * z + 1.0 / 15.0;
  p = p * z + 1.0 / 13.0;
  p = p * z + 1.0 / 11.0;
  p = p * z + 1.0 / 9.0;
  p = p * z + 1.0 / 7.0;
  p = p * z + 1.0 / 5.0;
  p = p * z + 1.0 / 3.0;
  {
    double lnm = s + s * (z * p), ed = (double)e;
    return ed * 0x1.62e42p-1 + (ed * 0x1.fdf473de6af28p-22 + lnm);
  }
}

/* sin(2 pi u) and cos(2 pi u) for u in [0, 1) (see the definition above). */
static inline void arvc_noise_sincos2pi(double u, double *sin_out, double *cos_out) {
  double t = 4.0 * u, q = (double)(int64_t)(t + 0.5), w = t - q, a = w * 0x1.921fb54442d18p+0, z = a * a;
  double ps, pc, sa, ca;
  ps = 1.0 / 355687428096000.0;            /* S8 = 1/17! */
  ps = ps * z - 1.0 / 1307674368000.0;     /* S7 = -1/15! (p * z + (-c) is p * z - c, exactly) */
  ps = ps * z + 1.0 / 6227020800.0;        /* S6 = 1/13! */
  ps = ps * z - 1.0 / 39916800.0;          /* S5 = -1/11! */
  ps = ps * z + 1.0 / 362880.0;            /* S4 = 1/9! */
  ps = ps * z - 1.0 / 5040.0;              /* S3 = -1/7! */
  ps = ps * z + 1.0 / 120.0;               /* S2 = 1/5! */
  ps = ps * z - 1.0 / 6.0;                 /* S1 = -1/3! */
  pc = -1.0 / 6402373705728000.0;         /* C9 = -1/18! */
  pc = pc * z + 1.0 / 20922789888000.0;    /* C8 = 1/16! */
  pc = pc * z - 1.0 / 87178291200.0;       /* C7 = -1/14! */
  pc = pc * z + 1.0 / 479001600.0;         /* C6 = 1/12! */
  pc = pc * z - 1.0 / 3628800.0;           /* C5 = -1/10! */
  pc = pc * z + 1.0 / 40320.0;             /* C4 = 1/8! */
  pc = pc * z - 1.0 / 720.0;               /* C3 = -1/6! */
  pc = pc * z + 1.0 / 24.0;                /* C2 = 1/4! */
  pc = pc * z - 1.0 / 2.0;                 /* C1 = -1/2! */
  sa = a + a * (z * ps);
  ca = 1.0 + z * pc;
  switch ((int)q & 3) {
    case 0: *sin_out = sa; *cos_out = ca; break;
    case 1: *sin_out = ca; *cos_out = -sa; break;
    case 2: *sin_out = -sa; *cos_out = -ca; break;
    default: *sin_out = -ca; *cos_out = sa; break;
  }
}

/* One Box-Muller pair from two uniforms. */
static inline void arvc_noise_box_muller(double u1, double u2, float *z0, float *z1) {
  double r = sqrt(-2.0 * arvc_noise_ln(u1)), s, c;
  arvc_noise_sincos2pi(u2, &s, &c);
  *z0 = (float)(r * c);
  *z1 = (float)(r * s);
}

/* out[0 .. n-1] = g[0 .. n-1], the noise of (seed, block, step). */
static inline void arvc_noise_fill(uint64_t seed, uint64_t block, uint64_t step, float *out, size_t n) {
  uint64_t k = arvc_noise_key(seed, block, step), j;
  uint32_t key[2], ctr[4], x[4];
  size_t i = 0;
  float g[4];
  key[0] = (uint32_t)k;
  key[1] = (uint32_t)(k >> 32);
  for (j = 0; i < n; ++j) {
    size_t w, take;
    ctr[0] = (uint32_t)j; ctr[1] = (uint32_t)(j >> 32); ctr[2] = 0; ctr[3] = 0;
    arvc_philox4x32_10(ctr, key, x);
    arvc_noise_box_muller(arvc_noise_uniform(x[0]), arvc_noise_uniform(x[1]), &g[0], &g[1]);
    arvc_noise_box_muller(arvc_noise_uniform(x[2]), arvc_noise_uniform(x[3]), &g[2], &g[3]);
    take = n - i < 4 ? n - i : 4;
    for (w = 0; w < take; ++w) out[i + w] = g[w];
    i += take;
  }
}

#ifdef __cplusplus
}
#endif

#endif /* ARVC_NOISE_H */
