"""Write a small randomly initialised Wan2.1-architecture checkpoint set for `make demo`.

Until the trained tiny model ships (models/tiny), this exercises the whole path a real checkpoint
takes: safetensors DiT + Wan VAE + prompt embeddings -> arvc run -> MP4. Random weights make
moving noise, not a picture; the files are real and load through the same validation as Wan's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from arvc.checkpoints.load import save_dit
from arvc.checkpoints.safetensors_io import write_safetensors_atomic
from arvc.model.config import Numerics, WanConfig, WanVAEConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.vae import WanVAEDecoder

DEMO_DIT = WanConfig(dim=128, ffn_dim=384, num_heads=2, num_layers=3, text_dim=64, text_len=16, freq_dim=64)
DEMO_VAE = WanVAEConfig(base_dim=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    dit = init_random_weights_(WanDiT(DEMO_DIT), seed=args.seed)
    save_dit(out / "model.safetensors", dit.state_dict(), DEMO_DIT,
             {"arvc.numerics": json.dumps(Numerics().to_dict()), "arvc.source": "random init (demo)"})
    vae = WanVAEDecoder(DEMO_VAE)
    write_safetensors_atomic(out / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()},
                             {"arvc.format": "wan2.1-vae"})
    g = torch.Generator().manual_seed(args.seed + 1)
    write_safetensors_atomic(out / "prompt.safetensors", {"context": torch.randn(7, DEMO_DIT.text_dim, generator=g)})
    print(f"wrote {out}/model.safetensors, vae.safetensors, prompt.safetensors")


if __name__ == "__main__":
    main()
