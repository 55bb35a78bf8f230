// arvc_rope3d_cuda: Wan's 3D RoPE in place on the GPU, the CPU reference's arithmetic (kv_quant_inline.h:
// angles, cos/sin and the rotation in double with unfused products). One thread per (token, pair)
// computes the angle once and rotates that pair in every head. The device's double pow/cos/sin are
// within an ulp or two of libm's, so results match the CPU to the last bit of fp32 almost always and
// to one ulp otherwise.
#include <cuda_runtime.h>

#include "rope3d_args.h"

namespace {

__global__ void rope3d(void *x, int32_t dtype, int64_t stride, int32_t heads, int32_t head_dim, int32_t height,
                       int32_t width, int64_t tokens, int32_t frame_offset) {
    const int32_t pairs = head_dim / 2;
    const int64_t total = tokens * pairs, step = int64_t(gridDim.x) * blockDim.x;
    for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += step) {
        const int64_t token = t / pairs;
        const int32_t p = int32_t(t % pairs), c = int32_t(token % width), r = int32_t((token / width) % height);
        const int64_t f = token / (int64_t(width) * height);
        const double a = arvc_rope_angle(head_dim, p, int64_t(frame_offset) + f, r, c);
        const double cs = cos(a), sn = sin(a);
        for (int32_t h = 0; h < heads; ++h) {
            const int64_t e = token * stride + int64_t(h) * head_dim + 2 * p;
            double oe, oo;
            arvc_rope_rotate(arvc_load(x, dtype, e), arvc_load(x, dtype, e + 1), cs, sn, &oe, &oo);
            arvc_store_from_double(x, dtype, e, oe);
            arvc_store_from_double(x, dtype, e + 1, oo);
        }
    }
}

}  // namespace

extern "C" arvc_status arvc_rope3d_cuda(void *x, int32_t dtype, int64_t x_row_stride, int32_t heads, int32_t head_dim,
                                        int32_t frames, int32_t height, int32_t width, int32_t frame_offset,
                                        void *stream) {
    arvc_status st = arvc_rope3d_check_args(x, dtype, x_row_stride, heads, head_dim, frames, height, width);
    if (st != ARVC_OK) return st;
    const int64_t tokens = int64_t(frames) * height * width, work = tokens * (head_dim / 2);
    const int threads = 256;
    const int blocks = int(work / threads + 1 < 65535 ? work / threads + 1 : 65535);
    rope3d<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(x, dtype, x_row_stride, heads, head_dim, height,
                                                                     width, tokens, frame_offset);
    return cudaGetLastError() == cudaSuccess ? ARVC_OK : ARVC_ERR_CUDA;
}
