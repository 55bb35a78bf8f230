// arvc_kv_cache_write_cuda: the cache write on the GPU, byte-identical to arvc_kv_cache_write_cpu.
//
// Two launches. A validation pass checks every row index and every input value and leaves its verdict
// in a device flag word; the host reads it back (a stream synchronization) and only then launches the
// write, so a rejected call writes nothing, as on the CPU. The cost is one extra read of x and one
// sync per call, and the call cannot be captured into a CUDA graph; a write is small next to the
// attention that follows it, and silently caching a NaN would poison every later block.
// ARVC_FLAG_NO_HOST_SYNC skips the validation pass (graph capture): the write kernel then still
// bounds-checks each row index and skips a row outside the cache, so it never writes out of bounds.
//
// The write runs one warp per (input row, head): a warp reduction gives the head's amax, then each
// lane encodes elements with kv_quant_inline.h's functions, the same code the CPU reference runs.
// NVFP4 gives each 16-element block half a warp (a 16-lane reduction for the block amax, neighbour
// lanes pair their codes into one byte).
//
// Duplicate row indices race (warps of both input rows write the same bytes): the runtime never names a
// row twice in one call, and the result is unspecified if it does.
#include <mutex>

#include <cuda_runtime.h>

#include "kv_cache_args.h"

namespace {

constexpr int kWarps = 4;  // heads per thread block
constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr unsigned kBadIndex = 1u, kNonFinite = 2u;

__device__ unsigned g_write_flags;  // the validation verdict; guarded by g_flags_mutex on the host
std::mutex g_flags_mutex;

__global__ void validate(const void *x, int32_t dtype, int64_t stride, int64_t dim, const int32_t *row_index,
                         int32_t n, int32_t rows) {
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = tid; i < n; i += step)
        if (row_index[i] < 0 || row_index[i] >= rows) atomicOr(&g_write_flags, kBadIndex);
    for (int64_t e = tid; e < int64_t(n) * dim; e += step)
        if (!arvc_is_finite(arvc_load(x, dtype, (e / dim) * stride + e % dim))) atomicOr(&g_write_flags, kNonFinite);
}

