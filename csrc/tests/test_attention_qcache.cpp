// Hand cases for arvc_attention_qcache_cpu whose answers need no reference implementation: a single
// valid key returns its value, equal scores average the values, invalid rows are ignored, fresh rows
// take part; plus the decode helpers and the error statuses. Exits nonzero on any failure (ctest).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "arvc_kernels.h"
#include "kv_decode_inline.h"

namespace {

int failures = 0;

void expect(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "FAIL: %s\n", what);
        ++failures;
    }
}

bool close(float a, float b, float tol = 1e-6f) { return std::fabs(a - b) <= tol * (1.0f + std::fabs(b)); }

// A cache of `rows` rows, heads x head_dim, in one format; buffers owned here.
struct Cache {
    std::vector<uint8_t> data, block_scale;
    std::vector<float> scale;
    arvc_kv_cache c{};

    Cache(int32_t format, int heads, int head_dim, int rows) {
        const int dim = heads * head_dim;
        const int bytes = format == ARVC_KV_FP16 ? 2 * dim : format == ARVC_KV_NVFP4 ? dim / 2 : dim;
        data.assign(static_cast<size_t>(rows) * bytes, 0);
        block_scale.assign(static_cast<size_t>(rows) * (dim / 16 + 1), 0);
        scale.assign(static_cast<size_t>(rows) * heads, 1.0f);
        c = {format, heads, head_dim, rows, data.data(), format == ARVC_KV_NVFP4 ? block_scale.data() : nullptr,
             format == ARVC_KV_FP16 ? nullptr : scale.data()};
    }
    void set_fp16(int row, int e, float v) {
        const uint16_t h = arvc_float_to_f16(v);
        std::memcpy(&data[(static_cast<size_t>(row) * c.heads * c.head_dim + e) * 2], &h, 2);
    }
};

arvc_status attend(const std::vector<float> &q, int n_q, const Cache &k, const Cache &v, const uint8_t *valid,
                   const std::vector<float> *k_new, const std::vector<float> *v_new, int n_new,
                   std::vector<float> &out) {
    const int dim = k.c.heads * k.c.head_dim;
    out.assign(static_cast<size_t>(n_q) * dim, -1.0f);
    return arvc_attention_qcache_cpu(q.data(), ARVC_F32, dim, n_q, &k.c, &v.c, valid, nullptr, nullptr,
                                     k_new ? k_new->data() : nullptr, v_new ? v_new->data() : nullptr, dim, n_new, 1.0f,
                                     out.data(), dim, 0);
}

void test_decode_helpers() {
    expect(arvc_e4m3_value(0x38) == 1.0f, "e4m3 0x38 = 1");
    expect(arvc_e4m3_value(0x7E) == 448.0f, "e4m3 0x7E = 448");
    expect(arvc_e4m3_value(0x01) == std::ldexp(1.0f, -9), "e4m3 0x01 = 2^-9");
    expect(arvc_e4m3_value(0xB8) == -1.0f, "e4m3 0xB8 = -1");
    expect(std::isnan(arvc_e4m3_value(0x7F)), "e4m3 0x7F is NaN");
    const float e2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    for (int c = 0; c < 8; ++c) {
        expect(arvc_e2m1_value(static_cast<uint8_t>(c)) == e2m1[c], "e2m1 magnitude");
        expect(arvc_e2m1_value(static_cast<uint8_t>(c | 8)) == -e2m1[c], "e2m1 sign");
    }
    // every non-NaN half survives half -> float -> half; ties round to even
    for (uint32_t h = 0; h < 0x10000; ++h) {
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;
        if (arvc_float_to_f16(arvc_f16_to_float(static_cast<uint16_t>(h))) != h) {
            expect(false, "half round trip");
            break;
        }
    }
    expect(arvc_float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00, "half tie to even (down)");
    expect(arvc_float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02, "half tie to even (up)");
    expect(arvc_float_to_f16(70000.0f) == 0x7C00, "half overflow is inf");
    expect(arvc_float_to_bf16(1.0f) == 0x3F80, "bf16 of 1");
}

