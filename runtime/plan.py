"""Reading a plan: the directory ``arvc compile`` writes and ``arvc run`` / ``arvc.load`` stream from.

File format (schema version 1; docs/plan-format.md has every field):

    PLAN/
      manifest.json            the single source of truth (below)
      dit.safetensors          DiT weights (canonical Wan names) at the plan's storage precision
      vae.safetensors          VAE decoder weights (Wan names)
      text_encoder.safetensors the model's own text encoder, when it has one (tiny model)
      text.onnx                context [1,L,text_dim] -> per-layer cross-attention K/V
      dit.onnx                 one DiT call on one block, KV cache in and out (in place)
      vae_first.onnx, vae.onnx one latent frame + streaming state -> pixels + state
      text_encoder.onnx        token ids -> context (only with text_encoder.safetensors)

The graphs keep no weights: their initializers are external-data references (offset, length) into
the safetensors files beside them, so each weight is stored once.

manifest.json is UTF-8 JSON written canonically (sorted keys, 2-space indent, trailing newline) with
``manifest_sha256`` = SHA-256 of the canonical text of the manifest without that key. Reading checks,
in order: JSON, ``format == "arvc-plan"``, ``schema_version`` <= SCHEMA_VERSION (a newer plan is
refused, never half-read), canonical form and ``manifest_sha256`` (tampering), the fields
(runtime/manifest.Manifest, the manifest's definition), then the SHA-256 and size of every file in
``files``. Tampering raises PlanIntegrityError naming the file; a manifest of another arvc, PlanError.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from .manifest import Manifest, ManifestError, ManifestIntegrityError

MANIFEST = "manifest.json"


class PlanError(ValueError):
    """A plan cannot be used; the message names the problem and the fix."""


class PlanIntegrityError(PlanError):
    """A plan file does not match its recorded checksum (corrupted or edited after compile)."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"


def seal_manifest(manifest: dict) -> str:
    """The manifest's file text, with its own checksum embedded."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    digest = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    return canonical_json({**body, "manifest_sha256": digest})


def is_plan(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def free_plan_path(path: Path) -> Path:
    """``path``, or NAME-2.plan, NAME-3.plan, ... beside it: the first that does not exist (for suggestions)."""
    stem = path.name.removesuffix(".plan")
    n, candidate = 2, path
    while candidate.exists() or candidate.is_symlink():
        candidate, n = path.with_name(f"{stem}-{n}.plan"), n + 1
    return candidate


def _looks_like_checkpoint(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".safetensors") or (
        path.is_dir() and any((path / f).is_file() for f in ("model.safetensors", "model.json")))


def not_a_plan(path: str | Path) -> str:
    """Why ``path`` is no plan, and the command that makes one when the path says which checkpoint to use."""
    path = Path(path)
    if _looks_like_checkpoint(path):
        target = free_plan_path(path.with_name(f"{path.stem if path.is_file() else path.name}.plan"))
        return (f"{path} is a checkpoint, not a compiled plan; compile it first: "
                f"`arvc compile {shlex.quote(str(path))} -o {shlex.quote(str(target))}`, then load {target}")
    if not path.exists():
        return f"{path}: no such plan; `arvc compile --help` says how to make one from a checkpoint"
    return f"{path} is not an arvc plan (no {MANIFEST}); plans are the directories `arvc compile --help` describes"


def read_manifest(plan_dir: str | Path, verify_files: bool = True) -> Manifest:
    """The plan's manifest, after the checks of this module's docstring (PlanError / PlanIntegrityError)."""
    plan_dir = Path(plan_dir)
    path = plan_dir / MANIFEST
    if not path.is_file():
        raise PlanError(not_a_plan(plan_dir))
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
        Manifest.check_header(data)
        # The sealed text embeds the digest recomputed from the content, so any edited byte (content,
        # digest or layout) makes the file differ from it.
        if raw.decode("utf-8") != seal_manifest(data):
            raise ManifestIntegrityError("integrity check failed: manifest.json was modified after compile (its "
                                         "manifest_sha256 does not match); recompile the plan")
        manifest = Manifest.from_json(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanIntegrityError(f"{path}: integrity check failed: not valid JSON ({e}); the plan is corrupted, "
                                 "recompile it from its checkpoint (arvc compile)") from None
    except ManifestIntegrityError as e:
        raise PlanIntegrityError(f"{path}: {e}") from None
    except ManifestError as e:
        raise PlanError(f"{path}: {e}") from None
    if verify_files:
        verify_plan_files(plan_dir, manifest)
    return manifest


def verify_plan_files(plan_dir: Path, manifest: Manifest) -> None:
    for name, entry in sorted(manifest.files.items()):
        path = plan_dir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):  # a closed plan: its own regular files
            raise PlanIntegrityError(f"{path}: integrity check failed: not a regular file of the plan (a link, a "
                                     "folder or a device); a plan holds its files itself, recompile it")
        if not path.is_file():
            raise PlanIntegrityError(f"{path}: integrity check failed: file is missing; recompile the plan")
        if path.stat().st_size != entry.bytes:
            raise PlanIntegrityError(f"{path}: integrity check failed: {path.stat().st_size} bytes, the manifest "
                                     f"records {entry.bytes}; the file was truncated or replaced, recompile the plan")
        if sha256_file(path) != entry.sha256:
            raise PlanIntegrityError(f"{path}: integrity check failed: SHA-256 differs from the manifest; the file "
                                     "was corrupted or edited after compile, recompile the plan")
