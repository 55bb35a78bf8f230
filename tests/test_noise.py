"""The seeded noise (arvc/model/noise.py) against its definition and against the C/C++ twin
(runtime/include/arvc_noise.h), bit for bit; plus its statistics, independence and the block_noise API."""
from __future__ import annotations

import math
import shutil
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from arvc.model import noise
from arvc.model.noise import block_noise, gaussian

REPO = Path(__file__).resolve().parents[1]
M32 = 0xFFFFFFFF

# ---- an independent, scalar reference: plain Python ints and floats (each float op rounds once) ----


def philox_ref(ctr, key):
    c = list(ctr)
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c


def ln_ref(x: float) -> float:
    m, e = math.frexp(x)  # x = m 2^e, m in [0.5, 1): exact
    m, e = m * 2.0, e - 1
    if m > float.fromhex("0x1.6a09e667f3bcdp+0"):
        m, e = m * 0.5, e + 1
    f = (m - 1.0) / (m + 1.0)
    s, z = f + f, f * f
    p = 1.0 / 21.0
    for k in range(9, 0, -1):
        p = p * z + 1.0 / (2 * k + 1)
    return e * float.fromhex("0x1.62e42p-1") + (e * float.fromhex("0x1.fdf473de6af28p-22") + (s + s * (z * p)))


def sincos_ref(u: float) -> tuple[float, float]:
    t = 4.0 * u
    q = math.floor(t + 0.5)
    a = (t - q) * float.fromhex("0x1.921fb54442d18p+0")
    z = a * a
    ps = 1.0 / math.factorial(17)
    for k in range(7, 0, -1):
        ps = ps * z + (-1) ** k / math.factorial(2 * k + 1)
    pc = -1.0 / math.factorial(18)
    for k in range(8, 0, -1):
        pc = pc * z + (-1) ** k / math.factorial(2 * k)
    sa, ca = a + a * (z * ps), 1.0 + z * pc
    return [(sa, ca), (ca, -sa), (-sa, -ca), (-ca, sa)][q % 4]


