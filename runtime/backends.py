"""Choosing a backend for a plan: one interface (runtime/ort_backend.OrtBackend's), several engines.

    ort       ONNX Runtime on the CPU: the embedded default, runs every plan anywhere
    torch     PyTorch on CUDA (or the CPU) with the csrc cache kernels and CUDA graphs
    tensorrt  TensorRT engines from the plan's graphs, cache ops as plugins

Every plan keeps its ONNX graphs and weights, so each backend can run each plan; the compile target only
names the default (manifest ``target.backend``).
"""
from __future__ import annotations

from pathlib import Path

from .manifest import BACKENDS, Manifest


# The options each backend reads, with their defaults; one given to a backend that would ignore it is refused,
# not dropped (``device="cuda"`` on ONNX Runtime, which runs on the CPU, would run something else than asked).
OPTION_DEFAULTS = {"threads": None, "exact_qdq": False, "device": None, "dtype": None, "cache_ops": "auto",
                   "cuda_graph": None, "fp8_gemm": None}
BACKEND_OPTIONS = {
    "ort": ("threads", "exact_qdq"),
    "torch": ("threads", "device", "dtype", "cache_ops", "cuda_graph", "fp8_gemm"),
    "tensorrt": (),
}


def backend_options(name: str, options: dict) -> dict:
    """``options`` completed with the defaults, after refusing unknown ones and ones ``name`` does not read."""
    if name not in BACKEND_OPTIONS:
        raise ValueError(f"backend {name!r} unknown; choose one of {', '.join(BACKENDS)}")
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown backend option(s) {', '.join(unknown)}; the backends take {', '.join(OPTION_DEFAULTS)}")
    ignored = sorted(k for k, v in options.items() if v != OPTION_DEFAULTS[k] and k not in BACKEND_OPTIONS[name])
    if ignored:
        readers = [b for b, opts in BACKEND_OPTIONS.items() if set(ignored) <= set(opts)]
        hint = f"; the {readers[0]} backend does (backend=\"{readers[0]}\")" if readers else ""
        raise ValueError(f"the {name} backend does not use {', '.join(ignored)} (it takes "
                         f"{', '.join(BACKEND_OPTIONS[name]) or 'no options'}){hint}")
    return {**OPTION_DEFAULTS, **options}


def open_backend(name: str | None, plan_dir: Path, manifest: Manifest, **options):
    """options: threads, exact_qdq (ort); threads, device, dtype, cache_ops, cuda_graph, fp8_gemm (torch)."""
    chosen = name
    name = name or manifest.target.backend
    o = backend_options(name, options)
    threads, device = o["threads"], o["device"]
    if name == "ort":
        from .ort_backend import OrtBackend

        return OrtBackend(plan_dir, manifest, threads, exact_qdq=o["exact_qdq"])
    if name == "torch":
        import torch

        from .torch_backend import TorchBackend

        if device is None:
            if not torch.cuda.is_available():
                why = ("the torch backend runs on CUDA by default" if chosen else
                       f"{plan_dir} was compiled with --target {manifest.target.name} (the torch backend on CUDA)")
                raise RuntimeError(f"{why}, but PyTorch sees no CUDA device here (torch {torch.__version__}); run "
                                   "the plan with the ort backend (--backend ort) or the torch backend on the CPU "
                                   "(--backend torch --device cpu)")
            device = "cuda"
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        return TorchBackend(plan_dir, manifest, device=device, dtype=o["dtype"], cache_ops=o["cache_ops"],
                            cuda_graph=o["cuda_graph"], fp8_gemm=o["fp8_gemm"])
    if name == "tensorrt":
        from .trt_backend import TensorRTBackend

        return TensorRTBackend(plan_dir, manifest)
