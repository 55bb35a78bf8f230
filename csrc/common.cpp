// Format sizes and status strings shared by every kernel (CPU and CUDA builds link the same rules).
#include "arvc_kernels.h"

extern "C" int64_t arvc_kv_data_bytes_per_row(int32_t format, int32_t heads, int32_t head_dim) {
    const int64_t dim = static_cast<int64_t>(heads) * head_dim;
    switch (format) {
        case ARVC_KV_FP16: return 2 * dim;
        case ARVC_KV_INT8:
        case ARVC_KV_FP8: return dim;
        case ARVC_KV_NVFP4: return dim / 2;
        default: return 0;
    }
}

extern "C" const char *arvc_status_string(arvc_status status) {
    switch (status) {
        case ARVC_OK: return "ok";
        case ARVC_ERR_ARGUMENT: return "invalid argument (null pointer, non-positive size or index out of range)";
        case ARVC_ERR_FORMAT: return "unknown KV format or a shape the format cannot hold";
        case ARVC_ERR_NONFINITE: return "non-finite value (NaN/inf) in data to quantize";
        case ARVC_ERR_CUDA: return "CUDA launch or runtime error";
        case ARVC_ERR_UNSUPPORTED: return "not supported by this build or device";
    }
    return "unknown status";
}
