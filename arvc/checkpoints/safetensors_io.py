"""Reading and writing safetensors files with errors a user can act on.

The safetensors library's own errors ("HeaderTooLarge", "MetadataIncompleteBuffer", ...) do not
say which file, what is wrong with it, or what to do. So the 8-byte length + JSON header is
checked here first, and the library is only asked to load files whose header is sound.

Writes are atomic: a temporary file in the target directory, fsync, then os.replace, so the
target path never holds a half-written file (an interrupted compile leaves the old file or none).
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import torch

from arvc import atomic

from . import strict_json

# The safetensors library refuses headers above 100 MB; a larger length field means garbage.
_MAX_HEADER_BYTES = 100_000_000

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# bytes per element of every dtype a header may name (the safetensors library's whole-byte ones)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8}
_MAX_HEADER_NESTING = 8  # a header is {name: {"shape": [...]}}: 3 deep


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file, the problem and the fix."""


def _describe_foreign_format(head: bytes) -> str | None:
    """Name the format of a file that is not safetensors, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (torch.save zip archive, e.g. a .pt/.pth file)"
    # protocol 2-5 pickles start 0x80 0x0N; a safetensors file whose 8-byte header length starts with those two
    # bytes has its JSON header ("{") at byte 8, so that byte tells the two apart
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6) and head[8:9] != b"{":
        return "a Python pickle (legacy torch.save .pt/.pth/.bin file)"
    if head.startswith(b"GGUF"):
        return "a GGUF file (llama.cpp / ComfyUI-GGUF quantized format)"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    return None


def _not_safetensors(path: Path, head: bytes, why: str) -> CheckpointError:
    foreign = _describe_foreign_format(head)
    if foreign is not None and ("PyTorch" in foreign or "pickle" in foreign):
        # what the pickle holds and how to convert it: the checkpoint loaders add that (load.py)
        return CheckpointError(f"{path}: this is {foreign}, not a safetensors file; arvc reads safetensors only "
                               "(pickles can run arbitrary code).")
    if foreign:
        return CheckpointError(f"{path}: this is {foreign}, not a safetensors file; "
                               "arvc needs a .safetensors checkpoint.")
    return CheckpointError(
        f"{path}: not a safetensors file ({why}). A safetensors file starts with an 8-byte "
        "little-endian header length followed by a JSON header; check that the path points at "
        "the model weights and that the download completed."
    )


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Validate the header of ``path`` without loading tensor data.

    Returns ({name: {"dtype", "shape", "data_offsets"}}, metadata). Raises CheckpointError for a
    missing file, a non-safetensors file, a bad JSON header, or a truncated file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found; check the path.")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a .safetensors file "
                              "(sharded diffusers folders must be merged into one file first).")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8:
            raise _not_safetensors(path, head, f"the file is only {size} bytes long")
        (header_len,) = struct.unpack("<Q", head[:8])
        foreign = _describe_foreign_format(head)
        if foreign is not None:
            raise _not_safetensors(path, head, foreign)
        # The JSON header always opens with '{'; anything else is another format or noise,
        # whatever the length field happens to say.
        if len(head) > 8 and head[8:9] != b"{":
            raise _not_safetensors(path, head, "no JSON header after the 8-byte length")
        if header_len > _MAX_HEADER_BYTES:
            raise _not_safetensors(path, head, f"header length field says {header_len} bytes")
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: the header alone declares {header_len} bytes "
                f"but the file has {size} bytes in total. The download or copy was cut short; "
                "fetch the file again."
            )
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = strict_json.loads(raw.decode("utf-8"), _MAX_HEADER_NESTING)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid safetensors header ({header_len} bytes): {e}. The file is corrupt or "
                              "not a safetensors file; re-create or re-download it.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: invalid safetensors header: expected a JSON object, "
                              f"found {type(header).__name__}; the file is corrupt.")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: invalid safetensors header: __metadata__ must map "
                              "strings to strings; the file is corrupt.")

    data_bytes = size - 8 - header_len
    spans = sorted((_tensor_span(path, name, entry), name) for name, entry in header.items())
    needed = spans[-1][0][1] if spans else 0
    if needed > data_bytes:
        raise CheckpointError(
            f"{path}: truncated safetensors file: the header declares {needed} bytes of tensor "
            f"data but only {data_bytes} follow it ({size} bytes in total). The download or copy "
            "was cut short; fetch the file again."
        )
    for ((_, end), before), ((begin, _), name) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: invalid safetensors header: tensors {before!r} and {name!r} overlap "
                                  f"(data_offsets); the file is corrupt, re-create or re-download it.")
    return header, dict(metadata)


def _tensor_span(path: Path, name: str, entry: Any) -> tuple[int, int]:
    """(begin, end) of one tensor's bytes, once its dtype, shape and data_offsets agree."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: invalid safetensors header: tensor {name[:100]!r} {why}; the file is "
                               "corrupt, re-create or re-download it.")

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
        raise bad("lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise bad(f"has dtype {str(dtype)[:20]!r}, not one of {', '.join(DTYPE_BYTES)}")
    if not (isinstance(shape, list) and all(count(d) for d in shape)):
        raise bad(f"has shape {str(shape)[:60]}, not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad(f"has data_offsets {str(offsets)[:60]}, not [begin, end] byte offsets with begin <= end")
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"spans {offsets[1] - offsets[0]} bytes, but {dtype} {shape} takes {nbytes}")
    return offsets[0], offsets[1]


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor of a safetensors file onto the CPU, with its string metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _, metadata = read_safetensors_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: could not read tensors ({e}); the file is corrupt; "
                              "re-create or re-download it.") from None
    return tensors, metadata


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int, int]]:
    """The floating tensors holding NaN or infinity: name -> (NaN count, infinity count, numel); {} when all
    are finite. One isfinite pass per tensor; the counts are taken only for the bad ones."""
    bad: dict[str, tuple[int, int, int]] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.device.type == "meta":
            continue
        if t.element_size() == 1:  # float8: isfinite is not implemented for it
            t = t.float()
        if not bool(torch.isfinite(t).all()):
            bad[name] = (int(torch.isnan(t).sum()), int(torch.isinf(t).sum()), t.numel())
    return bad


