"""ONNX Runtime backend: the plan's stage graphs as sessions, with every large buffer preallocated.

- KV cache: one K and one V buffer per layer, bound with IO binding as both the ``k_cache_i`` input
  and the ``k_cache_out_i`` output of the dit graph. ORT's ScatterND then writes the block's rows in
  place: no copy of the cache per call, and the buffers keep their addresses for the session's life.
- Cross-attention K/V: computed by the text stage once per prompt into buffers bound to the dit graph.
- VAE state: two preallocated sets used in turn (call n reads set n%2 and writes the other), so the
  state never aliases within a call and is never copied.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from arvc.quant.kv import kv_parts

from .manifest import Manifest
from .plan import PlanIntegrityError
from .plan_graphs import GraphMismatch, check_loaded

_REASON_CHARS = 400  # of ORT's message, which can run over many lines and name every node


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # psutil is a dependency; this keeps a bare embed working
        return os.cpu_count() or 1


# ORT graph rewrites that would undo a W8A8 linear's integer GEMM (arvc/graphs/lower_quant.py integer_linear):
# MatMulAddFusion makes its MatMul + Add a Gemm, which ORT's Q/DQ fusion does not match; common subexpression
# elimination merges the equal Q/DQ of q, k and v (one input, one calibrated scale) into one DequantizeLinear
# with three consumers, which it does not fuse either. ';'-separated; runtime/src/ort_stages.cpp sets the same.
ORT_DISABLED_OPTIMIZERS = "MatMulAddFusion;CommonSubexpressionElimination"


def optimized_graph(path: Path, threads: int = 1, exact_qdq: bool = False):
    """The graph at ``path`` as this backend runs it on this CPU: ONNX Runtime's optimized graph (fusions
    applied, each fused node keeping the name of the node it replaced), as an onnx.ModelProto without weights."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="arvc-optimized-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        _session(path, threads, ["CPUExecutionProvider"], exact_qdq, optimized_model_path=out)
        return onnx.load(str(out), load_external_data=False)


