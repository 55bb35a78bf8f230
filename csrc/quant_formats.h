/* arvc quantized storage formats: the C definition of quant/formats.py (the two must agree; the
 * Python format table, quant/format_table.py, holds the same sizes (tests/test_format_table.py), and
 * tests/test_quant_formats.py compiles this header and decodes the hand-computed vectors with it).
 *
 * Layouts (row-major, the last dimension is the input / head dimension):
 *   INT8   data int8 [rows, cols], scale fp32 per group; value = data * scale
 *   FP8    data E4M3 fn bits [rows, cols] (uint8), scale fp32 per group; value = e4m3(data) * scale
 *   NVFP4  codes uint8 [rows, cols/2] (element 2i in the low nibble, 2i+1 in the high one),
 *          block_scale E4M3 bits [rows, cols/16], scale_2 fp32;
 *          value = e2m1(code) * e4m3(block_scale) * scale_2
 */
#ifndef ARVC_QUANT_FORMATS_H
#define ARVC_QUANT_FORMATS_H

#include <math.h>
#include <stdint.h>

/* Host and device: the CPU references (C, C++) and the CUDA kernels (nvcc) share these definitions. */
#ifndef ARVC_HD
#ifdef __CUDACC__
#define ARVC_HD static __host__ __device__ __forceinline__
#else
#define ARVC_HD static inline
#endif
#endif

#ifdef __cplusplus
#define ARVC_STATIC_ASSERT static_assert
#else
#define ARVC_STATIC_ASSERT _Static_assert
#endif

#define ARVC_NVFP4_BLOCK 16

/* One NVFP4 block as stored: 8 bytes of packed codes; its E4M3 scale lives in the scale plane. */
typedef struct {
    uint8_t codes[ARVC_NVFP4_BLOCK / 2];
} arvc_nvfp4_block;
ARVC_STATIC_ASSERT(sizeof(arvc_nvfp4_block) == 8, "an NVFP4 block packs 16 E2M1 codes into 8 bytes");

typedef uint8_t arvc_e4m3; /* FP8 E4M3 fn: sign, 4 exponent bits (bias 7), 3 mantissa bits, no inf */
ARVC_STATIC_ASSERT(sizeof(arvc_e4m3) == 1, "E4M3 is one byte");

typedef struct {
    const arvc_nvfp4_block *blocks;  /* [rows, cols / 16] */
    const arvc_e4m3 *block_scale;    /* [rows, cols / 16] */
    float scale_2;
    int64_t rows, cols;
} arvc_nvfp4_tensor;

typedef struct {
    const int8_t *data; /* [rows, cols] */
    const float *scale; /* [rows] (per output channel) */
    int64_t rows, cols;
} arvc_int8_channel_tensor;

ARVC_HD float arvc_e4m3_value(arvc_e4m3 bits) {
    int sign = bits >> 7, exponent = (bits >> 3) & 0xF, mantissa = bits & 0x7;
    float v;
    if (exponent == 0xF && mantissa == 0x7) return NAN; /* the fn variant's only special value */
    if (exponent == 0)
        v = ldexpf((float)mantissa, -9); /* subnormal: m/8 * 2^-6 */
    else
        v = ldexpf(1.0f + (float)mantissa / 8.0f, exponent - 7);
    return sign ? -v : v;
}

/* E2M1: sign, 2 exponent bits (bias 1), 1 mantissa bit: magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6
 * (arithmetic rather than a table, so device code can use it too). */
ARVC_HD float arvc_e2m1_value(uint8_t code) {
    int exponent = (code >> 1) & 0x3, mantissa = code & 0x1;
    float v = exponent == 0 ? 0.5f * (float)mantissa : ldexpf(1.0f + 0.5f * (float)mantissa, exponent - 1);
    return (code & 0x8) ? -v : v;
}

ARVC_HD float arvc_nvfp4_get(const arvc_nvfp4_tensor *t, int64_t row, int64_t col) {
    int64_t nb = t->cols / ARVC_NVFP4_BLOCK, b = col / ARVC_NVFP4_BLOCK, i = col % ARVC_NVFP4_BLOCK;
    uint8_t byte = t->blocks[row * nb + b].codes[i / 2];
    uint8_t code = (i % 2) ? (byte >> 4) : (byte & 0xF);
    return arvc_e2m1_value(code) * arvc_e4m3_value(t->block_scale[row * nb + b]) * t->scale_2;
}

ARVC_HD float arvc_int8_get(const arvc_int8_channel_tensor *t, int64_t row, int64_t col) {
    return (float)t->data[row * t->cols + col] * t->scale[row];
}

#endif /* ARVC_QUANT_FORMATS_H */
