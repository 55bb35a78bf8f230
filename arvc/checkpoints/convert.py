"""Turn research checkpoints into arvc's input: one safetensors DiT in original Wan names.

Self-Forcing / LongLive training checkpoints are ``torch.save`` pickles of
``{"generator": sd, "critic": sd, "generator_ema": sd, "step": ..., optimizer states ...}`` whose
generator keys carry the wrapper's ``model.`` prefix (``WanDiffusionWrapper.model``), and, for EMA
weights gathered under FSDP, ``_fsdp_wrapped_module.`` components. They are read with
``torch.load(weights_only=True)``: tensors and plain containers only, so a pickle that would
construct arbitrary Python objects (and could run code) is refused, never executed.

LongLive's LoRA (``lora.pt``) is ``{"generator_lora": peft_sd, "critic_lora": ..., "step": ...}``
or the bare peft state dict, with keys like ``base_model.model.blocks.0.self_attn.q.lora_A.weight``
(peft's ``get_peft_model_state_dict`` of the CausalWanModel: adapter name removed, every
``nn.Linear`` inside the blocks targeted). Alpha is not stored in it (LongLive keeps it in the YAML
config, ``adapter.alpha``), so it must be passed unless the file carries it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from arvc.model.config import WanConfig

from .dit_names import to_original_names
from .infer import infer_wan_config
from .load import list_names, dtype_summary, save_dit, validate_dit
from .safetensors_io import CheckpointError, read_safetensors, read_safetensors_header

# "auto" takes the first key present. Converting prefers the EMA weights (Self-Forcing's README runs
# inference with --use_ema); a LoRA base prefers "generator", the weights LongLive trained its LoRA
# on (trainer/distillation.py loads base_checkpoint["generator"]; its inference config has use_ema: false).
GENERATOR_KEYS = ("generator_ema", "generator", "model")
LORA_BASE_KEYS = ("generator", "model", "generator_ema")
LORA_CONTAINER_KEYS = ("generator_lora",)
_SAFETENSORS_SUFFIXES = (".safetensors",)
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


# -- safe loading ----------------------------------------------------------------------------------

def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` restricted to tensors and plain containers; clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found; check the path.")
    # mmap avoids a second in-RAM copy of a multi-GB checkpoint, but only the zip format
    # (torch >= 1.6) supports it; legacy pickles load without.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, weights_only=True, mmap=mmap, map_location="cpu")
    except pickle.UnpicklingError as e:
        text = str(e)
        if m := _UNSUPPORTED_GLOBAL.search(text):
            raise CheckpointError(
                f"{path}: refused: the pickle references the Python global {m.group(1)}; only tensors "
                "and plain containers are accepted. arvc never unpickles arbitrary objects (that can "
                "run code). Re-save just the state dicts, e.g. torch.save({'generator_ema': sd}, 'clean.pt'), "
                "or export safetensors.") from None
        reason = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("Unsupported")), "")
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (weights-only unpickling failed{': ' + reason if reason else ''}); "
            "expected a .pt file written by torch.save, such as a Self-Forcing / LongLive checkpoint. "
            "The file may be corrupt or of another format.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({first}); expected a .pt file written by "
            "torch.save, such as a Self-Forcing / LongLive checkpoint. The file may be truncated.") from None


def _tensor_dict(path: Path, obj: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: {what} is a {type(obj).__name__}, expected a state dict.")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {what} has non-tensor entries " + list_names([str(b) for b in bad]))
    return {str(k): v for k, v in obj.items()}


def _looks_like_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_generator(path: Path, obj: Any, which: str = "auto",
                      order: tuple[str, ...] = GENERATOR_KEYS) -> tuple[dict[str, torch.Tensor], str]:
    """The generator state dict inside a training checkpoint, and the key it came from."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}; expected a dict with "
                              "'generator_ema' / 'generator' state dicts (a Self-Forcing checkpoint).")
    if which == "auto":
        for key in order:
            if key in obj and isinstance(obj[key], Mapping):
                return _tensor_dict(path, obj[key], f"'{key}'"), key
        if _looks_like_state_dict(obj):
            return _tensor_dict(path, obj, "the file"), "(top level)"
        if "generator_lora" in obj:
            raise CheckpointError(f"{path}: is a LoRA-only checkpoint ('generator_lora'); it needs a "
                                  "base model: use `arvc convert lora --base BASE --lora LORA -o OUT` (merge_lora).")
        raise CheckpointError(
            f"{path}: no generator weights found: expected a key among {list(GENERATOR_KEYS)} "
            f"(Self-Forcing / LongLive training checkpoint); found top-level keys {sorted(map(str, obj))[:10]}.")
    if which not in obj:
        present = [k for k in GENERATOR_KEYS if k in obj]
        raise CheckpointError(f"{path}: has no '{which}' entry; it has {present or sorted(map(str, obj))[:10]}.")
    return _tensor_dict(path, obj[which], f"'{which}'"), which


