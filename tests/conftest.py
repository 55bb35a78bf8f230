import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_plan(tmp_path_factory):
    """The shipped tiny model compiled once (fp32, its model.json geometry: window 12, sink 3, relative RoPE)."""
    from arvc.compiler.compile import CompileOptions, compile_plan
    from arvc.runtime.kv_cache import CacheGeometry
    from arvc.runtime.schedule import Schedule

    out = tmp_path_factory.mktemp("plans") / "tiny.plan"
    opts = CompileOptions(CacheGeometry(3, 12, 3, 21, "relative"), Schedule((1000.0, 900.0, 750.0, 500.0)), 128, 128)
    manifest = compile_plan(REPO / "models" / "tiny", out, opts, log=lambda _m: None)
    return out, manifest


# A small random checkpoint for quantization tests: in/ffn dims multiples of 16 (NVFP4 blocks), head_dim 32.
SMALL_CFG_ARGS = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """-> (checkpoint dir, its VAE module); DiT weights from init_random_weights_(seed=2)."""
    from arvc.checkpoints.load import save_dit
    from arvc.checkpoints.safetensors_io import write_safetensors_atomic
    from arvc.model.config import WanConfig, WanVAEConfig
    from arvc.model.dit import WanDiT, init_random_weights_
    from arvc.model.vae import WanVAEDecoder
    from arvc.model.vae import init_random_weights_ as init_vae_

    cfg = WanConfig(**SMALL_CFG_ARGS)
    d = tmp_path_factory.mktemp("small_ckpt")
    save_dit(d / "model.safetensors", init_random_weights_(WanDiT(cfg), seed=2).state_dict(), cfg)
    vae = init_vae_(WanVAEDecoder(WanVAEConfig(base_dim=4)), seed=2)
    write_safetensors_atomic(d / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})
    return d, vae
