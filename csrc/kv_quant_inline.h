/* The element-level arithmetic of the cache-write and RoPE kernels, written once for the CPU
 * reference (C++) and the CUDA kernels (nvcc compiles the same functions as __host__ __device__).
 * Bit-exactness with quant/formats.py rests on these functions, so every rounding step is spelled
 * out on the bits instead of left to a library conversion whose rounding might differ between the
 * host and the device:
 *   - fp32 -> fp16 / bf16 / E4M3: round half to even, as torch's .to() does;
 *   - E2M1: nearest code, ties to the even code (quant/formats.e2m1_codes);
 *   - divisions are IEEE (nvcc's default -prec-div=true; never build with --use_fast_math);
 *   - RoPE's double products use explicit _rn intrinsics on the device so nvcc cannot fuse them
 *     into FMAs (torch computes xe*cos - xo*sin as two rounded products and a rounded difference).
 */
#ifndef ARVC_KV_QUANT_INLINE_H
#define ARVC_KV_QUANT_INLINE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "arvc_kernels.h"
#include "quant_formats.h"

#define ARVC_E4M3_MAX 448.0f
#define ARVC_E2M1_MAX 6.0f

/* ---- bit casts ------------------------------------------------------------------------------------ */

ARVC_HD uint32_t arvc_float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

ARVC_HD float arvc_bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- fp16 / bf16 <-> fp32 ----------------------------------------------------------------------- */

ARVC_HD float arvc_f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    if (exponent == 0x1F) return arvc_bits_float(sign | 0x7F800000u | (mantissa << 13)); /* inf / NaN */
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24 is exact in fp32 */
        float v = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return arvc_bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

ARVC_HD uint16_t arvc_float_to_f16(float f) {
    uint32_t u = arvc_float_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7FFFFFFFu;
    if (u >= 0x7F800000u) return sign | (u > 0x7F800000u ? 0x7E00 : 0x7C00);
    if (u >= 0x477FF000u) return sign | 0x7C00; /* >= 65520 rounds (to even) past 65504: inf, as torch */
    if (u < 0x38800000u) {
        /* below 2^-14 the half is subnormal: count units of 2^-24 (the scaling is exact), round to
         * even; 0x400 (a carry into the exponent) is exactly the smallest normal's encoding */
        return sign | (uint16_t)rintf(arvc_bits_float(u) * 16777216.0f);
    }
    /* normal: rebias the exponent (127 -> 15) and drop 13 mantissa bits, half to even; a mantissa
     * carry walks into the exponent, which is the right answer */
    uint32_t odd = (u >> 13) & 1;
    return sign | (uint16_t)((u - (112u << 23) + 0xFFFu + odd) >> 13);
}

ARVC_HD float arvc_bf16_to_float(uint16_t b) { return arvc_bits_float((uint32_t)b << 16); }

