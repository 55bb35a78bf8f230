"""The shared plan corpus (tests/plan_corpus.json): each case is an edit of the tiny plan that both readers
must accept or refuse alike (docs/plan-validation.md). ``apply_case`` makes a case's plan folder from a copy
of the tiny plan; tests/test_plan_validation.py runs it through the Python reader, tests/test_plan_corpus_c.py
through the C one.

A case: {"name", "why", "expect": "accept" | "refuse", "where": a substring the refusal names,
         "edits": [manifest edits], "file_ops": [file operations], "reseal": true | false}

Manifest edits (applied in order to the parsed manifest.json; "path" is "a.b.c" or a list of keys and list
indices, for keys that hold a '.'):
    {"op": "set", "path", "value"}          set a field (the value as JSON writes it: 3.0 stays a float)
    {"op": "set", "path", "raw"}            set a field to raw JSON text ("NaN", "Infinity", "1e12")
    {"op": "del", "path"}                   delete a field
    {"op": "move", "path", "to"}            rename a key (moves its value)
    {"op": "copy", "path", "to"}            copy a value to another key
    {"op": "nest", "path", "depth"}         set a field to a list nested ``depth`` deep ([[...[]...]]; past 500
                                            deep written compact, so not in canonical form either)
File operations (on the plan folder, after the manifest edits; "name" is a plan entry):
    {"op": "add", "name", "text"}           a new regular file
    {"op": "remove", "name"}                delete a file
    {"op": "rename", "name", "to"}
    {"op": "symlink", "name", "target"}     replace by a symlink; target "outside" = a copy of the file
                                            outside the plan, anything else is used as written
    {"op": "edit", "name", "offset"}        flip the byte at offset (negative: from the end)
    {"op": "append", "name", "text", "repeat"}  append the text ``repeat`` times (default once)
    {"op": "fifo", "name"}                  replace by (or create) a FIFO
    {"op": "mkdir", "name"}                 replace by (or create) an empty folder
    {"op": "swap", "name", "from"}          replace a file's content by another plan file's
    {"op": "external", "name", "to"}        point every external-data location of an ONNX graph at ``to``
    {"op": "declare", "name", "tensor", ...} change what an ONNX graph declares of its input or output
                                            ``tensor``: "dim" and "value" (an int: dim_value; a string:
                                            dim_param), "elem_type", or "shape": null (no shape declared)
    {"op": "rehash", "name"}                record the file's current size and SHA-256 under files
"reseal": true recomputes manifest_sha256 after the edits (what an attacker with seal_manifest does);
false leaves the old digest (the manifest then no longer matches it, unless nothing was edited).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("plan_corpus.json")
MANIFEST = "manifest.json"


def load_corpus() -> list[dict]:
    return json.loads(CORPUS.read_text())


def _keys(path: str | list) -> list:
    if isinstance(path, list):
        return path
    return [int(k) if k.lstrip("-").isdigit() else k for k in path.split(".")]


def _parent(doc: Any, path: str | list) -> tuple[Any, Any]:
    keys = _keys(path)
    for k in keys[:-1]:
        doc = doc[k]
    return doc, keys[-1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _canonical(doc: Any, raws: dict[str, str]) -> str:
    """The plan's canonical text (runtime/plan.canonical_json), raw JSON text put in place of its markers."""
    text = json.dumps(doc, sort_keys=True, indent=2) + "\n"
    for marker, raw in raws.items():
        text = text.replace(json.dumps(marker), raw)
    return text


def _edit_manifest(doc: dict, edit: dict, raws: dict[str, str]) -> None:
    parent, key = _parent(doc, edit["path"])
    op = edit["op"]
    if op == "set" and "raw" in edit:
        marker = f"@raw{len(raws)}@"
        raws[marker] = edit["raw"]
        parent[key] = marker
    elif op == "set":
        parent[key] = edit["value"]
    elif op == "del":
        del parent[key]
    elif op in ("move", "copy"):
        value = parent.pop(key) if op == "move" else json.loads(json.dumps(parent[key]))
        to_parent, to_key = _parent(doc, edit["to"])
        to_parent[to_key] = value
    elif op == "nest" and edit["depth"] <= 500:
        nested: list = []
        for _ in range(edit["depth"] - 1):
            nested = [nested]
        parent[key] = nested
    elif op == "nest":  # too deep for the canonical (indented) text: written compact, as raw text
        marker = f"@raw{len(raws)}@"
        raws[marker] = "[" * edit["depth"] + "]" * edit["depth"]
        parent[key] = marker
    else:
        raise ValueError(f"unknown manifest edit {op!r}")


