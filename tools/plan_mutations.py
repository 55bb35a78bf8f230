"""The mutations of tools/fuzz_plans.py: each builds one case, a copy of a plan with one to three mutations of
one family, from a seeded random.Random alone (``make_case``), so that a case is rebuilt from (seed, family,
index). The copy hard-links the plan's files; a mutation always writes a new file (``write_new``), never into
a linked one. A mutated weights or graph file gets its size and hash resealed in the manifest, so the readers
get past hashing to what the mutation broke."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from pathlib import Path

EDGE = [0, -1, 1, 2, 3, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, -2**63, 1e308, -1e308, 1e-308, 0.5, 3.0,
        True, False, "3", "NaN", "Infinity", "-Infinity", None, [], {}, "", "x" * 300, "\u0000", "é"]
BAD_NAMES = ["../dit.onnx", "/etc/passwd", "dit.onnx\u0000", "DIT.onnx", "dit.onnx/", ".", "..", "", "\u202edit.onnx",
             "dit .onnx", "a" * 300, "sub/dit.onnx", "-", ".hidden", "ü.onnx", "manifest.json", "x\ny"]


# ---- the plan copy and its manifest ------------------------------------------------------------------------
def fresh_copy(base: Path, dst: Path) -> None:
    dst.mkdir()
    for f in base.iterdir():
        os.link(f, dst / f.name)


def write_new(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file: the copy's files are hard links of the base plan's."""
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)


def load_json(case: Path) -> dict:
    return json.loads((case / "manifest.json").read_text())


def seal(case: Path, m: dict) -> None:
    from arvc.runtime.plan import seal_manifest

    write_new(case / "manifest.json", seal_manifest(m).encode())


