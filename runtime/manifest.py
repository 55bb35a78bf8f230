"""A plan's manifest.json as typed, frozen data: the one definition of its fields (docs/plan-format.md).

``Manifest.from_json`` reads what `arvc compile` writes and refuses anything else with a message naming the
field and the fix: a missing field, a wrong type, a field this arvc does not know (a newer compiler wrote
it), values that contradict each other. ``to_json`` gives back the same JSON object, keys in the same order,
so ``plan.seal_manifest(m.to_json())`` is the file byte for byte. The sections reuse the model's own
dataclasses (WanConfig, WanVAEConfig, Numerics, CacheGeometry, Schedule, Recipe), whose fields are the JSON's.

What the readers derive from it (cache rows, latent shapes, the KV cache's buffers by quant/kv.kv_regions) is
derived here, once.
The C reader (runtime/src/plan.cpp) mirrors these fields; tests/test_c_runtime.py holds the two together on
every plan the tests compile.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import re
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from arvc.checkpoints import strict_json
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import Numerics, WanConfig, WanVAEConfig, check_range
from arvc.model.schedule import Schedule
from arvc.quant.format_table import COMPUTE_FORMATS, WEIGHT_FORMATS
from arvc.quant.kv import KVRegion, kv_parts, kv_regions
from arvc.quant.recipe import RECIPE_VERSION, Recipe, act_quant_table
from arvc.version import __version__

FORMAT = "arvc-plan"
# 2: a --target tensorrt plan no longer stores dit_trt / text_trt (TensorRT's form is derived at load:
# runtime/trt_graphs.py). Version 1 plans load: their stored TensorRT graphs are left unread.
SCHEMA_VERSION = 2
RECOMPILE = "recompile the plan with this arvc (arvc compile)"
CORRUPTED = "the plan is corrupted, recompile it from its checkpoint (arvc compile)"
MANIFEST = "manifest.json"
# a key written only when it has a value (the others are always written, null included)
OPTIONAL_KEY = {"optional_key": True}
MAX_NESTING = 64  # JSON depth; the manifest object is depth 1
MAX_CACHE_TOKENS = 2 ** 24  # rows of one layer's K cache
MAX_FILE_BYTES = 2 ** 53  # what a JSON number holds exactly
TARGETS = ("cpu", "cuda", "tensorrt")
BACKENDS = ("ort", "torch", "tensorrt")  # runtime/backends.py opens each
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """The manifest is not one this arvc reads; the message names the field and the fix."""


class ManifestIntegrityError(ManifestError):
    """The manifest lacks what every plan has (corrupted, not merely from another arvc)."""


# -- the sections ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    checkpoint: str
    sha256: str


@dataclass(frozen=True)
class TextEncoderSpec:
    """The model's own text encoder (the tiny model's word-level one)."""

    vocab: tuple[str, ...]
    max_len: int
    dim: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.vocab) <= 1_000_000:
            raise ValueError(f"vocab must hold 1..1,000,000 words, not {len(self.vocab)}")
        bad = next((w for w in self.vocab if not w or any(c in " \t\n\v\f\r\0" for c in w)), None)
        if bad is not None:
            raise ValueError(f"vocab holds {json.dumps(bad)[:40]}: a word is non-empty, without whitespace or NUL")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab holds a word twice: its words are distinct")


@dataclass(frozen=True)
class Model:
    dit: WanConfig
    vae: WanVAEConfig
    text_encoder: TextEncoderSpec | None

    def __post_init__(self) -> None:
        dit, te = self.dit, self.text_encoder
        if self.vae.z_dim != dit.in_channels:
            raise ValueError(f"vae.z_dim {self.vae.z_dim} must equal dit.in_channels {dit.in_channels}")
        if te and te.max_len != dit.text_len:
            raise ValueError(f"text_encoder.max_len {te.max_len} must equal dit.text_len {dit.text_len}")
        if te and te.dim != dit.text_dim:
            raise ValueError(f"text_encoder.dim {te.dim} must equal dit.text_dim {dit.text_dim}")


@dataclass(frozen=True)
class Resolution:
    height: int
    width: int
    fps: int
    latent_h: int
    latent_w: int
    tokens_per_frame: int
    tokens_per_block: int
    cache_tokens: int  # rows of each layer's K (and V) cache: every slot's tokens

    def __post_init__(self) -> None:
        check_range("height", self.height, 1, 8192)
        check_range("width", self.width, 1, 8192)
        check_range("fps", self.fps, 1, 240)
        check_range("latent_h", self.latent_h, 1, 1024)
        check_range("latent_w", self.latent_w, 1, 1024)

    @classmethod
    def derive(cls, height: int, width: int, fps: int, latent_hw: tuple[int, int], cfg: WanConfig,
               geometry: CacheGeometry) -> Resolution:
        tpf = (latent_hw[0] // cfg.patch_size[1]) * (latent_hw[1] // cfg.patch_size[2])
        return cls(height, width, fps, latent_hw[0], latent_hw[1], tpf, tpf * geometry.frames_per_block,
                   tpf * geometry.capacity_frames)


@dataclass(frozen=True)
class VaeGraphs:
    first: str  # the video's first latent frame
    steady: str  # every later one


@dataclass(frozen=True, kw_only=True)
class Stage:
    graph: str | None = field(default=None, metadata=OPTIONAL_KEY)
    graphs: VaeGraphs | None = field(default=None, metadata=OPTIONAL_KEY)  # the VAE's two graphs
    weights: str
    weights_dtype: str
    compute: str

    def __post_init__(self) -> None:
        if (self.graph is None) == (self.graphs is None):
            raise ManifestError(f"a stage has either 'graph' or 'graphs' (the VAE's first / steady); {RECOMPILE}")
        if self.weights_dtype not in WEIGHT_FORMATS:
            raise ValueError(f"weights_dtype {self.weights_dtype!r} must be one of {WEIGHT_FORMATS}")
        if self.compute not in COMPUTE_FORMATS:
            raise ValueError(f"compute {self.compute!r} must be one of {COMPUTE_FORMATS}")

    @property
    def files(self) -> tuple[str, ...]:
        graphs = (self.graph,) if self.graph is not None else (self.graphs.first, self.graphs.steady)
        return (*graphs, self.weights)


@dataclass(frozen=True)
class Stages:
    text: Stage
    dit: Stage
    vae: Stage
    text_encoder: Stage | None = field(default=None, metadata=OPTIONAL_KEY)  # a model with its own encoder

    def __post_init__(self) -> None:
        for name, stage in self.items():  # the VAE has two graphs (first / steady), every other stage one
            if (stage.graphs is not None) != (name == "vae"):
                want = "'graphs' (first / steady)" if name == "vae" else "one 'graph'"
                raise ManifestError(f"the {name} stage must name {want}; {RECOMPILE}")

    def items(self) -> list[tuple[str, Stage]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]


@dataclass(frozen=True)
class Memory:
    kv_cache_bytes: int
    kv_bytes_per_cached_token: int  # all layers, K + V
    kv_bytes_per_sink_token: int
    kv_bytes_vs_fp16: float
    dit_activation_bytes_estimate: int
    weights_bytes: dict[str, int]  # per safetensors file
    quantized_linear_bytes_per_parameter: float | None  # None: no quantized linears
    vae_state_bytes: int  # both state sets
    dit_weight_bytes_per_parameter: float

    def __post_init__(self) -> None:
        figures = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "weights_bytes"}
        figures.update({f"weights_bytes.{k}": v for k, v in self.weights_bytes.items()})
        negative = next((k for k, v in figures.items() if v is not None and v < 0), None)
        if negative:
            raise ValueError(f"{negative} is {figures[negative]}: memory figures are non-negative")


@dataclass(frozen=True)
class Target:
    name: str  # --target: cpu | cuda | tensorrt
    backend: str  # the default backend (runtime/backends.py)
    providers: tuple[str, ...]
    opset: int

    def __post_init__(self) -> None:
        if self.name not in TARGETS:
            raise ValueError(f"name {self.name!r} must be one of {TARGETS}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} must be one of {BACKENDS}")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def __post_init__(self) -> None:
        if not SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, not {json.dumps(self.sha256)[:70]}")
        check_range("bytes", self.bytes, 0, MAX_FILE_BYTES)


@dataclass(frozen=True)
class PlanRecipe(Recipe):
    """The recipe a plan was compiled with, and what compiling it did."""

    quantized_weights: tuple[str, ...] = ()  # the weight tensors stored quantized
    kept_layers: dict[str, str] = field(default_factory=dict)  # layer -> why it stayed full precision
    quantized_activations: tuple[str, ...] = ()  # the GEMMs whose inputs are quantized
    calibration: dict | None = None  # static activation scales' record (compiler/calibrate.py)
    sensitivity: dict | None = None  # the sweep's table when --sensitivity ran

    @classmethod
    def of(cls, recipe: Recipe, **records) -> PlanRecipe:
        return cls(**{f.name: getattr(recipe, f.name) for f in fields(Recipe)}, **records)

    def __post_init__(self) -> None:
        if self.version > RECIPE_VERSION:
            raise ManifestError(f"recipe version {self.version} is newer than this arvc reads ({RECIPE_VERSION}); "
                                "upgrade arvc, or recompile the plan with this one")
        super().__post_init__()

    @property
    def act_timesteps(self) -> tuple[float, ...]:
        """The timesteps static per-timestep activation scales were calibrated at (empty without calibration)."""
        return tuple(self.calibration["timesteps"]) if self.calibration else ()

    @property
    def weight_formats(self) -> dict[str, str]:
        """layer -> storage format of every quantized linear."""
        layers = (w.rsplit(".weight", 1)[0] for w in self.quantized_weights)
        return {layer: self.weight_format(layer) for layer in layers}

    def act_quant(self) -> tuple[dict, tuple[float, ...]]:
        """The plan's activation quantization: layer -> ActQuant, and the calibrated timesteps ({}, () if none)."""
        if not self.quantized_activations:
            return {}, ()
        return act_quant_table(self, self.calibration, list(self.quantized_activations)), self.act_timesteps