def is_safetensors(path: Path) -> bool:
    """By name, or by content for safetensors saved under another suffix."""
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        return True
    try:
        read_safetensors_header(path)
        return True
    except CheckpointError:
        return False


def _load_any_dit(path: Path, which: str, num_heads: int | None,
                  order: tuple[str, ...] = GENERATOR_KEYS):
    """(original-named sd, config, source key, naming info) from a .safetensors or a training .pt."""
    metadata: dict[str, str] = {}
    if is_safetensors(path):
        sd, metadata = read_safetensors(path)
        source = "(safetensors)"
    else:
        sd, source = extract_generator(path, safe_torch_load(path), which, order)
    try:
        named, info = to_original_names(sd)
        cfg = infer_wan_config(named, metadata, num_heads=num_heads)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    problems = validate_dit(named, cfg)
    if problems:
        raise CheckpointError(f"{path}: {source} does not match a Wan2.1 DiT:\n  - " + "\n  - ".join(problems))
    return named, cfg, source, info


def _summary(out: Path, sd: Mapping[str, torch.Tensor], cfg: WanConfig, **extra: Any) -> dict[str, Any]:
    return {"out": str(out), "config": cfg.to_dict(), "tensors": len(sd),
            "parameters": sum(t.numel() for t in sd.values()), "dtypes": dtype_summary(sd), **extra}


# The causal generators (Self-Forcing, CausVid, LongLive) were trained with bf16 residual/modulation
# numerics; recording it makes every consumer of the converted file reproduce them by default.
CAUSAL_NUMERICS = json.dumps({"modulation_bf16": True})


# -- Self-Forcing ----------------------------------------------------------------------------------

