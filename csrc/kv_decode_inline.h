/* Decoding of the KV-cache formats and of the 16-bit activation dtypes, one definition for the CPU
 * reference and the CUDA kernels (__host__ __device__ under nvcc), so the two read the same bytes the
 * same way. The E4M3 / E2M1 element decoders are quant_formats.h's (the one definition of the formats).
 */
#ifndef ARVC_KV_DECODE_INLINE_H
#define ARVC_KV_DECODE_INLINE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "arvc_kernels.h"
#include "kv_quant_inline.h" /* bit casts, fp16/bf16 conversions, arvc_load */
#include "quant_formats.h"

/* Largest head_dim the attention kernels accept: their per-query accumulators live on the stack
 * (CPU) or in registers (CUDA), so the bound is fixed at compile time. Wan uses 128. */
#define ARVC_ATTN_MAX_HEAD_DIM 256

ARVC_HD void arvc_store_act(void *row, int32_t dtype, int64_t e, float v) {
    if (dtype == ARVC_F32)
        ((float *)row)[e] = v;
    else
        ((uint16_t *)row)[e] = dtype == ARVC_F16 ? arvc_float_to_f16(v) : arvc_float_to_bf16(v);
}

/* The cached value of (row, head, d), decoded from the cache's format: code * scale[row, head]
 * (NVFP4: e2m1(code) * e4m3(block_scale) * scale_2[row, head]). The format is checked by the caller. */
ARVC_HD float arvc_kv_decode(const arvc_kv_cache *c, int64_t row, int32_t head, int32_t d) {
    const int64_t dim = (int64_t)c->heads * c->head_dim;
    const int64_t e = (int64_t)head * c->head_dim + d; /* element within the row */
    switch (c->format) {
        case ARVC_KV_FP16: return arvc_f16_to_float(((const uint16_t *)c->data)[row * dim + e]);
        case ARVC_KV_INT8:
            return (float)((const int8_t *)c->data)[row * dim + e] * c->scale[row * c->heads + head];
        case ARVC_KV_FP8:
            return arvc_e4m3_value(((const uint8_t *)c->data)[row * dim + e]) * c->scale[row * c->heads + head];
        case ARVC_KV_NVFP4: {
            const uint8_t byte = ((const uint8_t *)c->data)[row * (dim / 2) + e / 2];
            const uint8_t code = (e & 1) ? (uint8_t)(byte >> 4) : (uint8_t)(byte & 0xF);
            const uint8_t block = c->block_scale[row * (dim / 16) + e / 16];
            return arvc_e2m1_value(code) * arvc_e4m3_value(block) * c->scale[row * c->heads + head];
        }
        default: return NAN;
    }
}

/* The cached key (row, head, d) as attention sees it: decoded, then, when tables are given (cos_t and
 * sin_t both non-NULL, [rows, head_dim/2]), rotated with its pair partner d^1 in fp32. Element d alone
 * is produced (the partner is decoded a second time) so that the CUDA kernel's one-element-per-thread
 * tile load needs no extra barrier; the CPU reference calls the same function so the two agree. */
ARVC_HD float arvc_kv_decode_key(const arvc_kv_cache *c, const float *cos_t, const float *sin_t, int64_t row,
                                 int32_t head, int32_t d) {
    const float x = arvc_kv_decode(c, row, head, d);
    if (!cos_t) return x;
    const float y = arvc_kv_decode(c, row, head, d ^ 1);
    const int64_t t = row * (c->head_dim / 2) + d / 2;
    const float cs = cos_t[t], sn = sin_t[t];
    return (d & 1) ? y * sn + x * cs : x * cs - y * sn;  /* odd: k[2i]*s + k[2i+1]*c; even: k[2i]*c - k[2i+1]*s */
}

/* Host-side validation shared by the CPU and CUDA entry points (reads only the structs, never the
 * buffers, so it is safe with device pointers). */
static inline arvc_status arvc_check_kv_cache(const arvc_kv_cache *c) {
    if (!c || !c->data || c->heads <= 0 || c->head_dim <= 0 || c->rows <= 0) return ARVC_ERR_ARGUMENT;
    if (c->format < ARVC_KV_FP16 || c->format > ARVC_KV_NVFP4) return ARVC_ERR_FORMAT;
    if (c->format == ARVC_KV_NVFP4 && c->head_dim % 16) return ARVC_ERR_FORMAT;
    if (c->format != ARVC_KV_FP16 && !c->scale) return ARVC_ERR_ARGUMENT;
    if (c->format == ARVC_KV_NVFP4 && !c->block_scale) return ARVC_ERR_ARGUMENT;
    return ARVC_OK;
}

/* Everything about the attention arguments that can be checked without reading device memory; the
 * "at least one key" rule (key_valid) is checked by each implementation. */
static inline arvc_status arvc_check_attention_args(const void *q, int32_t dtype, int64_t q_row_stride, int32_t n_q,
                                                    const arvc_kv_cache *k_cache, const arvc_kv_cache *v_cache,
                                                    const uint8_t *key_valid, const float *k_rope_cos,
                                                    const float *k_rope_sin, const void *k_new, const void *v_new,
                                                    int64_t new_row_stride, int32_t n_new, const void *out,
                                                    int64_t out_row_stride, uint32_t flags) {
    arvc_status s = arvc_check_kv_cache(k_cache);
    if (s != ARVC_OK) return s;
    if ((s = arvc_check_kv_cache(v_cache)) != ARVC_OK) return s;
    if (k_cache->heads != v_cache->heads || k_cache->head_dim != v_cache->head_dim || k_cache->rows != v_cache->rows)
        return ARVC_ERR_ARGUMENT;
    if (dtype != ARVC_F32 && dtype != ARVC_F16 && dtype != ARVC_BF16) return ARVC_ERR_ARGUMENT;
    const int64_t dim = (int64_t)k_cache->heads * k_cache->head_dim;
    if (!q || !out || !key_valid || n_q <= 0 || q_row_stride < dim || out_row_stride < dim) return ARVC_ERR_ARGUMENT;
    if (n_new < 0 || (n_new > 0 && (!k_new || !v_new || new_row_stride < dim))) return ARVC_ERR_ARGUMENT;
    if ((k_rope_cos == NULL) != (k_rope_sin == NULL)) return ARVC_ERR_ARGUMENT;
    if (k_rope_cos && k_cache->head_dim % 2) return ARVC_ERR_ARGUMENT; /* RoPE rotates pairs */
    if (flags & ~ARVC_FLAGS_ALL) return ARVC_ERR_ARGUMENT;
    if (k_cache->head_dim > ARVC_ATTN_MAX_HEAD_DIM) return ARVC_ERR_UNSUPPORTED;
    return ARVC_OK;
}

#endif /* ARVC_KV_DECODE_INLINE_H */
