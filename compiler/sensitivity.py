"""``arvc compile --sensitivity``: measure what quantizing each block linear costs, then keep the worst
ones at full precision until the whole recipe meets ``--min-psnr``.

All measurements run the fp32 PyTorch reference with fake-quantized weights (decode(encode(w)), what the
plan's graphs compute with) over the parity gate's rollout: same noise, a prompt switch half-way, past
the window twice, so every denoising step and the cache call are covered.

1. Per-layer SQNR: the inputs of every quantizable linear are sampled over the fp32 rollout; the
   layer's output with its quantized weight is compared with the fp32 output on those inputs.
2. End-to-end impact: the rollout with only that layer quantized vs the fp32 rollout (latent PSNR).
3. Mixed recipe: layers ordered worst end-to-end impact first; the fewest of the worst kept at full
   precision such that the decoded frames' PSNR vs fp32 meets the target (bisection on that count).
With ``--activations`` the swept layers quantize their inputs as the plan will (quant/activations.py
emulation, calibrated scales), alone and in the mixed recipe; a kept layer keeps fp32 inputs too.
The parity gate then checks the compiled plan as usual, so the recipe found is verified twice.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from arvc.quant.activations import emulated
from arvc.quant.recipe import default_min_psnr
from arvc.quant.weights import QUANTIZABLE, dequantize_weight, is_skipped, quantize_weight
from arvc.reference.causal import CausalGenerator

from .verify import decode_reference, default_blocks, psnr

SAMPLE_ROWS = 2048  # input rows kept per layer for SQNR (a random subset of every call's tokens)


def reference_prompts(cfg, encoder, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """The parity gate's two prompts, built without a plan (the model's words, else seeded embeddings)."""
    if encoder is not None:
        words = list(encoder.cfg.vocab)
        return encoder.encode([" ".join(words[:4])]), encoder.encode([" ".join(words[-4:])])
    g = np.random.default_rng(seed)
    n = max(1, cfg.text_len // 2)
    return tuple(torch.from_numpy(g.standard_normal((n, cfg.text_dim)).astype(np.float32)) for _ in range(2))


@torch.no_grad()
def rollout(dit, geom, schedule, latent_hw, prompts, blocks: int, seed: int,
            kv: tuple[str, str | None] = ("fp32", None)) -> np.ndarray:
    gen = CausalGenerator(dit, geom, schedule, latent_hw, seed=seed, kv_format=kv[0], kv_sink_format=kv[1])
    return roll(gen, prompts, blocks)


def roll(gen, prompts, blocks: int) -> np.ndarray:
    """The parity gate's rollout of a generator: prompt a, switched to b half-way (a LongLive re-cache)."""
    gen.set_prompt(prompts[0])
    out = []
    for b in range(blocks):
        if b == blocks // 2:
            gen.switch_prompt(prompts[1])
        out.append(gen.next_block().numpy())
    return np.concatenate(out, axis=2)  # [1, C, frames, h, w]


def quantizable_layers(dit, skip: tuple[str, ...]) -> list[str]:
    return [n.rsplit(".weight", 1)[0] for n in dit.state_dict() if QUANTIZABLE.match(n) and not is_skipped(n, skip)]


@contextmanager
def quantized(dit, layers: list[str], fmt: str):
    """Layers' weights replaced by decode(encode(w)) in place; restored on exit."""
    modules = dict(dit.named_modules())
    saved = {name: modules[name].weight.detach().clone() for name in layers}
    try:
        for name in layers:
            w = modules[name].weight
            w.data.copy_(dequantize_weight(quantize_weight(w.detach().float(), fmt), fmt))
        yield
    finally:
        for name, w in saved.items():
            modules[name].weight.data.copy_(w)


