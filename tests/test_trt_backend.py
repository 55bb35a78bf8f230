"""runtime/trt_backend.py without TensorRT: why a machine cannot run a plan, the engine-cache key, the atomic
engine write, and a constructor that refuses with that reason. (Engines, plugins and execution need TensorRT
and a GPU: `arvc selftest --target tensorrt` on such a machine.)"""
import types

import pytest
from manifests import sample_manifest

from arvc.runtime import trt_backend as tb


def _manifest(kv="int8", weights="fp32", activations=None):
    return sample_manifest(name=f"{weights}+kv-{kv}", weights=weights, kv_cache=kv, activations=activations)


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """TensorRT 'importable', a GPU of a chosen capability, a plugin library present."""
    lib = tmp_path / tb.PLUGIN_LIBRARY
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setattr(tb, "_import_tensorrt", lambda: types.SimpleNamespace(__version__="10.99"))
    monkeypatch.setenv("ARVC_TRT_PLUGINS", str(lib))

    def set_device(name="NVIDIA H100", cap=(9, 0)):
        monkeypatch.setattr(tb, "_cuda_device", lambda: (name, cap) if name else None)

    set_device()
    return set_device


def test_without_tensorrt_the_problem_says_so_and_the_backend_refuses(monkeypatch):
    def missing():
        raise ImportError("No module named 'tensorrt'")

    monkeypatch.setattr(tb, "_import_tensorrt", missing)
    problem = tb.tensorrt_problem()
    assert problem.startswith("TensorRT is not importable here") and "tensorrt" in problem
    with pytest.raises(RuntimeError, match="TensorRT is not importable"):
        tb.TensorRTBackend("/nonexistent", _manifest())


def test_problem_on_this_machine_is_a_sentence():
    problem = tb.tensorrt_problem(_manifest())
    assert problem is None or problem.endswith((")", "GPU", "it", "newer"))


def test_problem_reports_device_capability_plan_and_plugins(gpu, monkeypatch):
    assert tb.tensorrt_problem() is None and tb.tensorrt_problem(_manifest("nvfp4")) is not None
    gpu(None)
    assert "no CUDA device" in tb.tensorrt_problem()
    gpu("NVIDIA A100", (8, 0))
    assert "sm_80" in tb.tensorrt_problem() and "sm_89" in tb.tensorrt_problem()
    gpu("NVIDIA L40S", (8, 9))
    assert tb.tensorrt_problem(_manifest("fp8")) is None
    msg = tb.tensorrt_problem(_manifest("nvfp4"))
    assert "NVFP4" in msg and "sm_100" in msg and "L40S" in msg
    assert "NVFP4" in tb.tensorrt_problem(_manifest("int8", weights="nvfp4"))
    gpu("NVIDIA B200", (10, 0))
    assert tb.tensorrt_problem(_manifest("nvfp4", weights="nvfp4", activations="static")) is None
    # a recipe with no TensorRT form: the reason is the plugin graph's
    assert "no TensorRT form" in tb.tensorrt_problem(_manifest("fp32"))
    assert "dynamic" in tb.tensorrt_problem(_manifest("nvfp4", weights="nvfp4", activations="dynamic"))
    monkeypatch.setenv("ARVC_TRT_PLUGINS", "/nonexistent/libarvc_trt_plugins.so")
    msg = tb.tensorrt_problem(_manifest())
    assert "plugin library" in msg and "not built" in msg
    with pytest.raises(RuntimeError, match="plugin library"):
        tb.TensorRTBackend("/nonexistent", _manifest())


def test_engine_cache_key_changes_with_every_component(monkeypatch, tmp_path):
    base = ("a" * 64, "NVIDIA H100 80GB HBM3", (9, 0), "10.13.0", "b" * 64)
    key = tb.engine_cache_key(*base)
    assert key == tb.engine_cache_key(*base) and len(key) == 64
    variants = [("c" * 64,) + base[1:], base[:1] + ("NVIDIA H200",) + base[2:], base[:2] + ((10, 0),) + base[3:],
                base[:3] + ("10.14.0",) + base[4:], base[:4] + ("d" * 64,)]
    keys = {tb.engine_cache_key(*v) for v in variants}
    assert len(keys) == 5 and key not in keys
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tb.engine_cache_dir() == tmp_path / "arvc" / "engines"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tb.engine_cache_dir().parts[-3:] == (".cache", "arvc", "engines")