__device__ float warp_max(float v, int width) {
    for (int o = width / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

__global__ void write_rows(arvc_kv_cache c, int64_t row_bytes, const void *x, int32_t dtype, int64_t stride,
                           const int32_t *row_index) {
    const int32_t i = blockIdx.x, h = blockIdx.y * kWarps + threadIdx.y, lane = threadIdx.x;
    if (h >= c.heads) return;  // a whole warp leaves together, so the shuffles below stay full-warp
    const int32_t hd = c.head_dim;
    const int64_t in = i * stride + int64_t(h) * hd, r = row_index[i];
    if (r < 0 || r >= c.rows) return;  // only reachable unvalidated (NO_HOST_SYNC); uniform per block
    uint8_t *row = static_cast<uint8_t *>(c.data) + r * row_bytes;

    float amax = 0.0f;
    for (int32_t j = lane; j < hd; j += 32) amax = fmaxf(amax, fabsf(arvc_load(x, dtype, in + j)));
    amax = warp_max(amax, 32);
    float *scale = c.scale ? c.scale + r * c.heads + h : nullptr;

    switch (c.format) {
        case ARVC_KV_FP16: {
            uint16_t *out = reinterpret_cast<uint16_t *>(row) + int64_t(h) * hd;
            for (int32_t j = lane; j < hd; j += 32) out[j] = arvc_float_to_f16(arvc_load(x, dtype, in + j));
            break;
        }
        case ARVC_KV_INT8: {
            const float s = arvc_int8_scale(amax);
            int8_t *out = reinterpret_cast<int8_t *>(row) + int64_t(h) * hd;
            for (int32_t j = lane; j < hd; j += 32) out[j] = arvc_int8_code(arvc_load(x, dtype, in + j), s);
            if (lane == 0) *scale = s;
            break;
        }
        case ARVC_KV_FP8: {
            const float s = arvc_fp8_scale(amax);
            uint8_t *out = row + int64_t(h) * hd;
            for (int32_t j = lane; j < hd; j += 32) out[j] = arvc_fp8_code(arvc_load(x, dtype, in + j), s);
            if (lane == 0) *scale = s;
            break;
        }
        case ARVC_KV_NVFP4: {
            const float s2 = arvc_nvfp4_scale_2(amax);
            const int32_t nb = hd / ARVC_NVFP4_BLOCK, e = lane % ARVC_NVFP4_BLOCK;
            uint8_t *codes = row + int64_t(h) * hd / 2;
            uint8_t *bscale = c.block_scale + r * (int64_t(c.heads) * nb) + int64_t(h) * nb;
            for (int32_t b0 = 0; b0 < nb; b0 += 2) {  // the same trip count for every lane
                const int32_t b = b0 + lane / ARVC_NVFP4_BLOCK;
                const bool active = b < nb;
                const float v = active ? arvc_load(x, dtype, in + b * ARVC_NVFP4_BLOCK + e) : 0.0f;
                const float bamax = warp_max(fabsf(v), ARVC_NVFP4_BLOCK);  // xor offsets < 16: within the half
                const uint8_t bs = arvc_nvfp4_block_scale(bamax, s2);
                const uint8_t code = arvc_nvfp4_code(v, bs, s2);
                const uint8_t odd = static_cast<uint8_t>(__shfl_down_sync(kFull, unsigned(code), 1));
                if (active && e % 2 == 0) codes[(b * ARVC_NVFP4_BLOCK + e) / 2] = static_cast<uint8_t>(code | (odd << 4));
                if (active && e == 0) bscale[b] = bs;
            }
            if (lane == 0) *scale = s2;
            break;
        }
    }
}

}  // namespace

extern "C" arvc_status arvc_kv_cache_write_cuda(const arvc_kv_cache *cache, const void *x, int32_t x_dtype,
                                                int64_t x_row_stride, const int32_t *row_index, int32_t n,
                                                uint32_t flags, void *stream) {
    arvc_status st = arvc_kv_write_check_args(cache, x, x_dtype, x_row_stride, row_index, n, flags);
    if (st != ARVC_OK) return st;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const int64_t dim = int64_t(cache->heads) * cache->head_dim;

    if (!(flags & ARVC_FLAG_NO_HOST_SYNC)) {
        std::lock_guard<std::mutex> lock(g_flags_mutex);  // one validation verdict in flight per process
        void *verdict_ptr = nullptr;
        unsigned verdict = 0;
        if (cudaGetSymbolAddress(&verdict_ptr, g_write_flags) != cudaSuccess) return ARVC_ERR_CUDA;
        if (cudaMemsetAsync(verdict_ptr, 0, sizeof(unsigned), s) != cudaSuccess) return ARVC_ERR_CUDA;
        const int64_t work = int64_t(n) * dim;
        const int threads = 256;
        const int blocks = int(work / threads + 1 < 1024 ? work / threads + 1 : 1024);
        validate<<<blocks, threads, 0, s>>>(x, x_dtype, x_row_stride, dim, row_index, n, cache->rows);
        if (cudaGetLastError() != cudaSuccess) return ARVC_ERR_CUDA;
        if (cudaMemcpyAsync(&verdict, verdict_ptr, sizeof verdict, cudaMemcpyDeviceToHost, s) != cudaSuccess ||
            cudaStreamSynchronize(s) != cudaSuccess)
            return ARVC_ERR_CUDA;
        if (verdict & kBadIndex) return ARVC_ERR_ARGUMENT;  // the CPU's precedence: indices before values
        if (verdict & kNonFinite) return ARVC_ERR_NONFINITE;
    }

    const dim3 grid(unsigned(n), unsigned((cache->heads + kWarps - 1) / kWarps)), block(32, kWarps);
    write_rows<<<grid, block, 0, s>>>(*cache, arvc_kv_row_bytes(cache), x, x_dtype, x_row_stride, row_index);
    return cudaGetLastError() == cudaSuccess ? ARVC_OK : ARVC_ERR_CUDA;
}