# -- the manifest --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Manifest:
    format: str = FORMAT
    schema_version: int = SCHEMA_VERSION
    arvc_version: str
    created: str  # UTC, ISO 8601
    source: Source
    model: Model
    numerics: Numerics
    schedule: Schedule
    geometry: CacheGeometry
    resolution: Resolution
    precision: str  # the recipe's name
    recipe: PlanRecipe
    stages: Stages
    memory: Memory
    target: Target
    versions: dict[str, str]  # of the compiler's packages
    files: dict[str, FileEntry]  # every other file of the plan
    verification: dict | None  # the parity gate's record (compiler/verify.py); None while compiling
    manifest_sha256: str | None = field(default=None, metadata=OPTIONAL_KEY)  # set by plan.seal_manifest's text

    def __post_init__(self) -> None:
        self._check_resolution()
        for region in self.kv_regions():  # a format's rows must suit the heads (nvfp4: 16-value blocks)
            try:
                kv_parts(region.format, self.model.dit.dim, self.model.dit.num_heads)
            except ValueError as e:
                raise ManifestError(f"recipe.kv_cache: {e}; {RECOMPILE}") from None
        if (self.stages.text_encoder is None) != (self.model.text_encoder is None):
            raise ManifestError("stages.text_encoder and model.text_encoder come together (a model with its own "
                                f"encoder has its stage); {RECOMPILE}")
        for name in self.files:  # stage files must be listed (below), so this covers every file a plan uses
            if not is_plain_name(name) or name == MANIFEST:
                raise ManifestError(f"files names {json.dumps(name)[:300]}, which is not a plain file name of the "
                                    "plan's own folder (letters, digits, '.', '_', '-'; no path, no leading '.'; not "
                                    f"{MANIFEST}); {RECOMPILE}")
        for name, stage in self.stages.items():
            missing = [f for f in stage.files if f not in self.files]
            if missing:
                raise ManifestError(f"stages.{name} names {json.dumps(missing[0])[:300]}, which 'files' does not list; "
                                    f"{RECOMPILE}")

    def _check_resolution(self) -> None:
        res, patch, factor = self.resolution, self.model.dit.patch_size, self.model.vae.spatial_factor
        for side, p in (("latent_h", patch[1]), ("latent_w", patch[2])):
            if getattr(res, side) % p:
                raise ManifestError(f"resolution.{side} {getattr(res, side)} is not divisible by the patch size {p}; "
                                    f"{RECOMPILE}")
        for side, latent in (("height", "latent_h"), ("width", "latent_w")):
            if getattr(res, side) != getattr(res, latent) * factor:
                raise ManifestError(f"resolution.{side} is {getattr(res, side)}, but resolution.{latent} "
                                    f"{getattr(res, latent)} and the VAE's upsampling ({factor}x) make it "
                                    f"{getattr(res, latent) * factor}; {RECOMPILE}")
        want = Resolution.derive(res.height, res.width, res.fps, self.latent_hw, self.model.dit, self.geometry)
        for f in fields(res):
            if getattr(res, f.name) != getattr(want, f.name):
                raise ManifestError(f"resolution.{f.name} is {getattr(res, f.name)}, but the model's patch size and the "
                                    f"geometry make it {getattr(want, f.name)}; {RECOMPILE}")
        if res.cache_tokens > MAX_CACHE_TOKENS:
            raise ManifestError(f"resolution.cache_tokens {res.cache_tokens} is past {MAX_CACHE_TOKENS} (2^24) rows "
                                "per layer; lower the resolution or the window and recompile")

    # -- reading and writing
    @staticmethod
    def check_header(data: Any) -> None:
        """The checks that come before any other: format, then schema_version (a newer plan is never half-read)."""
        if not isinstance(data, dict):
            raise ManifestError(f"not an arvc plan manifest (a manifest is a JSON object with format {FORMAT!r})")
        if data.get("format") != FORMAT:
            raise ManifestError(f"not an arvc plan manifest (format must be {FORMAT!r})")
        if "schema_version" not in data:
            raise ManifestIntegrityError("integrity check failed: schema_version is missing; recompile the plan")
        version = data["schema_version"]
        if not _is_int(version) or version < 1:
            raise _wrong("schema_version", f"an integer in 1..{SCHEMA_VERSION}", version)
        if version > SCHEMA_VERSION:
            raise ManifestError(f"plan schema version {version} is newer than this arvc reads (schema_version up to "
                                f"{SCHEMA_VERSION}, arvc {__version__}); upgrade arvc, or recompile the plan with this "
                                "arvc")

    @staticmethod
    def parse(text: str | bytes) -> Any:
        """manifest.json's text -> its JSON value: UTF-8, nested at most MAX_NESTING deep, finite numbers only."""
        try:
            text = text.decode("utf-8") if isinstance(text, bytes) else text
        except UnicodeDecodeError as e:
            raise ManifestIntegrityError(f"integrity check failed: not valid JSON ({e}); {CORRUPTED}") from None
        try:
            return strict_json.loads(text, MAX_NESTING)
        except ValueError as e:
            raise ManifestIntegrityError(f"integrity check failed: {e}; {CORRUPTED}") from None

    @classmethod
    def from_json(cls, data: dict | str | bytes) -> Manifest:
        """manifest.json's text, or the object it parses to -> Manifest; ManifestError names what is wrong."""
        if isinstance(data, (str, bytes)):
            data = cls.parse(data)
        cls.check_header(data)
        if data["schema_version"] == 1:
            data = _from_schema_1(data)
        return _read(cls, data, "")

    def to_json(self) -> dict:
        return json_of(self)

    # -- derived facts
    @property
    def tokens_per_frame(self) -> int:
        return self.resolution.tokens_per_frame

    @property
    def tokens_per_block(self) -> int:
        return self.resolution.tokens_per_block

    @property
    def cache_rows(self) -> int:
        return self.resolution.cache_tokens

    @property
    def sink_rows(self) -> int:
        return self.geometry.sink * self.tokens_per_frame

    def kv_regions(self) -> tuple[KVRegion, ...]:
        return kv_regions(self.recipe.kv_cache, self.recipe.kv_sink, self.cache_rows, self.sink_rows)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.resolution.latent_h, self.resolution.latent_w

    @property
    def latent_block_shape(self) -> tuple[int, ...]:
        """The dit call's latents: [1, channels, frames per block, h, w]."""
        return (1, self.model.dit.in_channels, self.geometry.frames_per_block, *self.latent_hw)

    @property
    def latent_frame_shape(self) -> tuple[int, ...]:
        """One VAE call's latent: [1, channels, 1, h, w]."""
        return (1, self.model.dit.in_channels, 1, *self.latent_hw)

    @property
    def temporal_factor(self) -> int:
        return self.model.vae.temporal_factor


