/* arvc cache-op kernels: one C ABI, a CPU reference (*_cpu, C++) and a CUDA implementation (*_cuda)
 * of each. Kernels take raw pointers with explicit strides and scales and return a status; they never
 * allocate, print or abort. The storage formats are quant/kv.py's (and quant_formats.h's):
 *
 *   format  data (per row: one token, all heads)            block_scale            scale
 *   FP16    fp16 [dim]                                       -                      -
 *   INT8    int8 [dim]                                       -                      fp32 [heads]
 *   FP8     E4M3 fn bits [dim]                               -                      fp32 [heads]
 *   NVFP4   E2M1 pairs [dim/2] (element 2i low nibble)       E4M3 [dim/16]          fp32 [heads] (scale_2)
 *
 * Every quantized row is encoded per (token, head) exactly as quant/formats.py does with the
 * per_token granularity: INT8 scale = amax/127 (1 when amax = 0), codes round half to even and clamp
 * to +-127; FP8 scale = amax/448, e4m3(clamp(x/scale, +-448)) ties to even; NVFP4 scale_2 =
 * amax/(6*448), block scale = e4m3(block_amax/6/scale_2), codes = nearest E2M1 of x/(block*scale_2).
 *
 * Layouts: `row_index[i]` is the cache row written by input row i (the caller's ring / sink logic
 * picks rows; rows not named are never touched, so the sink region is preserved by construction).
 * Input and output activations are [n, heads, head_dim] with a row stride in elements.
 *
 * Flags (the trailing `flags` argument of the cache write and the attention): a bitwise OR of
 * ARVC_FLAG_*; any other bit set is ARVC_ERR_ARGUMENT. The *_cpu implementations accept every known
 * flag and ignore it (their checks read host memory and cost nothing worth skipping).
 *
 *   ARVC_FLAG_NO_HOST_SYNC  (CUDA) skip every check that reads device memory back to the host and waits
 *     for the stream, so the call only enqueues kernels and may be captured into a CUDA graph. The
 *     caller then guarantees what those checks verified; otherwise:
 *       - kv_cache_write: a row index outside [0, rows) is skipped (the write kernel bounds-checks every
 *         row, nothing outside the cache is ever written) and the call still returns ARVC_OK; a
 *         non-finite input value is quantized unchecked, leaving that (row, head) with unspecified
 *         contents (typically a NaN / inf scale) that poisons later attention reads;
 *       - attention: with no valid cached key and n_new = 0 the softmax is over nothing and every
 *         output element is NaN (0/0) instead of ARVC_ERR_ARGUMENT.
 *     Host-checkable arguments (null pointers, sizes, formats, flags) are still checked.
 */
#ifndef ARVC_KERNELS_H
#define ARVC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ARVC_OK = 0,
    ARVC_ERR_ARGUMENT = 1,     /* a null pointer, a non-positive size, an index out of range */
    ARVC_ERR_FORMAT = 2,       /* unknown format or a shape the format cannot hold (NVFP4: head_dim % 16) */
    ARVC_ERR_NONFINITE = 3,    /* NaN / inf in data to be quantized */
    ARVC_ERR_CUDA = 4,         /* a CUDA launch or runtime call failed */
    ARVC_ERR_UNSUPPORTED = 5,  /* this build or device cannot run it */
} arvc_status;

typedef enum { ARVC_KV_FP16 = 1, ARVC_KV_INT8 = 2, ARVC_KV_FP8 = 3, ARVC_KV_NVFP4 = 4 } arvc_kv_format;

typedef enum { ARVC_F32 = 0, ARVC_F16 = 1, ARVC_BF16 = 2 } arvc_dtype;

#define ARVC_FLAG_NO_HOST_SYNC 1u
#define ARVC_FLAGS_ALL ARVC_FLAG_NO_HOST_SYNC /* every defined flag bit */

/* One layer's K or V cache. Pointers are host memory for *_cpu and device memory for *_cuda. */
typedef struct {
    int32_t format;         /* arvc_kv_format */
    int32_t heads;
    int32_t head_dim;
    int32_t rows;           /* capacity in tokens */
    void *data;             /* [rows, data_bytes_per_row] */
    uint8_t *block_scale;   /* NVFP4: [rows, heads*head_dim/16]; else NULL */
    float *scale;           /* INT8/FP8/NVFP4: [rows, heads]; FP16: NULL */
} arvc_kv_cache;

/* The layout every binding mirrors (runtime/kernels.py's ctypes struct, the TensorRT plugins): 4 int32
 * then 3 pointers, 40 bytes on the 64-bit platforms arvc targets. */
