"""Recover a WanConfig from the tensor shapes of an original-named DiT state dict.

Read from shapes:
    dim, in_channels, patch_size   patch_embedding.weight   (dim, in, pt, ph, pw)
    text_dim                        text_embedding.0.weight  (dim, text_dim)
    freq_dim                        time_embedding.0.weight  (dim, freq_dim)
    ffn_dim                         blocks.0.ffn.0.weight    (ffn_dim, dim)
    out_channels                    head.head.weight         (pt*ph*pw*out, dim)
    num_layers                      the blocks.N indices (must be 0..L-1)

The head count is not in any shape. The rule, in order:
    1. an explicit ``num_heads`` argument;
    2. the safetensors metadata: "arvc.num_heads", else "num_heads" inside "arvc.config";
    3. Wan's own rule, head_dim 128: num_heads = dim // 128 when dim % 128 == 0 and dim >= 1024
       (1.3B: 1536 -> 12, 14B: 5120 -> 40);
    otherwise an error asking for (1) or (2). Small test models use other head dims, which is why
    save_dit always records "arvc.num_heads".
Fields no shape carries (text_len, eps, rope_max_positions) come from "arvc.config" metadata when
present and are Wan's defaults otherwise; shape-derived fields must agree with that metadata.
Nothing is read from file names.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from arvc.model.config import WanConfig

from .safetensors_io import CheckpointError

WAN_HEAD_DIM = 128
I2V_MESSAGE = ("image-to-video Wan2.1 (I2V) is not supported; arvc compiles text-to-video causal "
               "generators")

_REQUIRED = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
             "blocks.0.ffn.0.weight", "head.head.weight")
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v))


def is_i2v(keys: list[str]) -> bool:
    return any(".k_img." in k or ".v_img." in k or ".norm_k_img." in k or k.startswith("img_emb.")
               for k in keys)


def not_a_wan_dit_message(keys: list[str]) -> str:
    sample = sorted(keys)[:6]
    if any(k.startswith("decoder.") for k in keys) and any(k.startswith(("encoder.", "conv2.")) for k in keys):
        kind = "it looks like the Wan VAE (decoder.* / encoder.* weights), not the DiT; pass it as the VAE"
    elif not keys:
        kind = "it holds no tensors"
    else:
        kind = f"found {len(keys)} tensors such as {sample}"
    return ("not a Wan2.1 text-to-video DiT checkpoint: " + kind + ". Expected original Wan names "
            "(patch_embedding.weight, text_embedding.0.weight, blocks.0.self_attn.q.weight, ..., "
            "head.head.weight), diffusers WanTransformer3DModel names, or either under a "
            "'model.' / 'diffusion_model.' prefix.")


def _metadata_config(metadata: Mapping[str, str]) -> dict[str, Any]:
    raw = metadata.get("arvc.config")
    if not raw:
        return {}
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"metadata 'arvc.config' is not valid JSON ({e}); re-save the file with save_dit.") from None
    if not isinstance(d, dict):
        raise CheckpointError("metadata 'arvc.config' is not a JSON object; re-save the file with save_dit.")
    return d


def _resolve_heads(dim: int, num_heads: int | None, metadata: Mapping[str, str],
                   meta_cfg: Mapping[str, Any]) -> int:
    if num_heads is not None:
        return int(num_heads)
    if "arvc.num_heads" in metadata:
        try:
            return int(metadata["arvc.num_heads"])
        except ValueError:
            raise CheckpointError(f"metadata 'arvc.num_heads' = {metadata['arvc.num_heads']!r} is not an integer.") from None
    if "num_heads" in meta_cfg:
        return int(meta_cfg["num_heads"])
    if dim % WAN_HEAD_DIM == 0 and dim >= 1024:
        return dim // WAN_HEAD_DIM
    raise CheckpointError(
        f"cannot infer the number of attention heads for dim {dim}: Wan models use head_dim "
        f"{WAN_HEAD_DIM} (dim a multiple of 128, >= 1024), which this is not. Store the head count "
        "in the safetensors metadata key 'arvc.num_heads' (save_dit does this) or pass num_heads=.")


def infer_wan_config(sd: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                     num_heads: int | None = None) -> WanConfig:
    """WanConfig of an original-named DiT state dict (values: tensors, meta tensors or shapes)."""
    metadata = metadata or {}
    keys = list(sd)
    if is_i2v(keys):
        found = [k for k in keys if "_img" in k or k.startswith("img_emb.")][:3]
        raise CheckpointError(f"{I2V_MESSAGE} (found {found}).")
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(not_a_wan_dit_message(keys) + f" Missing: {missing}.")

    pe = _shape(sd["patch_embedding.weight"])
    if len(pe) != 5:
        raise CheckpointError(f"patch_embedding.weight has shape {pe}; a Wan DiT's is (dim, in_channels, pt, ph, pw).")
    dim, in_channels, patch = pe[0], pe[1], pe[2:]
    text = _shape(sd["text_embedding.0.weight"])
    time = _shape(sd["time_embedding.0.weight"])
    ffn = _shape(sd["blocks.0.ffn.0.weight"])
    head = _shape(sd["head.head.weight"])
    for name, shp in (("text_embedding.0.weight", text), ("time_embedding.0.weight", time),
                      ("blocks.0.ffn.0.weight", ffn), ("head.head.weight", head)):
        if len(shp) != 2:
            raise CheckpointError(f"{name} has shape {shp}; expected a 2-D Linear weight.")
    patch_volume = patch[0] * patch[1] * patch[2]
    if head[0] % patch_volume:
        raise CheckpointError(f"head.head.weight has {head[0]} outputs, not a multiple of the patch "
                              f"volume {patch_volume} (patch {patch}).")

    layers = sorted({int(m.group(1)) for k in keys if (m := _BLOCK_INDEX.match(k))})
    if layers != list(range(len(layers))):
        gaps = sorted(set(range(max(layers) + 1)) - set(layers))
        raise CheckpointError(f"transformer blocks are not numbered 0..{max(layers)}: blocks {gaps[:10]} are missing.")

    meta_cfg = _metadata_config(metadata)
    inferred = dict(
        dim=dim, ffn_dim=ffn[0], num_layers=len(layers), in_channels=in_channels,
        out_channels=head[0] // patch_volume, patch_size=tuple(patch), text_dim=text[1],
        freq_dim=time[1],
    )
    for field, value in inferred.items():
        if field in meta_cfg:
            stored = tuple(meta_cfg[field]) if field == "patch_size" else meta_cfg[field]
            if stored != value:
                raise CheckpointError(f"metadata 'arvc.config' says {field}={stored} but the tensor "
                                      f"shapes say {value}; the file was edited after saving. "
                                      "Re-save it with save_dit.")
    extras = {k: meta_cfg[k] for k in ("text_len", "eps", "rope_max_positions") if k in meta_cfg}
    heads = _resolve_heads(dim, num_heads, metadata, meta_cfg)
    try:
        return WanConfig(num_heads=heads, **inferred, **extras)
    except ValueError as e:
        raise CheckpointError(f"the shapes give an invalid config: {e}.") from None
