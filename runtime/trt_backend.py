"""TensorRT backend: the plan's ONNX graphs built into strongly typed engines, the KV cache read by arvc's
CUDA kernels through plugins (csrc/trt/), every buffer preallocated on the GPU and bound once.

Same interface and attribute names as runtime/ort_backend.OrtBackend (encode_text, cross_kv, bind_cross,
run_dit, reset_vae, run_vae, kv_cache_bytes, vae_state_bytes, kv_addresses, latent_shape):

- dit and text: TensorRT's form of the plan's dit.onnx and text.onnx, derived from the plan at load and cached
  beside the engines (runtime/trt_graphs.py): the cache ops are the arvc plugins ``KVCacheWrite`` /
  ``AttentionQCache`` (arvc/graphs/lower_plugin.py). Each cache buffer is one torch
  CUDA tensor bound as both the ``k_cache_i`` input and the ``k_cache_out_i`` output: the write plugin
  declares that output aliased to that input (IPluginV3OneBuildV2::getAliasedInput), so the block's rows
  are written in place and the buffers keep their addresses for the backend's life.
- vae_first, vae, text_encoder: the plan's ONNX graphs as they are.
- Engines: built with the STRONGLY_TYPED network flag (the graph's types are the plan's, TensorRT picks no
  precisions of its own), cached under ``${XDG_CACHE_HOME:-~/.cache}/arvc/engines/<key>.engine`` where key =
  sha256 of (the graph's sha256 from the manifest, GPU name, compute capability, TensorRT version, plugin
  library sha256), written atomically (temp file + rename), so a changed plan, GPU, TensorRT or plugin
  build never loads a stale engine. Engines are derived files: deleting the cache only costs a rebuild.
- Execution: ``execute_async_v3`` on one torch CUDA stream; feeds are copied into preallocated device
  buffers; run_dit returns x0 as a host numpy array (a copy). run_dit takes dit.onnx's feeds: dit_trt.onnx has no
  FP64 input, so ``timestep`` becomes ``dit_host_feeds(t)`` (time_sinusoid, sigma, act_timestep_index), computed
  on the host with dit.onnx's f64 arithmetic and the parameters dit_trt.onnx records (``arvc.host_feeds``).

Nothing here imports tensorrt at module import: without it the constructor raises RuntimeError with
``tensorrt_problem()``'s reason, so `arvc selftest --target tensorrt` and the CLI can say why.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from arvc.quant.kv import kv_parts

from arvc import atomic
from .manifest import Manifest
from .trt_graphs import derive_trt_graphs

PLUGIN_LIBRARY = "libarvc_trt_plugins.so"
REPO = Path(__file__).resolve().parents[1]
# the arvc CUDA kernels are built for sm_89/90/100/120 (csrc/CMakeLists.txt); FP8 needs Ada (8.9), NVFP4 Blackwell
MIN_CAPABILITY = (8, 9)
FORMAT_CAPABILITY = {"fp8": ((8, 9), "FP8"), "nvfp4": ((10, 0), "NVFP4")}


# -- what this machine can do (each a function, so tests can replace it) -----------------------------------
def _import_tensorrt():
    import tensorrt

    return tensorrt


def _cuda_device() -> tuple[str, tuple[int, int]] | None:
    """(GPU name, compute capability) of the current CUDA device, or None when PyTorch sees none."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    i = torch.cuda.current_device()
    return torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i))


def plugin_library_path() -> Path | None:
    """The built plugin library: $ARVC_TRT_PLUGINS, else the usual CMake build folders of this checkout."""
    env = os.environ.get("ARVC_TRT_PLUGINS")
    if env:
        return Path(env) if Path(env).is_file() else None
    for candidate in (REPO / "build" / "csrc" / "trt" / PLUGIN_LIBRARY, REPO / "csrc" / "trt" / "build" / PLUGIN_LIBRARY,
                      REPO / "build" / PLUGIN_LIBRARY):
        if candidate.is_file():
            return candidate
    return None


