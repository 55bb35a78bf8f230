// Hand-computed vectors for arvc_kv_cache_write_cpu (each value worked out from quant/formats.py's
// rules in the comment next to it) and its argument errors. Exit status: the number of failures.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "arvc_kernels.h"
#include "expect.h"

namespace {

// One cache with zeroed buffers, laid out as arvc_kernels.h says.
struct Cache {
    std::vector<uint8_t> data, block_scale;
    std::vector<float> scale;
    arvc_kv_cache c{};
    Cache(int32_t format, int32_t rows, int32_t heads, int32_t head_dim) {
        const int64_t dim = int64_t(heads) * head_dim;
        data.assign(size_t(rows * arvc_kv_data_bytes_per_row(format, heads, head_dim)), 0);
        if (format == ARVC_KV_NVFP4) block_scale.assign(size_t(rows * dim / 16), 0);
        if (format != ARVC_KV_FP16) scale.assign(size_t(rows * heads), 0.0f);
        c = {format, heads, head_dim, rows, data.data(), block_scale.empty() ? nullptr : block_scale.data(),
             scale.empty() ? nullptr : scale.data()};
    }
    bool all_zero() const {
        for (uint8_t b : data) if (b) return false;
        for (uint8_t b : block_scale) if (b) return false;
        for (float s : scale) if (s != 0.0f) return false;
        return true;
    }
};

void int8_ties() {
    // amax 127 -> scale 1 exactly; 0.5, 1.5, 2.5, -0.5, -2.5 are ties: half to even -> 0, 2, 2, 0, -2
    std::vector<float> x(16, 0.0f);
    const float v[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -127.0f, 3.4f};
    std::memcpy(x.data(), v, sizeof v);
    Cache c(ARVC_KV_INT8, 3, 1, 16);
    const int32_t row = 2;
    EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 16, &row, 1, 0) == ARVC_OK);
    const int8_t want[] = {127, 0, 2, 2, 0, -2, -127, 3};
    EXPECT(std::memcmp(c.data.data() + 32, want, sizeof want) == 0);
    EXPECT(c.scale[2] == 1.0f && c.scale[0] == 0.0f && c.scale[1] == 0.0f);
    for (int i = 0; i < 32; ++i) EXPECT(c.data[size_t(i)] == 0);  // rows 0 and 1 untouched
}

void fp8_saturation_and_zero_head() {
    // head 0: amax 448 -> scale 1; 432 ties 416/448 -> 448 (0x7E, even mantissa); 2^-10 ties 0/2^-9 -> 0;
    // -3 * 2^-10 ties 1/2 units of 2^-9 -> 2 units, negative (0x82); 300 -> 288 (0x79) (300 is nearer
    // 288 than 320). head 1: all zero -> scale 1, codes 0.
    std::vector<float> x(32, 0.0f);
    const float v[] = {448.0f, -448.0f, 432.0f, 0.0009765625f, -0.0029296875f, 300.0f};
    std::memcpy(x.data(), v, sizeof v);
    Cache c(ARVC_KV_FP8, 1, 2, 16);
    const int32_t row = 0;
    EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, &row, 1, 0) == ARVC_OK);
    const uint8_t want[] = {0x7E, 0xFE, 0x7E, 0x00, 0x82, 0x79};
    EXPECT(std::memcmp(c.data.data(), want, sizeof want) == 0);
    EXPECT(c.scale[0] == 1.0f && c.scale[1] == 1.0f);
    for (int i = 16; i < 32; ++i) EXPECT(c.data[size_t(i)] == 0);
    // a value beyond amax/scale is impossible, so saturation shows through the scale rounding: amax 1
    // -> scale 1/448 (rounded); 1/scale may exceed 448 by an ulp and must clamp to 448, never NaN (0x7F)
    std::vector<float> y(32, 0.0f);
    y[0] = 1.0f;
    y[1] = -1.0f;
    EXPECT(arvc_kv_cache_write_cpu(&c.c, y.data(), ARVC_F32, 32, &row, 1, 0) == ARVC_OK);
    EXPECT(c.data[0] == 0x7E && c.data[1] == 0xFE);
}