def reseal_file(case: Path, name: str) -> None:
    """Record ``name``'s new size and hash (and its weights size) so the readers hash-check past it."""
    m, data = load_json(case), (case / name).read_bytes()
    m["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if name in m["memory"]["weights_bytes"]:
        m["memory"]["weights_bytes"][name] = len(data)
    seal(case, m)


def paths_of(value, prefix=()):
    """Every (path, value) below ``value``: the places a mutation can hit."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.append((prefix + (k,), v))
        out += paths_of(v, prefix + (k,))
    return out


def get(m, path):
    for k in path:
        m = m[k]
    return m


def put(m, path, value):
    get(m, path[:-1])[path[-1]] = value


def nested(depth: int, leaf=0):
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"a": leaf}
    return leaf


# ---- manifest mutations: each edits the dict m (or returns raw text) -----------------------------------------
def near(rng: random.Random, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return rng.choice(EDGE)
    if isinstance(v, float):
        return rng.choice([v + 1, v - 1, -v, v / 2, round(v), 0.0])  # finite: a manifest holds no NaN or infinity
    return rng.choice([v + 1, v - 1, -v, v * 2, v // 2, float(v), 0])


def m_edge(rng, m):
    path, v = rng.choice(paths_of(m))
    put(m, path, near(rng, v) if rng.random() < 0.4 else copy.deepcopy(rng.choice(EDGE)))
    return f"{'.'.join(map(str, path))} = {get(m, path)!r:.80}"


def m_delete(rng, m):
    path, _ = rng.choice([(p, v) for p, v in paths_of(m) if isinstance(get(m, p[:-1]), dict)])
    del get(m, path[:-1])[path[-1]]
    return f"del {'.'.join(map(str, path))}"


def m_add(rng, m):
    path, d = rng.choice([((), m)] + [(p, v) for p, v in paths_of(m) if isinstance(v, dict)])
    key = rng.choice(["extra", "x", "", "\u0000", "dim", "é", "a" * 1000, "files", "sha256"])
    d[key] = copy.deepcopy(rng.choice(EDGE))
    return f"add {'.'.join(map(str, path))}.{key!r}"


def m_nest(rng, m):
    path, _ = rng.choice([(p, v) for p, v in paths_of(m) if len(p) < 10])
    depth = rng.choice([1, 30, 60, 61, 62, 63, 64, 65, 100, 200])  # deeper is raw text: json.dumps recurses
    put(m, path, nested(depth))
    return f"{'.'.join(map(str, path))} nested {depth} deep"


def m_swap(rng, m):
    leaves = [p for p, v in paths_of(m) if not isinstance(v, (dict, list))]
    if len(leaves) < 2:
        return "no two values to swap"
    a, b = rng.sample(leaves, 2)
    va, vb = get(m, a), get(m, b)
    put(m, a, vb)
    put(m, b, va)
    return f"swap {'.'.join(map(str, a))} <-> {'.'.join(map(str, b))}"


def m_names(rng, m):
    """A file or stage name, or a key of files / stages, that is not a plain name of the plan."""
    bad = rng.choice(BAD_NAMES)
    strings = [p for p, v in paths_of({"stages": m.get("stages"), "files": m.get("files")}) if isinstance(v, str)]
    dicts = [p for p, v in paths_of({"files": m.get("files"), "stages": m.get("stages")}) if isinstance(v, dict)]
    if strings and rng.random() < 0.5:
        path = rng.choice(strings)
        put(m, path, bad)
        return f"{'.'.join(map(str, path))} = {bad!r}"
    d = get(m, rng.choice(dicts)) if dicts else m
    if d:
        key = rng.choice(list(d))
        d[bad if rng.random() < 0.7 else key + bad] = d.pop(key)
        return f"key {key!r} -> {bad!r}"
    return "no name to change"


def m_list(rng, m):
    lists = [p for p, v in paths_of(m) if isinstance(v, list)]
    path = rng.choice(lists)
    lst, op = get(m, path), rng.choice(["drop", "dup", "empty", "reverse", "append"])
    if op == "drop" and lst:
        lst.pop(rng.randrange(len(lst)))
    elif op == "dup" and lst:
        lst.insert(rng.randrange(len(lst)), copy.deepcopy(rng.choice(lst)))
    elif op == "empty":
        lst.clear()
    elif op == "reverse":
        lst.reverse()
    else:
        lst.append(copy.deepcopy(rng.choice(EDGE)))
    return f"{op} list {'.'.join(map(str, path))}"


RELATIONS = [  # (field, a value from the others that sits on an edge of docs/plan-validation.md's relations)
    ("geometry.sink", lambda m: m["geometry"]["window"]),
    ("geometry.sink", lambda m: m["geometry"]["window"] - m["geometry"]["frames_per_block"] + 1),
    ("geometry.window", lambda m: m["geometry"]["frames_per_block"]),
    ("geometry.window", lambda m: m["geometry"]["sink"] + m["geometry"]["frames_per_block"] - 1),
    ("geometry.max_frames", lambda m: m["geometry"]["frames_per_block"] - 1),
    ("geometry.frames_per_block", lambda m: m["geometry"]["window"] + 1),
    ("model.dit.num_heads", lambda m: m["model"]["dit"]["dim"] + 1),
    ("model.dit.num_heads", lambda m: m["model"]["dit"]["dim"] // 2),
    ("model.dit.out_channels", lambda m: m["model"]["dit"]["in_channels"] + 1),
    ("model.vae.z_dim", lambda m: m["model"]["dit"]["in_channels"] - 1),
    ("model.text_encoder.max_len", lambda m: m["model"]["dit"]["text_len"] + 1),
    ("model.text_encoder.dim", lambda m: m["model"]["dit"]["text_dim"] * 2),
    ("resolution.latent_h", lambda m: m["resolution"]["latent_h"] + 1),
    ("resolution.latent_w", lambda m: m["resolution"]["latent_h"] * 2),
    ("resolution.height", lambda m: m["resolution"]["height"] + 8),
    ("resolution.width", lambda m: m["resolution"]["width"] * 2),
    ("resolution.tokens_per_frame", lambda m: m["resolution"]["tokens_per_frame"] + 1),
    ("resolution.cache_tokens", lambda m: m["resolution"]["cache_tokens"] - 1),
    ("resolution.fps", lambda m: 2**31 - 1),
    ("schedule.timesteps", lambda m: m["schedule"]["timesteps"][::-1]),
    ("schedule.timesteps", lambda m: [1000.0, 1000.0]),
    ("model.vae.temporal_upsample", lambda m: m["model"]["vae"]["temporal_upsample"][:-1]),
    ("model.vae.latent_std", lambda m: [0.0] * len(m["model"]["vae"]["latent_std"])),
    ("model.dit.patch_size", lambda m: [1, 0, 2]),
    ("model.dit.patch_size", lambda m: [1, 3, 3]),
    ("model.dit.eps", lambda m: 1.0),
]


def m_relation(rng, m):
    field, value = rng.choice(RELATIONS)
    path = tuple(field.split("."))
    try:
        put(m, path, value(m))
    except (KeyError, TypeError, IndexError):  # an earlier mutation removed what the relation reads
        return f"{field}: relation not applicable"
    return f"{field} = {get(m, path)!r:.80}"


def m_valid(rng, m):
    """A change both readers must accept (the plan still runs): the stream then meets it."""
    what = rng.choice(["timesteps", "latent", "vocab", "strings"])
    try:
        if what == "timesteps":
            steps = sorted(rng.sample(range(1, 1001), rng.randint(1, 6)), reverse=True)
            m["schedule"]["timesteps"] = [float(t) for t in steps]
        elif what == "latent":
            vae = m["model"]["vae"]
            vae["latent_mean"] = [rng.uniform(-3, 3) for _ in vae["latent_mean"]]
            vae["latent_std"] = [rng.uniform(0.01, 3) for _ in vae["latent_std"]]
        elif what == "vocab":
            rng.shuffle(m["model"]["text_encoder"]["vocab"])
        else:
            m["created"], m["source"]["checkpoint"] = "é中 " + "x" * rng.randrange(100), "../../elsewhere/model.safetensors"
    except (KeyError, TypeError, AttributeError):  # an earlier mutation removed what this one changes
        return f"{what}: not applicable"
    return what


DICT_MUTATORS = {"valid": m_valid, "edge": m_edge, "delete": m_delete, "add": m_add, "nest": m_nest, "swap": m_swap,
                 "names": m_names, "list": m_list, "relation": m_relation}


def raw_manifest(rng, text: str) -> tuple[bytes, str]:
    """Text-level damage the JSON reader meets before any field: not sealable."""
    b, op = text.encode(), rng.choice(["truncate", "flip", "utf8", "bom", "crlf", "trailing", "nan", "deep", "dupkey",
                                       "empty", "nul"])
    if op == "truncate":
        return b[:rng.randrange(len(b))], op
    if op == "flip":
        i = rng.randrange(len(b))
        return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1:], op
    if op == "utf8":
        i = rng.randrange(len(b))
        return b[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]) + b[i:], op
    if op == "bom":
        return b"\xef\xbb\xbf" + b, op
    if op == "crlf":
        return b.replace(b"\n", b"\r\n"), op
    if op == "trailing":
        return b + rng.choice([b"{}", b"\x00", b" x", b"\n\n"]), op
    if op == "nan":
        return b.replace(b'"eps": 1e-06', b'"eps": NaN').replace(b'"fps": 16', b'"fps": Infinity'), op
    if op == "deep":  # deeper than any recursion: a stack overflow in a recursive reader
        n = rng.choice([65, 1000, 100_000])
        return b[:-2] + b',\n  "x": ' + b"[" * n + b"]" * n + b"\n}\n", f"deep {n}"
    if op == "dupkey":  # the last one wins in most JSON readers: the canonical text check must catch it
        key = rng.choice([b'"window": ', b'"sink": ', b'"format": ', b'"dim": ', b'"files": '])
        i = b.find(key)
        return (b[:i] + key + b"0,\n" + b[i:] if i >= 0 else b), f"dupkey {key.decode()}"
    if op == "empty":
        return b"", op
    return b.replace(b'"dit.onnx"', b'"dit.onnx\\u0000"', 1), op


def mutate_manifest(rng, case: Path) -> tuple[str, str]:
    text = (case / "manifest.json").read_text()
    if rng.random() < 0.15:
        data, what = raw_manifest(rng, text)
        write_new(case / "manifest.json", data)
        return "raw-" + what.split()[0], what
    m, names, notes = json.loads(text), [], []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        names.append(rng.choice(list(DICT_MUTATORS)))
        notes.append(f"{names[-1]}: {DICT_MUTATORS[names[-1]](rng, m)}")
    how = rng.random()
    if how < 0.85:
        seal(case, m)
    elif how < 0.93:  # edited but not resealed: the old digest
        write_new(case / "manifest.json", (json.dumps(m, sort_keys=True, indent=2) + "\n").encode())
        notes.append("not resealed")
    else:  # the right digest, but not the canonical layout
        from arvc.runtime.plan import seal_manifest

        write_new(case / "manifest.json", json.dumps(json.loads(seal_manifest(m))).encode())
        notes.append("compact layout")
    return names[0], "; ".join(notes)


# ---- safetensors header mutations ----------------------------------------------------------------------------
def st_header(rng, header: dict, body_bytes: int) -> tuple[str, dict | bytes]:
    """A mutated safetensors header: (what changed, the header object or its raw bytes)."""
    t = rng.choice([k for k in header if k != "__metadata__"])
    op = rng.choice(["offsets", "dtype", "shape", "entry", "drop", "add", "metadata", "deep", "garbage"])
    if op == "offsets":
        a, b = header[t]["data_offsets"]
        header[t]["data_offsets"] = rng.choice([[None, None], [-1, b], [b, a], [0, 2**64], [a, body_bytes + 1], [0, b], [a],
                                                "x", [a, b, 0], [str(a), str(b)], [a + 0.5, b]])
    elif op == "dtype":
        header[t]["dtype"] = rng.choice(["F16", "F64", "U8", "XX", "", 1, None, "BOOL", "F8_E4M3"])
    elif op == "shape":
        header[t]["shape"] = rng.choice([[], [-1], [2**40, 2**40], ["a"], [0], [1] * 100, None, [2**63]])
    elif op == "entry":
        header[t] = rng.choice([None, [], "x", {}, {"dtype": "F32"}])
    elif op == "drop":
        del header[t]
    elif op == "add":
        t = rng.choice(["new", t + "\u0000", "", "__metadata__"])
        header[t] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    elif op == "metadata":
        header["__metadata__"] = rng.choice([{"a": 1}, [], "x", {"a": None}, {"a": "x" * 100_000}])
    elif op == "deep":
        depth = rng.choice([100, 10_000, 100_000])
        return f"deep {depth}", json.dumps(header)[:-1].encode() + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    else:
        return "garbage", rng.choice([b"[]", b'"x"', b"{", b"\xff\xfe", b"null", b"1"])
    return f"{op} {t!r}", header


def mutate_safetensors(rng, case: Path) -> tuple[str, str]:
    """One of the plan's weights files with its 8-byte header length or JSON header damaged, then resealed."""
    m = load_json(case)
    name = rng.choice(sorted({s["weights"] for s in m["stages"].values()}))
    data = (case / name).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    op = rng.choice(["truncate", "length", "header", "header", "header"])
    if op == "truncate":
        cut = rng.choice([rng.randrange(8), 8 + rng.randrange(n), 8 + n + rng.randrange(len(body))])
        out, note = data[:cut], f"truncated at {cut}"
    elif op == "length":
        bogus = rng.choice([0, 1, len(data), 2**63, 2**64 - 1, n + 1, n - 1])
        out, note = bogus.to_bytes(8, "little") + data[8:], f"length field {bogus}"
    else:
        note, new = st_header(rng, header, len(body))
        raw = new if isinstance(new, bytes) else json.dumps(new).encode()
        out, op = len(raw).to_bytes(8, "little") + raw + body, note.split()[0]
    write_new(case / name, out)
    reseal_file(case, name)
    return op, f"{name}: {note}"


# ---- ONNX graph mutations ------------------------------------------------------------------------------------
def graph_names(m: dict) -> list[str]:
    out = []
    for s in m["stages"].values():
        out += [s["graph"]] if "graph" in s else list(s["graphs"].values())
    return sorted(out)


def mutate_onnx(rng, case: Path) -> tuple[str, str]:
    import onnx

    m = load_json(case)
    graphs = graph_names(m)
    name = rng.choice(graphs)
    op = rng.choice(["swap", "stage_ref", "dim", "dtype", "rename", "drop_input", "location", "offset", "truncate",
                     "flip"])
    if op == "swap":
        other = rng.choice([g for g in graphs if g != name])
        write_new(case / name, (case / other).read_bytes())
        reseal_file(case, name)
        return op, f"{name} <- {other}"
    if op == "stage_ref":  # the manifest points a stage at another of the plan's graphs
        stage = rng.choice([s for s in m["stages"] if "graph" in m["stages"][s]])
        m["stages"][stage]["graph"] = rng.choice([g for g in graphs if g != m["stages"][stage]["graph"]])
        seal(case, m)
        return op, f"stages.{stage}.graph = {m['stages'][stage]['graph']}"
    data = (case / name).read_bytes()
    if op in ("truncate", "flip"):
        i = rng.randrange(len(data))
        out = data[:i] if op == "truncate" else data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        write_new(case / name, out)
        reseal_file(case, name)
        return op, f"{name}: {op} at {i}"
    model = onnx.load_from_string(data)
    inputs = list(model.graph.input)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if op == "dim":
        i = rng.choice(inputs)
        dims = i.type.tensor_type.shape.dim
        d = dims[rng.randrange(len(dims))] if dims else None
        if d is None:
            note = f"{i.name}: scalar"
        elif rng.random() < 0.2:
            d.dim_param = "n"
            note = f"{i.name}: a dynamic dim"
        else:
            d.dim_value = rng.choice([0, 1, d.dim_value + 1, max(d.dim_value - 1, 0), d.dim_value * 2, 2**31, 2**40])
            note = f"{i.name}: a dim = {d.dim_value}"
    elif op == "dtype":
        i = rng.choice(inputs)
        i.type.tensor_type.elem_type = rng.choice([onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64,
                                                   onnx.TensorProto.DOUBLE, onnx.TensorProto.UINT8])
        note = f"{i.name}: elem_type {i.type.tensor_type.elem_type}"
    elif op == "rename":
        i = rng.choice(inputs)
        note = f"input {i.name} renamed"
        i.name += "_x"
    elif op == "drop_input":
        i = rng.choice(inputs)
        model.graph.input.remove(i)
        note = f"input {i.name} dropped"
    else:
        if not external:
            return op, f"{name}: no external data"
        t = rng.choice(external)
        entry = {e.key: e for e in t.external_data}
        if op == "location":
            entry["location"].value = rng.choice(["../dit.safetensors", "/etc/passwd", "/dev/zero", "missing.bin",
                                                   "manifest.json", "vae.safetensors", "", ".", "dit.safetensors/",
                                                   "/proc/self/mem", "dit.onnx"])
            note = f"{t.name}: location {entry['location'].value!r}"
        else:
            key = rng.choice(["offset", "length"])
            value = rng.choice(["-1", "abc", str(2**63), str(2**64), "0", "1e3", str(20_000_000), ""])
            if key in entry:
                entry[key].value = value
            else:
                t.external_data.add(key=key, value=value)
            note = f"{t.name}: {key} {value!r}"
    write_new(case / name, model.SerializeToString())
    reseal_file(case, name)
    return op, f"{name}: {note}"


# ---- folder mutations ----------------------------------------------------------------------------------------
def mutate_files(rng, case: Path, outside: Path) -> tuple[str, str]:
    m = load_json(case)
    listed = sorted(m["files"])
    name = rng.choice(listed)
    op = rng.choice(["extra", "extra_dir", "remove", "rename", "symlink", "fifo", "dir", "edit", "truncate",
                     "manifest"])
    if op == "extra":
        extra = rng.choice(["extra.bin", ".hidden", "notes.txt", "dit.onnx.bak", "x" * 255, "ü.bin", "a b", "new\nline"])
        (case / extra).write_bytes(b"x")
        return op, f"extra file {extra!r}"
    if op == "extra_dir":
        (case / rng.choice(["sub", ".git", "__pycache__"])).mkdir()
        return op, "extra folder"
    if op == "remove":
        (case / name).unlink()
        return op, f"removed {name}"
    if op == "rename":
        (case / name).rename(case / (name + ".old"))
        return op, f"renamed {name}"
    if op == "symlink":
        target = rng.choice([outside / name, Path("/dev/zero"), Path(name + ".gone"), Path(rng.choice(listed)),
                             Path("..") / case.name / name])
        (case / name).unlink()
        (case / name).symlink_to(target)
        return op, f"{name} -> {target}"
    if op == "fifo":
        (case / name).unlink()
        os.mkfifo(case / name)
        return op, f"{name} is a FIFO"
    if op == "dir":
        (case / name).unlink()
        (case / name).mkdir()
        return op, f"{name} is a folder"
    if op in ("edit", "truncate"):
        data = (case / name).read_bytes()
        i = rng.randrange(max(len(data), 1))
        flipped = data[:i] + bytes([(data[i:i + 1] or b"\0")[0] ^ 1]) + data[i + 1:]
        write_new(case / name, data[:i] if op == "truncate" else flipped)
        return op, f"{name}: {op} at {i}, not resealed"
    manifest, kind = case / "manifest.json", rng.choice(["symlink", "fifo", "dir", "huge", "devzero", "missing"])
    manifest.unlink()
    if kind == "symlink":  # to the same, valid manifest outside: still not the plan's own file
        manifest.symlink_to(outside / "manifest.json")
    elif kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "dir":
        manifest.mkdir()
    elif kind == "huge":  # sparse: past the 16 MiB limit without using the disk
        with open(manifest, "wb") as f:
            f.truncate(17 << 20)
    elif kind == "devzero":
        manifest.symlink_to("/dev/zero")
    return f"manifest-{kind}", f"manifest.json: {kind}"


MUTATE = {"manifest": mutate_manifest, "safetensors": mutate_safetensors, "onnx": mutate_onnx}


def make_case(family: str, seed: int, index: int, base: Path, case: Path, outside: Path) -> tuple[str, str]:
    """(mutator, what it did) after building the case folder."""
    rng = random.Random(f"{seed}/{family}/{index}")  # a case is rebuilt from (seed, family, index) alone
    fresh_copy(base, case)
    if family == "files":
        return mutate_files(rng, case, outside)
    return MUTATE[family](rng, case)