# -- JSON <-> dataclasses, by the fields' types ------------------------------------------------------------------
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")  # runtime/src/plan.cpp is_plain_name: the same rule


def is_plain_name(name: str) -> bool:
    """A file of the plan's own folder: no separator, no '..', not absolute, not hidden, no NUL (a plan is closed)."""
    return PLAIN_NAME.fullmatch(name) is not None


def _from_schema_1(data: dict) -> dict:
    """A version 1 manifest as version 2 reads it: the stored TensorRT stages dropped (derived at load now)."""
    data = copy.deepcopy(data)
    for stage in ("dit_trt", "text_trt"):
        if isinstance(data.get("stages"), dict):
            data["stages"].pop(stage, None)
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_SCALARS = {int: ("an integer", _is_int),
            float: ("a finite number", lambda v: _is_int(v) or (isinstance(v, float) and math.isfinite(v))),
            str: ("a string", lambda v: isinstance(v, str)), bool: ("true or false", lambda v: isinstance(v, bool))}


def _is_pairs(tp: Any) -> bool:
    """tuple[tuple[str, str], ...]: (key, value) pairs, written as a JSON object (Recipe.keep, layer_formats)."""
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis and get_origin(args[0]) is tuple


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _at(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _wrong(where: str, what: str, value: Any) -> ManifestError:
    shown = json.dumps(value)
    return ManifestError(f"{where} must be {what}, not {shown if len(shown) <= 40 else shown[:37] + '...'}; {RECOMPILE}")


def _read(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):  # X | None
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _read(inner, value, where)
    if tp in _SCALARS:
        what, ok = _SCALARS[tp]
        if not ok(value):
            raise _wrong(where, what, value)
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, "a JSON object", value)
        if not args:  # a record kept as written (verification, calibration, ...)
            return copy.deepcopy(value)
        return {k: _read(args[1], v, f"{where}[{json.dumps(k)}]") for k, v in value.items()}
    if _is_pairs(tp):
        if not isinstance(value, dict):
            raise _wrong(where, "a JSON object", value)
        return tuple((k, _read(get_args(args[0])[1], v, _at(where, k))) for k, v in value.items())
    if origin is tuple:
        if not isinstance(value, list):
            raise _wrong(where, "a list", value)
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise _wrong(where, f"a list of {len(args)}", value)
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        return tuple(_read(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(items, value)))
    if is_dataclass(tp):
        return _read_dataclass(tp, value, where)
    raise TypeError(f"runtime/manifest.py has no JSON reading for {tp!r}")