def _session(path: Path, threads: int, providers: list[str], exact_qdq: bool = False,
             optimized_model_path: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if optimized_model_path is not None:  # its weights beside it, not inline (a protobuf holds at most 2 GiB)
        so.optimized_model_filepath = str(optimized_model_path)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # DiT and VAE sessions run at the same time; spinning threads would steal each other's cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("optimization.disable_specified_optimizers", ORT_DISABLED_OPTIMIZERS)
    so.log_severity_level = 3
    if exact_qdq:  # ORT otherwise fuses int8 Q/DQ into its integer kernels, whose rounding differs slightly
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    with _ort_failures(path, "cannot load"):
        return ort.InferenceSession(str(path), so, providers=providers)


@contextlib.contextmanager
def _ort_failures(path: Path, what: str):
    """ONNX Runtime failing to load or run a graph of the plan -> PlanIntegrityError (exit 4 in both runtimes,
    runtime/src/stream.cpp): the plan's files passed their checksums and the graph its checks against the
    manifest, so the graph itself is not one arvc compile writes (or, at run time, memory ran out)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as errors

    try:
        yield
    # ORT's own classes at load; RuntimeError ("Error in execution: ...") from a run; UnicodeDecodeError: the
    # binding's own, when ORT's message quotes the graph's non-UTF-8 bytes. Only ORT runs inside this block.
    except (errors.Fail, errors.InvalidArgument, errors.InvalidGraph, errors.InvalidProtobuf, errors.NoSuchFile,
            errors.NotImplemented, errors.RuntimeException, RuntimeError, UnicodeDecodeError) as e:
        reason = " ".join(str(e).split())
        if len(reason) > _REASON_CHARS:
            reason = reason[:_REASON_CHARS] + "..."
        memory = "; or this machine ran out of memory" if "allocate" in reason.lower() else ""
        raise PlanIntegrityError(f"{path}: integrity check failed: ONNX Runtime {what} this graph of the plan "
                                 f"({type(e).__name__}: {reason}); the plan is damaged, was not written by arvc "
                                 f"compile, or needs a newer ONNX Runtime: recompile it with this arvc{memory}") from None


def _zeros_value(shape, dtype=np.float32):
    import onnxruntime as ort

    arr = np.zeros(shape, dtype)
    return arr, ort.OrtValue.ortvalue_from_numpy(arr)


class OrtBackend:
    name = "ort"

    def __init__(self, plan_dir: Path, manifest: Manifest, threads: int | None = None, exact_qdq: bool = False):
        self.providers = ["CPUExecutionProvider"]
        self.threads = threads or physical_cores()
        self.exact_qdq = exact_qdq
        stages = manifest.stages
        self.manifest = manifest
        cfg = manifest.model.dit
        self.num_layers, self.dim = cfg.num_layers, cfg.dim
        self.cache_rows = manifest.cache_rows
        te = stages.text_encoder
        # stage -> its graph file: opened once, named in run-time refusals
        self.graphs = {"text": plan_dir / stages.text.graph, "dit": plan_dir / stages.dit.graph,
                       "vae_first": plan_dir / stages.vae.graphs.first, "vae": plan_dir / stages.vae.graphs.steady,
                       **({"text_encoder": plan_dir / te.graph} if te else {})}
        opened = {stage: _session(path, self.threads, self.providers, exact_qdq and stage == "dit")
                  for stage, path in self.graphs.items()}
        self.text, self.dit, self.vae_first, self.vae = (opened[k] for k in ("text", "dit", "vae_first", "vae"))
        self.text_encoder = opened.get("text_encoder")
        sessions = {self.graphs[stage].name: session for stage, session in opened.items()}
        try:
            check_loaded(manifest, sessions)
        except GraphMismatch as e:
            raise PlanIntegrityError(f"{plan_dir / e.file}: {e}") from None

        # KV cache, bound in place once
        self.kv_arrays, self.kv_values = [], []
        self._dit_binding = self.dit.io_binding()
        for i in range(self.num_layers):
            for kind in ("k", "v"):
                for region in manifest.kv_regions():
                    for part in kv_parts(region.format, self.dim, cfg.num_heads):
                        arr, val = _zeros_value((region.rows, part.width), part.dtype)
                        self.kv_arrays.append(arr)
                        self.kv_values.append(val)
                        self._dit_binding.bind_ortvalue_input(f"{kind}_{region.prefix}{part.name}_{i}", val)
                        self._dit_binding.bind_ortvalue_output(f"{kind}_{region.prefix}{part.name}_out_{i}", val)
        x_shape = next(o.shape for o in self.dit.get_outputs() if o.name == "x0")
        self._x0_array, self._x0_value = _zeros_value(x_shape)
        self._dit_binding.bind_ortvalue_output("x0", self._x0_value)

        # VAE state: two sets, used in turn
        state_inputs = [i for i in self.vae.get_inputs() if i.name.startswith("state_")]
        self._vae_sets = [[_zeros_value(i.shape) for i in state_inputs] for _ in range(2)]
        self._vae_parity = 0
        self._pixels = {}
        self._vae_bindings = {}
        for first, sess in ((True, self.vae_first), (False, self.vae)):
            out_shape = next(o.shape for o in sess.get_outputs() if o.name == "pixels")
            self._pixels[first] = _zeros_value(out_shape)
            for parity in (0, 1):
                b = sess.io_binding()
                src, dst = self._vae_sets[parity], self._vae_sets[1 - parity]
                for j, ((_, sv), (_, dv)) in enumerate(zip(src, dst)):
                    b.bind_ortvalue_input(f"state_{j}", sv)
                    b.bind_ortvalue_output(f"state_out_{j}", dv)
                b.bind_ortvalue_output("pixels", self._pixels[first][1])
                self._vae_bindings[(first, parity)] = b
        self.latent_shape = next(i.shape for i in self.vae.get_inputs() if i.name == "latent")

    def execution(self) -> dict:
        """stage -> how its precisions run here (runtime/execution.py)."""
        from .execution import ort_cpu_execution

        return ort_cpu_execution(self.manifest, self.exact_qdq)

    # -- memory --------------------------------------------------------------------------------------
    @property
    def kv_cache_bytes(self) -> int:
        return sum(a.nbytes for a in self.kv_arrays)

    @property
    def vae_state_bytes(self) -> int:
        return sum(a.nbytes for s in self._vae_sets for a, _ in s)

    def kv_addresses(self) -> list[int]:
        return [v.data_ptr() for v in self.kv_values]

    # -- stages --------------------------------------------------------------------------------------
    def encode_text(self, ids: np.ndarray, length: int) -> np.ndarray:
        if self.text_encoder is None:
            raise ValueError("this plan has no text encoder stage; pass prompt embeddings instead of text")
        with _ort_failures(self.graphs["text_encoder"], "failed running"):
            return self.text_encoder.run(["context"], {"ids": ids[None].astype(np.int64),
                                                       "length": np.array([length], np.int64)})[0]

    def cross_kv(self, context: np.ndarray) -> list:
        """context [1, L, text_dim] -> OrtValues of every layer's cross K/V (bound later with bind_cross)."""
        import onnxruntime as ort

        with _ort_failures(self.graphs["text"], "failed running"):
            outs = self.text.run(None, {"context": np.ascontiguousarray(context, np.float32)})
        names = [o.name for o in self.text.get_outputs()]
        return [(n, ort.OrtValue.ortvalue_from_numpy(a)) for n, a in zip(names, outs)]

    def bind_cross(self, values: list) -> None:
        for name, val in values:
            self._dit_binding.bind_ortvalue_input(name, val)

    def run_dit(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One dit call; the KV cache is updated in place; returns x0 (a copy, safe to hand to another thread)."""
        b = self._dit_binding
        for name, arr in feeds.items():
            b.bind_cpu_input(name, arr)
        with _ort_failures(self.graphs["dit"], "failed running"):
            self.dit.run_with_iobinding(b)
        return self._x0_array.copy()

    def reset_vae(self) -> None:
        for s in self._vae_sets:
            for arr, _ in s:
                arr.fill(0)
        self._vae_parity = 0

    def run_vae(self, latent: np.ndarray, first: bool) -> np.ndarray:
        """One latent frame [1, z, 1, h, w] -> pixels [1, 3, 1 or 4, H, W] (a view, valid until the next call)."""
        b = self._vae_bindings[(first, self._vae_parity)]
        b.bind_cpu_input("latent", np.ascontiguousarray(latent, np.float32))
        with _ort_failures(self.graphs["vae_first" if first else "vae"], "failed running"):
            (self.vae_first if first else self.vae).run_with_iobinding(b)
        self._vae_parity = 1 - self._vae_parity
        return self._pixels[first][0]