void nvfp4_block() {
    // amax 2688 = 6 * 448 -> scale_2 1; block 0 amax 2688 -> block scale 448 (0x7E); x / 448 =
    // 6, 3, 1, -0.5, 0.25 (tie -> 0), 0.75 (tie -> 1.0, code 2), 5 (tie -> 4, code 6), -1e-3 (-> -0, code 8)
    // block 1 all zero -> block scale 1.0 (0x38), codes 0
    std::vector<float> x(32, 0.0f);
    const float v[] = {2688.0f, 1344.0f, 448.0f, -224.0f, 112.0f, 336.0f, 2240.0f, -0.448f};
    std::memcpy(x.data(), v, sizeof v);
    Cache c(ARVC_KV_NVFP4, 2, 1, 32);
    const int32_t row = 1;
    EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, &row, 1, 0) == ARVC_OK);
    EXPECT(c.scale[1] == 1.0f && c.block_scale[2] == 0x7E && c.block_scale[3] == 0x38);
    const uint8_t want[] = {0x7 | 0x5 << 4, 0x2 | 0x9 << 4, 0x0 | 0x2 << 4, 0x6 | 0x8 << 4};
    EXPECT(std::memcmp(c.data.data() + 16, want, sizeof want) == 0);
    for (int i = 20; i < 32; ++i) EXPECT(c.data[size_t(i)] == 0);
    EXPECT(c.block_scale[0] == 0 && c.block_scale[1] == 0 && c.scale[0] == 0.0f);  // row 0 untouched
}

void fp16_from_fp32() {
    // 65519 rounds to 65504 (0x7BFF), 65520 ties up to inf (0x7C00), 2^-25 ties to 0, 3 * 2^-25 -> 2^-23 (0x0002)
    std::vector<float> x(4);
    const float v[] = {65519.0f, 65520.0f, 2.98023223876953125e-8f, -8.94069671630859375e-8f};
    std::memcpy(x.data(), v, sizeof v);
    Cache c(ARVC_KV_FP16, 1, 1, 4);
    const int32_t row = 0;
    EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 4, &row, 1, 0) == ARVC_OK);
    uint16_t h[4];
    std::memcpy(h, c.data.data(), sizeof h);
    EXPECT(h[0] == 0x7BFF && h[1] == 0x7C00 && h[2] == 0x0000 && h[3] == 0x8002);
}

void errors_write_nothing() {
    std::vector<float> x(2 * 32, 1.0f);
    const int32_t rows[] = {0, 1};
    for (int32_t format : {ARVC_KV_FP16, ARVC_KV_INT8, ARVC_KV_FP8, ARVC_KV_NVFP4}) {
        Cache c(format, 2, 2, 16);
        x[40] = NAN;  // row 1: a NaN after row 0 was checked fine -> nothing written at all
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_NONFINITE);
        x[40] = -INFINITY;
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_NONFINITE);
        x[40] = 1.0f;
        const int32_t bad[] = {0, 2};
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, bad, 2, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, rows, 0, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(&c.c, nullptr, ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, nullptr, 2, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(nullptr, x.data(), ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 31, rows, 2, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), 5, 32, rows, 2, 0) == ARVC_ERR_ARGUMENT);
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, rows, 2, 2u) == ARVC_ERR_ARGUMENT);  // unknown bit
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, rows, 2, 0x80000000u) == ARVC_ERR_ARGUMENT);
        // the CPU validates even when told not to sync: NO_HOST_SYNC changes nothing here
        EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, bad, 2, ARVC_FLAG_NO_HOST_SYNC) ==
               ARVC_ERR_ARGUMENT);
        EXPECT(c.all_zero());
    }
    Cache c(ARVC_KV_INT8, 2, 2, 16);
    c.c.format = 0;
    EXPECT(arvc_kv_cache_write_cpu(&c.c, x.data(), ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_FORMAT);
    Cache q(ARVC_KV_NVFP4, 2, 2, 16);
    q.c.head_dim = 24;  // heads * 24 = 48 is a multiple of 16, yet a block would straddle two heads
    q.c.heads = 1;
    EXPECT(arvc_kv_cache_write_cpu(&q.c, x.data(), ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_FORMAT);
    Cache s(ARVC_KV_FP8, 2, 2, 16);
    s.c.scale = nullptr;
    EXPECT(arvc_kv_cache_write_cpu(&s.c, x.data(), ARVC_F32, 32, rows, 2, 0) == ARVC_ERR_ARGUMENT);
    EXPECT(c.all_zero() && q.all_zero() && s.all_zero());
    Cache ok(ARVC_KV_INT8, 2, 2, 16);
    EXPECT(arvc_kv_cache_write_cpu(&ok.c, x.data(), ARVC_F32, 32, rows, 2, ARVC_FLAG_NO_HOST_SYNC) == ARVC_OK);
    EXPECT(!ok.all_zero());
}

}  // namespace

int main() {
    int8_ties();
    fp8_saturation_and_zero_head();
    nvfp4_block();
    fp16_from_fp32();
    errors_write_nothing();
    if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
