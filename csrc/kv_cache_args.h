/* Host-side argument checks of arvc_kv_cache_write_{cpu,cuda}: the same rules for both, so a call
 * that one rejects the other rejects too. Row indices and the data's finiteness are checked by each
 * implementation where the data lives (host loop / device pass). */
#ifndef ARVC_KV_CACHE_ARGS_H
#define ARVC_KV_CACHE_ARGS_H

#include "kv_quant_inline.h"

static inline arvc_status arvc_kv_write_check_args(const arvc_kv_cache *cache, const void *x, int32_t x_dtype,
                                                   int64_t x_row_stride, const int32_t *row_index, int32_t n,
                                                   uint32_t flags) {
    if (flags & ~ARVC_FLAGS_ALL) return ARVC_ERR_ARGUMENT;
    if (cache == NULL || x == NULL || row_index == NULL || n <= 0) return ARVC_ERR_ARGUMENT;
    const int32_t f = cache->format;
    if (f != ARVC_KV_FP16 && f != ARVC_KV_INT8 && f != ARVC_KV_FP8 && f != ARVC_KV_NVFP4) return ARVC_ERR_FORMAT;
    if (cache->heads <= 0 || cache->head_dim <= 0 || cache->rows <= 0 || cache->data == NULL)
        return ARVC_ERR_ARGUMENT;
    if (f != ARVC_KV_FP16 && cache->scale == NULL) return ARVC_ERR_ARGUMENT;
    if (f == ARVC_KV_NVFP4) {
        if (cache->head_dim % ARVC_NVFP4_BLOCK) return ARVC_ERR_FORMAT; /* a block must not straddle two heads */
        if (cache->block_scale == NULL) return ARVC_ERR_ARGUMENT;
    }
    if (!arvc_dtype_valid(x_dtype)) return ARVC_ERR_ARGUMENT;
    if (x_row_stride < (int64_t)cache->heads * cache->head_dim) return ARVC_ERR_ARGUMENT; /* rows would overlap */
    return ARVC_OK;
}

/* Bytes of one cache row's data part; the formats table of arvc_kernels.h (common.cpp's rule, repeated
 * here because the CUDA library does not link common.cpp). */
static inline int64_t arvc_kv_row_bytes(const arvc_kv_cache *cache) {
    const int64_t dim = (int64_t)cache->heads * cache->head_dim;
    switch (cache->format) {
        case ARVC_KV_FP16: return 2 * dim;
        case ARVC_KV_NVFP4: return dim / 2;
        default: return dim;
    }
}

#endif /* ARVC_KV_CACHE_ARGS_H */