def gaussian_ref(seed: int, block: int, step: int, n: int) -> np.ndarray:
    key = noise.draw_key(seed, block, step)
    out = []
    for j in range((n + 3) // 4):
        x = philox_ref((j & M32, j >> 32, 0, 0), (key & M32, key >> 32))
        for a, b in ((x[0], x[1]), (x[2], x[3])):
            u1, u2 = (a + 0.5) * 2.0 ** -32, (b + 0.5) * 2.0 ** -32
            r = math.sqrt(-2.0 * ln_ref(u1))
            s, c = sincos_ref(u2)
            out += [r * c, r * s]
    return np.array(out[:n], dtype=np.float32)


# ---- (1) hand vectors -----------------------------------------------------------------------------

KATS = [  # Random123's published Philox4x32-10 known-answer vectors: (counter, key, output)
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KATS)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(philox_ref(ctr, key)) == expected
    got = noise.philox4x32_10(np.array([ctr]), key[0] | key[1] << 32)
    assert got.dtype == np.uint32 and tuple(int(v) for v in got[0]) == expected


def test_philox_vectorized_matches_scalar():
    rng = np.random.default_rng(0)
    ctrs = rng.integers(0, 1 << 32, size=(64, 4), dtype=np.uint64)
    for key in (0, 1, 0xDEADBEEFCAFEF00D, (1 << 64) - 1):
        got = noise.philox4x32_10(ctrs, key)
        for c, g in zip(ctrs, got):
            assert [int(v) for v in g] == philox_ref([int(v) for v in c], (key & M32, key >> 32))


def test_uniform_is_open_interval_and_exact():
    u = noise.uniform(np.array([0, 1, 1 << 31, M32], dtype=np.uint32))
    assert u.tolist() == [2.0 ** -33, 3 * 2.0 ** -33, 0.5 + 2.0 ** -33, 1 - 2.0 ** -33]


def test_key_keeps_splitmix_mixing():
    s = noise.splitmix64
    assert noise.draw_key(5, 6, 7) == s(s(s(5) ^ 6) ^ 7)
    assert noise.draw_key(-1, 0, 0) == s(s(s((1 << 64) - 1)))  # arguments are taken mod 2^64, as uint64_t


# ---- ln / sincos: accuracy against libm, and numpy == the scalar definition bit for bit -------------

def _uniforms(n: int) -> np.ndarray:
    x = np.random.default_rng(1).integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    x[:32] = np.arange(32)                  # the smallest uniforms (largest |ln|)
    x[32:64] = M32 - np.arange(32)          # next to 1 (ln ~ -2^-33: relative accuracy matters)
    x[64:72] = [1 << 29, (1 << 29) - 1, 1 << 30, (1 << 30) - 1, 3 << 29, (3 << 29) - 1, 1 << 31, (1 << 31) - 1]
    return noise.uniform(x)


def test_ln_accuracy():
    u = _uniforms(200_000)
    ref = np.log(u)
    assert np.max(np.abs(noise.ln(u) - ref) / np.abs(ref)) < 1e-14
    x = np.array([1.0, 2.0, 0.5, 1e-300, 1e300, math.e])
    assert np.allclose(noise.ln(x), np.log(x), rtol=1e-15, atol=0)
    assert noise.ln(np.array([1.0]))[0] == 0.0


def test_sincos_accuracy():
    u = _uniforms(200_000)
    s, c = noise.sincos2pi(u)
    assert np.max(np.abs(s - np.sin(2 * np.pi * u))) < 1e-14
    assert np.max(np.abs(c - np.cos(2 * np.pi * u))) < 1e-14
    assert np.all(s * s + c * c - 1 < 1e-15)


def test_numpy_matches_scalar_definition_bit_for_bit():
    """numpy evaluates every operation separately (no FMA): the vectorized functions equal the scalar
    Python-float evaluation of the same definition exactly."""
    u = _uniforms(3000)
    assert noise.ln(u).tolist() == [ln_ref(v) for v in u.tolist()]
    s, c = noise.sincos2pi(u)
    ref = [sincos_ref(v) for v in u.tolist()]
    assert s.tolist() == [r[0] for r in ref] and c.tolist() == [r[1] for r in ref]
    for args in ((0, 0, 0, 1001), (123456789, 7, 3, 64), (2 ** 64 - 1, 2 ** 40, 5, 9)):
        assert gaussian(*args).tobytes() == gaussian_ref(*args).tobytes()


# ---- (2) Python == C / C++ bit for bit --------------------------------------------------------------

CASES = [(0, 0, 0, 1), (0, 0, 0, 7), (1, 2, 3, 8), (42, 0, 1, 4097), (123456789, 11, 4, 100_003),
         (2 ** 64 - 1, 2 ** 33 + 5, 2 ** 63, 257), (7, 3, 1, 1_048_576)]


@pytest.fixture(scope="module")
def cxx_test_noise(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("noise_build")
    for cmd in (["cmake", "-S", str(REPO / "runtime"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DARVC_C_RUNTIME=OFF"],
                ["cmake", "--build", str(build), "--target", "test_noise"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    return build


def test_ctest_noise(cxx_test_noise):
    r = subprocess.run(["ctest", "--output-on-failure", "-R", "test_noise"], cwd=cxx_test_noise,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "100% tests passed" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("seed,block,step,n", CASES)
def test_cxx_matches_python_bit_for_bit(cxx_test_noise, seed, block, step, n):
    r = subprocess.run([str(cxx_test_noise / "test_noise"), "dump", str(seed), str(block), str(step), str(n)],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 4 * n
    py = gaussian(seed, block, step, n)
    assert r.stdout == py.astype("<f4").tobytes(), \
        f"{np.count_nonzero(np.frombuffer(r.stdout, '<f4') != py)} of {n} values differ"


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "arvc_noise.h"
int main(int argc, char **argv) {
  if (argc != 5) return 2;
  size_t n = (size_t)strtoull(argv[4], NULL, 0);
  float *out = (float *)malloc(n * sizeof(float) + 1);
  arvc_noise_fill(strtoull(argv[1], NULL, 0), strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0), out, n);
  fwrite(out, sizeof(float), n, stdout);
  free(out);
  return 0;
}
"""


def test_c99_header_matches_python(tmp_path):
    """The header is also C99 (-std=c99 -pedantic, no warnings) and gives the same bits in C."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "dump.c").write_text(C_PROGRAM)
    exe = tmp_path / "dump"
    r = subprocess.run([cc, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2", "-ffp-contract=off",
                        "-I", str(REPO / "runtime" / "include"), str(tmp_path / "dump.c"), "-o", str(exe), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for seed, block, step, n in CASES[:6]:
        out = subprocess.run([str(exe), str(seed), str(block), str(step), str(n)], capture_output=True).stdout
        assert out == gaussian(seed, block, step, n).astype("<f4").tobytes()


# ---- (3) statistics ---------------------------------------------------------------------------------

def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_statistics_of_one_million_samples():
    g = gaussian(2024, 0, 0, 1_000_000).astype(np.float64)
    n = len(g)
    assert np.all(np.isfinite(g))
    mean, std = g.mean(), g.std()
    z = (g - mean) / std
    skew, kurt = np.mean(z ** 3), np.mean(z ** 4)
    assert abs(mean) < 5 / math.sqrt(n)                   # 5 sigma
    assert abs(std - 1) < 5 * math.sqrt(0.5 / n)
    assert abs(skew) < 5 * math.sqrt(6 / n)
    assert abs(kurt - 3) < 5 * math.sqrt(24 / n)
    s = np.sort(g[:200_000])
    cdf = _normal_cdf(s)
    m = len(s)
    ks = max(np.max(np.arange(1, m + 1) / m - cdf), np.max(cdf - np.arange(m) / m))
    assert ks < 1.63 / math.sqrt(m)                       # KS critical value at alpha = 1%
    # The tails exist but are bounded: |g| <= sqrt(-2 ln 2^-33) ~ 6.76.
    assert 6.76 > np.max(np.abs(g)) > 4.5


def test_pairs_are_uncorrelated():
    g = gaussian(5, 1, 1, 1_000_000).astype(np.float64)
    for lag in (1, 2, 3, 4, 8):
        assert abs(np.mean(g[:-lag] * g[lag:])) < 5 / math.sqrt(len(g))


# ---- (4) independence, determinism ------------------------------------------------------------------

def test_determinism_and_prefix():
    a = gaussian(9, 4, 2, 10_001)
    assert a.tobytes() == gaussian(9, 4, 2, 10_001).tobytes()
    assert gaussian(9, 4, 2, 333).tobytes() == a[:333].tobytes()  # any length is a prefix of the stream
    assert gaussian(9, 4, 2, 0).shape == (0,)


def test_independent_across_seed_block_step():
    draws = {(s, b, t): gaussian(s, b, t, 100_000).astype(np.float64)
             for s in (0, 1) for b in (0, 1, 2) for t in (0, 1, 2)}
    keys = list(draws)
    assert len({noise.draw_key(*k) for k in keys}) == len(keys)
    for i, ka in enumerate(keys):
        for kb in keys[i + 1:]:
            corr = np.corrcoef(draws[ka], draws[kb])[0, 1]
            assert abs(corr) < 5 / math.sqrt(100_000), (ka, kb, corr)
            assert np.count_nonzero(draws[ka] == draws[kb]) < 10


# ---- (5) block_noise --------------------------------------------------------------------------------

def test_block_noise_shape_dtype_device_and_order():
    x = block_noise(3, 2, 1, (2, 3, 5, 7))
    assert x.shape == (2, 3, 5, 7) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert x.is_contiguous()
    assert x.numpy().tobytes() == gaussian(3, 2, 1, 2 * 3 * 5 * 7).tobytes()  # C order = stream order
    y = block_noise(3, 2, 1, torch.Size([210]), device=torch.device("cpu"))
    assert torch.equal(x.reshape(-1), y)
    assert block_noise(3, 2, 1, ()).shape == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_block_noise_cuda():
    x = block_noise(3, 2, 1, (4, 16), device="cuda")
    assert x.device.type == "cuda" and torch.equal(x.cpu(), block_noise(3, 2, 1, (4, 16)))


def test_speed_of_a_large_block():
    """A 1.2M-value block (the latent of a few frames) in well under 100 ms: vectorized, no per-element
    Python. Best of 3, with a generous bound for a loaded CI machine."""
    gaussian(0, 0, 0, 1000)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        gaussian(1, 2, 3, 1_200_000)
        best = min(best, time.perf_counter() - t)
    assert best < 0.1, f"{best * 1e3:.1f} ms"
