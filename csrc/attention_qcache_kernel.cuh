/* The attention_qcache CUDA kernel body (device code only), kept apart from its launcher
 * (attention_qcache.cu) so that tests/test_attention_qcache_emulated.cpp can also compile it as plain C++
 * under a small emulation of the CUDA built-ins and run it on the CPU, where no GPU is available.
 *
 * Flash-decoding style: one thread block per (tile of QUERY_TILE query rows, head); keys and values
 * stream through shared memory KEY_TILE rows at a time, decoded from the cache format as they are
 * loaded (the cache is never expanded to a bf16/fp32 copy in global memory), scores and an online
 * softmax (running max / sum per query row) in fp32, the output accumulator in registers. The decode
 * rules are kv_decode_inline.h's, the CPU reference's own, window-relative RoPE of the cached keys
 * included (each thread decodes its element's pair partner too, so rotation adds no barrier).
 */
#ifndef ARVC_ATTENTION_QCACHE_KERNEL_CUH
#define ARVC_ATTENTION_QCACHE_KERNEL_CUH

#include "arvc_kernels.h"
#include "kv_decode_inline.h"

// nvcc unrolls the accumulator loops so acc[] stays in registers; a host compiler (the emulated test)
// does not know the pragma and would warn
#ifdef __CUDACC__
#define ARVC_UNROLL _Pragma("unroll")
#else
#define ARVC_UNROLL
#endif

