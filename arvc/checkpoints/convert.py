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

Wan's VAE ships as ``Wan2.1_VAE.pth``: a plain state dict in original Wan names (``encoder.*``,
``conv1.*``, ``conv2.*``, ``decoder.*``). ``convert_vae`` writes it, encoder included, as safetensors.
``classify_pickle`` says which of these a pickle is, and the exact ``arvc convert`` command for it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from arvc.model.config import WanConfig

from .dit_names import to_original_names
from .infer import _resolve_heads, infer_wan_config
from .safetensors_io import CheckpointError, read_safetensors, read_safetensors_header, write_safetensors_atomic
from .state_dicts import (VAE_ENCODER_PREFIXES, compare_state_dict, dtype_summary, expected_vae_shapes, list_names,
                          preset_name, save_dit, validate_dit)
from .vae_names import _RESNET_PARTS, infer_vae_config, to_original_vae_names

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
        if str(path).endswith(".safetensors"):
            # torch.load hands any path so named to the safetensors reader; a pickle under that name
            # is read from a file object instead (which cannot be memory-mapped).
            with open(path, "rb") as f:
                return torch.load(f, weights_only=True, map_location="cpu")
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
                                  "base model: merge it with arvc convert lora --base <base model> "
                                  f"--lora {shlex.quote(str(path))} -o <output .safetensors> (merge_lora).")
        raise CheckpointError(
            f"{path}: no generator weights found: expected a key among {list(GENERATOR_KEYS)} "
            f"(Self-Forcing / LongLive training checkpoint); found top-level keys {sorted(map(str, obj))[:10]}.")
    if which not in obj:
        present = [k for k in GENERATOR_KEYS if k in obj]
        raise CheckpointError(f"{path}: has no '{which}' entry; it has {present or sorted(map(str, obj))[:10]}.")
    return _tensor_dict(path, obj[which], f"'{which}'"), which


def _is_torch_pickle(path: Path) -> bool:
    """A torch.save zip archive or a legacy pickle, by its first bytes. A safetensors file whose 8-byte
    header length happens to start 0x80 0x02..0x05 is told apart by the '{' that opens its JSON header."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if head.startswith(b"PK\x03\x04"):
        return True
    return len(head) == 9 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[8:9] != b"{"


def is_safetensors(path: Path) -> bool:
    """By name, or by content for safetensors saved under another suffix; a pickle (even one named
    .safetensors) is not."""
    if _is_torch_pickle(path):
        return False
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
        return _check_dit(path, sd, metadata, "(safetensors)", num_heads)
    obj = safe_torch_load(path)
    try:
        sd, source = extract_generator(path, obj, which, order)
        return _check_dit(path, sd, metadata, source, num_heads)
    except CheckpointError as e:
        kind, words, command = _classify_safely(path, obj)
        # A different kind of file: say so, with its own command (extract_generator names a 'generator_lora' file).
        if kind == "vae" or (kind == "lora" and "LoRA" not in str(e)):
            hint = f"; convert it with `{command}`." if command else "."
            raise CheckpointError(f"{e} This file is {words}{hint}") from None
        raise


def _check_dit(path: Path, sd: dict[str, torch.Tensor], metadata: Mapping[str, str], source: str,
               num_heads: int | None):
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
            "Pass it explicitly: add --alpha 256 to the arvc convert lora command, or merge_lora(..., alpha=256).")
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


# -- Wan VAE ---------------------------------------------------------------------------------------

# diffusers AutoencoderKLWan encoder names -> Wan's. Its encoder.down_blocks is one flat list
# (residual blocks and resamplers in Wan's order), so the index carries over unchanged.
_ENC_FIXED = {
    "quant_conv": "conv1",
    "encoder.conv_in": "encoder.conv1",
    "encoder.norm_out": "encoder.head.0",
    "encoder.conv_out": "encoder.head.2",
    "encoder.mid_block.attentions.0": "encoder.middle.1",
}
_ENC_MID = re.compile(r"encoder\.mid_block\.resnets\.(\d+)\.(\w+)\.(\w+)$")
_ENC_DOWN = re.compile(r"encoder\.down_blocks\.(\d+)\.(\w+|resample\.1)\.(\w+)$")
_VAE_CONTAINER_KEYS = ("state_dict", "vae", "model")


def _original_encoder_names(path: Path, enc: Mapping[str, torch.Tensor], convention: str) -> dict[str, torch.Tensor]:
    if convention == "wan":
        return dict(enc)
    out: dict[str, torch.Tensor] = {}
    for k, v in enc.items():
        fixed = next((p for p in _ENC_FIXED if k.startswith(p + ".")), None)
        if fixed is not None:
            new = _ENC_FIXED[fixed] + k[len(fixed):]
        elif (m := _ENC_MID.match(k)) and m[2] in _RESNET_PARTS:
            new = f"encoder.middle.{2 * int(m[1])}.{_RESNET_PARTS[m[2]]}.{m[3]}"  # Wan: res, attn, res
        elif (m := _ENC_DOWN.match(k)) and (m[2] in _RESNET_PARTS or m[2] in ("resample.1", "time_conv")):
            new = f"encoder.downsamples.{m[1]}.{_RESNET_PARTS.get(m[2], m[2])}.{m[3]}"
        else:
            raise CheckpointError(f"{path}: unrecognised diffusers VAE encoder key {k!r}; "
                                  "convert_vae(..., encoder=False) keeps the decoder only.")
        out[new] = v
    return out


def _expected_encoder_shapes(cfg) -> dict[str, tuple[int, ...]]:
    from arvc.model.vae_encoder import WanVAEEncoder

    with torch.device("meta"):
        model = WanVAEEncoder(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _vae_tensors(obj: Any) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The VAE-looking tensor dict in a pickle (top level, or under 'state_dict' / 'vae' / 'model')."""
    def vae_like(d: Any) -> bool:
        return (isinstance(d, Mapping) and _looks_like_state_dict(d)
                and any(str(k).startswith(("decoder.", "post_quant_conv.")) for k in d))

    if vae_like(obj):
        return {str(k): v for k, v in obj.items()}, "(top level)"
    if isinstance(obj, Mapping):
        for key in _VAE_CONTAINER_KEYS:
            if vae_like(obj.get(key)):
                return {str(k): v for k, v in obj[key].items()}, key
    return None, ""