def _recipe_formats(manifest: Manifest) -> set[str]:
    r = manifest.recipe
    formats = {r.kv_cache, r.kv_sink, r.weights, *(fmt for _, fmt in r.layer_formats)}
    if r.activations:  # fp8 and nvfp4 weights quantize their GEMM inputs to fp8
        formats.add("fp8" if r.weights in ("fp8", "nvfp4") else r.weights)
    return {f for f in formats if f}


def tensorrt_problem(manifest: Manifest | None = None) -> str | None:
    """Why this machine cannot run the plan (or, without a manifest, any plan) on TensorRT; None: it can."""
    try:
        _import_tensorrt()
    except Exception as e:  # ImportError, or a broken install raising OSError on its libraries
        return (f"TensorRT is not importable here ({type(e).__name__}: {e}); install the tensorrt Python package "
                "(pip install tensorrt) on a machine with an NVIDIA GPU")
    device = _cuda_device()
    if device is None:
        return "no CUDA device visible to PyTorch (torch.cuda.is_available() is False); TensorRT needs an NVIDIA GPU"
    name, cap = device
    if cap < MIN_CAPABILITY:
        return (f"{name} is sm_{cap[0]}{cap[1]}; the arvc cache kernels are built for sm_89 and newer "
                "(Ada, Hopper, Blackwell)")
    if manifest is not None:
        for fmt in sorted(_recipe_formats(manifest)):
            if fmt in FORMAT_CAPABILITY and cap < FORMAT_CAPABILITY[fmt][0]:
                need, what = FORMAT_CAPABILITY[fmt]
                return (f"this plan uses {what} ({manifest.precision}), which needs sm_{need[0]}{need[1]} "
                        f"or newer; {name} is sm_{cap[0]}{cap[1]}: recompile with a format this GPU has "
                        f"({'int8 or fp8' if fmt == 'nvfp4' else 'int8'})")
        from arvc.graphs.lower_plugin import plugin_problem

        r = manifest.recipe
        problem = plugin_problem(r.kv_cache, r.kv_sink, r.activations, r.act_scales)
        if problem:
            return f"this plan has no TensorRT form: {problem}"
    if plugin_library_path() is None:
        return (f"the arvc TensorRT plugin library ({PLUGIN_LIBRARY}) is not built: configure with TensorRT "
                "found (cmake -B build -DTENSORRT_ROOT=/path/to/TensorRT) and build, or set ARVC_TRT_PLUGINS to it")
    return None


# -- the dit graph's host-computed inputs ---------------------------------------------------------------------
HOST_FEEDS_KEY = "arvc.host_feeds"  # = arvc/graphs/lower_plugin.HOST_FEEDS_KEY (dit_trt.onnx metadata_props)


def dit_host_feeds(t: float, freq_dim: int, act_timesteps=()) -> dict[str, np.ndarray]:
    """What dit_trt.onnx takes instead of ``timestep [1] f64`` (TensorRT has no FP64), computed on the host
    exactly as dit.onnx computes it in its f64 ops (same numpy expressions, same rounding):

    time_sinusoid [1, freq_dim] f32 = Cast(f32)(cos(t * freqs) | sin(t * freqs)) in f64
    sigma [1] f32 = Cast(f32)(t / 1000) in f64
    act_timestep_index [] i32 (only with per-timestep activation scales) = ArgMin |act_timesteps - t|, the
    first on ties"""
    t64 = np.asarray(t, np.float64).reshape(1)
    half = freq_dim // 2
    freqs = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)[None, :]  # = lower_dit.time_frequencies
    arg = t64[:, None] * freqs
    feeds = {"time_sinusoid": np.concatenate([np.cos(arg), np.sin(arg)], axis=1).astype(np.float32),
             "sigma": (t64 / np.float64(1000.0)).astype(np.float32)}
    if len(act_timesteps):
        distance = np.abs(np.asarray(act_timesteps, np.float64) - t64)
        feeds["act_timestep_index"] = np.array(np.argmin(distance), np.int32)  # numpy: the first minimum
    return feeds