def check_finite(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], limit: int = 10) -> None:
    """Raise CheckpointError naming the file and every tensor (up to ``limit``) that holds NaN or infinity:
    such weights make every output garbage, and a NaN compares false with every threshold."""
    bad = non_finite_tensors(tensors)
    if not bad:
        return

    def counts(nan: int, inf: int, numel: int) -> str:
        parts = [f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n]
        return f"{' + '.join(parts)} of {numel} values"

    names = list(bad)
    listed = "; ".join(f"{n} ({counts(*bad[n])})" for n in names[:limit])
    more = f"; ... and {len(names) - limit} more" if len(names) > limit else ""
    raise CheckpointError(
        f"{path}: non-finite weights (NaN or infinity) in {len(names)} tensor(s): {listed}{more}. The file is "
        "corrupt, or it was saved from a diverged training run or an overflowing cast; re-download or re-export "
        "it (arvc refuses to compile or run NaN weights).")


def meta_tensors_from_header(header: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Shape-and-dtype stand-ins (meta device) for a header, so big files can be inspected free."""
    out = {}
    for name, entry in header.items():
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"], torch.uint8)
        out[name] = torch.empty(tuple(entry["shape"]), dtype=dtype, device="meta")
    return out


def _unshare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights, views of one buffer);
    # writing each as its own copy keeps the file self-contained.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"cannot write {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        else:
            seen.add(ptr)
        out[name] = t
    return out


def default_file_mode() -> int:
    """The mode a plain open() would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_safetensors_atomic(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                             metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` so that the path holds either the old file or the whole new one."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = dict(metadata or {})
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; offending keys: {bad}")
    with atomic.writing(path) as tmp:  # a unique O_EXCL name, removed on any exit, then renamed over path
        save_file(_unshare(tensors), tmp, metadata=meta)
    return path
