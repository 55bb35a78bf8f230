"""The parity gate: a freshly built plan against the PyTorch reference, with the same noise.

Both run the same rollout (enough blocks to roll the window, with a prompt switch half-way), and each
stage is also measured on its own so that a failure names the stage that diverged:

- text:  cross-attention K/V of the plan's text stage vs the reference (PSNR, peak = max |ref|)
- dit:   clean latents x0 of every block over the rollout (max abs error, PSNR)
- vae:   the plan's VAE decoding the *reference* latents vs the reference VAE (PSNR, peak-to-peak 2)
- frames: the plan end to end vs the reference end to end (PSNR) -- what a user sees

NaN or infinity in any stage's output (the plan's or the reference's) fails that stage outright: NaN compares
false with every threshold, so it is checked for, never left to a comparison. Such a stage's PSNR reads
PSNR_FLOOR (JSON has no NaN) and ``non_finite`` names it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from arvc.reference.causal import CausalGenerator
from arvc.runtime.plan_session import PlanSession
from arvc.runtime.prompts import verification_prompts

PSNR_CAP = 200.0  # identical outputs; JSON has no infinity
PSNR_FLOOR = -PSNR_CAP  # NaN / infinity in either output: below any threshold, and JSON has no NaN either
STAGE_ORDER = ("text_encoder", "text", "dit", "vae", "frames")  # pipeline order: the first failure is named


def is_finite(a) -> bool:
    """Whether an array (numpy or torch) holds no NaN and no infinity."""
    if isinstance(a, torch.Tensor):
        return bool(torch.isfinite(a).all())
    return bool(np.isfinite(np.asarray(a)).all())


def non_finite_side(ref, plan) -> str | None:
    """Whose output holds NaN / infinity: None (both finite), "plan", "reference" or "reference and plan"."""
    bad = [side for side, a in (("reference", ref), ("plan", plan)) if not is_finite(a)]
    return " and ".join(bad) or None


def psnr(ref: np.ndarray, test: np.ndarray, peak: float) -> float:
    """PSNR in dB, within [PSNR_FLOOR, PSNR_CAP]. NaN / infinity in either array (or the peak) is PSNR_FLOOR,
    never a pass: min(PSNR_CAP, nan) would read as a perfect match."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if not (math.isfinite(peak) and is_finite(ref) and is_finite(test)):
        return PSNR_FLOOR
    mse = float(np.mean((ref - test) ** 2))
    if mse == 0:
        return PSNR_CAP
    if not math.isfinite(mse) or peak <= 0:  # an all-zero reference against anything else
        return PSNR_FLOOR
    return max(PSNR_FLOOR, min(PSNR_CAP, 10 * math.log10(peak * peak / mse)))


def default_blocks(geom) -> int:
    """Blocks that fill the window and then evict from it at least twice (>= 8)."""
    return max(8, math.ceil(geom.capacity_frames / geom.frames_per_block) + 3)


@torch.no_grad()
def run_parity(session: PlanSession, dit, vae, blocks: int, seed: int = 0, text_encoder=None,
               reference_kv: str = "fp32", reference_kv_sink: str | None = None) -> dict:
    """reference_kv (and reference_kv_sink): the reference's KV-cache storage (fp32 measures quality;
    the plan's own formats measure the lowering alone)."""
    ctx_a, ctx_b = verification_prompts(session)
    ref_a, ref_b = torch.from_numpy(ctx_a), torch.from_numpy(ctx_b)
    stages, non_finite = {}, {}

    def check(stage: str, ref, plan) -> None:
        side = non_finite_side(ref, plan)
        if side:
            non_finite[stage] = side

    if text_encoder is not None:  # the model's own text encoder: the reference encodes the same words
        words = list(session.vocab)
        ref_a, ref_b = (text_encoder.encode([" ".join(w)]) for w in (words[:4], words[-4:]))
        stages["text_encoder"] = {"psnr_db": round(psnr(ref_a.numpy(), ctx_a, float(ref_a.abs().max())), 3)}
        check("text_encoder", ref_a, ctx_a)
    switch_block = blocks // 2

    # text stage alone
    ref_cross = dit.cross_kv(torch.from_numpy(ctx_a))
    plan_cross = session.backend.cross_kv(ctx_a)
    text_ref = np.concatenate([t.reshape(-1).numpy() for kv in ref_cross for t in kv])
    text_plan = np.concatenate([_host(v).reshape(-1) for _, v in plan_cross])
    text_psnr = psnr(text_ref, text_plan, float(np.abs(text_ref).max()))
    check("text", text_ref, text_plan)

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
    latent_err = float(np.abs(ref_lat_a.astype(np.float64) - plan_lat_a).max())  # float64: no overflow to inf
    latent_err = latent_err if math.isfinite(latent_err) else math.inf  # NaN reads as "no error" to a comparison
    latent_psnr = psnr(ref_lat_a, plan_lat_a, float(np.abs(ref_lat_a).max()))
    check("dit", ref_lat_a, plan_lat_a)

    # vae alone (reference latents through both) and end to end
    ref_frames = decode_reference(vae, ref_lat_a)
    plan_on_ref = decode_plan(session, ref_lat_a)
    plan_frames = decode_plan(session, plan_lat_a)
    vae_psnr = psnr(ref_frames, plan_on_ref, 2.0)
    frame_psnr = psnr(ref_frames, plan_frames, 2.0)
    check("vae", ref_frames, plan_on_ref)
    check("frames", ref_frames, plan_frames)
    result = {
        "blocks": blocks, "seed": seed, "prompt_switch_at_block": switch_block,
        "latent_frames": int(ref_lat_a.shape[2]), "video_frames": int(ref_frames.shape[1]),
        "max_abs_latent_error": latent_err, "latent_psnr_db": round(latent_psnr, 3),
        "frame_psnr_db": round(frame_psnr, 3),
        "stages": {**stages, "text": {"psnr_db": round(text_psnr, 3)},
                   "dit": {"psnr_db": round(latent_psnr, 3), "max_abs_error": latent_err},
                   "vae": {"psnr_db": round(vae_psnr, 3)}},
    }
    if non_finite:  # stage -> whose output holds NaN / infinity; never in a manifest (the gate refuses)
        result["non_finite"] = non_finite
    return result


def _host(value) -> np.ndarray:
    """A backend's tensor as numpy: an ORT OrtValue, or a torch tensor on any device."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return value.numpy()


def diverged_stage(result: dict, min_psnr: float) -> str | None:
    """The first stage, in pipeline order, below the threshold; None when the plan passes. NaN / infinity in
    a stage's output fails it whatever the threshold: "STAGE (NaN or infinity in the plan's output)"."""
    non_finite = result.get("non_finite") or {}
    for stage in STAGE_ORDER:
        if stage in non_finite:
            who = " and ".join(f"the {side}'s" for side in non_finite[stage].split(" and "))
            return f"{stage} (NaN or infinity in {who} output)"
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
