"""Activation calibration: the amax of every quantized GEMM input over real rollouts of the reference.

Each calibration prompt is rolled out for ``blocks`` blocks (default: the parity gate's length, past the
window twice) with a switch to the next prompt half-way, so every denoising step, the cache call (t = 0)
and the prompt switch's re-cache are seen. amax is kept per layer and per timestep; the per-layer scale
is the max over timesteps. Whether one scale per layer is enough is recorded two ways: ``spread`` (max /
min amax over timesteps: the range a per-layer scale wastes at the quietest step) and
``held_out_overflow`` (how often a rollout left out of calibration exceeds each granularity's range);
bench/bench_precisions.py measures both granularities end to end.

Calibration prompts (``--calib-prompts FILE``): one per line, ``#`` comments and blank lines skipped; a
line naming an existing .safetensors file is taken as prompt embeddings (as ``arvc run --prompt-embeds``),
any other line as text for the model's text encoder. Default: the model directory's own file of that form
(model.json ``"calibration_prompts"``; the tiny model ships four prompts of its training world), else seeded
word sequences of the text encoder's vocabulary, else seeded random embeddings (never the parity gate's
prompts, so the gate measures prompts calibration did not see).

The amax is the plain maximum, the same statistic as nvidia-modelopt's max calibrator (cross-checked in
tests/test_activation_quant.py); it keeps calibration inside this torch reference loop, which the
runtime's cache semantics are defined by.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from arvc.quant.activations import tracking_timestep
from arvc.reference.causal import CausalGenerator

DEFAULT_PROMPTS = 4


def calibration_prompts(cfg, encoder, path: str | Path | None, n: int = DEFAULT_PROMPTS, seed: int = 4321,
                        what: str = "--calib-prompts") -> list:
    """-> [prompt embeddings [1, L, text_dim]] (see the module docstring); ``what`` names the file in errors."""
    from arvc.reference.models import load_prompt_embeds

    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{what} {path}: no such file (one prompt, or one .safetensors embeddings "
                             "file, per line)")
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise ValueError(f"{what} {path}: no prompts in the file (one per line)")
        out = []
        for ln in lines:
            if ln.endswith(".safetensors") and (path.parent / ln).is_file():
                out.append(load_prompt_embeds(path.parent / ln, cfg))
            elif ln.endswith(".safetensors") and Path(ln).is_file():
                out.append(load_prompt_embeds(ln, cfg))
            elif encoder is None:
                raise ValueError(f"{what} {path}: line {ln!r} is text, but this checkpoint has no text "
                                 "encoder; list prompt-embedding .safetensors files instead")
            else:
                out.append(encoder.encode([ln]))
        return out
    rng = np.random.default_rng(seed)
    if encoder is not None:
        words = list(encoder.cfg.vocab)
        return [encoder.encode([" ".join(rng.choice(words, size=min(8, len(words))))]) for _ in range(n)]
    m = max(1, cfg.text_len // 2)
    return [torch.from_numpy(rng.standard_normal((1, m, cfg.text_dim)).astype(np.float32)) for _ in range(n)]


@torch.no_grad()
def calibrate(dit, layers: list[str], prompts: list, geom, schedule, latent_hw, blocks: int, seed: int = 0,
              log: Callable[[str], None] = print) -> dict:
    """-> {"timesteps": [t...], "amax": {layer: [amax per timestep]}, "spread": {layer: max/min}, ...}."""
    if not layers:
        raise ValueError("activation calibration: no quantized GEMMs to calibrate")
    modules = dict(dit.named_modules())
    timesteps = list(dict.fromkeys([float(t) for t in schedule.timesteps] + [0.0]))
    seen = np.zeros((len(prompts), len(layers), len(timesteps)))  # amax per rollout, layer, timestep
    where = {"rollout": 0}

    def hook(li: int, name: str):
        def fn(_module, args):
            a = float(args[0].detach().abs().amax())
            if not np.isfinite(a):
                raise ValueError(f"activation calibration: non-finite input to {name} at t={state['t']}; "
                                 "the reference rollout itself diverges (check the checkpoint)")
            ti = timesteps.index(state["t"])
            seen[where["rollout"], li, ti] = max(seen[where["rollout"], li, ti], a)
        return fn

    with tracking_timestep(dit) as state:
        handles = [modules[n].register_forward_pre_hook(hook(i, n)) for i, n in enumerate(layers)]
        try:
            _rollouts(dit, prompts, geom, schedule, latent_hw, blocks, seed, log, where)
        finally:
            for h in handles:
                h.remove()
    amax = seen.max(axis=0)  # [layers, timesteps]
    # an input that is zero at some step but not others has an unbounded spread (JSON: null)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(amax.min(1) > 0, amax.max(1) / amax.min(1), np.inf)
    worst = int(np.argmax(spread))

    def finite(x: float):
        return round(float(x), 3) if np.isfinite(x) else None

    return {"prompts": len(prompts), "blocks": blocks, "timesteps": timesteps,
            "amax": {n: amax[i].tolist() for i, n in enumerate(layers)},
            "spread": {n: finite(spread[i]) for i, n in enumerate(layers)},
            "max_spread": {"layer": layers[worst], "ratio": finite(spread[worst])},
            "held_out_overflow": _held_out_overflow(seen)}


def _held_out_overflow(seen: np.ndarray) -> dict | None:
    """Leave one rollout out: the share of its (layer, timestep) amax beyond the range the other rollouts
    calibrate, per granularity. Tighter per-timestep ranges resolve small steps better but clip more of
    what calibration did not see; this is the cheap half of that trade-off (the plan's PSNR is the other)."""
    n = seen.shape[0]
    if n < 2:
        return None
    per_t, per_layer = [], []
    for i in range(n):
        rest = np.delete(seen, i, axis=0).max(axis=0)  # [layers, timesteps]
        per_t.append(seen[i] > rest)
        per_layer.append(seen[i] > rest.max(axis=1, keepdims=True))
    return {"per-timestep": round(float(np.mean(per_t)), 4), "per-layer": round(float(np.mean(per_layer)), 4)}


def _rollouts(dit, prompts, geom, schedule, latent_hw, blocks, seed, log, where: dict) -> None:
    for i, ctx in enumerate(prompts):
        where["rollout"] = i
        gen = CausalGenerator(dit, geom, schedule, latent_hw, seed=seed + 1000 + i)
        gen.set_prompt(ctx)
        for b in range(blocks):
            if b == blocks // 2 and len(prompts) > 1:
                gen.switch_prompt(prompts[(i + 1) % len(prompts)])
            gen.next_block()
        log(f"  calibration rollout {i + 1}/{len(prompts)}: {blocks} blocks")


def activation_layers(quantized_layers: list[str]) -> list[str]:
    """The GEMMs of the per-block dit call whose inputs a recipe quantizes (the text stage's stay fp32)."""
    from arvc.quant.activations import is_per_call

    return [n for n in quantized_layers if is_per_call(n)]
