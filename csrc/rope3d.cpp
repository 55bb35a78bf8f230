// arvc_rope3d_cpu: Wan's 3D RoPE in place, arvc/model/rope.py's math (angles, cos/sin and the
// rotation in double, the result cast back to the input dtype). The per-pair arithmetic is
// kv_quant_inline.h's, shared with the CUDA kernel.
#include "rope3d_args.h"

extern "C" arvc_status arvc_rope3d_cpu(void *x, int32_t dtype, int64_t x_row_stride, int32_t heads, int32_t head_dim,
                                       int32_t frames, int32_t height, int32_t width, int32_t frame_offset) {
    arvc_status st = arvc_rope3d_check_args(x, dtype, x_row_stride, heads, head_dim, frames, height, width);
    if (st != ARVC_OK) return st;
    const int32_t pairs = head_dim / 2;
    int64_t token = 0;
    for (int32_t f = 0; f < frames; ++f)
        for (int32_t r = 0; r < height; ++r)
            for (int32_t c = 0; c < width; ++c, ++token)
                for (int32_t p = 0; p < pairs; ++p) {
                    // one angle per (token, pair), shared by every head as rope.py broadcasts it
                    const double a = arvc_rope_angle(head_dim, p, static_cast<int64_t>(frame_offset) + f, r, c);
                    const double cs = cos(a), sn = sin(a);
                    for (int32_t h = 0; h < heads; ++h) {
                        const int64_t e = token * x_row_stride + static_cast<int64_t>(h) * head_dim + 2 * p;
                        double oe, oo;
                        arvc_rope_rotate(arvc_load(x, dtype, e), arvc_load(x, dtype, e + 1), cs, sn, &oe, &oo);
                        arvc_store_from_double(x, dtype, e, oe);
                        arvc_store_from_double(x, dtype, e + 1, oo);
                    }
                }
    return ARVC_OK;
}
