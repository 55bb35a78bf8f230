// Launcher of the attention_qcache CUDA kernel (attention_qcache_kernel.cuh): argument checks, the
// "no key at all" check (skipped under ARVC_FLAG_NO_HOST_SYNC, see arvc_kernels.h), the shared-memory
// opt-in and launch, every CUDA call checked.
#include <cuda_runtime.h>

#include "arvc_kernels.h"
#include "attention_qcache_kernel.cuh"
#include "kv_decode_inline.h"

using arvc_attention::AttentionArgs;
using arvc_attention::QUERY_TILE;
using arvc_attention::THREADS;

namespace {

// 1 when any key_valid[j] != 0, for the "no key at all" check; one block, written by thread 0.
__device__ int g_any_key_valid;

__global__ void any_key_valid_kernel(const uint8_t *key_valid, int32_t rows) {
    int any = 0;
    for (int j = threadIdx.x; j < rows; j += blockDim.x) any |= key_valid[j] != 0;
    any = __syncthreads_or(any);
    if (threadIdx.x == 0) g_any_key_valid = any;
}

}  // namespace

extern "C" arvc_status arvc_attention_qcache_cuda(const void *q, int32_t dtype, int64_t q_row_stride, int32_t n_q,
                                                  const arvc_kv_cache *k_cache, const arvc_kv_cache *v_cache,
                                                  const uint8_t *key_valid, const float *k_rope_cos,
                                                  const float *k_rope_sin, const void *k_new, const void *v_new,
                                                  int64_t new_row_stride, int32_t n_new, float softmax_scale,
                                                  void *out, int64_t out_row_stride, uint32_t flags, void *stream) {
    const arvc_status s =
        arvc_check_attention_args(q, dtype, q_row_stride, n_q, k_cache, v_cache, key_valid, k_rope_cos, k_rope_sin,
                                  k_new, v_new, new_row_stride, n_new, out, out_row_stride, flags);
    if (s != ARVC_OK) return s;
    cudaStream_t st = static_cast<cudaStream_t>(stream);

    // NO_HOST_SYNC: the caller vouches for a key; an empty key set then yields NaN, never a hang or fault
    if (n_new == 0 && !(flags & ARVC_FLAG_NO_HOST_SYNC)) {
        // Only then can the key set be empty; answering that needs key_valid, which is device memory,
        // so this path waits for the stream (and shares one device flag: do not race two such calls
        // on different streams). With fresh rows there is always a key and no synchronization.
        any_key_valid_kernel<<<1, 256, 0, st>>>(key_valid, k_cache->rows);
        if (cudaGetLastError() != cudaSuccess) return ARVC_ERR_CUDA;
        int any = 0;
        if (cudaMemcpyFromSymbolAsync(&any, g_any_key_valid, sizeof any, 0, cudaMemcpyDeviceToHost, st) != cudaSuccess ||
            cudaStreamSynchronize(st) != cudaSuccess)
            return ARVC_ERR_CUDA;
        if (!any) return ARVC_ERR_ARGUMENT;
    }

    const AttentionArgs args{q, dtype, q_row_stride, n_q, *k_cache, *v_cache, key_valid, k_rope_cos, k_rope_sin,
                             k_new, v_new, new_row_stride, n_new, softmax_scale, out, out_row_stride};
    const size_t smem = arvc_attention::shared_bytes(k_cache->head_dim);
    // above 48 KiB (head_dim > ~128) dynamic shared memory must be opted into; sm_89+ allow ~99 KiB.
    // Below it the attribute call is skipped: fewer driver calls on the (graph-captured) hot path.
    if (smem > 48 * 1024 &&
        cudaFuncSetAttribute(arvc_attention::attention_qcache_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)) != cudaSuccess)
        return ARVC_ERR_CUDA;
    const dim3 grid((n_q + QUERY_TILE - 1) / QUERY_TILE, k_cache->heads);
    arvc_attention::attention_qcache_kernel<<<grid, THREADS, smem, st>>>(args);
    return cudaGetLastError() == cudaSuccess ? ARVC_OK : ARVC_ERR_CUDA;
}