void test_one_valid_key() {
    // INT8 value row 1 = codes * 0.5; only row 1 is valid, so the output is exactly that value
    const int heads = 2, hd = 4, dim = heads * hd;
    Cache k(ARVC_KV_INT8, heads, hd, 3), v(ARVC_KV_INT8, heads, hd, 3);
    for (int e = 0; e < dim; ++e) {
        for (int r = 0; r < 3; ++r) {
            k.data[r * dim + e] = static_cast<uint8_t>(int8_t(10 * (r + 1)));
            v.data[r * dim + e] = static_cast<uint8_t>(int8_t(e - r * 7));
        }
    }
    for (int r = 0; r < 3; ++r) v.scale[r * heads + 1] = 0.5f;
    const uint8_t valid[3] = {0, 1, 0};
    std::vector<float> q(2 * dim, 0.3f), out;
    expect(attend(q, 2, k, v, valid, nullptr, nullptr, 0, out) == ARVC_OK, "one key: status");
    for (int i = 0; i < 2; ++i)
        for (int e = 0; e < dim; ++e) {
            const float want = static_cast<float>(int8_t(e - 7)) * (e >= hd ? 0.5f : 1.0f);
            expect(out[i * dim + e] == want, "one valid key: output is its value");
        }
}

void test_equal_keys_average() {
    // two identical FP16 keys: equal scores, so the output is the mean of their values
    const int hd = 8;
    Cache k(ARVC_KV_FP16, 1, hd, 2), v(ARVC_KV_FP16, 1, hd, 2);
    for (int d = 0; d < hd; ++d) {
        k.set_fp16(0, d, 0.25f * d);
        k.set_fp16(1, d, 0.25f * d);
        v.set_fp16(0, d, 1.0f + d);
        v.set_fp16(1, d, 3.0f - d);
    }
    const uint8_t valid[2] = {1, 1};
    std::vector<float> q(hd, 0.7f), out;
    expect(attend(q, 1, k, v, valid, nullptr, nullptr, 0, out) == ARVC_OK, "equal keys: status");
    for (int d = 0; d < hd; ++d) expect(close(out[d], 2.0f), "equal keys: mean of the values");
}

void test_invalid_keys_ignored() {
    // the invalid row has a far larger score and a distinct value; it must not leak into the output
    const int hd = 16;
    Cache k(ARVC_KV_FP8, 1, hd, 2), v(ARVC_KV_FP8, 1, hd, 2);
    for (int d = 0; d < hd; ++d) {
        k.data[d] = 0x38;       // 1.0
        k.data[hd + d] = 0x7E;  // 448
        v.data[d] = 0x40;       // 2.0
        v.data[hd + d] = 0x38;  // 1.0
    }
    v.scale[0] = 0.25f;  // row 0's value: 2 * 0.25
    const uint8_t valid[2] = {1, 0};
    std::vector<float> q(hd, 1.0f), out;
    expect(attend(q, 1, k, v, valid, nullptr, nullptr, 0, out) == ARVC_OK, "invalid keys: status");
    for (int d = 0; d < hd; ++d) expect(out[d] == 0.5f, "invalid keys are ignored");
}

void test_nvfp4_and_fresh_rows() {
    // NVFP4 cache row 0: every code 0x7 (6) x block 1.0 x scale_2 0.5 = 3; one fresh row with the
    // same score: the output is the mean of 3 and the fresh value
    const int hd = 16;
    Cache k(ARVC_KV_NVFP4, 1, hd, 1), v(ARVC_KV_NVFP4, 1, hd, 1);
    for (int b = 0; b < hd / 2; ++b) {
        k.data[b] = 0x22;  // codes 2, 2: 1.0
        v.data[b] = 0x77;
    }
    k.block_scale[0] = v.block_scale[0] = 0x38;
    v.scale[0] = 0.5f;
    const uint8_t valid[1] = {1};
    std::vector<float> q(hd, 0.1f), k_new(hd, 1.0f), v_new(hd, -1.0f), out;
    expect(attend(q, 1, k, v, valid, &k_new, &v_new, 1, out) == ARVC_OK, "fresh rows: status");
    for (int d = 0; d < hd; ++d) expect(close(out[d], 1.0f), "fresh rows: mean of cached 3 and fresh -1");
    // with no valid cached key the fresh row alone answers
    const uint8_t none[1] = {0};
    expect(attend(q, 1, k, v, none, &k_new, &v_new, 1, out) == ARVC_OK, "fresh only: status");
    for (int d = 0; d < hd; ++d) expect(out[d] == -1.0f, "fresh only: the fresh value");
}

