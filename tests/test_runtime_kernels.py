"""arvc.runtime.kernels on the CPU: the torch-tensor binding of the cache-op kernels.

write + attention through Kernels('cpu') must equal the reference path (quant/kv.py's round trip, then
RoPE from arvc.model.rope, then torch SDPA in float64) for every format; tolerance 1e-5 of the largest
output (fp32 accumulation against float64). The library is built once per session into a temporary
XDG_CACHE_HOME that tests/native.py's ctypes tests share.
"""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from arvc.model.rope import RotaryTable, rope_angles
from arvc.quant.kv import kv_round_trip, kv_row_bytes
from arvc.runtime import kernels
from arvc.runtime.kernels import CacheTensors, KernelBuildError, KernelError, Kernels
from tests import native

FORMATS = ("fp16", "int8", "fp8", "nvfp4")
HEADS, HEAD_DIM, ROWS = 2, 32, 40
DIM = HEADS * HEAD_DIM


@pytest.fixture(scope="module")
def xdg():
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(native.session_xdg_cache()))
    mp.delenv("ARVC_KERNELS_DIR", raising=False)
    yield native.session_xdg_cache()
    mp.undo()


@pytest.fixture(scope="module")
def kern(xdg):
    return Kernels("cpu")


def test_library_path_builds_once_into_the_cache(xdg, monkeypatch):
    path = kernels.library_path(False)
    digest = kernels.source_hash()
    assert len(digest) == 16 and path == xdg / "arvc" / "kernels" / digest / "cpu" / "libarvc_kernels.so"
    assert path.is_file()

    def no_build(*a, **k):
        raise AssertionError("built again although the cache holds this source version")

    monkeypatch.setattr(kernels.subprocess, "run", no_build)
    assert kernels.library_path(False) == path


