"""Precision recipes: what each stage stores and computes in. Data, frozen, serialized with a version.

A recipe names the weight format, the activation format (None: the compute dtype), the KV-cache format
and the layers kept at full precision (``skip``: fnmatch patterns over layer names such as
``patch_embedding``, ``head.head``, ``blocks.0.*``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from arvc.quant.kv import KV_FORMATS

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
    kv_sink: str | None = None  # the sink frames' KV format when it differs from kv_cache
    skip: tuple[str, ...] = ()
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        known = FLOAT_FORMATS + QUANTIZED_FORMATS
        if self.weights not in known:
            raise ValueError(f"recipe {self.name}: weights {self.weights!r} must be one of {known}")
        for kv in (self.kv_cache, self.kv_sink or self.kv_cache):
            if kv not in KV_FORMATS:
                raise ValueError(f"recipe {self.name}: KV-cache format {kv!r} must be one of {KV_FORMATS}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if d.get("version", 0) > RECIPE_VERSION:
            raise ValueError(f"recipe version {d['version']} is newer than this arvc reads ({RECIPE_VERSION})")
        return cls(**{**d, "skip": tuple(d.get("skip", ()))})


# The KV cache alone (decoded frames vs fp32, dB); the gate uses the lower of the two defaults.
DEFAULT_MIN_PSNR_KV = {"fp16": 40.0, "int8": 38.0, "fp8": 38.0, "nvfp4": 28.0}


def recipe_for(precision: str, target: str = "cpu", kv_cache: str = "fp32", kv_sink: str | None = None) -> Recipe:
    kv_cache = "fp32" if kv_cache in (None, "none") else kv_cache
    kv_sink = None if kv_sink in (None, "same", kv_cache) else kv_sink
    if kv_cache not in KV_FORMATS or (kv_sink and kv_sink not in KV_FORMATS):
        raise ValueError(f"--kv-cache {kv_cache} / --kv-sink-precision {kv_sink}: KV-cache formats are {KV_FORMATS} "
                         "(none = fp32, same = the cache's)")
    name = precision if kv_cache == "fp32" else f"{precision}+kv-{kv_cache}"
    name += f"+sink-{kv_sink}" if kv_sink else ""
    if precision in QUANTIZED_FORMATS:
        # weights: block linears stored quantized, decoded before the GEMM; activations stay fp32
        return Recipe(name=name, weights=precision, compute="fp32", kv_cache=kv_cache, kv_sink=kv_sink,
                      skip=DEFAULT_SKIP)
    if precision not in FLOAT_FORMATS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {FLOAT_FORMATS + QUANTIZED_FORMATS}")
    # ORT's CPU kernels compute in fp32: fp16/bf16 plans store half-size weights and widen them on load.
    return Recipe(name=name, weights=precision, compute="fp32", kv_cache=kv_cache, kv_sink=kv_sink)


def default_min_psnr(precision: str, kv_cache: str, kv_sink: str | None = None) -> float:
    kv = [DEFAULT_MIN_PSNR_KV.get(f, float("inf")) for f in (kv_cache, kv_sink) if f]
    return min(DEFAULT_MIN_PSNR[precision], *kv)
