"""Choosing a backend for a plan: one interface (runtime/ort_backend.OrtBackend's), several engines.

    ort       ONNX Runtime on the CPU: the embedded default, runs every plan anywhere
    torch     PyTorch on CUDA (or the CPU) with the csrc cache kernels and CUDA graphs
    tensorrt  TensorRT engines from the plan's graphs, cache ops as plugins

Every plan keeps its ONNX graphs and weights, so each backend can run each plan; the compile target only
names the default (manifest ``target.backend``).
"""
from __future__ import annotations

from pathlib import Path

BACKENDS = ("ort", "torch", "tensorrt")


def open_backend(name: str | None, plan_dir: Path, manifest: dict, *, threads: int | None = None,
                 exact_qdq: bool = False, device: str | None = None, dtype: str | None = None,
                 cache_ops: str = "auto", cuda_graph: bool | None = None, fp8_gemm: bool | None = None):
    chosen = name
    name = name or manifest.get("target", {}).get("backend", "ort")
    if name == "ort":
        from .ort_backend import OrtBackend

        return OrtBackend(plan_dir, manifest, threads, exact_qdq=exact_qdq)
    if name == "torch":
        import torch

        from .torch_backend import TorchBackend

        if device is None:
            if not torch.cuda.is_available():
                why = ("the torch backend runs on CUDA by default" if chosen else
                       f"{plan_dir} was compiled with --target {manifest['target']['name']} (the torch backend on CUDA)")
                raise RuntimeError(f"{why}, but PyTorch sees no CUDA device here (torch {torch.__version__}); run "
                                   "the plan with the ort backend (--backend ort) or the torch backend on the CPU "
                                   "(--backend torch --device cpu)")
            device = "cuda"
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        return TorchBackend(plan_dir, manifest, device=device, dtype=dtype, cache_ops=cache_ops, cuda_graph=cuda_graph,
                            fp8_gemm=fp8_gemm)
    if name == "tensorrt":
        from .trt_backend import TensorRTBackend

        return TensorRTBackend(plan_dir, manifest)
    raise ValueError(f"backend {name!r} unknown; choose one of {BACKENDS}")