void test_rope_rotates_cached_keys_only() {
    // one head, head_dim 2: cached key (1, 0) rotated by 90 degrees is (0, 1); with q = (0, 8) it scores
    // 8 against the fresh key (0, 0)'s 0, so the cached value dominates (weights e^8 : 1). Unrotated it
    // would score 0 and the two values would average: the rotation is observable in the output.
    Cache k(ARVC_KV_FP16, 1, 2, 1), v(ARVC_KV_FP16, 1, 2, 1);
    k.set_fp16(0, 0, 1.0f);
    v.set_fp16(0, 0, 1.0f);
    v.set_fp16(0, 1, 1.0f);
    const uint8_t valid[1] = {1};
    const float cos_t[1] = {0.0f}, sin_t[1] = {1.0f};
    std::vector<float> q = {0.0f, 8.0f}, k_new = {0.0f, 0.0f}, v_new = {0.0f, 0.0f}, out(2);
    expect(arvc_attention_qcache_cpu(q.data(), ARVC_F32, 2, 1, &k.c, &v.c, valid, cos_t, sin_t, k_new.data(),
                                     v_new.data(), 2, 1, 1.0f, out.data(), 2, 0) == ARVC_OK,
           "rope: status");
    const float w = std::exp(8.0f) / (std::exp(8.0f) + 1.0f);
    expect(close(out[0], w) && close(out[1], w), "rope: the rotated cached key wins");
    k_new = {0.0f, 1.0f};  // already rotated by the caller: scores 8 too -> equal weights
    expect(arvc_attention_qcache_cpu(q.data(), ARVC_F32, 2, 1, &k.c, &v.c, valid, cos_t, sin_t, k_new.data(),
                                     v_new.data(), 2, 1, 1.0f, out.data(), 2, 0) == ARVC_OK,
           "rope fresh: status");
    expect(close(out[0], 0.5f) && close(out[1], 0.5f), "rope: fresh rows are used as passed");
}

void test_fp16_io() {
    const int hd = 8;
    Cache k(ARVC_KV_INT8, 1, hd, 1), v(ARVC_KV_INT8, 1, hd, 1);
    for (int d = 0; d < hd; ++d) v.data[d] = static_cast<uint8_t>(int8_t(d));
    v.scale[0] = 0.125f;
    const uint8_t valid[1] = {1};
    std::vector<uint16_t> q(hd, arvc_float_to_f16(1.0f)), out(hd, 0);
    expect(arvc_attention_qcache_cpu(q.data(), ARVC_F16, hd, 1, &k.c, &v.c, valid, nullptr, nullptr, nullptr, nullptr,
                                     0, 0, 1.0f, out.data(), hd, 0) == ARVC_OK,
           "fp16 q: status");
    for (int d = 0; d < hd; ++d) expect(arvc_f16_to_float(out[d]) == 0.125f * d, "fp16 out: the value");
}

