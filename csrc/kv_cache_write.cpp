// arvc_kv_cache_write_cpu: the reference cache write. Each (token, head) is quantized on its own, as
// quant/formats.py does with granularity "per_token"; the element arithmetic is kv_quant_inline.h's,
// shared with the CUDA kernel.
//
// Contract details beyond arvc_kernels.h:
// - NaN / inf input is rejected for every format, FP16 included (a non-finite key poisons every later
//   attention read); all rows are checked before the first write, so a rejected call writes nothing.
// - FP16 stores x.half(): a finite value beyond 65504 becomes inf, exactly as torch does.
// - Duplicate row indices: the last input row naming a cache row wins here; the CUDA kernel writes
//   them concurrently, so callers must not rely on either (the runtime never names a row twice).
#include "kv_cache_args.h"

namespace {

struct HeadIn {
    const void *x;   // the input buffer
    int32_t dtype;
    int64_t offset;  // element offset of this (token, head)'s first value
    int32_t len;     // head_dim
    float at(int32_t j) const { return arvc_load(x, dtype, offset + j); }
    float amax(int32_t begin, int32_t end) const {
        float m = 0.0f;
        for (int32_t j = begin; j < end; ++j) m = fmaxf(m, fabsf(at(j)));
        return m;
    }
};

void write_fp16(const HeadIn &in, uint16_t *out) {
    for (int32_t j = 0; j < in.len; ++j) out[j] = arvc_float_to_f16(in.at(j));
}

void write_int8(const HeadIn &in, int8_t *out, float *scale) {
    const float s = arvc_int8_scale(in.amax(0, in.len));
    for (int32_t j = 0; j < in.len; ++j) out[j] = arvc_int8_code(in.at(j), s);
    *scale = s;
}

void write_fp8(const HeadIn &in, uint8_t *out, float *scale) {
    const float s = arvc_fp8_scale(in.amax(0, in.len));
    for (int32_t j = 0; j < in.len; ++j) out[j] = arvc_fp8_code(in.at(j), s);
    *scale = s;
}

void write_nvfp4(const HeadIn &in, uint8_t *codes, uint8_t *block_scale, float *scale) {
    const float s2 = arvc_nvfp4_scale_2(in.amax(0, in.len));
    for (int32_t b = 0; b < in.len / ARVC_NVFP4_BLOCK; ++b) {
        const int32_t begin = b * ARVC_NVFP4_BLOCK;
        const uint8_t bs = arvc_nvfp4_block_scale(in.amax(begin, begin + ARVC_NVFP4_BLOCK), s2);
        block_scale[b] = bs;
        for (int32_t j = 0; j < ARVC_NVFP4_BLOCK; j += 2) {  // element 2i in the low nibble
            const uint8_t lo = arvc_nvfp4_code(in.at(begin + j), bs, s2);
            const uint8_t hi = arvc_nvfp4_code(in.at(begin + j + 1), bs, s2);
            codes[(begin + j) / 2] = static_cast<uint8_t>(lo | (hi << 4));
        }
    }
    *scale = s2;
}

}  // namespace

extern "C" arvc_status arvc_kv_cache_write_cpu(const arvc_kv_cache *cache, const void *x, int32_t x_dtype,
                                               int64_t x_row_stride, const int32_t *row_index, int32_t n,
                                               uint32_t flags) {
    // flags: ARVC_FLAG_NO_HOST_SYNC is for the device; the host validation below is always made
    arvc_status st = arvc_kv_write_check_args(cache, x, x_dtype, x_row_stride, row_index, n, flags);
    if (st != ARVC_OK) return st;
    const int32_t heads = cache->heads, head_dim = cache->head_dim;
    const int64_t dim = static_cast<int64_t>(heads) * head_dim;

    // Validate everything before the first write: a rejected call leaves the cache as it was.
    for (int32_t i = 0; i < n; ++i)
        if (row_index[i] < 0 || row_index[i] >= cache->rows) return ARVC_ERR_ARGUMENT;
    for (int32_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < dim; ++j)
            if (!arvc_is_finite(arvc_load(x, x_dtype, i * x_row_stride + j))) return ARVC_ERR_NONFINITE;

    const int64_t row_bytes = arvc_kv_row_bytes(cache);
    uint8_t *data = static_cast<uint8_t *>(cache->data);
    for (int32_t i = 0; i < n; ++i) {
        const int64_t r = row_index[i];
        uint8_t *row = data + r * row_bytes;
        for (int32_t h = 0; h < heads; ++h) {
            const HeadIn in{x, x_dtype, i * x_row_stride + static_cast<int64_t>(h) * head_dim, head_dim};
            float *scale = cache->scale ? cache->scale + r * heads + h : nullptr;
            switch (cache->format) {
                case ARVC_KV_FP16:
                    write_fp16(in, reinterpret_cast<uint16_t *>(row) + static_cast<int64_t>(h) * head_dim);
                    break;
                case ARVC_KV_INT8:
                    write_int8(in, reinterpret_cast<int8_t *>(row) + static_cast<int64_t>(h) * head_dim, scale);
                    break;
                case ARVC_KV_FP8:
                    write_fp8(in, row + static_cast<int64_t>(h) * head_dim, scale);
                    break;
                case ARVC_KV_NVFP4:
                    write_nvfp4(in, row + static_cast<int64_t>(h) * head_dim / 2,
                                cache->block_scale + r * (dim / ARVC_NVFP4_BLOCK) + static_cast<int64_t>(h) * head_dim / ARVC_NVFP4_BLOCK,
                                scale);
                    break;
            }
        }
    }
    return ARVC_OK;
}