def test_build_is_serialized_and_published_atomically(tmp_path, monkeypatch):
    """Two threads asking at once: one configure + build, both get the published library."""
    calls = []

    def fake_run(cmd, what):
        calls.append(what)
        if what == "building":
            tree = kernels.Path(cmd[cmd.index("--build") + 1])
            tree.mkdir(parents=True)
            (tree / "libarvc_kernels.so").write_bytes(b"fake")

    monkeypatch.setattr(kernels, "_run", fake_run)
    results = []
    threads = [threading.Thread(target=lambda: results.append(kernels.build_dir(False, tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["configuring", "building"] and len(set(results)) == 1
    published = tmp_path / kernels.source_hash() / "cpu"
    assert (published / "libarvc_kernels.so").read_bytes() == b"fake"
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".cpu-")]  # no temp dir left


def test_build_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(KernelBuildError, match="boom"):  # the compiler's stderr tail
        kernels._run(["sh", "-c", "echo boom >&2; exit 1"], "building")
    monkeypatch.setattr(kernels, "_find_nvcc", lambda: None)
    with pytest.raises(KernelBuildError, match="need nvcc.*cache_ops='torch'"):
        kernels.build_dir(True, tmp_path)
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with pytest.raises(KernelBuildError, match="cmake is not installed"):
        kernels.build_dir(False, tmp_path)
    monkeypatch.setenv("ARVC_KERNELS_DIR", str(tmp_path))
    with pytest.raises(KernelBuildError, match="holds no libarvc_kernels.so"):
        kernels.library_path(False)


def test_kernels_dir_env(xdg, monkeypatch):
    tree = native.build()
    monkeypatch.setenv("ARVC_KERNELS_DIR", str(tree))
    assert kernels.library_path(False).is_relative_to(tree)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cache_tensors(fmt):
    c = CacheTensors(fmt, ROWS, HEADS, HEAD_DIM)
    assert c.nbytes == ROWS * kv_row_bytes(fmt, DIM, HEADS)
    assert (c.block_scale is not None) == (fmt == "nvfp4") and (c.scale is None) == (fmt == "fp16")
    assert c.struct.rows == ROWS and c.struct.data == c.data.data_ptr()
    c.data.fill_(3)
    assert not c.zero_().data.any()


def reference(q, keys, values, valid, k_new, v_new, scale):
    """SDPA in float64 over the valid cached rows then the fresh rows; q [n, dim] -> [n, dim]."""
    k = torch.cat([keys[valid], k_new.reshape(-1, HEADS, HEAD_DIM)]).double().transpose(0, 1)
    v = torch.cat([values[valid], v_new.reshape(-1, HEADS, HEAD_DIM)]).double().transpose(0, 1)
    qh = q.double().reshape(-1, HEADS, HEAD_DIM).transpose(0, 1)
    return F.scaled_dot_product_attention(qh, k, v, scale=scale).transpose(0, 1).reshape(q.shape[0], DIM)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rope", [False, True])
def test_write_then_attention_matches_reference(kern, fmt, rope):
    g = torch.Generator().manual_seed(FORMATS.index(fmt) + 10 * rope)
    # K and V rows as slices of one fused [n, 3 * dim] projection output: strided rows
    qkv = torch.randn(ROWS, 3 * DIM, generator=g) * 2
    x_k, x_v = qkv[:, DIM:2 * DIM], qkv[:, 2 * DIM:]
    rows = torch.randperm(ROWS, generator=g).to(torch.int32)
    k, v = CacheTensors(fmt, ROWS, HEADS, HEAD_DIM), CacheTensors(fmt, ROWS, HEADS, HEAD_DIM)
    kern.kv_cache_write(k, x_k, rows)
    kern.kv_cache_write(v, x_v, rows, no_host_sync=True)  # accepted and ignored on the CPU
    valid = torch.rand(ROWS, generator=g) < 0.7
    valid[:3] = True
    q = torch.randn(7, DIM, generator=g)
    k_new, v_new = torch.randn(2, 4, DIM, generator=g)
    out = torch.full((7, DIM), float("nan"))

    # cache row r holds input row i where rows[i] = r
    order = torch.argsort(rows.long())
    keys = kv_round_trip(x_k.reshape(ROWS, HEADS, HEAD_DIM), fmt)[order]
    values = kv_round_trip(x_v.reshape(ROWS, HEADS, HEAD_DIM), fmt)[order]
    k_rope = None
    if rope:  # slots of 2x2-token frames: sink frames at 0..2, the ring's at shuffled positions
        slots = ROWS // 4
        pos = torch.cat([torch.arange(3), torch.randperm(slots - 3, generator=g) + 3])
        axes = (HEAD_DIM - 4 * (HEAD_DIM // 6), 2 * (HEAD_DIM // 6), 2 * (HEAD_DIM // 6))
        angles = rope_angles(axes, pos, 2, 2)
        k_rope = (torch.cos(angles).float(), torch.sin(angles).float())
        keys = RotaryTable(angles).rotate(keys[None].double())[0]
    got = kern.attention(q, k, v, valid.to(torch.uint8), out, k_rope=k_rope, k_new=k_new, v_new=v_new)
    assert got is out
    want = reference(q, keys, values, valid, k_new, v_new, HEAD_DIM ** -0.5)
    assert (out.double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_attention_without_fresh_rows_and_half_io(kern):
    k, v = CacheTensors("int8", 8, HEADS, HEAD_DIM), CacheTensors("fp8", 8, HEADS, HEAD_DIM)
    x = torch.randn(8, DIM).half()
    kern.kv_cache_write(k, x, torch.arange(8, dtype=torch.int32))
    kern.kv_cache_write(v, x, torch.arange(8, dtype=torch.int32))
    valid = torch.ones(8, dtype=torch.bool)
    q, out = torch.randn(3, DIM).half(), torch.empty(3, DIM).half()
    kern.attention(q, k, v, valid, out, softmax_scale=0.1)
    want = reference(q, kv_round_trip(x.float().reshape(8, HEADS, HEAD_DIM), "int8"),
                     kv_round_trip(x.float().reshape(8, HEADS, HEAD_DIM), "fp8"), valid, torch.empty(0, DIM),
                     torch.empty(0, DIM), 0.1)
    assert (out.double() - want).abs().max() <= 2e-3 * want.abs().max()


def test_rope3d(kern):
    frames, height, width = 2, 3, 2
    x = torch.randn(frames * height * width, DIM, generator=torch.Generator().manual_seed(1))
    axes = (HEAD_DIM - 4 * (HEAD_DIM // 6), 2 * (HEAD_DIM // 6), 2 * (HEAD_DIM // 6))
    want = RotaryTable(rope_angles(axes, torch.arange(frames) + 5, height, width)).rotate(
        x.reshape(1, -1, HEADS, HEAD_DIM))[0].reshape(-1, DIM)
    got = kern.rope3d(x.clone(), HEADS, HEAD_DIM, frames, height, width, 5)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()


def test_status_errors_raise_kernel_error(kern):
    k, v = CacheTensors("nvfp4", 4, HEADS, HEAD_DIM), CacheTensors("nvfp4", 4, HEADS, HEAD_DIM)
    x = torch.ones(2, DIM)
    with pytest.raises(KernelError, match=r"kv_cache_write\(cache, x, rows\) failed: status 1 \(invalid argument"):
        kern.kv_cache_write(k, x, torch.tensor([0, 4], dtype=torch.int32))
    x[1, 3] = float("nan")
    with pytest.raises(KernelError, match="non-finite") as e:
        kern.kv_cache_write(k, x, torch.tensor([0, 1], dtype=torch.int32))
    assert e.value.status == 3
    q, out = torch.ones(1, DIM), torch.empty(1, DIM)
    with pytest.raises(KernelError, match=r"attention\(q, k, v, key_valid.*invalid argument"):  # no key at all
        kern.attention(q, k, v, torch.zeros(4, dtype=torch.uint8), out)


def test_wrapper_checks(kern):
    k, v = CacheTensors("int8", 4, HEADS, HEAD_DIM), CacheTensors("int8", 4, HEADS, HEAD_DIM)
    rows = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(ValueError, match="x: dtype torch.float64"):
        kern.kv_cache_write(k, torch.ones(1, DIM, dtype=torch.float64), rows)
    with pytest.raises(ValueError, match=r"x: shape \(1, 63\)"):
        kern.kv_cache_write(k, torch.ones(1, DIM - 1), rows)
    with pytest.raises(ValueError, match="rows: dtype"):
        kern.kv_cache_write(k, torch.ones(1, DIM), rows.long())
    with pytest.raises(ValueError, match="last dimension must be contiguous"):
        kern.kv_cache_write(k, torch.ones(1, 2 * DIM)[:, ::2], rows)
    q, valid = torch.ones(1, DIM), torch.ones(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="out: dtype"):
        kern.attention(q, k, v, valid, torch.empty(1, DIM).half())
    with pytest.raises(ValueError, match=r"k_rope cos: shape"):
        kern.attention(q, k, v, valid, torch.empty(1, DIM), k_rope=(torch.ones(4, 8), torch.ones(4, 16)))
    with pytest.raises(ValueError, match="k_new and v_new go together"):
        kern.attention(q, k, v, valid, torch.empty(1, DIM), k_new=torch.ones(1, DIM))
    with pytest.raises(ValueError, match="unknown|no kernel"):
        CacheTensors("fp32", 4, HEADS, HEAD_DIM)


def test_ctypes_struct_mirrors_the_c_layout():
    """arvc_kernels.h asserts sizeof(arvc_kv_cache) == 40 with data at offset 16; the binding must agree."""
    import ctypes

    from arvc.runtime.kernels import KVCacheStruct

    assert ctypes.sizeof(KVCacheStruct) == 40 and KVCacheStruct.data.offset == 16
    assert [f for f, _ in KVCacheStruct._fields_] == ["format", "heads", "head_dim", "rows", "data", "block_scale",
                                                      "scale"]
