"""`arvc eval`: what a plan's precision costs, measured against the full-precision PyTorch reference.

The reference is the checkpoint the plan was compiled from (``source`` in the manifest, SHA-256 checked)
with fp32 weights and an fp32 KV cache. For each of a few prompts, the plan and the reference roll out
the same number of blocks from the same seed, so both see identical noise and any difference is the
plan's doing. Per block (mean over the prompts):

- frame PSNR (dB, peak-to-peak 2 as in the parity gate) and SSIM (scikit-image) of the decoded frames,
- cosine similarity of the clean latents,
- drift: the least-squares slope of frame PSNR over the block index and the first- vs last-quarter
  means; errors that accumulate through the KV cache show up as a falling curve.

NaN or infinity in an output fails every comparison it enters (frame PSNR reads verify.PSNR_FLOOR, SSIM
and cosine -1, the judge scores the prompt a miss) and ``non_finite`` names the stage that first produced
it (text: the prompt context, dit: the clean latents, vae: frames decoded from finite latents) and whose
output it was, so the report holds no NaN (JSON has none) and no NaN reads as a match.

Given a ``judge`` that accepts the plan's vocabulary (the app passes the tiny model's, arvc/tiny/judge.py
TinyJudge), the prompts are the judge's and it scores the plan's and the reference's videos on the same
prompts and seeds; the difference in percentage points is the issue's "within 5 points of fp32". A judge
has ``grammar`` (words for messages), ``accepts(vocab)``, ``prompts(rng, k)``, ``score(uint8 frames [T, 3,
H, W], prompt)`` -> {"prompt", "color", "direction", "found_fraction", "color_match", "direction_match", ...}
and ``summarize(scores)`` -> {"color_accuracy", "direction_accuracy", "mean_found_fraction"}.
One prompt's rollout is held in memory at a time (fine for the tiny and small models this runs on CPU).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from arvc.reference.models import CheckpointFiles, resolve_checkpoint
from arvc.runtime.manifest import Manifest

from .verify import PSNR_FLOOR, decode_plan, decode_reference, is_finite, non_finite_side, psnr

JUDGE_TARGET_POINTS = 5.0  # the target: judge scores within 5 points of the fp32 reference


class EvalError(ValueError):
    """Evaluation cannot run; the message names the problem and the fix."""


def check_plot_path(path: str | os.PathLike) -> Path:
    """Fail before minutes of rollout, not after, when the plot cannot be written."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise EvalError(f"--plot {p}: the drift plot is a PNG; give a file name ending in .png")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise EvalError(f"--plot {p}: {parent} {what}; create the directory or choose another path")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise EvalError(f"--plot {p}: not writable; choose a path in a directory you can write to")
    return p


def reference_files(manifest: Manifest, override: str | os.PathLike | None = None) -> CheckpointFiles:
    """The checkpoint the plan was compiled from (or ``override``), checked against the recorded SHA-256."""
    from arvc.runtime.plan import sha256_file

    src = manifest.source
    path = Path(override or src.checkpoint)
    if not path.exists():
        origin = "given with --reference" if override else "recorded in the plan"
        raise EvalError(f"reference checkpoint {path} ({origin}) does not exist; pass --reference with the "
                        "checkpoint (model directory or DiT file) the plan was compiled from")
    if path.is_dir():
        files = resolve_checkpoint(path)
    else:  # a DiT file: its VAE and text encoder sit beside it, as in a model directory
        near = [path.parent / n for n in ("vae.safetensors", "text_encoder.safetensors")]
        files = CheckpointFiles(path, *(f if f.is_file() else None for f in near))
    digest = sha256_file(files.dit)
    if digest != src.sha256:
        raise EvalError(f"reference checkpoint {files.dit} has SHA-256 {digest[:12]}..., but the plan was compiled "
                        f"from {src.sha256[:12]}... ({src.checkpoint}); pass --reference with that checkpoint, "
                        "or recompile the plan from this one")
    if files.vae is None:
        raise EvalError(f"no vae.safetensors beside the reference checkpoint {files.dit}; put the model's VAE there")
    return files


