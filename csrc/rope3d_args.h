/* Host-side argument checks of arvc_rope3d_{cpu,cuda}: one rule set for both implementations. */
#ifndef ARVC_ROPE3D_ARGS_H
#define ARVC_ROPE3D_ARGS_H

#include "kv_quant_inline.h"

static inline arvc_status arvc_rope3d_check_args(const void *x, int32_t dtype, int64_t x_row_stride, int32_t heads,
                                                 int32_t head_dim, int32_t frames, int32_t height, int32_t width) {
    if (x == NULL || heads <= 0 || head_dim <= 0 || frames <= 0 || height <= 0 || width <= 0)
        return ARVC_ERR_ARGUMENT;
    if (head_dim % 2) return ARVC_ERR_ARGUMENT; /* RoPE rotates pairs */
    if (!arvc_dtype_valid(dtype)) return ARVC_ERR_ARGUMENT;
    if (x_row_stride < (int64_t)heads * head_dim) return ARVC_ERR_ARGUMENT;
    return ARVC_OK;
}

#endif /* ARVC_ROPE3D_ARGS_H */