def _read_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _wrong(where or "the manifest", "a JSON object", value)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ManifestError(f"{_at(where, unknown[0])} is not a field arvc {__version__} knows: a newer arvc "
                            "wrote this plan; upgrade arvc, or recompile the plan with this one")
    kwargs = {}
    for name, f in known.items():
        if name in value:
            kwargs[name] = _read(_hints(cls)[name], value[name], _at(where, name))
        elif f.default is MISSING and f.default_factory is MISSING:  # a field with a default may be absent (older plans)
            raise ManifestError(f"{_at(where, name)} is missing; {RECOMPILE}")
    try:
        return cls(**kwargs)
    except ManifestError as e:
        raise ManifestError(_in_section(cls, where, str(e))) from None
    except ValueError as e:  # the section's own checks (WanConfig, CacheGeometry, Recipe, ...)
        raise ManifestError(f"{_in_section(cls, where or 'the manifest', str(e))}; {RECOMPILE}") from None


def _in_section(cls: type, where: str, message: str) -> str:
    """A section's message, named from the top: a message that starts with one of its fields gets its path."""
    if not where:
        return message
    head = message.split(" ", 1)[0].split(".", 1)[0]
    return f"{where}.{message}" if head in {f.name for f in fields(cls)} else f"{where}: {message}"


def json_of(value: Any) -> Any:
    """The JSON form of the manifest or one of its sections, as manifest.json holds it."""
    if is_dataclass(value):
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if v is None and f.metadata.get("optional_key"):
                continue
            out[f.name] = {k: json_of(x) for k, x in v} if _is_pairs(_hints(type(value))[f.name]) else json_of(v)
        return out
    if isinstance(value, (tuple, list)):
        return [json_of(v) for v in value]
    if isinstance(value, dict):
        return {k: json_of(v) for k, v in value.items()}
    return value
