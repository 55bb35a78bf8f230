"""The parity gate: a freshly built plan against the PyTorch reference, with the same noise.

Both run the same rollout (enough blocks to roll the window, with a prompt switch half-way), and each
stage is also measured on its own so that a failure names the stage that diverged:

- text:  cross-attention K/V of the plan's text stage vs the reference (PSNR, peak = max |ref|)
- dit:   clean latents x0 of every block over the rollout (max abs error, PSNR)
- vae:   the plan's VAE decoding the *reference* latents vs the reference VAE (PSNR, peak-to-peak 2)
- frames: the plan end to end vs the reference end to end (PSNR) -- what a user sees
"""
from __future__ import annotations

import math

import numpy as np
import torch

from arvc.runtime.causal import CausalGenerator
from arvc.runtime.plan_session import PlanSession

PSNR_CAP = 200.0  # identical outputs; JSON has no infinity


def psnr(ref: np.ndarray, test: np.ndarray, peak: float) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(peak * peak / mse))


def default_blocks(geom) -> int:
    """Blocks that fill the window and then evict from it at least twice (>= 8)."""
    return max(8, math.ceil(geom.capacity_frames / geom.frames_per_block) + 3)


def verification_prompts(session: PlanSession, seed: int = 1234):
    """Two prompt contexts: the model's own words when it has a text encoder, else seeded embeddings."""
    if session.vocab is not None:
        words = list(session.vocab)
        return session.context_for(" ".join(words[:4])), session.context_for(" ".join(words[-4:]))
    g = np.random.default_rng(seed)
    cfg = session.cfg
    n = max(1, cfg.text_len // 2)
    return tuple(session.context_for(g.standard_normal((n, cfg.text_dim)).astype(np.float32)) for _ in range(2))


@torch.no_grad()
def run_parity(session: PlanSession, dit, vae, blocks: int, seed: int = 0, text_encoder=None,
               reference_kv: str = "fp32", reference_kv_sink: str | None = None) -> dict:
    """reference_kv (and reference_kv_sink): the reference's KV-cache storage (fp32 measures quality;
    the plan's own formats measure the lowering alone)."""
    ctx_a, ctx_b = verification_prompts(session)
    ref_a, ref_b = torch.from_numpy(ctx_a), torch.from_numpy(ctx_b)
    stages = {}
    if text_encoder is not None:  # the model's own text encoder: the reference encodes the same words
        words = list(session.vocab)
        ref_a, ref_b = (text_encoder.encode([" ".join(w)]) for w in (words[:4], words[-4:]))
        stages["text_encoder"] = {"psnr_db": round(psnr(ref_a.numpy(), ctx_a, float(ref_a.abs().max())), 3)}
    switch_block = blocks // 2

    # text stage alone
    ref_cross = dit.cross_kv(torch.from_numpy(ctx_a))
    plan_cross = session.backend.cross_kv(ctx_a)
    text_ref = np.concatenate([t.reshape(-1).numpy() for kv in ref_cross for t in kv])
    text_plan = np.concatenate([_host(v).reshape(-1) for _, v in plan_cross])
    text_psnr = psnr(text_ref, text_plan, float(np.abs(text_ref).max()))

    # dit over the rollout, same seed, same switch
    ref_gen = CausalGenerator(dit, session.geometry, session.schedule, session.latent_hw, seed=seed,
                              kv_format=reference_kv, kv_sink_format=reference_kv_sink)
    plan_gen = session.generator(seed)
    ref_gen.set_prompt(ref_a)
    plan_gen.set_prompt(ctx_a)
    ref_lat, plan_lat = [], []
    for b in range(blocks):
        if b == switch_block:
            ref_gen.switch_prompt(ref_b)
            plan_gen.switch_prompt(ctx_b)
        ref_lat.append(ref_gen.next_block().numpy())
        plan_lat.append(plan_gen.next_block().numpy())
    ref_lat_a, plan_lat_a = np.concatenate(ref_lat, axis=2), np.concatenate(plan_lat, axis=2)
    latent_err = float(np.abs(ref_lat_a - plan_lat_a).max())
    latent_psnr = psnr(ref_lat_a, plan_lat_a, float(np.abs(ref_lat_a).max()))

    # vae alone (reference latents through both) and end to end
    ref_frames = decode_reference(vae, ref_lat_a)
    plan_on_ref = decode_plan(session, ref_lat_a)
    plan_frames = decode_plan(session, plan_lat_a)
    vae_psnr = psnr(ref_frames, plan_on_ref, 2.0)
    frame_psnr = psnr(ref_frames, plan_frames, 2.0)
    return {
        "blocks": blocks, "seed": seed, "prompt_switch_at_block": switch_block,
        "latent_frames": int(ref_lat_a.shape[2]), "video_frames": int(ref_frames.shape[1]),
        "max_abs_latent_error": latent_err, "latent_psnr_db": round(latent_psnr, 3),
        "frame_psnr_db": round(frame_psnr, 3),
        "stages": {**stages, "text": {"psnr_db": round(text_psnr, 3)},
                   "dit": {"psnr_db": round(latent_psnr, 3), "max_abs_error": latent_err},
                   "vae": {"psnr_db": round(vae_psnr, 3)}},
    }


def _host(value) -> np.ndarray:
    """A backend's tensor as numpy: an ORT OrtValue, or a torch tensor on any device."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return value.numpy()


def diverged_stage(result: dict, min_psnr: float) -> str | None:
    """The first stage, in pipeline order, below the threshold; None when the plan passes."""
    for stage in ("text_encoder", "text", "dit", "vae"):
        if stage in result["stages"] and result["stages"][stage]["psnr_db"] < min_psnr:
            return stage
    if result["frame_psnr_db"] < min_psnr:
        return "dit+vae (each passes alone; their errors compound)"
    return None


def decode_reference(vae, latents: np.ndarray) -> np.ndarray:
    # latents [1, z, T, h, w] -> [3, frames, H, W]
    state = vae.init_state(1, latents.shape[3], latents.shape[4])
    z = torch.from_numpy(latents).to(vae.conv2.weight.dtype)
    out = [vae.decode_frame(z[:, :, i:i + 1], state) for i in range(z.shape[2])]
    return torch.cat(out, dim=2)[0].float().numpy()


def decode_plan(session: PlanSession, latents: np.ndarray) -> np.ndarray:
    session.backend.reset_vae()
    out = [session.backend.run_vae(latents[:, :, i:i + 1], i == 0)[0].copy() for i in range(latents.shape[2])]
    return np.concatenate(out, axis=1)
