"""Normalise a Wan2.1 DiT state dict to the original Wan parameter names.

Accepted spellings of the same weights:
- original Wan names (``blocks.3.self_attn.q.weight``), the convention arvc stores;
- diffusers ``WanTransformer3DModel`` names (``blocks.3.attn1.to_q.weight``); the mapping follows
  diffusers' scripts/convert_wan_to_diffusers.py, including its norm2/norm3 swap (the original
  block applies norm1, norm3 (affine, before cross-attention), norm2; diffusers renumbers them
  in call order, so diffusers ``norm2`` holds the original ``norm3``);
- any of those under a prefix shared by every key: ``model.`` (Self-Forcing / LongLive wrappers,
  Krea), ``diffusion_model.`` / ``model.diffusion_model.`` (ComfyUI), ``module.`` (DDP), ...;
- with wrapper components anywhere in a name: ``_orig_mod`` (torch.compile),
  ``_fsdp_wrapped_module`` / ``_checkpoint_wrapped_module`` (FSDP / activation checkpointing).

Tensor shapes are the same in both conventions (diffusers' block ``scale_shift_table`` is
(1, 6, dim) and the top-level one (1, 2, dim), exactly the original ``modulation`` shapes);
a modulation stored without its leading 1 is reshaped, nothing else is touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, TypeVar

import torch

from .safetensors_io import CheckpointError

V = TypeVar("V")

# Module-path components inserted by training wrappers; they never belong to the model.
WRAPPER_COMPONENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")

# Prefixes tried when no key identifies the model root (e.g. a LoRA file); longest first.
KNOWN_PREFIXES = (
    "base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.",
    "model.", "module.",
)

# Every DiT has exactly one patch embedding; its key tells where the model root is.
_ANCHOR = "patch_embedding.weight"

# original <-> diffusers, for module paths outside the blocks
_TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.modulation": "scale_shift_table",
    "head.head": "proj_out",
    # I2V only: mapped so that an I2V checkpoint is recognised (and refused) in either naming.
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}

# original <-> diffusers, for module paths inside ``blocks.N.``
_BLOCK = {
    "modulation": "scale_shift_table",
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "norm3": "norm2",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}

# Names that only one convention uses; enough to tell which one a file follows.
_DIFFUSERS_MARKERS = re.compile(r"(^|\.)(condition_embedder|attn1|attn2|scale_shift_table|proj_out|ffn\.net)(\.|$)")
_WAN_MARKERS = re.compile(r"(^|\.)(text_embedding|time_embedding|time_projection|self_attn|cross_attn|head\.head|modulation)(\.|$)")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class NamingInfo:
    convention: str            # "wan" | "diffusers"
    prefix: str                # stripped prefix, "" if none
    wrappers: tuple[str, ...]  # wrapper components removed from inside names


def _invert(d: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in d.items()}


def _rename(key: str, top: Mapping[str, str], block: Mapping[str, str]) -> str | None:
    """Map one parameter name through the module-path tables; None if nothing matches."""
    m = _BLOCK_KEY.match(key)
    if m:
        idx, rest = m.groups()
        table, head, key_rest = block, f"blocks.{idx}.", rest
    else:
        table, head, key_rest = top, "", key
    # Longest module path first, so "attn1.norm_q" is not taken for a shorter match.
    for src in sorted(table, key=len, reverse=True):
        if key_rest == src or key_rest.startswith(src + "."):
            return head + table[src] + key_rest[len(src):]
    return None


def strip_wrappers(keys: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """{old: new} with wrapper components removed from every key, and which were seen."""
    seen: set[str] = set()
    out = {}
    for k in keys:
        parts = k.split(".")
        kept = [p for p in parts if p not in WRAPPER_COMPONENTS]
        seen.update(p for p in parts if p in WRAPPER_COMPONENTS)
        out[k] = ".".join(kept)
    return out, tuple(sorted(seen))


def detect_prefix(keys: list[str]) -> str:
    """The prefix in front of the model's own names ("" if none).

    Found from the one key that ends in ``patch_embedding.weight``; without such a key (a LoRA
    file, a partial dict) a known wrapper prefix is stripped only if every key carries it.
    """
    anchors = [k for k in keys if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    if len(anchors) > 1:
        raise CheckpointError(
            f"the file holds {len(anchors)} models ({', '.join(anchors[:4])}); arvc expects one "
            "DiT per file. Extract the generator's state dict into its own file.")
    if anchors:
        return anchors[0][: -len(_ANCHOR)]
    prefix = ""
    rest = list(keys)
    changed = True
    while changed and rest:
        changed = False
        for p in KNOWN_PREFIXES:
            if all(k.startswith(p) for k in rest):
                prefix += p
                rest = [k[len(p):] for k in rest]
                changed = True
                break
    return prefix


def detect_convention(keys: list[str]) -> str:
    diff = [k for k in keys if _DIFFUSERS_MARKERS.search(k)]
    wan = [k for k in keys if _WAN_MARKERS.search(k)]
    if diff and wan:
        raise CheckpointError(
            "the state dict mixes original Wan names (e.g. "
            f"{wan[0]!r}) with diffusers names (e.g. {diff[0]!r}); it was partly converted. "
            "Re-export it in one naming.")
    return "diffusers" if diff else "wan"


def _fix_modulation(name: str, value: V) -> V:
    # Original shapes are (1, 6, dim) per block and (1, 2, dim) for the head; a copy stored
    # without the leading 1 is the same data.
    if not isinstance(value, torch.Tensor):
        return value
    if (name.endswith(".modulation") and value.dim() == 2 and value.shape[0] in (2, 6)):
        return value.reshape(1, *value.shape)  # type: ignore[return-value]
    return value


def to_original_names(sd: Mapping[str, V]) -> tuple[dict[str, V], NamingInfo]:
    """Return ``sd`` under original Wan names, and how it was named.

    Keys outside the detected prefix, and keys with no counterpart in the diffusers tables, are
    kept as they are so that validation can list them as unexpected.
    """
    keys = list(sd)
    unwrapped, wrappers = strip_wrappers(keys)
    prefix = detect_prefix(list(unwrapped.values()))
    local = {}
    for k in keys:
        u = unwrapped[k]
        local[k] = u[len(prefix):] if prefix and u.startswith(prefix) else u
    convention = detect_convention([v for v in local.values()])
    to_wan_top, to_wan_block = _invert(_TOP_LEVEL), _invert(_BLOCK)
    out: dict[str, V] = {}
    for k in keys:
        name = local[k]
        if convention == "diffusers":
            name = _rename(name, to_wan_top, to_wan_block) or name
        if name in out:
            raise CheckpointError(f"two tensors map to the same name {name!r} (one of them is {k!r}); "
                                  "the file holds duplicate weights.")
        out[name] = _fix_modulation(name, sd[k])
    return out, NamingInfo(convention=convention, prefix=prefix, wrappers=wrappers)


def to_diffusers_names(sd: Mapping[str, V]) -> dict[str, V]:
    """Rename an original-named Wan DiT state dict to diffusers ``WanTransformer3DModel`` names."""
    out: dict[str, V] = {}
    unknown = []
    for k, v in sd.items():
        new = _rename(k, _TOP_LEVEL, _BLOCK)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise CheckpointError(f"{len(unknown)} names have no diffusers counterpart: {unknown[:10]}; "
                              "pass a state dict in original Wan names (see to_original_names).")
    return out