def eval_prompts(session, k: int, seed: int, judge=None) -> tuple[list, bool]:
    """k prompts and whether the judge can score them (the judge's own, where it accepts the plan's vocabulary)."""
    rng = np.random.default_rng(seed)
    if session.vocab is None:  # no text encoder: seeded embeddings, as the parity gate uses
        n = max(1, session.cfg.text_len // 2)
        return [rng.standard_normal((n, session.cfg.text_dim)).astype(np.float32) for _ in range(k)], False
    if judge is None or not judge.accepts(session.vocab):
        words = list(session.vocab)
        return [" ".join(rng.choice(words, size=min(4, session.text_max_len))) for _ in range(k)], False
    return judge.prompts(rng, k), True


@torch.no_grad()
def _rollout_pair(session, dit, vae, plan_ctx: np.ndarray, ref_ctx: torch.Tensor, blocks: int, seed: int):
    from arvc.reference.causal import CausalGenerator

    ref = CausalGenerator(dit, session.geometry, session.schedule, session.latent_hw, seed=seed, kv_format="fp32")
    plan = session.generator(seed)
    ref.set_prompt(ref_ctx)
    plan.set_prompt(plan_ctx)
    ref_lat = np.concatenate([ref.next_block().numpy() for _ in range(blocks)], axis=2)
    plan_lat = np.concatenate([plan.next_block().numpy() for _ in range(blocks)], axis=2)
    return ref_lat, plan_lat, decode_reference(vae, ref_lat), decode_plan(session, plan_lat)


WORST_SIMILARITY = -1.0  # SSIM and cosine of an output holding NaN / infinity: the worst either can be


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if not (is_finite(a) and is_finite(b)):
        return WORST_SIMILARITY
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0:  # all-zero latents: equal only if both are
        return float(not a.any() and not b.any())
    return float(a @ b / denom)


def _ssim(ref: np.ndarray, test: np.ndarray) -> list[float]:
    """Per-frame SSIM of [3, T, H, W] frames in [-1, 1]; the window shrinks for frames under 7 px."""
    from skimage.metrics import structural_similarity

    side = min(ref.shape[2:])
    win = min(7, side if side % 2 else side - 1)
    return [float(structural_similarity(ref[:, i], test[:, i], data_range=2.0, channel_axis=0, win_size=win))
            if is_finite(ref[:, i]) and is_finite(test[:, i]) else WORST_SIMILARITY for i in range(ref.shape[1])]


def non_finite_stage(ref_ctx, plan_ctx, ref_lat: np.ndarray, plan_lat: np.ndarray, ref_fr: np.ndarray,
                     plan_fr: np.ndarray) -> tuple[str, str] | None:
    """The first stage, in pipeline order, whose output holds NaN / infinity, and whose output it is
    ("plan", "reference" or "reference and plan"): ("text" | "dit" | "vae", side), None when all are finite."""
    for stage, ref, plan in (("text", ref_ctx, plan_ctx), ("dit", ref_lat, plan_lat), ("vae", ref_fr, plan_fr)):
        side = non_finite_side(ref, plan)
        if side:
            return stage, side
    return None


def _failed_judge(score: dict) -> dict:
    """A judge score for frames holding NaN / infinity: a miss, whatever their uint8 rendering happens to show."""
    return {**score, "color_match": False, "direction_match": False, "background_match": False,
            "found_fraction": 0.0, "non_finite": True}


def drift(values: list[float]) -> dict:
    """Least-squares slope per block and first- vs last-quarter means of a per-block curve."""
    y = np.asarray(values, np.float64)
    q = max(1, len(y) // 4)
    slope = float(np.polyfit(np.arange(len(y)), y, 1)[0]) if len(y) > 1 else 0.0
    first, last = float(y[:q].mean()), float(y[-q:].mean())
    return {"slope_per_block": round(slope, 4), "first_quarter_mean": round(first, 3),
            "last_quarter_mean": round(last, 3), "first_minus_last": round(first - last, 3), "quarter_blocks": q}


def _uint8(frames: np.ndarray) -> np.ndarray:
    from arvc.runtime.video import to_uint8_frames

    # [3, T, H, W] -> [T, 3, H, W] first: to_uint8_frames reads a 3-frame [3, 3, H, W] clip as frame-major
    return to_uint8_frames(torch.from_numpy(np.ascontiguousarray(frames.transpose(1, 0, 2, 3))))


def _judge_summary(judge, plan_scores: list[dict], ref_scores: list[dict]) -> dict:
    def pct(scores):
        a = judge.summarize(scores)
        return {"color": round(100 * a["color_accuracy"], 2), "direction": round(100 * a["direction_accuracy"], 2),
                "found": round(100 * a["mean_found_fraction"], 2)}

    plan, ref = pct(plan_scores), pct(ref_scores)
    delta = {k: round(plan[k] - ref[k], 2) for k in plan}
    return {"plan_percent": plan, "reference_percent": ref, "delta_points": delta,
            # colour and direction are per-prompt yes/no: one prompt flipping moves them by this many points
            "target_points": JUDGE_TARGET_POINTS, "points_per_prompt": round(100 / len(plan_scores), 2),
            "within_target": all(abs(v) <= JUDGE_TARGET_POINTS for v in delta.values()),
            "per_prompt": [{"prompt": p["prompt"], "plan": {k: p[k] for k in ("color", "direction", "found_fraction")},
                            "reference": {k: r[k] for k in ("color", "direction", "found_fraction")}}
                           for p, r in zip(plan_scores, ref_scores)]}


def evaluate(plan_dir: str | os.PathLike, blocks: int, prompts: int = 8, seed: int = 0,
             reference: str | os.PathLike | None = None, threads: int | None = None,
             log: Callable[[str], None] = print, backend: str | None = None, judge=None, **backend_options) -> dict:
    """backend (and backend_options, runtime/backends.open_backend's): what runs the plan; default its target.
    judge: scores the videos (see the module docstring); None: no judge scores."""
    from arvc.runtime.plan import is_plan, not_a_plan
    from arvc.runtime.plan_session import PlanSession

    if blocks < 1 or prompts < 1:
        raise EvalError(f"--blocks and --prompts must be >= 1 (got {blocks} and {prompts})")
    if not is_plan(plan_dir):
        raise EvalError(not_a_plan(plan_dir))
    t_start = time.perf_counter()
    try:
        session = PlanSession(plan_dir, threads, backend=backend, **backend_options)
    except (RuntimeError, ValueError) as e:
        raise EvalError(str(e)) from None
    saved_threads = torch.get_num_threads()
    if threads:  # one core budget for both: the plan's ORT sessions and the torch reference take turns
        torch.set_num_threads(threads)
    try:
        return _evaluate(session, blocks, prompts, seed, reference, log, t_start, judge)
    finally:
        torch.set_num_threads(saved_threads)


def _evaluate(session, blocks: int, prompts: int, seed: int, reference, log, t_start: float, judge) -> dict:
    from arvc.checkpoints.text import load_text_encoder
    from arvc.reference.models import load_dit_module, load_vae_module

    m = session.manifest
    files = reference_files(m, reference)
    dit, vae = load_dit_module(files.dit, "fp32"), load_vae_module(files.vae, "fp32")
    texts, judgeable = eval_prompts(session, prompts, seed, judge)
    encoder = None
    if isinstance(texts[0], str):
        if files.text_encoder is None:
            raise EvalError(f"the plan has a text encoder but none sits beside the reference {files.dit}; "
                            "put the model's text_encoder.safetensors there")
        encoder = load_text_encoder(files.text_encoder)

    spans = [(session.frames_before_block(b), session.frames_before_block(b + 1)) for b in range(blocks)]
    psnr_pb, ssim_pb, cos_pb = (np.zeros((prompts, blocks)) for _ in range(3))
    plan_scores, ref_scores, fpb = [], [], session.geometry.frames_per_block
    non_finite = []  # per prompt whose outputs hold NaN / infinity: the first stage and block, and how many
    for i, text in enumerate(texts):
        t0 = time.perf_counter()
        plan_ctx = session.context_for(text)
        ref_ctx = encoder.encode([text]) if encoder is not None else torch.from_numpy(plan_ctx)
        ref_lat, plan_lat, ref_fr, plan_fr = _rollout_pair(session, dit, vae, plan_ctx, ref_ctx, blocks, seed + i)
        bad_blocks = []
        for b, (f0, f1) in enumerate(spans):
            lat = slice(b * fpb, (b + 1) * fpb)
            psnr_pb[i, b] = psnr(ref_fr[:, f0:f1], plan_fr[:, f0:f1], 2.0)
            ssim_pb[i, b] = np.mean(_ssim(ref_fr[:, f0:f1], plan_fr[:, f0:f1]))
            cos_pb[i, b] = _cosine(ref_lat[:, :, lat], plan_lat[:, :, lat])
            bad = non_finite_stage(ref_ctx, plan_ctx, ref_lat[:, :, lat], plan_lat[:, :, lat], ref_fr[:, f0:f1],
                                   plan_fr[:, f0:f1])
            if bad:
                bad_blocks.append((b, *bad))
        if bad_blocks:
            b, stage, side = bad_blocks[0]
            non_finite.append({"prompt": i, "seed": seed + i, "stage": stage, "output": side, "first_block": b,
                               "blocks": len(bad_blocks)})
            log(f"  prompt {i + 1}/{prompts}: NaN or infinity in the {side} output of stage '{stage}' from block {b} "
                f"({len(bad_blocks)} of {blocks} blocks); those blocks fail every comparison (frame PSNR "
                f"{PSNR_FLOOR:.0f} dB, SSIM and cosine {WORST_SIMILARITY:.0f})")
        if judgeable:
            plan_score, ref_score = judge.score(_uint8(plan_fr), text), judge.score(_uint8(ref_fr), text)
            plan_scores.append(plan_score if is_finite(plan_fr) else _failed_judge(plan_score))
            ref_scores.append(ref_score if is_finite(ref_fr) else _failed_judge(ref_score))
        log(f"  prompt {i + 1}/{prompts}: {blocks} blocks, frame PSNR {psnr_pb[i].mean():.2f} dB, "
            f"SSIM {ssim_pb[i].mean():.4f} ({time.perf_counter() - t0:.1f} s)")

    # per block: mean over prompts (PSNR in dB, so an identical block's 200 dB cap stays visible)
    per_block = {"frame_psnr_db": psnr_pb.mean(0).round(3).tolist(), "ssim": ssim_pb.mean(0).round(5).tolist(),
                 "latent_cosine": cos_pb.mean(0).round(6).tolist()}
    return {
        "plan": str(session.plan_dir), "precision": m.precision, "kv_cache": m.recipe.kv_cache,
        "kv_sink": m.recipe.kv_sink, "blocks": blocks, "prompts": prompts, "seeds": [seed + i for i in range(prompts)],
        "video_frames_per_prompt": spans[-1][1],
        "reference": {"checkpoint": str(files.dit), "sha256": m.source.sha256,
                      "weights": "fp32", "kv_cache": "fp32", "backend": "arvc PyTorch reference, same seeds and noise"},
        "per_block": per_block,
        "summary": {"frame_psnr_db_mean": round(float(psnr_pb.mean()), 3), "frame_psnr_db_min": round(float(psnr_pb.min()), 3),
                    "ssim_mean": round(float(ssim_pb.mean()), 5), "ssim_min": round(float(ssim_pb.min()), 5),
                    "latent_cosine_mean": round(float(cos_pb.mean()), 6),
                    "latent_cosine_min": round(float(cos_pb.min()), 6),
                    "non_finite_prompts": len(non_finite)},
        "non_finite": non_finite,
        "drift": {"frame_psnr_db": drift(per_block["frame_psnr_db"]), "ssim": drift(per_block["ssim"])},
        "judge": _judge_summary(judge, plan_scores, ref_scores) if judgeable else {"skipped": _no_judge(session, judge)},
        "prompt_texts": [t for t in texts if isinstance(t, str)],
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def _no_judge(session, judge) -> str:
    if judge is None:
        return "no judge was given for this model's prompts"
    return f"the judge scores {judge.grammar}; this plan has " + ("no text encoder" if session.vocab is None
                                                                  else "another vocabulary")


def plot_drift(result: dict, path: str | os.PathLike) -> Path:
    """Frame PSNR and SSIM per block, with the PSNR least-squares line (matplotlib, Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    pb, d = result["per_block"], result["drift"]["frame_psnr_db"]
    x = np.arange(len(pb["frame_psnr_db"]))
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, pb["frame_psnr_db"], "o-", ms=3, label="frame PSNR")
    fit = np.polyval(np.polyfit(x, pb["frame_psnr_db"], 1), x) if len(x) > 1 else pb["frame_psnr_db"]
    top.plot(x, fit, "--", label=f"fit {d['slope_per_block']:+.3f} dB/block")
    top.set_ylabel("frame PSNR (dB)")
    top.legend(loc="best")
    bottom.plot(x, pb["ssim"], "o-", ms=3, color="tab:green")
    bottom.set_ylabel("SSIM")
    bottom.set_xlabel("block")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are whole
    kv = result["kv_cache"] + (f" (sink {result['kv_sink']})" if result["kv_sink"] else "")
    fig.suptitle(f"{Path(result['plan']).name}: {result['precision']} weights, KV {kv} vs fp32 reference "
                 f"({result['prompts']} prompts)")
    fig.savefig(path, format="png")
    return Path(path)