def test_host_feeds_from_t():
    """dit_trt.onnx has no FP64 (TensorRT has none): the host computes what dit.onnx computes from timestep in f64
    (bit-equality with dit.onnx's ops: tests/test_trt_plugin_graph.py). Hand-checked values here."""
    import numpy as np

    f = tb.dit_host_feeds(500.0, 8, (1000.0, 500.0, 0.0))
    freqs = 10000.0 ** (-np.arange(4) / 4)
    assert f["time_sinusoid"].dtype == np.float32 and f["time_sinusoid"].shape == (1, 8)
    assert np.array_equal(f["time_sinusoid"][0], np.concatenate([np.cos(500 * freqs), np.sin(500 * freqs)]).astype(np.float32))
    assert f["sigma"].dtype == np.float32 and f["sigma"].tolist() == [np.float32(0.5)]
    assert f["act_timestep_index"].dtype == np.int32 and f["act_timestep_index"].shape == () and int(f["act_timestep_index"]) == 1
    assert int(tb.dit_host_feeds(750.0, 8, (1000.0, 500.0, 0.0))["act_timestep_index"]) == 0  # tie: the first
    assert int(tb.dit_host_feeds(1.0, 8, (1000.0, 500.0, 0.0))["act_timestep_index"]) == 2
    assert set(tb.dit_host_feeds(1.0, 8)) == {"time_sinusoid", "sigma"}
    assert tb.dit_host_feeds(0.0, 8)["time_sinusoid"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_run_dit_turns_timestep_into_the_host_feeds(monkeypatch, tmp_path):
    """TensorRTBackend.run_dit takes dit.onnx's feeds (what runtime/plan_session.py passes) and fills the dit_trt
    engine's time_sinusoid / sigma / act_timestep_index buffers from timestep, with the parameters recorded in
    dit_trt.onnx (no TensorRT here: the backend's buffers are CPU tensors and the engine call is recorded)."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["sigma"], ["x0"])], "g",
                              [helper.make_tensor_value_info("sigma", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {tb.HOST_FEEDS_KEY: '{"freq_dim": 8, "act_timesteps": [1000.0, 500.0, 0.0]}'})
    onnx.save(model, str(tmp_path / "dit_trt.onnx"))
    params = tb.dit_host_feed_params(tmp_path / "dit_trt.onnx")
    assert params == {"freq_dim": 8, "act_timesteps": [1000.0, 500.0, 0.0]}
    onnx.save(helper.make_model(graph), str(tmp_path / "old.onnx"))
    assert tb.dit_host_feed_params(tmp_path / "old.onnx") is None

    backend = tb.TensorRTBackend.__new__(tb.TensorRTBackend)  # no TensorRT: only what run_dit touches
    backend.host_feeds, backend.stream, backend._dit_ctx = params, None, "ctx"
    backend._dit_buffers = {"latents": torch.zeros(1, 3), "write_index": torch.zeros(2, 1, dtype=torch.int64),
                            "time_sinusoid": torch.zeros(1, 8), "sigma": torch.zeros(1),
                            "act_timestep_index": torch.full((), -1, dtype=torch.int32)}
    backend._x0 = torch.arange(3.0)
    calls = []
    monkeypatch.setattr(tb, "_run", lambda ctx, stream, what: calls.append((ctx, what)))
    feeds = {"latents": np.ones((1, 3), np.float32), "timestep": np.array([250.3], np.float64),
             "write_index": np.array([[4], [5]], np.int64)}
    x0 = backend.run_dit(feeds)
    assert calls == [("ctx", "dit")] and x0.tolist() == [0.0, 1.0, 2.0] and "timestep" in feeds
    want = tb.dit_host_feeds(250.3, 8, (1000.0, 500.0, 0.0))
    for name, value in want.items():
        got = backend._dit_buffers[name].numpy()
        assert got.dtype == value.dtype and got.shape == value.shape and got.tobytes() == value.tobytes(), name
    assert int(want["act_timestep_index"]) == 1
    assert backend._dit_buffers["latents"].tolist() == [[1.0, 1.0, 1.0]]
    assert backend._dit_buffers["write_index"].flatten().tolist() == [4, 5]