def _vae_parts(path: Path, sd: dict[str, torch.Tensor], encoder: bool = True,
               latent_mean: tuple[float, ...] | None = None, latent_std: tuple[float, ...] | None = None):
    """(decoder tensors, encoder tensors, config, naming) in original Wan names, fully checked."""
    try:
        decoder, convention = to_original_vae_names(sd)
        cfg = infer_vae_config(decoder, latent_mean=latent_mean, latent_std=latent_std)
    except (ValueError, KeyError) as e:  # CheckpointError is a ValueError too
        raise CheckpointError(f"{path}: not a usable Wan2.1 VAE checkpoint: {e}") from None
    problems = compare_state_dict(decoder, expected_vae_shapes(cfg))
    if problems:
        raise CheckpointError(f"{path}: does not match the Wan2.1 VAE decoder:\n  - " + "\n  - ".join(problems))
    enc_in = {k: v for k, v in sd.items() if k.startswith(VAE_ENCODER_PREFIXES)}
    if not encoder or not enc_in:
        return decoder, {}, cfg, convention
    enc = _original_encoder_names(path, enc_in, convention)
    problems = compare_state_dict(enc, _expected_encoder_shapes(cfg))
    if problems:
        raise CheckpointError(
            f"{path}: the decoder is a sound Wan2.1 VAE decoder but the encoder tensors (encoder.*, conv1.*) "
            "do not match the Wan2.1 VAE encoder:\n  - " + "\n  - ".join(problems)
            + "\nconvert_vae(..., encoder=False) writes the decoder alone (all that decoding needs).")
    return decoder, enc, cfg, convention