def _file_op(plan: Path, op: dict, doc: dict, scratch: Path) -> None:
    kind, path = op["op"], plan / op["name"]
    content = b""
    if kind not in ("remove", "rename", "rehash") and (path.exists() or path.is_symlink()):
        # the plan's files are hard links to the tiny plan's: replace them, never write through them
        content = path.read_bytes() if path.is_file() else b""
        path.unlink()
    if kind == "add":
        path.write_text(op.get("text", "extra\n"))
    elif kind == "remove":
        path.unlink()
    elif kind == "rename":
        path.rename(plan / op["to"])
    elif kind == "symlink":
        if op["target"] == "outside":
            outside = scratch / "outside" / op["name"]
            outside.parent.mkdir(exist_ok=True)
            outside.write_bytes(content)
            os.symlink(outside, path)
        else:
            os.symlink(op["target"], path)
    elif kind == "edit":
        data = bytearray(content)
        data[op["offset"]] ^= 0x01
        path.write_bytes(bytes(data))
    elif kind == "append":
        path.write_bytes(content + op["text"].encode() * op.get("repeat", 1))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "mkdir":
        path.mkdir()
    elif kind == "swap":
        path.write_bytes((plan / op["from"]).read_bytes())
    elif kind == "external":
        import onnx

        graph = onnx.ModelProto.FromString(content)
        for tensor in graph.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = op["to"]
        path.write_bytes(graph.SerializeToString())
    elif kind == "declare":
        import onnx

        graph = onnx.ModelProto.FromString(content)
        value = next(v for v in [*graph.graph.input, *graph.graph.output] if v.name == op["tensor"])
        tensor_type = value.type.tensor_type
        if "elem_type" in op:
            tensor_type.elem_type = op["elem_type"]
        if "shape" in op:
            tensor_type.ClearField("shape")
        if "dim" in op:
            dim = tensor_type.shape.dim[op["dim"]]
            if isinstance(op["value"], str):
                dim.dim_param = op["value"]
            else:
                dim.dim_value = op["value"]
        path.write_bytes(graph.SerializeToString())
    elif kind == "rehash":
        doc["files"][op["name"]] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    else:
        raise ValueError(f"unknown file op {kind!r}")


def copy_plan(src: Path, dst: Path) -> None:
    """A copy whose files are hard links where the file system allows (cheap for the 17 MB weights); apply_case
    replaces a file it changes, never edits it in place."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name == MANIFEST or not _linked(f, dst / f.name):
            shutil.copyfile(f, dst / f.name)


def _linked(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
        return True
    except OSError:  # another file system
        return False


def apply_case(case: dict, tiny_plan: Path, work: Path) -> Path:
    """The case's plan folder, made under ``work`` (which also holds what lies 'outside' the plan)."""
    plan = work / "case.plan"
    copy_plan(tiny_plan, plan)
    doc = json.loads((plan / MANIFEST).read_text())
    raws: dict[str, str] = {}
    for edit in case.get("edits", []):
        _edit_manifest(doc, edit, raws)
    ops = case.get("file_ops", [])
    for op in ops:
        if op["name"] != MANIFEST:
            _file_op(plan, op, doc, work)
    if case.get("reseal", True):
        body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
        doc["manifest_sha256"] = hashlib.sha256(_canonical(body, raws).encode()).hexdigest()
    (plan / MANIFEST).unlink()
    (plan / MANIFEST).write_text(_canonical(doc, raws))
    for op in ops:  # the manifest's own file ops come after its text is written
        if op["name"] == MANIFEST:
            _file_op(plan, op, doc, work)
    return plan
