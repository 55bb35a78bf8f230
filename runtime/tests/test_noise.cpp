// Self-checks of runtime/include/arvc_noise.h (registered with ctest), and a dump mode for
// tests/test_noise.py, which compares the C++ stream with arvc/model/noise.py bit for bit:
//   test_noise                               run the checks; exit status 0 when all pass
//   test_noise dump SEED BLOCK STEP N        write arvc_noise_fill's N floats (raw little-endian) to stdout
// Compiled with -ffp-contract=off (through the arvc_noise target): see the header.
#include "arvc_noise.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char *what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what);
    ++failures;
  }
}

// Known-answer vectors of Philox4x32-10 (Salmon et al.'s Random123 distribution, kat_vectors).
void test_philox_known_answers() {
  struct Kat { uint32_t ctr[4], key[2], out[4]; };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat &k : kats) {
    uint32_t out[4];
    arvc_philox4x32_10(k.ctr, k.key, out);
    check(std::memcmp(out, k.out, sizeof out) == 0, "philox4x32-10 known-answer vector");
  }
}

void test_uniform() {
  check(arvc_noise_uniform(0) == 0x1p-33, "uniform(0) == 2^-33");
  check(arvc_noise_uniform(0xffffffffu) == 1.0 - 0x1p-33, "uniform(2^32-1) == 1 - 2^-33");
  check(arvc_noise_uniform(0x80000000u) == 0.5 + 0x1p-33, "uniform(2^31) == 0.5 + 2^-33");
}

// ln and sincos against libm: ~1e-16 relative by construction; 1e-14 is the contract.
void test_elementary_functions() {
  double worst_ln = 0, worst_sc = 0;
  for (uint64_t i = 0; i < 200000; ++i) {
    uint32_t x = (uint32_t)(arvc_noise_splitmix64(i) >> 32);
    if (i < 64) x = (uint32_t)i;                              // the smallest uniforms ...
    if (i >= 64 && i < 128) x = 0xffffffffu - (uint32_t)(i - 64);  // ... and those next to 1
    double u = arvc_noise_uniform(x), l = arvc_noise_ln(u), ref = std::log(u);
    worst_ln = std::fmax(worst_ln, std::fabs(l - ref) / std::fabs(ref));
    double s, c;
    arvc_noise_sincos2pi(u, &s, &c);
    const double two_pi = 6.283185307179586476925286766559;
    worst_sc = std::fmax(worst_sc, std::fmax(std::fabs(s - std::sin(two_pi * u)), std::fabs(c - std::cos(two_pi * u))));
  }
  std::printf("ln max relative error %.3g, sincos max abs error %.3g\n", worst_ln, worst_sc);
  check(worst_ln < 1e-14, "ln relative error < 1e-14");
  check(worst_sc < 1e-14, "sincos abs error < 1e-14");
}

// Golden bits (from arvc/model/noise.py): a build that contracts into FMA, or any drift, fails here.
void test_golden() {
  const uint32_t g123[8] = {0x400fc5c2u, 0x3e932e62u, 0xbe91e066u, 0xbfa06239u,
                            0x40091963u, 0xbfc1b698u, 0x3dfcd06fu, 0xbfe14455u};
  const uint32_t g000[8] = {0x3e4138beu, 0xbda3dfa6u, 0x3e0e9cd4u, 0xbec0f934u,
                            0x3f07dec0u, 0x3fb33e3eu, 0x3f2bf40cu, 0x3fb81604u};
  float out[8];
  arvc_noise_fill(1, 2, 3, out, 8);
  check(std::memcmp(out, g123, sizeof out) == 0, "golden noise (seed 1, block 2, step 3)");
  arvc_noise_fill(0, 0, 0, out, 8);
  check(std::memcmp(out, g000, sizeof out) == 0, "golden noise (seed 0, block 0, step 0)");
}

void test_prefix_and_stats() {
  const size_t n = 1 << 20;
  std::vector<float> a(n), b(n);
  arvc_noise_fill(7, 3, 1, a.data(), n);
  arvc_noise_fill(7, 3, 1, b.data(), 1001);  // a prefix: the same first values (odd n included)
  check(std::memcmp(a.data(), b.data(), 1001 * sizeof(float)) == 0, "a shorter fill is a prefix");
  arvc_noise_fill(7, 3, 2, b.data(), n);
  check(std::memcmp(a.data(), b.data(), n * sizeof(float)) != 0, "another step gives other noise");
  double m1 = 0, m2 = 0;
  for (float v : a) {
    check(std::isfinite(v), "finite");
    m1 += v;
    m2 += (double)v * v;
  }
  m1 /= n;
  m2 = m2 / n - m1 * m1;
  check(std::fabs(m1) < 5e-3 && std::fabs(m2 - 1.0) < 1e-2, "mean ~0, variance ~1");
}

int dump(int argc, char **argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s dump SEED BLOCK STEP N\n", argv[0]);
    return 2;
  }
  uint64_t seed = std::strtoull(argv[2], nullptr, 0), block = std::strtoull(argv[3], nullptr, 0),
           step = std::strtoull(argv[4], nullptr, 0);
  size_t n = (size_t)std::strtoull(argv[5], nullptr, 0);
  std::vector<float> out(n);
  arvc_noise_fill(seed, block, step, out.data(), n);
  return std::fwrite(out.data(), sizeof(float), n, stdout) == n ? 0 : 1;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc > 1 && std::strcmp(argv[1], "dump") == 0) return dump(argc, argv);
  test_philox_known_answers();
  test_uniform();
  test_elementary_functions();
  test_golden();
  test_prefix_and_stats();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_noise: all checks passed\n");
  return 0;
}