def _sample_inputs(dit, layers: list[str], run: Callable[[], object], seed: int) -> dict[str, torch.Tensor]:
    modules, samples = dict(dit.named_modules()), {n: [] for n in layers}
    g = torch.Generator().manual_seed(seed)

    def hook(name):
        def fn(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            samples[name].append(x[torch.randperm(x.shape[0], generator=g)[: SAMPLE_ROWS // 8]].float())
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in layers]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, xs in samples.items():
        x = torch.cat(xs)
        out[n] = x[torch.randperm(x.shape[0], generator=g)[:SAMPLE_ROWS]]
    return out


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = float(((ref - test) ** 2).sum())
    return 200.0 if noise == 0 else min(200.0, 10 * math.log10(float((ref ** 2).sum()) / noise))


def sweep(dit, vae, encoder, fmt: str, skip: tuple[str, ...], geom, schedule, latent_hw, blocks: int,
          min_psnr: float, seed: int = 0, log: Callable[[str], None] = print,
          kv: tuple[str, str | None] = ("fp32", None), act: tuple[dict, tuple] | None = None) -> dict:
    """-> {"layers": [per-layer rows, worst first], "kept": {layer: why}, "frame_psnr_db": mixed recipe's}.

    Layers alone are measured with an fp32 cache (their own cost); the mixed recipe with the recipe's
    KV-cache formats ``kv`` (what the plan will do). ``act`` (layer -> ActQuant, timesteps): quantized
    layers also quantize their inputs, alone and in the mixed recipe; SQNR stays the weight's alone."""
    act_table, act_steps = act or ({}, ())

    @contextmanager
    def quantized_layers(names: list[str]):
        with quantized(dit, names, fmt), emulated(dit, {n: act_table[n] for n in names if n in act_table}, act_steps):
            yield

    prompts = reference_prompts(dit.cfg, encoder)
    layers = quantizable_layers(dit, skip)
    if not layers:
        raise ValueError(f"--sensitivity: no quantizable block linears left after skip {list(skip)}")
    modules = dict(dit.named_modules())
    inputs = _sample_inputs(dit, layers, lambda: rollout(dit, geom, schedule, latent_hw, prompts, blocks, seed), seed)
    ref_lat = rollout(dit, geom, schedule, latent_hw, prompts, blocks, seed)
    peak = float(np.abs(ref_lat).max())
    rows, grad = [], torch.is_grad_enabled()
    for i, name in enumerate(layers):
        lin = modules[name]
        torch.set_grad_enabled(False)  # the module's parameters require grad; nothing here trains
        y = torch.nn.functional.linear(inputs[name], lin.weight.float(), lin.bias.float())
        with quantized_layers([name]):
            yq = torch.nn.functional.linear(inputs[name], lin.weight.float(), lin.bias.float())
            lat = rollout(dit, geom, schedule, latent_hw, prompts, blocks, seed)
        rows.append({"layer": name, "sqnr_db": round(sqnr_db(y, yq), 2),
                     "latent_psnr_db_alone": round(psnr(ref_lat, lat, peak), 2)})
        log(f"  sensitivity {i + 1:3d}/{len(layers)} {name:<28} SQNR {rows[-1]['sqnr_db']:6.2f} dB, "
            f"alone: latent PSNR {rows[-1]['latent_psnr_db_alone']:6.2f} dB")
    torch.set_grad_enabled(grad)
    rows.sort(key=lambda r: (r["latent_psnr_db_alone"], r["sqnr_db"]))

    ref_frames = decode_reference(vae, ref_lat)
    measured: dict[int, float] = {}

    def frame_psnr_keeping(k: int) -> float:  # the k worst layers kept at full precision
        if k not in measured:
            with quantized_layers([r["layer"] for r in rows[k:]]):
                lat = rollout(dit, geom, schedule, latent_hw, prompts, blocks, seed, kv)
            measured[k] = psnr(ref_frames, decode_reference(vae, lat), 2.0)
            log(f"  mixed recipe: {len(rows) - k} quantized, {k} kept full precision: frame PSNR {measured[k]:.2f} dB "
                f"(target {min_psnr:.1f})")
        return measured[k]

    # the fewest kept layers that meet the target: bisection over the worst-first order (quality grows
    # with every layer kept, so a handful of rollouts replaces one per layer)
    lo, hi = 0, len(rows)
    if frame_psnr_keeping(0) < min_psnr:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if frame_psnr_keeping(mid) >= min_psnr else (mid, hi)
        k = hi
    else:
        k = 0
    why = (f"the fully quantized recipe missed --min-psnr {min_psnr:.1f} dB (frame PSNR {measured[0]:.2f} dB); "
           "quantized alone, this layer leaves the rollout at {:.1f} dB latent PSNR (SQNR {:.1f} dB)")
    kept = {r["layer"]: "sensitivity: " + why.format(r["latent_psnr_db_alone"], r["sqnr_db"]) for r in rows[:k]}
    final = frame_psnr_keeping(k)
    return {"format": fmt, "blocks": blocks, "target_frame_psnr_db": min_psnr, "layers": rows, "kept": kept,
            "frame_psnr_db": round(final, 3), "met": final >= min_psnr,
            "searched": {str(n): round(v, 3) for n, v in sorted(measured.items())}}


def keep_sensitive_layers(dit, vae, encoder, recipe, opts, latent_hw, log: Callable[[str], None],
                          act: dict | None) -> tuple:
    """``sweep`` the recipe's layers (compile's options ``opts``: geometry, schedule, --min-psnr, --verify-blocks,
    seed) -> (the recipe with the layers it keeps at full precision added, the sweep's record)."""
    target = opts.min_psnr if opts.min_psnr is not None else default_min_psnr(opts.precision, recipe.kv_cache,
                                                                               recipe.kv_sink)
    blocks = opts.verify_blocks or default_blocks(opts.geometry)
    result = sweep(dit, vae, encoder, recipe.weights, recipe.skip, opts.geometry, opts.schedule, latent_hw, blocks,
                   target, opts.seed, log, (recipe.kv_cache, recipe.kv_sink),
                   (act["layers"], act["timesteps"]) if act else None)
    keep = recipe.keep + tuple(result["kept"].items())
    return replace(recipe, skip=recipe.skip + tuple(result["kept"]), keep=keep), result
