// arvc_rope3d_cpu on hand-computed cases and its argument errors. Exit status: nonzero on failure.
#include <cmath>
#include <cstdio>
#include <vector>

#include "arvc_kernels.h"
#include "expect.h"

namespace {

// The rotated pair (1, 0) by angle a, as rope.py would compute it, cast to fp32.
bool rotated_by(const float *pair, double a) {
    return pair[0] == static_cast<float>(std::cos(a)) && pair[1] == static_cast<float>(std::sin(a));
}

void positions_and_axes() {
    // head_dim 12: axis dims 12 - 4*2 = 4, 4, 4 -> 2 pairs each. Every pair starts as (1, 0), so it ends
    // as (cos a, sin a) with a = pos * 10000^(-2i/4), i = 0, 1.
    const int head_dim = 12, frames = 2, height = 2, width = 3, offset = 5;
    const int n = frames * height * width;
    std::vector<float> x(size_t(n * head_dim));
    for (int i = 0; i < n * head_dim; ++i) x[size_t(i)] = (i % 2) ? 0.0f : 1.0f;
    EXPECT(arvc_rope3d_cpu(x.data(), ARVC_F32, head_dim, 1, head_dim, frames, height, width, offset) == ARVC_OK);
    const double inv[2] = {1.0, std::pow(10000.0, -0.5)};
    for (int f = 0; f < frames; ++f)
        for (int r = 0; r < height; ++r)
            for (int c = 0; c < width; ++c) {
                const float *t = &x[size_t(((f * height + r) * width + c) * head_dim)];
                for (int i = 0; i < 2; ++i) {
                    EXPECT(rotated_by(t + 2 * i, (f + offset) * inv[i]));  // time pairs 0, 1
                    EXPECT(rotated_by(t + 4 + 2 * i, r * inv[i]));         // height pairs 2, 3
                    EXPECT(rotated_by(t + 8 + 2 * i, c * inv[i]));         // width pairs 4, 5
                }
            }
    // token (0, 0, 0) at offset 0 is the identity on every pair and head
    std::vector<float> y = {0.25f, -1.5f, 3.0f, 7.0f, 1.0f, 2.0f, -4.0f, 8.0f, 0.5f, 0.75f, 9.0f, -9.0f};
    std::vector<float> y0 = y;
    EXPECT(arvc_rope3d_cpu(y.data(), ARVC_F32, 12, 1, 12, 1, 1, 1, 0) == ARVC_OK);
    EXPECT(y == y0);
}

void fp16_in_place() {
    // (1, 0) at frame position 1, pair 0 (inv freq 1): (cos 1, sin 1) rounded to fp16:
    // cos 1 = 0.5403 -> 0x3853, sin 1 = 0.8415 -> 0x3abb
    std::vector<uint16_t> h(12, 0);
    h[0] = 0x3C00;  // 1.0
    EXPECT(arvc_rope3d_cpu(h.data(), ARVC_F16, 12, 1, 12, 1, 1, 1, 1) == ARVC_OK);
    EXPECT(h[0] == 0x3853 && h[1] == 0x3ABB);
}

void errors() {
    std::vector<float> x(64, 1.0f);
    EXPECT(arvc_rope3d_cpu(nullptr, ARVC_F32, 16, 1, 16, 1, 1, 1, 0) == ARVC_ERR_ARGUMENT);
    EXPECT(arvc_rope3d_cpu(x.data(), ARVC_F32, 15, 1, 16, 1, 1, 1, 0) == ARVC_ERR_ARGUMENT);
    EXPECT(arvc_rope3d_cpu(x.data(), ARVC_F32, 16, 1, 15, 1, 1, 1, 0) == ARVC_ERR_ARGUMENT);
    EXPECT(arvc_rope3d_cpu(x.data(), ARVC_F32, 16, 0, 16, 1, 1, 1, 0) == ARVC_ERR_ARGUMENT);
    EXPECT(arvc_rope3d_cpu(x.data(), ARVC_F32, 16, 1, 16, 1, 0, 1, 0) == ARVC_ERR_ARGUMENT);
    EXPECT(arvc_rope3d_cpu(x.data(), 3, 16, 1, 16, 1, 1, 1, 0) == ARVC_ERR_ARGUMENT);
    for (float v : x) EXPECT(v == 1.0f);
}

}  // namespace

int main() {
    positions_and_axes();
    fp16_in_place();
    errors();
    if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
