"""Precision recipes: what each stage stores and computes in. Data, frozen, serialized with a version.

A recipe names the weight format, the activation quantization of the block GEMMs (None: the compute
dtype; ``static`` calibrated scales per layer or per timestep, or ``dynamic`` per-token scales, in the
format quant/activations.py pairs with the layer's weights), the KV-cache format
and the layers kept at full precision (``skip``: fnmatch patterns over layer names such as
``patch_embedding``, ``head.head``, ``blocks.0.*``; ``keep`` says why each extra one is kept), and
per-layer weight formats that differ from the recipe's (``layer_formats``).

Recipe file (``arvc compile --recipe FILE``), JSON; every key optional, command-line flags win:

    {"format": "arvc-recipe", "version": 1,
     "precision": "int8", "activations": "static", "act_scales": "per-layer",
     "kv_cache": "fp8", "kv_sink_precision": "fp16",
     "calib_prompts": "calib.txt", "calib_blocks": 12,
     "keep": {"blocks.0.self_attn.*": "first block: its K/V feed every later block"},
     "layers": {"blocks.*.ffn.2": "fp8"}}
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .activations import ACT_FORMAT_OF_WEIGHTS, ACT_MODES, ACT_SCALES, ActQuant, scale_from_amax
from .format_table import COMPUTE_FORMATS, FLOAT_FORMATS, KV_FORMATS, QUANTIZED_FORMATS

RECIPE_VERSION = 1

# Default parity thresholds (decoded-frame PSNR vs the fp32 reference, dB) per precision.
DEFAULT_MIN_PSNR = {"fp32": 60.0, "fp16": 40.0, "bf16": 30.0, "int8": 35.0, "fp8": 32.0, "nvfp4": 25.0}

# Kept high precision by default: the patch embedding, the time/text embeddings and the head are
# tiny and sensitive (DESIGN section 3); only the block linears are quantized anyway.
DEFAULT_SKIP = ("patch_embedding", "text_embedding.*", "time_embedding.*", "time_projection.*", "head.head")


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: str  # DiT weight storage format
    compute: str = "fp32"  # arithmetic dtype of the target (ORT CPU computes in fp32)
    activations: str | None = None  # None | static | dynamic (quant/activations.py)
    act_scales: str = "per-layer"  # static scales: per-layer | per-timestep
    kv_cache: str = "fp32"
    kv_sink: str | None = None  # the sink frames' KV format when it differs from kv_cache
    skip: tuple[str, ...] = ()
    keep: tuple[tuple[str, str], ...] = ()  # (pattern, why) kept at full precision beyond the defaults
    layer_formats: tuple[tuple[str, str], ...] = ()  # (pattern, weight format) overriding `weights`
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        known = FLOAT_FORMATS + QUANTIZED_FORMATS
        if self.weights not in known:
            raise ValueError(f"recipe {self.name}: weights {self.weights!r} must be one of {known}")
        if self.compute not in COMPUTE_FORMATS:
            raise ValueError(f"recipe {self.name}: compute {self.compute!r} must be one of {COMPUTE_FORMATS}")
        for kv in (self.kv_cache, self.kv_sink or self.kv_cache):
            if kv not in KV_FORMATS:
                raise ValueError(f"recipe {self.name}: KV-cache format {kv!r} must be one of {KV_FORMATS}")
        if self.activations is not None:
            if self.activations not in ACT_MODES:
                raise ValueError(f"recipe {self.name}: activations {self.activations!r} must be one of {ACT_MODES} "
                                 "or none")
            if self.weights not in QUANTIZED_FORMATS:
                raise ValueError(f"recipe {self.name}: activation quantization pairs with quantized weights "
                                 f"(--precision int8|fp8|nvfp4), not {self.weights}")
        if self.act_scales not in ACT_SCALES:
            raise ValueError(f"recipe {self.name}: act_scales {self.act_scales!r} must be one of {ACT_SCALES}")
        for pattern, fmt in self.layer_formats:
            if fmt not in QUANTIZED_FORMATS:
                raise ValueError(f"recipe {self.name}: layer {pattern!r} format {fmt!r} must be one of "
                                 f"{QUANTIZED_FORMATS} (keep a layer at full precision with \"keep\")")

    def weight_format(self, layer: str) -> str:
        """The storage format of one quantizable layer (the first matching override, else ``weights``)."""
        return next((f for p, f in self.layer_formats if fnmatch.fnmatchcase(layer, p)), self.weights)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip"] = list(self.skip)
        d["keep"] = dict(self.keep)
        d["layer_formats"] = dict(self.layer_formats)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if d.get("version", 0) > RECIPE_VERSION:
            raise ValueError(f"recipe version {d['version']} is newer than this arvc reads ({RECIPE_VERSION})")
        return cls(**{**d, "skip": tuple(d.get("skip", ())), "keep": tuple(d.get("keep", {}).items()),
                      "layer_formats": tuple(d.get("layer_formats", {}).items())})


# The KV cache alone (decoded frames vs fp32, dB); the gate uses the lower of the two defaults.
DEFAULT_MIN_PSNR_KV = {"fp16": 40.0, "int8": 38.0, "fp8": 38.0, "nvfp4": 28.0}


def recipe_for(precision: str, kv_cache: str = "fp32", kv_sink: str | None = None,
               keep: dict | None = None, layer_formats: dict | None = None, activations: str | None = None,
               act_scales: str = "per-layer") -> Recipe:
    kv_cache = "fp32" if kv_cache in (None, "none") else kv_cache
    kv_sink = None if kv_sink in (None, "same", kv_cache) else kv_sink
    if kv_cache not in KV_FORMATS or (kv_sink and kv_sink not in KV_FORMATS):
        raise ValueError(f"--kv-cache {kv_cache} / --kv-sink-precision {kv_sink}: KV-cache formats are {KV_FORMATS} "
                         "(none = fp32, same = the cache's)")
    name = precision if kv_cache == "fp32" else f"{precision}+kv-{kv_cache}"
    name += f"+sink-{kv_sink}" if kv_sink else ""
    activations = None if activations in (None, "none") else activations
    if activations and precision not in QUANTIZED_FORMATS:
        raise ValueError(f"--activations {activations} quantizes GEMM inputs next to quantized weights; "
                         f"pass --precision int8|fp8|nvfp4 (got {precision}) or --activations none")
    if activations:
        name = name.replace(precision, f"{precision}+act-{activations}" +
                            ("-per-timestep" if activations == "static" and act_scales == "per-timestep" else ""), 1)
    if precision in QUANTIZED_FORMATS:
        # weights: block linears stored quantized, decoded before the GEMM (Q/DQ on their inputs with activations)
        keep = tuple((keep or {}).items())
        return Recipe(name=name, weights=precision, compute="fp32", activations=activations, act_scales=act_scales,
                      kv_cache=kv_cache, kv_sink=kv_sink,
                      skip=DEFAULT_SKIP + tuple(p for p, _ in keep), keep=keep,
                      layer_formats=tuple((layer_formats or {}).items()))
    if precision not in FLOAT_FORMATS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {FLOAT_FORMATS + QUANTIZED_FORMATS}")
    if keep or layer_formats:
        raise ValueError(f"per-layer keep / formats apply to quantized weights; --precision {precision} quantizes none")
    # ORT's CPU kernels compute in fp32: fp16/bf16 plans store half-size weights and widen them on load.
    return Recipe(name=name, weights=precision, compute="fp32", kv_cache=kv_cache, kv_sink=kv_sink)


def default_min_psnr(precision: str, kv_cache: str, kv_sink: str | None = None) -> float:
    kv = [DEFAULT_MIN_PSNR_KV.get(f, float("inf")) for f in (kv_cache, kv_sink) if f]
    return min(DEFAULT_MIN_PSNR[precision], *kv)


RECIPE_FILE_KEYS = {"format", "version", "precision", "activations", "act_scales", "kv_cache", "kv_sink_precision",
                    "keep", "layers", "calib_prompts", "calib_blocks"}


def read_recipe_file(path: str | Path) -> dict:
    """A recipe file (format in this module's docstring) -> its settings; errors name the key and the fix."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--recipe {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--recipe {path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != "arvc-recipe":
        raise ValueError(f'--recipe {path}: not an arvc recipe (expected a JSON object with "format": "arvc-recipe")')
    if d.get("version", 1) > RECIPE_VERSION:
        raise ValueError(f"--recipe {path}: version {d['version']} is newer than this arvc reads ({RECIPE_VERSION})")
    unknown = set(d) - RECIPE_FILE_KEYS
    if unknown:
        raise ValueError(f"--recipe {path}: unknown key(s) {sorted(unknown)}; known: {sorted(RECIPE_FILE_KEYS)}")
    for key in ("keep", "layers"):
        if not isinstance(d.get(key, {}), dict) or not all(isinstance(v, str) for v in d.get(key, {}).values()):
            raise ValueError(f'--recipe {path}: "{key}" must map layer patterns to strings')
    return {k: v for k, v in d.items() if k not in ("format", "version")}


def act_quant_table(recipe: Recipe, calibration: dict | None, layers: list[str]) -> dict:
    """layer -> ActQuant for the recipe (static scales from the calibration, compiler/calibrate.py's record)."""
    out = {}
    for n in layers:
        fmt = ACT_FORMAT_OF_WEIGHTS[recipe.weight_format(n)]
        if recipe.activations == "dynamic":
            out[n] = ActQuant(fmt, "dynamic")
            continue
        amax = torch.tensor(calibration["amax"][n], dtype=torch.float32)
        amax = amax if recipe.act_scales == "per-timestep" else amax.max()
        out[n] = ActQuant(fmt, "static", scale_from_amax(amax, fmt))
    return out
