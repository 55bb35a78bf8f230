// The CUDA attention kernel's own source (attention_qcache_kernel.cuh), compiled as C++ under a minimal
// emulation of the CUDA built-ins it uses and run on the CPU: a block's THREADS threads are real
// std::threads meeting at a barrier, blocks run one after another, shared memory is one static array.
// It checks the tiling, masking and online-softmax bookkeeping against arvc_attention_qcache_cpu for
// every format with no GPU at hand (the launcher and real device behaviour are
// tests/test_attention_qcache_gpu.py's). Exits nonzero on any failure (ctest).
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "arvc_kernels.h"

// ---- the emulated CUDA built-ins -------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__

struct EmuIndex {
    unsigned x = 0, y = 0, z = 0;
};
thread_local EmuIndex threadIdx, blockIdx;

namespace {

// A reusable barrier that also ORs one int per thread, as __syncthreads_or does.
class OrBarrier {
  public:
    void reset(int n) { count_ = 0, n_ = n, acc_ = 0; }
    int arrive(int v) {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned long gen = generation_;
        acc_ |= v;
        if (++count_ == n_) {  // the last thread releases the others; the result stays put until
            result_ = acc_;    // every thread has left, since no next round can complete before that
            acc_ = count_ = 0;
            ++generation_;
            cv_.notify_all();
            return result_;
        }
        cv_.wait(lock, [&] { return generation_ != gen; });
        return result_;
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    int count_ = 0, n_ = 0, acc_ = 0, result_ = 0;
    unsigned long generation_ = 0;
};

OrBarrier block_barrier;

}  // namespace

int __syncthreads_or(int v) { return block_barrier.arrive(v != 0); }
void __syncthreads() { block_barrier.arrive(0); }

// `extern __shared__ float smem[]` inside the kernel names this array (namespace arvc_attention).
namespace arvc_attention {
float smem[32768];
}

#include "attention_qcache_kernel.cuh"

namespace {

using arvc_attention::AttentionArgs;

void launch(const AttentionArgs &a) {
    const unsigned grid_x = (a.n_q + arvc_attention::QUERY_TILE - 1) / arvc_attention::QUERY_TILE;
    for (unsigned by = 0; by < static_cast<unsigned>(a.k.heads); ++by)
        for (unsigned bx = 0; bx < grid_x; ++bx) {
            block_barrier.reset(arvc_attention::THREADS);
            std::vector<std::thread> threads;
            for (int t = 0; t < arvc_attention::THREADS; ++t)
                threads.emplace_back([&, t] {
                    threadIdx.x = t;
                    blockIdx.x = bx, blockIdx.y = by;
                    arvc_attention::attention_qcache_kernel(a);
                });
            for (auto &th : threads) th.join();
        }
}

int failures = 0;

// Random cache bytes of one format (any codes; scales positive; no E4M3 NaN bytes).
struct Cache {
    std::vector<uint8_t> data, block_scale;
    std::vector<float> scale;
    arvc_kv_cache c{};