#ifdef __cplusplus
static_assert(sizeof(arvc_kv_cache) == 40 && offsetof(arvc_kv_cache, data) == 16, "arvc_kv_cache layout changed");
#else
_Static_assert(sizeof(arvc_kv_cache) == 40 && offsetof(arvc_kv_cache, data) == 16, "arvc_kv_cache layout changed");
#endif

/* Bytes of one row's data part (0 for an unknown format). */
int64_t arvc_kv_data_bytes_per_row(int32_t format, int32_t heads, int32_t head_dim);

const char *arvc_status_string(arvc_status status);

/* Quantize n rows of x ([n, heads, head_dim], x_row_stride elements between rows, dtype x_dtype) into
 * the cache rows row_index[0..n). flags: ARVC_FLAG_* (see above). */
arvc_status arvc_kv_cache_write_cpu(const arvc_kv_cache *cache, const void *x, int32_t x_dtype,
                                    int64_t x_row_stride, const int32_t *row_index, int32_t n, uint32_t flags);
arvc_status arvc_kv_cache_write_cuda(const arvc_kv_cache *cache, const void *x, int32_t x_dtype,
                                     int64_t x_row_stride, const int32_t *row_index, int32_t n, uint32_t flags,
                                     void *stream);

/* out[i, h, :] = softmax(scale * q[i, h, :] . K[j, h, :]) V[j, h, :] over the cache rows j with
 * key_valid[j] != 0 (decoded from the cache inside the kernel, never materialized), followed by the
 * n_new fresh rows k_new / v_new ([n_new, heads, head_dim], same dtype as q; n_new may be 0).
 * q, out: [n_q, heads, head_dim] with row strides in elements; out has q's dtype.
 *
 * k_rope_cos, k_rope_sin: fp32 [k_cache->rows, head_dim/2] row-major, or both NULL (the cached keys are
 * stored already rotated; exactly one NULL is ARVC_ERR_ARGUMENT, as is an odd head_dim with tables).
 * With tables, every decoded cached key (row j, any head) is rotated in fp32 on adjacent pairs before
 * the dot product (window-relative RoPE: keys are cached un-rotated, each slot's current position is
 * the caller's table row): with c = cos[j*head_dim/2 + i], s = sin[...], for i < head_dim/2
 *   k'[2i] = k[2i]*c - k[2i+1]*s,   k'[2i+1] = k[2i]*s + k[2i+1]*c.
 * The fresh rows k_new are never rotated (the caller passes them rotated). flags: ARVC_FLAG_*. */
arvc_status arvc_attention_qcache_cpu(const void *q, int32_t dtype, int64_t q_row_stride, int32_t n_q,
                                      const arvc_kv_cache *k_cache, const arvc_kv_cache *v_cache,
                                      const uint8_t *key_valid, const float *k_rope_cos, const float *k_rope_sin,
                                      const void *k_new, const void *v_new, int64_t new_row_stride, int32_t n_new,
                                      float softmax_scale, void *out, int64_t out_row_stride, uint32_t flags);
arvc_status arvc_attention_qcache_cuda(const void *q, int32_t dtype, int64_t q_row_stride, int32_t n_q,
                                       const arvc_kv_cache *k_cache, const arvc_kv_cache *v_cache,
                                       const uint8_t *key_valid, const float *k_rope_cos, const float *k_rope_sin,
                                       const void *k_new, const void *v_new, int64_t new_row_stride, int32_t n_new,
                                       float softmax_scale, void *out, int64_t out_row_stride, uint32_t flags,
                                       void *stream);

/* Wan's 3D RoPE in place on x [n, heads, head_dim] for tokens ordered (frame, row, col) of a block of
 * `frames` x `height` x `width` tokens whose first frame sits at position frame_offset: head_dim/2
 * adjacent pairs (x[2i], x[2i+1]) split time/height/width as arvc/model/rope.py does (Wan 128:
 * 22/21/21), pair i of an axis with d dims rotating by pos * 10000^(-2i/d); angles in double. */
arvc_status arvc_rope3d_cpu(void *x, int32_t dtype, int64_t x_row_stride, int32_t heads, int32_t head_dim,
                            int32_t frames, int32_t height, int32_t width, int32_t frame_offset);
arvc_status arvc_rope3d_cuda(void *x, int32_t dtype, int64_t x_row_stride, int32_t heads, int32_t head_dim,
                             int32_t frames, int32_t height, int32_t width, int32_t frame_offset, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* ARVC_KERNELS_H */