def convert_self_forcing(pt_path: str | os.PathLike, out_path: str | os.PathLike, which: str = "auto",
                         num_heads: int | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Write the generator of a Self-Forcing / LongLive / CausVid ``.pt`` as an arvc safetensors DiT.

    which: "auto" (generator_ema, else generator, else model), or one of those keys.
    dtype: cast floating tensors (Self-Forcing's EMA weights are float32); None keeps them.
    num_heads: only for non-Wan sizes (see infer.py); real Wan checkpoints need none.
    """
    pt_path, out_path = Path(pt_path), Path(out_path)
    if is_safetensors(pt_path):
        raise CheckpointError(f"{pt_path}: is already safetensors; pass it to arvc directly (load_dit).")
    sd, cfg, source, info = _load_any_dit(pt_path, which, num_heads)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_dit(out_path, sd, cfg, {
        "arvc.source": pt_path.name, "arvc.source_key": source,
        "arvc.source_prefix": info.prefix, "arvc.converted_by": "convert_self_forcing",
        "arvc.numerics": CAUSAL_NUMERICS,
    })
    return _summary(out_path, sd, cfg, source=str(pt_path), which=source, prefix=info.prefix,
                    convention=info.convention)


# -- LoRA ------------------------------------------------------------------------------------------

# <target>.lora_A[.<adapter>].weight (peft), <target>.lora_down.weight (kohya / diffusers), <target>.alpha
_LORA_KEY = re.compile(r"^(?P<target>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z0-9_-]+)?\.weight$")
_ALPHA_KEY = re.compile(r"^(?P<target>.+?)\.alpha$")
_ALPHA_METADATA = ("arvc.lora_alpha", "lora_alpha", "alpha")


def _load_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], float | None]:
    """LoRA tensors and the alpha stored in the file (None if it stores none)."""
    if not path.exists():
        raise CheckpointError(f"{path}: LoRA file not found; check the path.")
    alpha: float | None = None
    if is_safetensors(path):
        sd, metadata = read_safetensors(path)
        for key in _ALPHA_METADATA:
            if key in metadata:
                alpha = float(metadata[key])
                break
        return sd, alpha
    obj = safe_torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}; expected a LoRA state dict.")
    for key in ("lora_alpha", "alpha"):
        if isinstance(obj.get(key), (int, float)):
            alpha = float(obj[key])
    for key in LORA_CONTAINER_KEYS:
        if key in obj:
            return _tensor_dict(path, obj[key], f"'{key}'"), alpha
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no LoRA weights found: expected 'generator_lora' (LongLive) or "
                              f"a peft state dict; found keys {sorted(map(str, obj))[:10]}.")
    return _tensor_dict(path, tensors, "the file"), alpha


def _pair_lora(path: Path, sd: Mapping[str, torch.Tensor]):
    """{target: (A [r, in], B [out, r])} in the file's own target names, plus per-target alphas."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unknown = []
    for k, v in sd.items():
        if m := _LORA_KEY.match(k):
            kind = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(m["kind"], m["kind"])
            pairs.setdefault(m["target"], {})[kind] = v
        elif m := _ALPHA_KEY.match(k):
            alphas[m["target"]] = float(v.float().item())
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{path}: tensors that are not LoRA A/B matrices " + list_names(unknown)
                              + " (expected '<module>.lora_A.weight' / '<module>.lora_B.weight').")
    if not pairs:
        raise CheckpointError(f"{path}: holds no LoRA weights.")
    unpaired = sorted(f"{t} (has only {next(iter(ab))})" for t, ab in pairs.items() if len(ab) != 2)
    if unpaired:
        raise CheckpointError(f"{path}: LoRA targets without both A and B " + list_names(unpaired))
    return {t: (ab["lora_A"], ab["lora_B"]) for t, ab in pairs.items()}, alphas


def _resolve_alphas(path: Path, targets: list[str], alpha: float | None, file_alpha: float | None,
                    target_alphas: Mapping[str, float]) -> dict[str, float]:
    """Alpha per target: the argument, else the file's (global or per module); they must agree."""
    stored = {t: target_alphas.get(t, file_alpha) for t in targets}
    if alpha is not None:
        clash = sorted({a for a in stored.values() if a is not None and a != float(alpha)})
        if clash:
            raise CheckpointError(f"{path}: stores lora alpha {clash} but alpha={alpha} was passed; "
                                  "drop the argument or fix the file.")
        return {t: float(alpha) for t in targets}
    unknown = [t for t, a in stored.items() if a is None]
    if unknown:
        raise CheckpointError(
            f"{path}: the LoRA alpha is not stored in this file (LongLive keeps it in its YAML "
            "config as adapter.alpha; the released LongLive-1.3B LoRA uses rank 256, alpha 256). "
            "Pass it explicitly: `arvc convert lora ... --alpha 256` / merge_lora(..., alpha=256).")
    return {t: float(a) for t, a in stored.items()}  # type: ignore[arg-type]


def _target_names(path: Path, targets: list[str]) -> dict[str, str]:
    """Map the LoRA file's target module names to original Wan module names."""
    fake = {t + ".weight": torch.empty(0, device="meta") for t in targets}
    try:
        named, _ = to_original_names(fake)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    renamed = list(named)
    return {t: n.removesuffix(".weight") for t, n in zip(targets, renamed)}


def merge_lora(base_path: str | os.PathLike, lora_path: str | os.PathLike, out_path: str | os.PathLike,
               alpha: float | None = None, rank: int | None = None, which: str = "auto",
               num_heads: int | None = None) -> dict[str, Any]:
    """Fold a LoRA into its base: ``W += (alpha / r) * B @ A`` in float32, cast back to W's dtype.

    base_path: safetensors DiT or Self-Forcing-style .pt (LongLive's longlive_base.pt).
    lora_path: LongLive lora.pt ('generator_lora' or a bare peft state dict) or a safetensors
    LoRA. alpha: required unless the file stores it; if both are given they must agree.
    rank: optional check that every LoRA pair has this rank.
    which: for a .pt base, "auto" (generator, else model, else generator_ema) or one of those keys.
    """
    base_path, lora_path, out_path = Path(base_path), Path(lora_path), Path(out_path)
    base, cfg, source, _ = _load_any_dit(base_path, which, num_heads, LORA_BASE_KEYS)
    lora_sd, file_alpha = _load_lora_file(lora_path)
    pairs, target_alphas = _pair_lora(lora_path, lora_sd)
    names = _target_names(lora_path, list(pairs))

    alphas = _resolve_alphas(lora_path, list(pairs), alpha, file_alpha, target_alphas)

    problems, merged_ranks = [], set()
    merged = dict(base)
    for target, (a, b) in pairs.items():
        name = names[target] + ".weight"
        if name not in base:
            problems.append(f"{target}: no base weight {name!r}")
            continue
        w = base[name]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            problems.append(f"{target}: rank mismatch: A is {tuple(a.shape)} (rank {a.shape[0]}), "
                            f"B is {tuple(b.shape)} (rank {b.shape[1] if b.dim() == 2 else '?'})")
            continue
        r = a.shape[0]
        if rank is not None and r != rank:
            problems.append(f"{target}: rank {r}, expected rank={rank}")
            continue
        if w.dim() != 2 or (b.shape[0], a.shape[1]) != tuple(w.shape):
            problems.append(f"{target}: B @ A is {(b.shape[0], a.shape[1])} but the base weight "
                            f"{name} is {tuple(w.shape)}")
            continue
        scale = alphas[target] / r
        delta = b.to(torch.float32) @ a.to(torch.float32)
        merged[name] = (w.to(torch.float32) + scale * delta).to(w.dtype)
        merged_ranks.add(r)
    if problems:
        missing_targets = [p for p in problems if "no base weight" in p]
        head = "LoRA targets not in the base model" if missing_targets == problems else "cannot merge"
        raise CheckpointError(f"{lora_path}: {head} ({base_path.name}) " + list_names(problems))

    ranks = sorted(merged_ranks)
    distinct = sorted(set(alphas.values()))
    alpha_used: float | list[float] = distinct[0] if len(distinct) == 1 else distinct
    save_dit(out_path, merged, cfg, {
        "arvc.source": base_path.name, "arvc.source_key": source,
        "arvc.lora_source": lora_path.name, "arvc.lora_alpha": str(alpha_used),
        "arvc.lora_rank": ",".join(map(str, ranks)), "arvc.lora_targets": str(len(pairs)),
        "arvc.converted_by": "merge_lora", "arvc.numerics": CAUSAL_NUMERICS,
    })
    return _summary(out_path, merged, cfg, base=str(base_path), lora=str(lora_path), which=source,
                    alpha=alpha_used, rank=ranks[0] if len(ranks) == 1 else ranks, targets=len(pairs))
