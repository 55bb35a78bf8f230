"""The torch backend: a plan run by PyTorch on a CUDA GPU (or the CPU), behind OrtBackend's interface.

- DiT and text stages: runtime/torch_dit.PlanDiT on the plan's stored weights (FP8 GEMMs with
  ``torch._scaled_mm`` where the plan quantizes fp8 inputs and the GPU has them).
- Self-attention cache: runtime/torch_cache (the csrc kernels reading the quantized cache, or torch ops).
- CUDA graphs: the first dit call is captured whole (static shapes, fixed cache and input addresses) and
  every later call is a replay after copying the new inputs into place. A prompt switch copies the new
  cross-attention K/V into the captured buffers, so the graph stays valid for the session's life.
- Streams: the DiT runs on its own CUDA stream and the VAE on another, so the VAE decode of block b
  (PlanSession's caller thread) overlaps the DiT of block b+1 (its worker thread) on the GPU too.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from .manifest import Manifest
from .torch_cache import CacheLayout, make_cache_ops
from .torch_dit import DTYPES, DitInputs, PlanDiT, fp8_gemm_supported


def _vae_module(plan_dir: Path, manifest: Manifest, device, dtype):
    from arvc.checkpoints.safetensors_io import read_safetensors
    from arvc.model.vae import WanVAEDecoder

    vae = WanVAEDecoder(manifest.model.vae)
    tensors, _ = read_safetensors(plan_dir / manifest.stages.vae.weights)
    vae.load_state_dict(tensors)
    return vae.to(device=device, dtype=dtype).eval()


class TorchBackend:
    name = "torch"

    def __init__(self, plan_dir: Path, manifest: Manifest, device: str = "cuda", dtype: str | None = None,
                 cache_ops: str = "auto", cuda_graph: bool | None = None, fp8_gemm: bool | None = None):
        """dtype: GEMM / attention dtype (default bf16 on CUDA, fp32 on CPU, where it matches ORT's plan);
        cuda_graph: capture the dit call (default: on CUDA whenever the cache ops allow it);
        fp8_gemm: fp8 weights x fp8 activations as torch._scaled_mm (default: where the device has it and
        the compute dtype is not fp32; ``True`` forces it, e.g. to test it on the CPU)."""
        from arvc.checkpoints.safetensors_io import read_safetensors

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the torch backend was asked for CUDA, but PyTorch sees no CUDA device "
                               "(torch.cuda.is_available() is False); use device='cpu' or the ort backend")
        dtype = dtype or ("bf16" if self.device.type == "cuda" else "fp32")
        if dtype not in DTYPES:
            raise ValueError(f"compute dtype {dtype!r} unknown; choose one of {tuple(DTYPES)}")
        self.dtype = DTYPES[dtype]
        self.manifest = manifest
        self.cfg = cfg = manifest.model.dit
        self.num_layers, self.dim = cfg.num_layers, cfg.dim
        self.cache_rows = manifest.cache_rows
        self.latent_shape = manifest.latent_frame_shape

        if fp8_gemm is None:
            fp8_gemm = self.dtype != torch.float32 and fp8_gemm_supported(self.device)
        elif fp8_gemm and not fp8_gemm_supported(self.device):
            raise RuntimeError(f"fp8 GEMMs need a CUDA GPU of compute capability 8.9+ (Ada, Hopper, Blackwell); "
                               f"{self._device_name()} has none")
        act_quant, act_timesteps = manifest.recipe.act_quant()
        tensors, _ = read_safetensors(plan_dir / manifest.stages.dit.weights)
        self.dit = PlanDiT(cfg, tensors, manifest.recipe.weight_formats, act_quant, act_timesteps, self.device,
                           self.dtype, fp8_gemm, manifest.numerics.modulation_bf16)
        del tensors
        layout = CacheLayout(self.cache_rows, cfg.dim, cfg.num_heads, manifest.recipe.kv_cache,
                             manifest.recipe.kv_sink, manifest.sink_rows)
        self.cache = make_cache_ops(cache_ops, layout, cfg.num_layers, self.dtype, self.device,
                                    n_q=manifest.tokens_per_block)
        self.cache_ops = self.cache.name
        self.inputs = DitInputs.allocate(cfg, manifest.latent_block_shape, manifest.tokens_per_block, self.cache_rows,
                                         manifest.geometry.rope == "relative", self.device)
        self._cross = [(torch.zeros(cfg.text_len, cfg.dim, dtype=self.dtype, device=self.device),
                        torch.zeros(cfg.text_len, cfg.dim, dtype=self.dtype, device=self.device))
                       for _ in range(cfg.num_layers)]
        on_cuda = self.device.type == "cuda"
        self.cuda_graph = (on_cuda and self.cache.capturable) if cuda_graph is None else cuda_graph
        if self.cuda_graph and not (on_cuda and self.cache.capturable):
            raise ValueError("CUDA graphs need a CUDA device and capturable cache ops; the torch cache ops "
                             "emulate quantized caches with host-side checks: use cache_ops='csrc'")
        self._graph, self._x0 = None, None
        self._dit_stream = torch.cuda.Stream(self.device) if on_cuda else None
        self._vae_stream = torch.cuda.Stream(self.device) if on_cuda else None

        vae_dtype = DTYPES[dtype if on_cuda else "fp32"]  # the baseline decodes in its compute dtype too
        self.vae = _vae_module(plan_dir, manifest, self.device, vae_dtype)
        self.vae_state = self.vae.init_state(1, *manifest.latent_hw)
        te = manifest.stages.text_encoder
        self.text_encoder = None
        if te:
            from arvc.checkpoints.text import load_text_encoder

            self.text_encoder = load_text_encoder(plan_dir / te.weights).to(self.device)
        self._lock = threading.Lock()  # the text stage and the dit call share the cross-attention buffers

    def _device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"device {self.device}"

    def _stream(self, s):
        return torch.cuda.stream(s) if s is not None else _Null()

    def execution(self) -> dict:
        """stage -> how its precisions run here (runtime/execution.py)."""
        from .execution import torch_execution

        dtype = next(name for name, d in DTYPES.items() if d == self.dtype)
        return torch_execution(self.manifest, self.dit, dtype, self._device_name())

    # -- memory --------------------------------------------------------------------------------------
    @property
    def kv_cache_bytes(self) -> int:
        return self.cache.nbytes

    @property
    def vae_state_bytes(self) -> int:
        return self.vae_state.nbytes

    def kv_addresses(self) -> list[int]:
        return self.cache.addresses()

    # -- stages --------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, ids: np.ndarray, length: int) -> np.ndarray:
        if self.text_encoder is None:
            raise ValueError("this plan has no text encoder stage; pass prompt embeddings instead of text")
        ctx = self.text_encoder(torch.from_numpy(ids[None].astype(np.int64)).to(self.device),
                                torch.tensor([length], device=self.device))
        return ctx.float().cpu().numpy()

    def cross_kv(self, context: np.ndarray) -> list:
        """context [1, L, text_dim] -> [(name, tensor)] of every layer's cross K/V, named as the plan's graphs."""
        with self._lock, self._stream(self._dit_stream):
            kv = self.dit.cross_kv(torch.from_numpy(np.ascontiguousarray(context, np.float32)))
            if self._dit_stream is not None:
                self._dit_stream.synchronize()
        return [(f"cross_{kind}_{i}", t) for i, pair in enumerate(kv) for kind, t in zip("kv", pair)]

    def bind_cross(self, values: list) -> None:
        # copied into the buffers the (captured) dit call reads; ordered on the DiT stream
        with self._lock, self._stream(self._dit_stream):
            for name, t in values:
                _, kind, layer = name.split("_")
                self._cross[int(layer)][0 if kind == "k" else 1].copy_(t)

    def _copy_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        inp = self.inputs
        inp.latents.copy_(torch.from_numpy(feeds["latents"]).reshape(inp.latents.shape))
        inp.timestep.copy_(torch.from_numpy(np.asarray(feeds["timestep"], np.float64)).reshape(1))
        inp.write_rows.copy_(torch.from_numpy(feeds["write_index"]).reshape(-1))
        inp.write_rows_i32.copy_(inp.write_rows)
        inp.key_valid.copy_(torch.from_numpy(feeds["key_valid"]))
        inp.q_cos.copy_(torch.from_numpy(feeds["rope_q_cos"]).reshape(inp.q_cos.shape))
        inp.q_sin.copy_(torch.from_numpy(feeds["rope_q_sin"]).reshape(inp.q_sin.shape))
        if inp.k_cos is not None:
            inp.k_cos.copy_(torch.from_numpy(feeds["rope_k_cos"]).reshape(inp.k_cos.shape))
            inp.k_sin.copy_(torch.from_numpy(feeds["rope_k_sin"]).reshape(inp.k_sin.shape))

    def _call(self) -> torch.Tensor:
        return self.dit.forward(self.inputs, self._cross, self.cache)

    def _capture(self) -> None:
        """Warm up (allocator, cuBLAS handles, kernel loading) on the DiT stream, then capture one call.

        Warm-up calls write the block's rows exactly as the call being captured will, and the capture
        itself does not run, so the cache holds what one eager call would have left."""
        self._call()
        torch.cuda.current_stream(self.device).synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the VAE thread may use the GPU while the DiT worker captures
        with torch.cuda.graph(graph, stream=self._dit_stream, capture_error_mode="thread_local"):
            self._x0 = self._call()
        self._graph = graph

    @torch.no_grad()
    def run_dit(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One dit call; the KV cache is updated in place; returns x0 (host memory, safe to hand on)."""
        with self._lock, self._stream(self._dit_stream):
            self._copy_inputs(feeds)
            if not self.cuda_graph:
                x0 = self._call()
            elif self._graph is None:
                self._capture()
                self._graph.replay()
                x0 = self._x0
            else:
                self._graph.replay()
                x0 = self._x0
            out = x0.cpu().numpy()  # synchronizes the DiT stream only
        return out

    def reset_vae(self) -> None:
        with self._stream(self._vae_stream):
            self.vae_state.reset()

    @torch.no_grad()
    def run_vae(self, latent: np.ndarray, first: bool) -> np.ndarray:
        """One latent frame [1, z, 1, h, w] -> pixels [1, 3, 1 or 4, H, W] (host memory)."""
        if first != self.vae_state.first:
            raise RuntimeError("run_vae(first=...) disagrees with the VAE stream state; call reset_vae() "
                               "before a new video")
        with self._stream(self._vae_stream):
            z = torch.from_numpy(np.ascontiguousarray(latent, np.float32)).to(self.device, self.vae.conv2.weight.dtype)
            pixels = self.vae.decode_frame(z, self.vae_state)
            return pixels.float().cpu().numpy()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
