"""Reading a plan: the directory ``arvc compile`` writes and ``arvc run`` / ``arvc.load`` stream from.

File format (schema version 2; docs/plan-format.md has every field):

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
``manifest_sha256`` = SHA-256 of the canonical text of the manifest without that key. A plan is untrusted
input; reading checks, in the order of docs/plan-validation.md: manifest.json a regular file of at most
16 MiB, JSON (nesting, finite numbers), ``format == "arvc-plan"``, ``schema_version`` in 1..SCHEMA_VERSION (a
newer plan is refused, never half-read), canonical form and ``manifest_sha256``, the fields, their ranges
and relations (runtime/manifest.Manifest, the manifest's definition), the folder's closure (exactly
manifest.json and the listed files, each a regular file), the size and SHA-256 of every listed file, then the
graphs against the manifest (runtime/plan_graphs.py). Tampering raises PlanIntegrityError naming the file; a
manifest of another arvc, PlanError.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
from pathlib import Path
from typing import Any

from .manifest import MANIFEST, Manifest, ManifestError, ManifestIntegrityError

MAX_MANIFEST_BYTES = 16 << 20


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


def read_manifest(plan_dir: str | Path, verify_files: bool = True, folder: bool = True) -> Manifest:
    """The plan's manifest, after the checks of docs/plan-validation.md (PlanError / PlanIntegrityError):
    the manifest, the folder's closure, each file's size and SHA-256 (verify_files) and the graphs' shapes.
    folder=False reads the manifest alone, for code that looks at the folder itself (compile's output check)."""
    plan_dir = Path(plan_dir)
    path = plan_dir / MANIFEST
    try:
        manifest = Manifest.from_json(_read_manifest_file(plan_dir))
    except ManifestIntegrityError as e:
        raise PlanIntegrityError(f"{path}: {e}") from None
    except ManifestError as e:
        raise PlanError(f"{path}: {e}") from None
    if folder:
        check_closed(plan_dir, manifest)
        if verify_files:
            verify_plan_files(plan_dir, manifest)
        from .plan_graphs import GraphMismatch, check_graphs

        try:
            check_graphs(manifest, lambda name: _read_regular(plan_dir / name, -1))
        except GraphMismatch as e:
            raise PlanIntegrityError(f"{plan_dir / e.file}: {e}") from None
    return manifest


def _read_manifest_file(plan_dir: Path) -> Any:
    """manifest.json's JSON, once it is a regular file of at most 16 MiB in canonical form with its own digest."""
    path = plan_dir / MANIFEST
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise PlanError(not_a_plan(plan_dir)) from None
    except OSError as e:
        raise PlanError(f"{path}: cannot read it ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):  # checked before opening: a FIFO would block the open
        raise PlanIntegrityError(f"{path}: integrity check failed: not a regular file (a link, a folder, a FIFO or "
                                 "a device); a plan holds its manifest itself, recompile it")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise PlanIntegrityError(f"{path}: integrity check failed: {st.st_size} bytes, more than a manifest's 16 MiB; "
                                 "the plan is corrupted, recompile it")
    raw = _read_regular(path, MAX_MANIFEST_BYTES + 1)
    data = Manifest.parse(raw)
    Manifest.check_header(data)
    # The sealed text embeds the digest recomputed from the content, so any edited byte (content,
    # digest or layout) makes the file differ from it.
    if raw.decode("utf-8") != seal_manifest(data):
        raise ManifestIntegrityError("integrity check failed: manifest.json was modified after compile (its "
                                     "manifest_sha256 does not match); recompile the plan")
    return data


def _open_regular(path: Path) -> int:
    """A descriptor of ``path`` when it is a regular file of its own (never a link, FIFO or device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise PlanIntegrityError(f"{path}: cannot read it ({e.strerror}); a plan's files are its own regular, "
                                 "readable files") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the lstat and the open
        os.close(fd)
        raise PlanIntegrityError(f"{path}: integrity check failed: not a regular file of the plan; recompile it")
    return fd


def _read_regular(path: Path, limit: int) -> bytes:
    with os.fdopen(_open_regular(path), "rb") as f:
        return f.read(limit)


def check_closed(plan_dir: Path, manifest: Manifest) -> None:
    """The folder holds exactly manifest.json and the files the manifest lists, each a regular file of its own."""
    try:
        entries = {e.name: e for e in os.scandir(plan_dir)}
    except OSError as e:
        raise PlanError(f"{plan_dir}: cannot list the plan's folder ({e.strerror})") from None
    missing = sorted(n for n in manifest.files if n not in entries)
    extra = sorted(n for n in entries if n != MANIFEST and n not in manifest.files)
    if missing or extra:
        what = "; ".join(([f"{json.dumps(missing[0])} is listed but missing"] if missing else []) +
                         ([f"{json.dumps(extra[0])} is not listed in the manifest"] if extra else []))
        more = len(missing) + len(extra) - bool(missing) - bool(extra)
        raise PlanIntegrityError(f"{plan_dir}: integrity check failed: {what}"
                                 f"{f' ({more} more)' if more else ''}; a plan holds exactly manifest.json and the "
                                 "files it lists: remove what was added, or recompile the plan")
    for name in sorted(manifest.files):
        if not entries[name].is_file(follow_symlinks=False):
            raise PlanIntegrityError(f"{plan_dir / name}: integrity check failed: not a regular file of the plan (a "
                                     "link, a folder, a FIFO or a device); a plan holds its files itself, recompile it")


def verify_plan_files(plan_dir: Path, manifest: Manifest) -> None:
    """Each listed file's size, then its SHA-256 (the folder already checked closed)."""
    for name, entry in sorted(manifest.files.items()):
        path = plan_dir / name
        with os.fdopen(_open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != entry.bytes:
                raise PlanIntegrityError(f"{path}: integrity check failed: {size} bytes, the manifest records "
                                         f"{entry.bytes}; the file was truncated or replaced, recompile the plan")
            h = hashlib.sha256()
            while block := f.read(1 << 22):
                h.update(block)
        if h.hexdigest() != entry.sha256:
            raise PlanIntegrityError(f"{path}: integrity check failed: SHA-256 differs from the manifest; the file "
                                     "was corrupted or edited after compile, recompile the plan")