def dit_host_feed_params(onnx_path: Path) -> dict:
    """{"freq_dim", "act_timesteps"} recorded in dit_trt.onnx (None when the graph still takes ``timestep``)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props[HOST_FEEDS_KEY]) if HOST_FEEDS_KEY in props else None


# -- engine cache ---------------------------------------------------------------------------------------------
def engine_cache_dir() -> Path:
    from .kernels import user_cache_dir

    return user_cache_dir("engines")


def engine_cache_key(onnx_sha256: str, gpu_name: str, capability: tuple[int, int], trt_version: str,
                     plugin_sha256: str) -> str:
    """sha256 over every input an engine depends on: a change in any of them is a different engine."""
    fields = {"onnx_sha256": onnx_sha256, "gpu": gpu_name, "capability": list(capability),
              "tensorrt": trt_version, "plugins_sha256": plugin_sha256}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    from arvc.runtime.plan import sha256_file

    return sha256_file(path)


# -- TensorRT helpers (tensorrt passed in; imported lazily by the backend) ------------------------------------
def _load_plugins(trt, logger, library: Path):
    """Register the arvc plugin creators with TensorRT's registry (the library exports getCreators)."""
    trt.init_libnvinfer_plugins(logger, "")
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        return registry.load_library(str(library))
    import ctypes  # older bindings: load globally and let the library register its creators itself

    lib = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    if lib.arvc_trt_register_creators() != 0:
        raise RuntimeError(f"{library}: arvc_trt_register_creators failed")
    return lib