namespace arvc_attention {

constexpr int QUERY_TILE = 16;
constexpr int KEY_TILE = 32;
constexpr int THREADS = 128;
// each thread owns these many accumulator entries of the block's [QUERY_TILE, head_dim] output
constexpr int ACC_PER_THREAD = QUERY_TILE * ARVC_ATTN_MAX_HEAD_DIM / THREADS;

struct AttentionArgs {
    const void *q;
    int32_t dtype;
    int64_t q_row_stride;
    int32_t n_q;
    arvc_kv_cache k, v;  // by value: the structs are host memory, their buffers device memory
    const uint8_t *key_valid;
    const float *k_rope_cos, *k_rope_sin;  // [k.rows, head_dim/2] or both null
    const void *k_new, *v_new;
    int64_t new_row_stride;
    int32_t n_new;
    float softmax_scale;
    void *out;
    int64_t out_row_stride;
};

__device__ __forceinline__ const void *row_ptr(const void *base, int32_t dtype, int64_t row, int64_t stride) {
    return static_cast<const char *>(base) + row * stride * (dtype == ARVC_F32 ? 4 : 2);
}

// Key j of the combined sequence: cache rows [0, rows) where key_valid, then the fresh rows.
__device__ __forceinline__ bool key_live(const AttentionArgs &a, int64_t j) {
    return j < a.k.rows ? a.key_valid[j] != 0 : j < static_cast<int64_t>(a.k.rows) + a.n_new;
}

// Shared memory: q [QT][D], k [KT][D+1] (padded so the score loop's threads, one key each, hit
// different banks), v [KT][D], p [QT][KT], then max / sum / alpha [QT] each.
__host__ __device__ inline size_t shared_bytes(int head_dim) {
    return sizeof(float) * (static_cast<size_t>(QUERY_TILE) * head_dim + KEY_TILE * (head_dim + 1) +
                            KEY_TILE * head_dim + QUERY_TILE * KEY_TILE + 3 * QUERY_TILE);
}

__global__ void __launch_bounds__(THREADS) attention_qcache_kernel(AttentionArgs a) {
    extern __shared__ float smem[];
    const int D = a.k.head_dim, KD = D + 1, tid = threadIdx.x, h = blockIdx.y;
    const int64_t q0 = static_cast<int64_t>(blockIdx.x) * QUERY_TILE;
    const int64_t head_base = static_cast<int64_t>(h) * D;
    const int64_t n_keys = static_cast<int64_t>(a.k.rows) + a.n_new;
    float *qs = smem, *ks = qs + QUERY_TILE * D, *vs = ks + KEY_TILE * KD, *ps = vs + KEY_TILE * D;
    float *row_max = ps + QUERY_TILE * KEY_TILE, *row_sum = row_max + QUERY_TILE, *row_alpha = row_sum + QUERY_TILE;

    for (int e = tid; e < QUERY_TILE * D; e += THREADS) {
        const int64_t i = q0 + e / D;
        qs[e] = i < a.n_q ? arvc_load(row_ptr(a.q, a.dtype, i, a.q_row_stride), a.dtype, head_base + e % D) : 0.0f;
    }
    if (tid < QUERY_TILE) {
        row_max[tid] = -INFINITY;
        row_sum[tid] = 0.0f;
    }
    float acc[ACC_PER_THREAD];
ARVC_UNROLL
    for (int r = 0; r < ACC_PER_THREAD; ++r) acc[r] = 0.0f;

    for (int64_t t0 = 0; t0 < n_keys; t0 += KEY_TILE) {
        // 1. decode this tile's keys and values into shared memory (zeros for dead slots)
        int live = 0;
        for (int e = tid; e < KEY_TILE * D; e += THREADS) {
            const int s = e / D, d = e % D;
            const int64_t j = t0 + s;
            float kx = 0.0f, vx = 0.0f;
            if (key_live(a, j)) {
                live = 1;
                if (j < a.k.rows) {
                    kx = arvc_kv_decode_key(&a.k, a.k_rope_cos, a.k_rope_sin, j, h, d);
                    vx = arvc_kv_decode(&a.v, j, h, d);
                } else {
                    const int64_t f = j - a.k.rows;
                    kx = arvc_load(row_ptr(a.k_new, a.dtype, f, a.new_row_stride), a.dtype, head_base + d);
                    vx = arvc_load(row_ptr(a.v_new, a.dtype, f, a.new_row_stride), a.dtype, head_base + d);
                }
            }
            ks[s * KD + d] = kx;
            vs[e] = vx;
        }
        // a tile of invalid cache rows (an unfilled ring) costs one barrier and nothing else
        if (!__syncthreads_or(live)) continue;

        // 2. scores of every (query, key) pair of the tile; dead keys score -inf
        for (int e = tid; e < QUERY_TILE * KEY_TILE; e += THREADS) {
            const int r = e / KEY_TILE, s = e % KEY_TILE;
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += qs[r * D + d] * ks[s * KD + d];
            ps[e] = key_live(a, t0 + s) ? dot * a.softmax_scale : -INFINITY;
        }
        __syncthreads();

        // 3. online softmax, one thread per query row: new max, rescale factor, probabilities
        if (tid < QUERY_TILE) {
            float m = row_max[tid];
            for (int s = 0; s < KEY_TILE; ++s) m = fmaxf(m, ps[tid * KEY_TILE + s]);
            float alpha = 1.0f, sum = row_sum[tid];
            if (m != -INFINITY) {  // guards exp(-inf - -inf) = NaN; the tile is live, so this holds
                alpha = expf(row_max[tid] - m);
                sum *= alpha;
                for (int s = 0; s < KEY_TILE; ++s) {
                    const float p = expf(ps[tid * KEY_TILE + s] - m);  // exp(-inf) = 0 for dead keys
                    ps[tid * KEY_TILE + s] = p;
                    sum += p;
                }
                row_max[tid] = m;
            }
            row_sum[tid] = sum;
            row_alpha[tid] = alpha;
        }
        __syncthreads();

        // 4. acc = acc * alpha + P V for the entries this thread owns
ARVC_UNROLL
        for (int r = 0; r < ACC_PER_THREAD; ++r) {
            const int e = tid + r * THREADS;
            if (e < QUERY_TILE * D) {
                const int qi = e / D, d = e % D;
                float x = acc[r] * row_alpha[qi];
                for (int s = 0; s < KEY_TILE; ++s) x += ps[qi * KEY_TILE + s] * vs[s * D + d];
                acc[r] = x;
            }
        }
        __syncthreads();  // the next tile overwrites ks / vs / ps
    }

ARVC_UNROLL
    for (int r = 0; r < ACC_PER_THREAD; ++r) {
        const int e = tid + r * THREADS;
        if (e < QUERY_TILE * D) {
            const int64_t i = q0 + e / D;
            if (i < a.n_q) {
                void *out_row = static_cast<char *>(a.out) + i * a.out_row_stride * (a.dtype == ARVC_F32 ? 4 : 2);
                arvc_store_act(out_row, a.dtype, head_base + e % D, acc[r] / row_sum[e / D]);
            }
        }
    }
}

}  // namespace arvc_attention

#endif /* ARVC_ATTENTION_QCACHE_KERNEL_CUH */
