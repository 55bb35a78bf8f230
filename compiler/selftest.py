"""`arvc selftest --target T`: prove a backend on the machine it runs on.

Builds a small random Wan-architecture checkpoint on the spot (no download, seconds to compile),
compiles it for the target with each requested precision, and checks every stage of the plan against
the PyTorch reference (the compiler's parity gate, stage by stage). On a user's GPU box this is what
shows the GPU backends agree with the reference; here it proves the CPU path end to end.

Targets: `cpu` runs the plans on ONNX Runtime; `cuda` on the torch backend (PyTorch on the GPU, fp32
compute so the threshold is the CPU's, the csrc kernels reading the quantized KV cache, CUDA graphs);
`tensorrt` on TensorRT engines. Each plan quantizes its KV cache like its weights (fp16 weights -> fp16
cache), so the cache kernels are part of what is checked. A target this machine cannot run (no CUDA
device, TensorRT not importable) is reported as a failed row, never skipped silently.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from arvc.quant.format_table import FORMATS, KV_FORMATS, QUANTIZED_FORMATS, WEIGHT_FORMATS

# A small configuration with the real architecture: in/ffn dims multiples of 16 (NVFP4 blocks), head_dim 32.
SMALL_CONFIG = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)
# the KV-cache format each selftest plan uses, by weight precision: its own, else fp16 (bf16 has no KV format)
SELFTEST_KV = {p: p if p in KV_FORMATS else "fp16" for p in WEIGHT_FORMATS}
# by default every weight format with a KV format of its own (a bf16 plan would check fp16's cache again)
SELFTEST_PRECISIONS = tuple(p for p in WEIGHT_FORMATS if p in KV_FORMATS)
# Each plan is compared with a reference holding exactly the weights the plan stores (fp16-rounded,
# or decode(encode(w)) for the quantized formats), so only the backend's own error is measured and
# every precision must match as an fp32 plan does.
MIN_PSNR_DB = 60.0


def write_random_checkpoint(directory: Path, seed: int = 2):
    """A DiT + VAE checkpoint directory with seeded random weights; returns (directory, VAE module)."""
    from arvc.checkpoints.safetensors_io import write_safetensors_atomic
    from arvc.checkpoints.state_dicts import save_dit
    from arvc.model.config import WanConfig, WanVAEConfig
    from arvc.model.dit import WanDiT, init_random_weights_
    from arvc.model.vae import WanVAEDecoder
    from arvc.model.vae import init_random_weights_ as init_vae_

    cfg = WanConfig(**SMALL_CONFIG)
    directory.mkdir(parents=True, exist_ok=True)
    save_dit(directory / "model.safetensors", init_random_weights_(WanDiT(cfg), seed=seed).state_dict(), cfg)
    vae = init_vae_(WanVAEDecoder(WanVAEConfig(base_dim=4)), seed=seed)
    write_safetensors_atomic(directory / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})
    return directory, vae


def target_problem(target: str, device: str | None = None) -> str | None:
    """Why this machine or this build cannot run ``target`` (None: it can)."""
    if target == "cpu":
        return None
    if target == "cuda":
        import torch

        if (device or "cuda").startswith("cuda") and not torch.cuda.is_available():
            return "no CUDA device visible to PyTorch (torch.cuda.is_available() is False)"
        return None
    if target == "tensorrt":
        from arvc.runtime.trt_backend import tensorrt_problem

        return tensorrt_problem()
    return f"unknown target {target!r}; choose cpu, cuda or tensorrt"


def _session(target: str, plan: Path, device: str | None):
    from arvc.runtime.plan_session import PlanSession

    if target == "cuda":  # fp32 compute: the same threshold as the CPU; bf16 speed is bench/gpu_bench.py's
        return PlanSession(plan, backend="torch", device=device or "cuda", dtype="fp32")
    return PlanSession(plan, backend={"cpu": "ort", "tensorrt": "tensorrt"}[target])


def run_selftest(target: str, precisions: tuple[str, ...] = SELFTEST_PRECISIONS,
                 log: Callable[[str], None] = print, device: str | None = None) -> list[dict]:
    """-> one row per (precision, stage): measured PSNR, threshold, passed. Never raises for a failing
    check: a failure is a row (the caller prints the table and sets the exit code). device: the torch
    backend's device for target cuda (tests run that path on the CPU with device="cpu")."""
    from arvc.model.cache_geometry import CacheGeometry
    from arvc.model.schedule import Schedule

    from .compile import CompileError, CompileOptions, compile_plan
    from .verify import run_parity

    problem = target_problem(target, device)
    if problem:
        return [{"precision": "-", "stage": "backend", "psnr_db": None, "min_psnr_db": None, "passed": False,
                 "detail": problem}]
    rows = []
    with tempfile.TemporaryDirectory(prefix="arvc-selftest-") as tmp:
        ckpt, vae = write_random_checkpoint(Path(tmp) / "model")
        vae.eval()
        # window 6 of 3-frame blocks with a 3-frame sink: the rollout evicts and wraps the ring
        geometry, schedule = CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0))
        for precision in precisions:
            kv = SELFTEST_KV[precision]
            opts = CompileOptions(geometry, schedule, 32, 32, precision=precision, kv_cache=kv, target=target,
                                  min_psnr=0.0, verify_blocks=4)
            log(f"selftest: compiling a {precision} plan for {target} and checking it against the reference")
            plan = Path(tmp) / f"{precision}.plan"
            try:
                m = compile_plan(ckpt, plan, opts, log=lambda _m: None)
            except CompileError as e:
                rows.append({"precision": precision, "stage": "compile", "psnr_db": None, "min_psnr_db": MIN_PSNR_DB,
                             "passed": False, "detail": str(e)})
                continue
            reference = _reference_with_stored_weights(ckpt, precision, m.recipe.skip)
            try:
                session = _session(target, plan, device)
            except (RuntimeError, ValueError, OSError) as e:
                rows.append({"precision": precision, "stage": "load", "psnr_db": None, "min_psnr_db": MIN_PSNR_DB,
                             "passed": False, "detail": str(e)})
                continue
            backend = session.backend.name + (f" ({session.backend.cache_ops} cache ops)"
                                              if hasattr(session.backend, "cache_ops") else "")
            v = run_parity(session, reference, vae, blocks=4, reference_kv=kv)
            for stage, r in v["stages"].items():
                rows.append({"precision": precision, "stage": stage, "psnr_db": r["psnr_db"],
                             "min_psnr_db": MIN_PSNR_DB, "passed": r["psnr_db"] >= MIN_PSNR_DB,
                             "detail": f"{backend}, KV cache {kv}" if stage == "dit" else ""})
            rows.append({"precision": precision, "stage": "frames (end to end)", "psnr_db": v["frame_psnr_db"],
                         "min_psnr_db": MIN_PSNR_DB, "passed": v["frame_psnr_db"] >= MIN_PSNR_DB,
                         "detail": f"latent max abs error {v['max_abs_latent_error']:.2e}"})
    return rows


def _reference_with_stored_weights(ckpt: Path, precision: str, skip: tuple[str, ...]):
    """The fp32 reference DiT whose weights are what the plan stores, decoded."""
    from arvc.quant.weights import fake_quantized_state_dict
    from arvc.reference.models import load_dit_module

    dit = load_dit_module(ckpt / "model.safetensors", "fp32")
    sd = dit.state_dict()
    if precision in QUANTIZED_FORMATS:
        dit.load_state_dict(fake_quantized_state_dict(sd, precision, skip))
    elif precision != "fp32":  # 16-bit weights, rounded as the plan stores them
        dtype = FORMATS[precision].torch_dtype
        dit.load_state_dict({k: v.to(dtype).float() for k, v in sd.items()})
    return dit.eval()