def convert_vae(pth_path: str | os.PathLike, out_path: str | os.PathLike, encoder: bool = True,
                latent_mean: tuple[float, ...] | None = None,
                latent_std: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Write Wan's VAE pickle (``Wan2.1_VAE.pth``: original Wan or diffusers names) as safetensors.

    The output is in original Wan names and loads with ``load_vae`` (decoder) and as is into
    ``WanVAEEncoder`` (``encoder.*``, ``conv1.*``). Both halves are checked tensor by tensor first.
    encoder: False drops the encoder tensors (the decoder is all decoding needs).
    latent_mean / latent_std: only for a latent other than Wan2.1's 16 channels; recorded in the file.
    Tensors keep their stored dtype.
    """
    pth_path, out_path = Path(pth_path), Path(out_path)
    if is_safetensors(pth_path):
        raise CheckpointError(f"{pth_path}: is already safetensors; pass it to arvc directly (load_vae).")
    obj = safe_torch_load(pth_path)
    sd, source = _vae_tensors(obj)
    if sd is None:
        _, words, command = _classify_safely(pth_path, obj)
        raise CheckpointError(f"{pth_path}: not a Wan2.1 VAE checkpoint: this is {words}"
                              + (f". Convert it with `{command}`." if command else "."))
    decoder, enc, cfg, convention = _vae_parts(pth_path, sd, encoder, latent_mean, latent_std)
    tensors = {**enc, **decoder}
    encoder_state = "kept" if enc else ("dropped" if any(k.startswith(VAE_ENCODER_PREFIXES) for k in sd) else "absent")
    write_safetensors_atomic(out_path, tensors, {
        "arvc.format": "wan2.1-vae",
        "arvc.config": json.dumps(cfg.to_dict(), sort_keys=True),  # load_vae reads the latent stats from it
        "arvc.source": pth_path.name, "arvc.source_key": source, "arvc.source_naming": convention,
        "arvc.encoder": encoder_state, "arvc.converted_by": "convert_vae",
    })
    return _summary(out_path, tensors, cfg, source=str(pth_path), which=source, naming=convention,
                    encoder=encoder_state, decoder_tensors=len(decoder), encoder_tensors=len(enc))


# -- what is this pickle? --------------------------------------------------------------------------

def _command(*parts: str | os.PathLike) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts)


def _output_next_to(path: Path) -> Path:
    out = path.with_suffix(".safetensors")
    return path.with_name(path.stem + ".converted.safetensors") if out == path else out


def _dit_words(sd: Mapping[str, torch.Tensor]) -> tuple[bool | None, str]:
    """(True: converts as is / None: needs --num-heads / False: not a usable DiT, what it looks like)."""
    try:
        named, info = to_original_names(sd)
        pe = named.get("patch_embedding.weight")
        if pe is not None and pe.dim() == 5:
            try:
                _resolve_heads(int(pe.shape[0]), None, {}, {})
            except CheckpointError:
                return None, (f"a DiT of width {pe.shape[0]}, not a Wan2.1 size, so its attention head count "
                              "cannot be read from the weights")
        cfg = infer_wan_config(named)
    except CheckpointError as e:
        return False, str(e)
    problems = validate_dit(named, cfg)
    if problems:
        return False, f"a DiT that does not match a Wan2.1 DiT ({problems[0]})"
    preset = preset_name(cfg)
    size = f"{preset}, " if preset else ""
    naming = "diffusers names" if info.convention == "diffusers" else "Wan names"
    return True, f"a Wan2.1 DiT ({size}dim {cfg.dim}, {cfg.num_layers} layers, {naming})"


def _lora_words(path: Path, sd: Mapping[str, torch.Tensor], alpha_stored: bool) -> str | None:
    """Words for a LoRA state dict; None if these are not all LoRA tensors."""
    if not sd or not all(_LORA_KEY.match(k) or _ALPHA_KEY.match(k) for k in sd):
        return None
    ranks = sorted({int(v.shape[0]) for k, v in sd.items() if (m := _LORA_KEY.match(k))
                    and m["kind"] in ("lora_A", "lora_down") and v.dim() == 2})
    pairs = sum(1 for k in sd if (m := _LORA_KEY.match(k)) and m["kind"] in ("lora_A", "lora_down"))
    alpha_stored = alpha_stored or any(_ALPHA_KEY.match(k) for k in sd)
    rank = f", rank {ranks[0]}" if len(ranks) == 1 else (f", ranks {ranks}" if ranks else "")
    return (f"a LoRA ({pairs} adapted layers{rank}), not a whole model: it must be merged into the base model "
            f"it was trained on (LongLive: longlive_base.pt) with arvc convert lora --base <base model> "
            f"--lora {shlex.quote(str(path))} -o <output .safetensors>"
            + ("" if alpha_stored else " --alpha <alpha> (this file does not store its alpha; LongLive's "
               "released LoRA uses 256)"))


def _classify_obj(path: Path, obj: Any) -> tuple[str, str, str | None]:
    """(kind, words, command): kind is one of "training", "dit", "vae", "lora", "other"."""
    out = _output_next_to(path)
    if not isinstance(obj, Mapping):
        return "other", (f"a pickle holding a {type(obj).__name__}, not a checkpoint dict; no arvc command "
                         "converts it"), None

    sd, key = _vae_tensors(obj)
    if sd is not None:
        where = "" if key == "(top level)" else f" (under '{key}')"
        try:
            decoder, enc, cfg, convention = _vae_parts(path, sd)
        except CheckpointError as e:
            why = str(e).removeprefix(f"{path}: ")
            return "vae", f"a Wan VAE-like state dict{where} that arvc cannot use: {why}", None
        halves = "encoder and decoder" if enc else "decoder only"
        naming = "diffusers names" if convention == "diffusers" else "original Wan names"
        arch = "" if cfg.base_dim == 96 and cfg.dim_mult == (1, 2, 4, 4) else f", base_dim {cfg.base_dim}"
        return "vae", (f"the Wan2.1 VAE{where} ({halves}, {len(sd)} tensors, {naming}{arch})"), \
            _command("arvc", "convert", "vae", path, "-o", out)

    for gkey in GENERATOR_KEYS:
        if isinstance(obj.get(gkey), Mapping):
            inner = obj[gkey]
            others = sorted(str(k) for k in obj if k != gkey)
            also = f"; it also holds {others[:6]}" if others else ""
            if not _looks_like_state_dict(inner):
                return "training", (f"a training-checkpoint-like dict whose '{gkey}' entry is not a plain state "
                                    f"dict of tensors{also}; no arvc command converts it"), None
            ok, words = _dit_words(inner)
            head = f"a Self-Forcing / CausVid / LongLive training checkpoint whose '{gkey}' entry is "
            if ok:
                return "training", head + words + also, _command("arvc", "convert", "self-forcing", path, "-o", out)
            if ok is None:
                return "training", (head + words + also + "; convert it with arvc convert self-forcing "
                                    f"{shlex.quote(str(path))} -o {shlex.quote(str(out))} --num-heads <heads>"), None
            return "training", (f"a training-checkpoint-like dict whose '{gkey}' entry is not a usable Wan2.1 "
                                f"DiT: {words}{also}"), None

    alpha_stored = any(isinstance(obj.get(k), (int, float)) for k in ("lora_alpha", "alpha"))
    for lkey in LORA_CONTAINER_KEYS:
        if isinstance(obj.get(lkey), Mapping) and _looks_like_state_dict(obj[lkey]):
            words = _lora_words(path, {str(k): v for k, v in obj[lkey].items()}, alpha_stored)
            if words:
                return "lora", words.replace("a LoRA", f"a LongLive LoRA checkpoint ('{lkey}')", 1), None
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and (words := _lora_words(path, tensors, alpha_stored)):
        return "lora", words, None

    if _looks_like_state_dict(obj):
        ok, words = _dit_words(tensors)
        if ok:
            return "dit", f"a plain state dict holding {words}", \
                _command("arvc", "convert", "self-forcing", path, "-o", out)
        if ok is None:
            return "dit", (f"a plain state dict holding {words}; convert it with arvc convert self-forcing "
                           f"{shlex.quote(str(path))} -o {shlex.quote(str(out))} --num-heads <heads>"), None
        return "other", (f"a state dict of {len(obj)} tensors that is not a Wan2.1 DiT, the Wan VAE or a LoRA "
                         f"(such as {sorted(tensors)[:4]}); no arvc command converts it"), None
    keys = sorted(map(str, obj))
    return "other", (f"a dict with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}: not a Wan2.1 DiT, VAE or "
                     "LoRA checkpoint arvc knows; no arvc command converts it"), None


def _classify_safely(path: Path, obj: Any) -> tuple[str, str, str | None]:
    # Classifying feeds error messages: an unforeseen shape of data must not replace the error being reported.
    try:
        return _classify_obj(path, obj)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        return "other", f"a pickle arvc could not classify ({type(e).__name__}: {e}); no arvc command converts it", None


def classify_pickle(path: str | os.PathLike) -> tuple[str, str | None]:
    """What a PyTorch pickle is, in words, and the exact ``arvc convert`` command that converts it.

    The command (paths shell-quoted, output next to the input with a .safetensors suffix) is one
    that succeeds on this file; it is None when no arvc command converts the file as is: a LoRA
    (it needs the --base it was trained on, which cannot be guessed), a DiT whose head count is
    not readable from its weights, or anything else; the words then say what to do. The pickle is
    read with the weights-only loader; a file it refuses is described, not raised on. Raises
    CheckpointError only if the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found; check the path.")
    if path.is_dir():
        return "a directory, not a checkpoint file", None
    if not _is_torch_pickle(path):
        try:
            read_safetensors_header(path)
            return "a safetensors file, not a pickle: arvc reads it directly", None
        except CheckpointError:
            pass
    try:
        obj = safe_torch_load(path)
    except CheckpointError as e:
        return f"a file arvc cannot read as a checkpoint: {str(e).removeprefix(f'{path}: ')}", None
    _, words, command = _classify_safely(path, obj)
    return words, command


def pickle_advice(path: Path) -> str:
    """For a PyTorch pickle given where safetensors belong: what it holds and the command that converts it
    (load.py appends this to the reader's error); "" for any other file."""
    if not _is_torch_pickle(path):
        return ""
    what, command = classify_pickle(path)
    how = f" Convert it with `{command}`, then pass the .safetensors file it writes." if command else ""
    return f" It holds {what}.{how}"