ARVC_HD uint16_t arvc_float_to_bf16(float f) {
    uint32_t u = arvc_float_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* keep NaN a NaN */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

/* Element i of an activation buffer of dtype ARVC_F32 / F16 / BF16 (the caller validated dtype). */
ARVC_HD float arvc_load(const void *x, int32_t dtype, int64_t i) {
    if (dtype == ARVC_F16) return arvc_f16_to_float(((const uint16_t *)x)[i]);
    if (dtype == ARVC_BF16) return arvc_bf16_to_float(((const uint16_t *)x)[i]);
    return ((const float *)x)[i];
}

/* Store as torch's double -> dtype cast does: through fp32 first (c10::Half/BFloat16 take a float). */
ARVC_HD void arvc_store_from_double(void *x, int32_t dtype, int64_t i, double v) {
    float f = (float)v;
    if (dtype == ARVC_F16)
        ((uint16_t *)x)[i] = arvc_float_to_f16(f);
    else if (dtype == ARVC_BF16)
        ((uint16_t *)x)[i] = arvc_float_to_bf16(f);
    else
        ((float *)x)[i] = f;
}

ARVC_HD int arvc_dtype_valid(int32_t dtype) { return dtype == ARVC_F32 || dtype == ARVC_F16 || dtype == ARVC_BF16; }

ARVC_HD int arvc_is_finite(float f) { return (arvc_float_bits(f) & 0x7F800000u) != 0x7F800000u; }

/* ---- E4M3 (fn) ------------------------------------------------------------------------------------- */

/* E4M3 bits of y, |y| <= 448 (callers clamp), half to even; the sign is kept even for a result of 0
 * (torch writes -0 as 0x80). */
ARVC_HD uint8_t arvc_e4m3_encode(float y) {
    uint32_t u = arvc_float_bits(y);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    u &= 0x7FFFFFFFu;
    if (u < 0x3C800000u) {
        /* below 2^-6: subnormal, units of 2^-9 (exact scaling), half to even; 8 units is the smallest
         * normal, whose encoding is 0x08 */
        return sign | (uint8_t)rintf(arvc_bits_float(u) * 512.0f);
    }
    /* normal: keep 3 of 23 mantissa bits, half to even, then rebias the exponent 127 -> 7 */
    uint32_t odd = (u >> 20) & 1;
    return sign | (uint8_t)(((u + 0x7FFFFu + odd) >> 20) - (120u << 3));
}

/* ---- E2M1 ------------------------------------------------------------------------------------------ */

/* 4-bit code of v: nearest of 0, .5, 1, 1.5, 2, 3, 4, 6 (saturating), a tie goes to the even code;
 * bit 3 is set for every v < 0, including those that round to 0 (modelopt's convention). */
ARVC_HD uint8_t arvc_e2m1_code(float v) {
    float m = fabsf(v);
    uint8_t code = (uint8_t)((m > 0.25f) + (m >= 0.75f) + (m > 1.25f) + (m >= 1.75f) + (m > 2.5f) +
                             (m >= 3.5f) + (m > 5.0f));
    return code | (v < 0.0f ? 0x8 : 0);
}

/* ---- per (token, head) scales, exactly quant/formats.py's fp32 expressions -------------------------- */

ARVC_HD float arvc_int8_scale(float amax) { return amax > 0.0f ? amax / 127.0f : 1.0f; }

ARVC_HD int8_t arvc_int8_code(float x, float scale) {
    float q = rintf(x / scale);
    return (int8_t)(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
}

ARVC_HD float arvc_fp8_scale(float amax) { return amax > 0.0f ? amax / ARVC_E4M3_MAX : 1.0f; }

ARVC_HD uint8_t arvc_fp8_code(float x, float scale) {
    float y = x / scale;
    /* comparisons, not fminf/fmaxf, so -0 stays -0 as torch.clamp leaves it */
    y = y > ARVC_E4M3_MAX ? ARVC_E4M3_MAX : (y < -ARVC_E4M3_MAX ? -ARVC_E4M3_MAX : y);
    return arvc_e4m3_encode(y);
}

/* NVFP4 scale_2 = amax / (6 * 448), 1 for an all-zero head. */
ARVC_HD float arvc_nvfp4_scale_2(float amax) { return amax > 0.0f ? amax / (ARVC_E2M1_MAX * ARVC_E4M3_MAX) : 1.0f; }

/* E4M3 bits of a block's scale: e4m3(clamp(block_amax / (6 * scale_2), 2^-9, 448)), 1.0 (0x38) for
 * an all-zero block. */
ARVC_HD uint8_t arvc_nvfp4_block_scale(float block_amax, float scale_2) {
    if (!(block_amax > 0.0f)) return 0x38;
    float raw = block_amax / (ARVC_E2M1_MAX * scale_2);
    raw = raw < 0.001953125f ? 0.001953125f : (raw > ARVC_E4M3_MAX ? ARVC_E4M3_MAX : raw);
    return arvc_e4m3_encode(raw);
}

/* Code of x in a block whose scale is (block_scale bits, scale_2): e2m1(x / (block * scale_2)). */
ARVC_HD uint8_t arvc_nvfp4_code(float x, uint8_t block_scale_bits, float scale_2) {
    return arvc_e2m1_code(x / (arvc_e4m3_value(block_scale_bits) * scale_2));
}

/* ---- Wan 3D RoPE -------------------------------------------------------------------------------------- */

/* Position and axis of rotation pair p (0 <= p < head_dim/2) of token (f, r, c): time pairs first,
 * then height, then width; axis dims D - 4*(D/6), 2*(D/6), 2*(D/6) as arvc/model/rope.py. Returns
 * the angle pos * 10000^(-2i/d) in double. */
ARVC_HD double arvc_rope_angle(int32_t head_dim, int32_t p, int64_t frame_pos, int32_t row, int32_t col) {
    int32_t d_hw = 2 * (head_dim / 6), d_t = head_dim - 2 * d_hw;
    int32_t pairs_t = d_t / 2, pairs_h = d_hw / 2;
    int32_t i, d;
    double pos;
    if (p < pairs_t) {
        i = p, d = d_t, pos = (double)frame_pos;
    } else if (p < pairs_t + pairs_h) {
        i = p - pairs_t, d = d_hw, pos = (double)row;
    } else {
        i = p - pairs_t - pairs_h, d = d_hw, pos = (double)col;
    }
    /* rope.py: THETA ** (-arange(0, d, 2) / d), then an outer product with the positions */
    double inv_freq = pow(10000.0, -(double)(2 * i) / (double)d);
    return pos * inv_freq;
}

/* (xe, xo) -> (xe cos - xo sin, xe sin + xo cos), each product and sum rounded separately. */
ARVC_HD void arvc_rope_rotate(double xe, double xo, double c, double s, double *oe, double *oo) {
#ifdef __CUDA_ARCH__
    *oe = __dsub_rn(__dmul_rn(xe, c), __dmul_rn(xo, s));
    *oo = __dadd_rn(__dmul_rn(xe, s), __dmul_rn(xo, c));
#else
    *oe = xe * c - xo * s;
    *oo = xe * s + xo * c;
#endif
}

#endif /* ARVC_KV_QUANT_INLINE_H */
