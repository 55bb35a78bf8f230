// Attention over a quantized KV cache, CPU reference: one query row and head at a time, keys streamed
// once with an online softmax (running max and sum), every cached key / value decoded from its format
// as it is read. Only one key's and one value's head slice are ever decoded at once (on the stack), so
// the cache is never expanded to a higher-precision copy, the same contract as the CUDA kernel.
#include <cmath>

#include "arvc_kernels.h"
#include "kv_decode_inline.h"

namespace {

struct OnlineSoftmax {
    float max = -INFINITY;  // running max of the scores seen so far
    float sum = 0.0f;       // sum of exp(score - max)
    float acc[ARVC_ATTN_MAX_HEAD_DIM];

    explicit OnlineSoftmax(int head_dim) {
        for (int d = 0; d < head_dim; ++d) acc[d] = 0.0f;
    }

    // Fold in one key with score s and value v: rescale the past when the max grows, so exp never
    // overflows and a single pass suffices.
    void add(float s, const float *v, int head_dim) {
        if (s > max) {
            const float alpha = std::exp(max - s);  // exp(-inf) = 0 on the first key
            sum *= alpha;
            for (int d = 0; d < head_dim; ++d) acc[d] *= alpha;
            max = s;
        }
        const float p = std::exp(s - max);
        sum += p;
        for (int d = 0; d < head_dim; ++d) acc[d] += p * v[d];
    }
};

}  // namespace

extern "C" arvc_status arvc_attention_qcache_cpu(const void *q, int32_t dtype, int64_t q_row_stride, int32_t n_q,
                                                 const arvc_kv_cache *k_cache, const arvc_kv_cache *v_cache,
                                                 const uint8_t *key_valid, const float *k_rope_cos,
                                                 const float *k_rope_sin, const void *k_new, const void *v_new,
                                                 int64_t new_row_stride, int32_t n_new, float softmax_scale,
                                                 void *out, int64_t out_row_stride, uint32_t flags) {
    // flags: ARVC_FLAG_NO_HOST_SYNC is for the device; the host checks below are always made
    const arvc_status s =
        arvc_check_attention_args(q, dtype, q_row_stride, n_q, k_cache, v_cache, key_valid, k_rope_cos, k_rope_sin,
                                  k_new, v_new, new_row_stride, n_new, out, out_row_stride, flags);
    if (s != ARVC_OK) return s;
    const int heads = k_cache->heads, head_dim = k_cache->head_dim, rows = k_cache->rows;
    int valid = 0;
    for (int j = 0; j < rows; ++j) valid += key_valid[j] != 0;
    if (valid == 0 && n_new == 0) return ARVC_ERR_ARGUMENT;  // softmax over nothing is undefined

    const int elem = dtype == ARVC_F32 ? 4 : 2;
    const char *q_bytes = static_cast<const char *>(q);
    const char *k_new_bytes = static_cast<const char *>(k_new), *v_new_bytes = static_cast<const char *>(v_new);
    char *out_bytes = static_cast<char *>(out);
    float qv[ARVC_ATTN_MAX_HEAD_DIM], kv[ARVC_ATTN_MAX_HEAD_DIM], vv[ARVC_ATTN_MAX_HEAD_DIM];

    for (int i = 0; i < n_q; ++i) {
        const void *q_row = q_bytes + i * q_row_stride * elem;
        for (int h = 0; h < heads; ++h) {
            const int64_t base = static_cast<int64_t>(h) * head_dim;
            for (int d = 0; d < head_dim; ++d) qv[d] = arvc_load(q_row, dtype, base + d);
            OnlineSoftmax state(head_dim);
            for (int j = 0; j < rows; ++j) {
                if (!key_valid[j]) continue;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d)
                    dot += qv[d] * arvc_kv_decode_key(k_cache, k_rope_cos, k_rope_sin, j, h, d);
                for (int d = 0; d < head_dim; ++d) vv[d] = arvc_kv_decode(v_cache, j, h, d);
                state.add(softmax_scale * dot, vv, head_dim);
            }
            for (int j = 0; j < n_new; ++j) {  // the fresh rows: always valid, q's dtype
                const void *k_row = k_new_bytes + j * new_row_stride * elem;
                const void *v_row = v_new_bytes + j * new_row_stride * elem;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) {
                    kv[d] = arvc_load(k_row, dtype, base + d);
                    dot += qv[d] * kv[d];
                }
                for (int d = 0; d < head_dim; ++d) vv[d] = arvc_load(v_row, dtype, base + d);
                state.add(softmax_scale * dot, vv, head_dim);
            }
            void *out_row = out_bytes + i * out_row_stride * elem;
            const float inv = 1.0f / state.sum;
            for (int d = 0; d < head_dim; ++d) arvc_store_act(out_row, dtype, base + d, state.acc[d] * inv);
        }
    }
    return ARVC_OK;
}