    Cache(int32_t format, int heads, int hd, int rows, std::mt19937 &rng) {
        const int dim = heads * hd;
        std::uniform_int_distribution<int> byte(0, 255);
        std::uniform_real_distribution<float> u(0.5f, 1.5f);
        data.resize(static_cast<size_t>(rows) * (format == ARVC_KV_FP16 ? 2 * dim : format == ARVC_KV_NVFP4 ? dim / 2 : dim));
        if (format == ARVC_KV_FP16) {
            for (size_t i = 0; i < data.size() / 2; ++i) {
                const uint16_t h = arvc_float_to_f16(u(rng) - 1.0f);
                std::memcpy(&data[2 * i], &h, 2);
            }
        } else {
            for (auto &b : data) {
                b = static_cast<uint8_t>(byte(rng));
                if (format == ARVC_KV_FP8 && (b & 0x7F) == 0x7F) b = 0x38;
            }
        }
        block_scale.resize(static_cast<size_t>(rows) * (dim / 16 + 1));
        for (auto &b : block_scale) b = static_cast<uint8_t>(0x28 + byte(rng) % 24);  // 0.25 .. ~1.9
        scale.resize(static_cast<size_t>(rows) * heads);
        for (auto &s : scale) s = u(rng) * (format == ARVC_KV_INT8 ? 0.02f : format == ARVC_KV_FP8 ? 0.005f : 0.2f);
        c = {format, heads, hd, rows, data.data(), format == ARVC_KV_NVFP4 ? block_scale.data() : nullptr,
             format == ARVC_KV_FP16 ? nullptr : scale.data()};
    }
};

// One case: emulated kernel vs the CPU reference, fp32 or fp16 q/out; rope: random per-row cos/sin
// tables (window-relative RoPE of the cached keys).
void check_case(int32_t fmt_k, int32_t fmt_v, int heads, int hd, int rows, int n_q, int n_new, int32_t dtype,
                int q_pad, unsigned seed, bool rope = false) {
    std::mt19937 rng(seed);
    Cache k(fmt_k, heads, hd, rows, rng), v(fmt_v, heads, hd, rows, rng);
    std::vector<uint8_t> valid(rows);
    std::bernoulli_distribution coin(0.6);
    for (int j = 0; j < rows; ++j) valid[j] = j < 3 || (j >= 32 && j < 64 ? 0 : coin(rng));  // sink, dead tile
    const int dim = heads * hd, elem = dtype == ARVC_F32 ? 4 : 2;
    std::normal_distribution<float> normal;
    std::vector<uint8_t> q(static_cast<size_t>(n_q) * (dim + q_pad) * elem), kn(static_cast<size_t>(n_new + 1) * dim * elem),
        vn(kn.size()), out_cpu(static_cast<size_t>(n_q) * dim * elem), out_emu(out_cpu.size());
    auto fill = [&](std::vector<uint8_t> &buf) {
        for (size_t e = 0; e < buf.size() / elem; ++e) arvc_store_act(buf.data(), dtype, e, normal(rng));
    };
    fill(q), fill(kn), fill(vn);
    std::vector<float> cos_t(static_cast<size_t>(rows) * hd / 2), sin_t(cos_t.size());
    std::uniform_real_distribution<float> angle(-3.2f, 3.2f);
    for (size_t t = 0; t < cos_t.size(); ++t) {
        const float a = angle(rng);
        cos_t[t] = std::cos(a), sin_t[t] = std::sin(a);
    }
    const float *cp = rope ? cos_t.data() : nullptr, *sp = rope ? sin_t.data() : nullptr;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const arvc_status st = arvc_attention_qcache_cpu(q.data(), dtype, dim + q_pad, n_q, &k.c, &v.c, valid.data(), cp,
                                                     sp, kn.data(), vn.data(), dim, n_new, scale, out_cpu.data(), dim,
                                                     0);
    if (st != ARVC_OK) {
        std::fprintf(stderr, "FAIL: cpu status %d\n", st);
        ++failures;
        return;
    }
    launch(AttentionArgs{q.data(), dtype, dim + q_pad, n_q, k.c, v.c, valid.data(), cp, sp, kn.data(), vn.data(), dim,
                         n_new, scale, out_emu.data(), dim});
    float max_ref = 0.0f, max_err = 0.0f;
    for (int64_t e = 0; e < static_cast<int64_t>(n_q) * dim; ++e) {
        const float a = arvc_load(out_cpu.data(), dtype, e), b = arvc_load(out_emu.data(), dtype, e);
        max_ref = std::fmax(max_ref, std::fabs(a));
        max_err = std::isfinite(b) ? std::fmax(max_err, std::fabs(a - b)) : INFINITY;
    }
    const float tol = dtype == ARVC_F32 ? 1e-5f : 2e-3f;
    if (!(max_err <= tol * max_ref)) {
        std::fprintf(stderr,
                     "FAIL: formats %d/%d heads %d hd %d rows %d n_q %d n_new %d dtype %d rope %d: error %g of %g\n",
                     fmt_k, fmt_v, heads, hd, rows, n_q, n_new, dtype, int(rope), max_err, max_ref);
        ++failures;
    }
}

// ARVC_FLAG_NO_HOST_SYNC's documented outcome of an empty key set (no valid row, no fresh row): the
// kernel itself runs to the end and every output is NaN (0/0), never garbage or a fault.
void check_no_key_is_nan() {
    std::mt19937 rng(60);
    Cache k(ARVC_KV_INT8, 1, 32, 40, rng), v(ARVC_KV_INT8, 1, 32, 40, rng);
    std::vector<uint8_t> valid(40, 0);
    std::vector<float> q(3 * 32, 1.0f), out(3 * 32, 0.0f);
    launch(AttentionArgs{q.data(), ARVC_F32, 32, 3, k.c, v.c, valid.data(), nullptr, nullptr, nullptr, nullptr, 32, 0,
                         1.0f, out.data(), 32});
    for (float o : out)
        if (!std::isnan(o)) {
            std::fprintf(stderr, "FAIL: no key: output %g is not NaN\n", o);
            ++failures;
            return;
        }
}

}  // namespace

int main() {
    for (int32_t fmt = ARVC_KV_FP16; fmt <= ARVC_KV_NVFP4; ++fmt) {
        // 37 queries: three query tiles, the last partial; 100 rows: four key tiles, one dead, one partial
        check_case(fmt, fmt, 2, 32, 100, 37, 7, ARVC_F32, 0, 10 + fmt);
        check_case(fmt, fmt, 1, 128, 70, 5, 0, ARVC_F16, 3, 20 + fmt);
        check_case(fmt, fmt, 2, 32, 100, 19, 5, ARVC_F32, 0, 40 + fmt, true);  // rope tables
    }
    check_case(ARVC_KV_NVFP4, ARVC_KV_FP8, 1, 128, 45, 3, 0, ARVC_F16, 2, 51, true);
    check_case(ARVC_KV_NVFP4, ARVC_KV_INT8, 1, 256, 40, 17, 3, ARVC_F32, 5, 31);  // the widest head_dim
    check_case(ARVC_KV_FP8, ARVC_KV_FP16, 2, 16, 20, 3, 40, ARVC_F32, 0, 32);     // more fresh rows than cached
    check_no_key_is_nan();
    if (failures) {
        std::fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    std::printf("test_attention_qcache_emulated: all passed\n");
    return 0;
}
