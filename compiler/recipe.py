"""Precision recipes: what each stage stores and computes in. Data, frozen, serialized with a version.

A recipe names the weight format, the activation format (None: the compute dtype), the KV-cache format
and the layers kept at full precision (``skip``: fnmatch patterns over layer names such as
``patch_embedding``, ``head.head``, ``blocks.0.*``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

RECIPE_VERSION = 1
FLOAT_FORMATS = ("fp32", "fp16", "bf16")
QUANTIZED_FORMATS = ("int8", "fp8", "nvfp4")

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
    activations: str | None = None
    kv_cache: str = "fp32"
    skip: tuple[str, ...] = ()
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        known = FLOAT_FORMATS + QUANTIZED_FORMATS
        if self.weights not in known or self.kv_cache not in known:
            raise ValueError(f"recipe {self.name}: formats must be one of {known}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if d.get("version", 0) > RECIPE_VERSION:
            raise ValueError(f"recipe version {d['version']} is newer than this arvc reads ({RECIPE_VERSION})")
        return cls(**{**d, "skip": tuple(d.get("skip", ()))})


KV_FORMATS_BUILT = ("fp32", "int8")
DEFAULT_MIN_PSNR_KV = {"int8": 38.0}  # the KV cache alone; the gate uses the lower of the two defaults


def recipe_for(precision: str, target: str = "cpu", kv_cache: str = "fp32") -> Recipe:
    kv_cache = "fp32" if kv_cache in (None, "none") else kv_cache
    if kv_cache not in KV_FORMATS_BUILT:
        raise ValueError(f"--kv-cache {kv_cache}: built KV-cache formats are {KV_FORMATS_BUILT} "
                         "(none = fp32); fp8 and nvfp4 caches are not built yet")
    name = precision if kv_cache == "fp32" else f"{precision}+kv-{kv_cache}"
    if precision in QUANTIZED_FORMATS:
        # weights: block linears stored quantized, decoded before the GEMM; activations stay fp32
        return Recipe(name=name, weights=precision, compute="fp32", kv_cache=kv_cache, skip=DEFAULT_SKIP)
    if precision not in FLOAT_FORMATS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {FLOAT_FORMATS + QUANTIZED_FORMATS}")
    # ORT's CPU kernels compute in fp32: fp16/bf16 plans store half-size weights and widen them on load.
    return Recipe(name=name, weights=precision, compute="fp32", kv_cache=kv_cache)


def default_min_psnr(precision: str, kv_cache: str) -> float:
    return min(DEFAULT_MIN_PSNR[precision], DEFAULT_MIN_PSNR_KV.get(kv_cache, float("inf")))