def _build_engine(trt, logger, onnx_path: Path, weights_dir: Path | None = None) -> bytes:
    """weights_dir: where the graph's external data lives (default: beside it; a derived graph's is the plan)."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # external weights are read relative to ``path``: the graph's own location, or the plan for a derived graph
    if not parser.parse(onnx_path.read_bytes(), str((weights_dir or onnx_path.parent) / onnx_path.name)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    return bytes(engine)


def _torch_dtype(trt, dtype):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32,
             trt.bool: torch.bool}
    for name, t in (("int64", torch.int64), ("uint8", torch.uint8), ("bfloat16", torch.bfloat16),
                    ("fp8", torch.float8_e4m3fn)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = t
    if dtype not in table:
        raise RuntimeError(f"TensorRT tensor type {dtype} has no torch equivalent in arvc's TensorRT backend")
    return table[dtype]


class _Engine:
    """One deserialized engine: its I/O tensors (name -> shape, torch dtype, is_input) and contexts."""

    def __init__(self, trt, runtime, data: bytes, what: str):
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the {what} engine; delete it from "
                               f"{engine_cache_dir()} to rebuild")
        self.io = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.io[name] = (tuple(self.engine.get_tensor_shape(name)), _torch_dtype(trt, self.engine.get_tensor_dtype(name)),
                             self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)
        self.what = what

    def context(self):
        return self.engine.create_execution_context()

    def empty(self, name: str):
        import torch

        shape, dtype, _ = self.io[name]
        return torch.zeros(shape, dtype=dtype, device="cuda")

    def inputs(self) -> list[str]:
        return [n for n, (_, _, is_in) in self.io.items() if is_in]

    def outputs(self) -> list[str]:
        return [n for n, (_, _, is_in) in self.io.items() if not is_in]


def _run(context, stream, what: str) -> None:
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError(f"TensorRT: executing the {what} engine failed (see its log)")


def _copy_in(buffer, arr) -> None:
    import torch

    buffer.copy_(torch.from_numpy(np.ascontiguousarray(arr)).to(buffer.dtype).reshape(buffer.shape))


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, plan_dir: Path, manifest: Manifest, log=None):
        problem = tensorrt_problem(manifest)
        if problem:
            raise RuntimeError(f"TensorRT backend: {problem}")
        import tensorrt as trt
        import torch

        plan_dir = Path(plan_dir)
        self.trt_version = trt.__version__
        self.manifest = manifest
        stages = manifest.stages
        cfg = manifest.model.dit
        self.num_layers, self.dim = cfg.num_layers, cfg.dim
        self.cache_rows = manifest.cache_rows
        self.log = log or (lambda _m: None)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.plugin_library = plugin_library_path()
        self._plugins = _load_plugins(trt, self._logger, self.plugin_library)
        self._runtime = trt.Runtime(self._logger)
        gpu, cap = _cuda_device()
        plugin_sha = _sha256_file(self.plugin_library)
        self.engine_paths = {}

        def engine(graph: str | Path, what: str, weights_dir: Path | None = None) -> _Engine:
            graph_sha = manifest.files[graph].sha256 if isinstance(graph, str) else _sha256_file(graph)
            key = engine_cache_key(graph_sha, gpu, cap, self.trt_version, plugin_sha)
            path = engine_cache_dir() / f"{key}.engine"
            self.engine_paths[what] = path
            if path.is_file():
                data = path.read_bytes()
            else:
                self.log(f"building the TensorRT {what} engine ({graph}, {gpu}); cached as {path}")
                data = _build_engine(trt, self._logger, plan_dir / graph, weights_dir or plan_dir)
                atomic.write_bytes(path, data)
            return _Engine(trt, self._runtime, data, what)

        self.stream = torch.cuda.Stream()
        derived = derive_trt_graphs(plan_dir, manifest, engine_cache_dir(), self.log)
        self.text = engine(derived.text, "text", derived.weights_dir)
        self.dit = engine(derived.dit, "dit", derived.weights_dir)
        self.host_feeds = dit_host_feed_params(derived.dit)
        self.vae_first = engine(stages.vae.graphs.first, "vae_first")
        self.vae = engine(stages.vae.graphs.steady, "vae")
        te = stages.text_encoder
        self.text_encoder = engine(te.graph, "text_encoder") if te else None

        # dit: every buffer preallocated and bound once; the KV cache as input AND aliased output
        self._dit_ctx = self.dit.context()
        self._dit_buffers = {}
        self.kv_arrays, self.kv_values = [], []
        for i in range(self.num_layers):
            for kind in ("k", "v"):
                for part in kv_parts(manifest.recipe.kv_cache, self.dim, cfg.num_heads):
                    name, out = f"{kind}_{part.name}_{i}", f"{kind}_{part.name}_out_{i}"
                    buf = self.dit.empty(name)
                    self.kv_arrays.append(buf)
                    self._dit_ctx.set_tensor_address(name, buf.data_ptr())
                    self._dit_ctx.set_tensor_address(out, buf.data_ptr())
        for name in self.dit.inputs():
            if not name.startswith(("k_", "v_", "cross_")):  # feeds: latents, time_sinusoid, sigma, write_index, key_valid, rope
                self._dit_buffers[name] = self.dit.empty(name)
                self._dit_ctx.set_tensor_address(name, self._dit_buffers[name].data_ptr())
        self._x0 = self.dit.empty("x0")
        self._dit_ctx.set_tensor_address("x0", self._x0.data_ptr())
        self.kv_values = self.kv_arrays

        # text: a context buffer; outputs are fresh tensors per prompt (the session keeps several prompts)
        self._text_ctx = self.text.context()
        self._context_in = self.text.empty("context")
        self._text_ctx.set_tensor_address("context", self._context_in.data_ptr())
        if self.text_encoder is not None:
            self._te_ctx = self.text_encoder.context()
            self._te_buffers = {n: self.text_encoder.empty(n) for n in self.text_encoder.io}
            for n, b in self._te_buffers.items():
                self._te_ctx.set_tensor_address(n, b.data_ptr())

        # VAE: two state sets used in turn, one execution context per (first, parity), each bound once
        state_names = sorted((n for n in self.vae.inputs() if n.startswith("state_")), key=lambda n: int(n[6:]))
        self._vae_sets = [[self.vae.empty(n) for n in state_names] for _ in range(2)]
        self._vae_parity = 0
        self._latent = {True: self.vae_first.empty("latent"), False: self.vae.empty("latent")}
        self._pixels = {True: self.vae_first.empty("pixels"), False: self.vae.empty("pixels")}
        self._vae_ctx = {}
        for first, eng in ((True, self.vae_first), (False, self.vae)):
            for parity in (0, 1):
                ctx = eng.context()
                src, dst = self._vae_sets[parity], self._vae_sets[1 - parity]
                for j, (s, d) in enumerate(zip(src, dst)):
                    ctx.set_tensor_address(f"state_{j}", s.data_ptr())
                    ctx.set_tensor_address(f"state_out_{j}", d.data_ptr())
                ctx.set_tensor_address("latent", self._latent[first].data_ptr())
                ctx.set_tensor_address("pixels", self._pixels[first].data_ptr())
                self._vae_ctx[(first, parity)] = ctx
        self.latent_shape = list(self.vae.io["latent"][0])
        torch.cuda.synchronize()

    def execution(self) -> dict:
        """stage -> how its precisions run here (runtime/execution.py)."""
        import torch

        from .execution import tensorrt_execution

        return tensorrt_execution(self.manifest, torch.cuda.get_device_capability())

    # -- memory --------------------------------------------------------------------------------------
    @property
    def kv_cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kv_arrays)

    @property
    def vae_state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self._vae_sets for t in s)

    def kv_addresses(self) -> list[int]:
        return [t.data_ptr() for t in self.kv_arrays]

    # -- stages --------------------------------------------------------------------------------------
    def encode_text(self, ids: np.ndarray, length: int) -> np.ndarray:
        import torch

        if self.text_encoder is None:
            raise ValueError("this plan has no text encoder stage; pass prompt embeddings instead of text")
        with torch.cuda.stream(self.stream):
            _copy_in(self._te_buffers["ids"], ids[None].astype(np.int64))
            _copy_in(self._te_buffers["length"], np.array([length], np.int64))
            _run(self._te_ctx, self.stream, "text_encoder")
            out = self._te_buffers["context"].cpu().numpy()
        return out

    def cross_kv(self, context: np.ndarray) -> list:
        """context [1, L, text_dim] -> every layer's cross K/V as new CUDA tensors (bound later with bind_cross)."""
        import torch

        with torch.cuda.stream(self.stream):
            _copy_in(self._context_in, np.asarray(context, np.float32))
            values = [(n, self.text.empty(n)) for n in self.text.outputs()]
            for n, t in values:
                self._text_ctx.set_tensor_address(n, t.data_ptr())
            _run(self._text_ctx, self.stream, "text")
        self.stream.synchronize()
        return values

    def bind_cross(self, values: list) -> None:
        self._cross = values  # keep them alive while bound
        for name, t in values:
            self._dit_ctx.set_tensor_address(name, t.data_ptr())

    def run_dit(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One dit call; the KV cache is updated in place; returns x0 (a host copy). ``timestep`` (as fed to
        dit.onnx) becomes dit_trt.onnx's host-computed inputs (dit_host_feeds)."""
        import torch

        if "timestep" in feeds and "timestep" not in self._dit_buffers and self.host_feeds is not None:
            feeds = dict(feeds)
            t = float(np.asarray(feeds.pop("timestep"), np.float64).reshape(-1)[0])
            feeds.update(dit_host_feeds(t, self.host_feeds["freq_dim"], self.host_feeds["act_timesteps"]))
        with torch.cuda.stream(self.stream):
            for name, arr in feeds.items():
                _copy_in(self._dit_buffers[name], arr)
            _run(self._dit_ctx, self.stream, "dit")
            x0 = self._x0.cpu()
        return x0.numpy()

    def reset_vae(self) -> None:
        for s in self._vae_sets:
            for t in s:
                t.zero_()
        self._vae_parity = 0

    def run_vae(self, latent: np.ndarray, first: bool) -> np.ndarray:
        """One latent frame [1, z, 1, h, w] -> pixels [1, 3, 1 or 4, H, W] (host copy)."""
        import torch

        with torch.cuda.stream(self.stream):
            _copy_in(self._latent[first], np.asarray(latent, np.float32))
            _run(self._vae_ctx[(first, self._vae_parity)], self.stream, "vae_first" if first else "vae")
            pixels = self._pixels[first].cpu()
        self._vae_parity = 1 - self._vae_parity
        return pixels.numpy()