void test_errors() {
    const int hd = 16;
    Cache k(ARVC_KV_INT8, 1, hd, 2), v(ARVC_KV_INT8, 1, hd, 2);
    const uint8_t valid[2] = {1, 1}, none[2] = {0, 0};
    std::vector<float> q(hd, 1.0f), out(hd);
    auto call = [&](const arvc_kv_cache *kc, const arvc_kv_cache *vc, const uint8_t *kv_valid, int n_q,
                    int64_t stride, int32_t dtype = ARVC_F32, const float *cos_t = nullptr,
                    const float *sin_t = nullptr, uint32_t flags = 0) {
        return arvc_attention_qcache_cpu(q.data(), dtype, stride, n_q, kc, vc, kv_valid, cos_t, sin_t, nullptr,
                                         nullptr, 0, 0, 1.0f, out.data(), hd, flags);
    };
    const std::vector<float> table(2 * hd / 2, 0.5f);
    expect(call(&k.c, &v.c, valid, 1, hd, ARVC_F32, table.data(), table.data()) == ARVC_OK, "rope tables ok");
    expect(call(&k.c, &v.c, valid, 1, hd, ARVC_F32, table.data(), nullptr) == ARVC_ERR_ARGUMENT, "cos without sin");
    expect(call(&k.c, &v.c, valid, 1, hd, ARVC_F32, nullptr, table.data()) == ARVC_ERR_ARGUMENT, "sin without cos");
    expect(call(&k.c, &v.c, valid, 1, hd, ARVC_F32, nullptr, nullptr, 2u) == ARVC_ERR_ARGUMENT, "unknown flag");
    expect(call(&k.c, &v.c, valid, 1, hd, ARVC_F32, nullptr, nullptr, ARVC_FLAG_NO_HOST_SYNC) == ARVC_OK,
           "no-host-sync accepted");
    expect(call(&k.c, &v.c, none, 1, hd, ARVC_F32, nullptr, nullptr, ARVC_FLAG_NO_HOST_SYNC) == ARVC_ERR_ARGUMENT,
           "the CPU still checks for a key under no-host-sync");
    Cache odd_k(ARVC_KV_INT8, 1, 15, 2), odd_v(ARVC_KV_INT8, 1, 15, 2);
    expect(arvc_attention_qcache_cpu(q.data(), ARVC_F32, 15, 1, &odd_k.c, &odd_v.c, valid, table.data(), table.data(),
                                     nullptr, nullptr, 0, 0, 1.0f, out.data(), 15, 0) == ARVC_ERR_ARGUMENT,
           "rope tables with an odd head_dim");
    expect(call(&k.c, &v.c, valid, 1, hd) == ARVC_OK, "baseline ok");
    expect(call(&k.c, &v.c, none, 1, hd) == ARVC_ERR_ARGUMENT, "no valid key and no fresh rows");
    expect(call(nullptr, &v.c, valid, 1, hd) == ARVC_ERR_ARGUMENT, "null k cache");
    expect(call(&k.c, &v.c, nullptr, 1, hd) == ARVC_ERR_ARGUMENT, "null key_valid");
    expect(call(&k.c, &v.c, valid, 0, hd) == ARVC_ERR_ARGUMENT, "n_q = 0");
    expect(call(&k.c, &v.c, valid, 1, hd - 1) == ARVC_ERR_ARGUMENT, "q row stride below the row width");
    expect(call(&k.c, &v.c, valid, 1, hd, 7) == ARVC_ERR_ARGUMENT, "unknown dtype");
    expect(arvc_attention_qcache_cpu(nullptr, ARVC_F32, hd, 1, &k.c, &v.c, valid, nullptr, nullptr, nullptr, nullptr, 0,
                                     0, 1.0f, out.data(), hd, 0) == ARVC_ERR_ARGUMENT,
           "null q");
    expect(arvc_attention_qcache_cpu(q.data(), ARVC_F32, hd, 1, &k.c, &v.c, valid, nullptr, nullptr, nullptr, nullptr,
                                     hd, 1, 1.0f, out.data(), hd, 0) == ARVC_ERR_ARGUMENT,
           "fresh rows without pointers");
    arvc_kv_cache bad = k.c;
    bad.format = 9;
    expect(call(&bad, &v.c, valid, 1, hd) == ARVC_ERR_FORMAT, "unknown format");
    bad = k.c;
    bad.scale = nullptr;
    expect(call(&bad, &v.c, valid, 1, hd) == ARVC_ERR_ARGUMENT, "int8 without scales");
    bad = k.c;
    bad.heads = 2;
    bad.head_dim = 8;
    expect(call(&bad, &v.c, valid, 1, hd) == ARVC_ERR_ARGUMENT, "k / v head mismatch");
    bad = k.c;
    bad.rows = 1;
    expect(call(&bad, &v.c, valid, 1, hd) == ARVC_ERR_ARGUMENT, "k / v rows mismatch");
    Cache fp4k(ARVC_KV_NVFP4, 2, 8, 2), fp4v(ARVC_KV_NVFP4, 2, 8, 2);
    expect(call(&fp4k.c, &fp4v.c, valid, 1, hd) == ARVC_ERR_FORMAT, "nvfp4 with head_dim 8");
    Cache wide_k(ARVC_KV_INT8, 1, 512, 2), wide_v(ARVC_KV_INT8, 1, 512, 2);
    std::vector<float> q_wide(512), out_wide(512);
    expect(arvc_attention_qcache_cpu(q_wide.data(), ARVC_F32, 512, 1, &wide_k.c, &wide_v.c, valid, nullptr, nullptr,
                                     nullptr, nullptr, 0, 0, 1.0f, out_wide.data(), 512, 0) == ARVC_ERR_UNSUPPORTED,
           "head_dim above the kernel's bound");
}

}  // namespace

int main() {
    test_decode_helpers();
    test_one_valid_key();
    test_equal_keys_average();
    test_invalid_keys_ignored();
    test_nvfp4_and_fresh_rows();
    test_fp16_io();
    test_rope_rotates_cached_keys_only();
    test_errors();
    if (failures) {
        std::fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    std::printf("test_attention_qcache: all passed\n");
    return 0;
}
