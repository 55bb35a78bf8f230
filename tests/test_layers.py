"""The layers import one way (issue 18): every import of arvc's Python packages, lazy ones inside functions
included, points to the importer's own layer or one below it, and no chain of imports comes back to where it
started. A new module under an unknown arvc subpackage fails until LAYERS places it."""
from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import its own layer and those below. Not listed: the app layer (the package root
# `arvc`, arvc.cli*, arvc.__main__), which may import anything.
LAYERS = ("arvc.version", "arvc.atomic", "arvc.model", "arvc.quant", "arvc.checkpoints", "arvc.graphs",
          "arvc.runtime", "arvc.reference", "arvc.compiler", "arvc.tiny")
APP = len(LAYERS)
CORE_END = LAYERS.index("arvc.tiny")  # layers below the demo model: none of them may import it


def package_roots(pyproject: Path = REPO / "pyproject.toml") -> dict[str, Path]:
    """pyproject's wheel.packages (installed path -> source directory) as package name -> directory."""
    packages = tomllib.loads(pyproject.read_text())["tool"]["scikit-build"]["wheel"]["packages"]
    return {dest.replace("/", "."): pyproject.parent / src for dest, src in packages.items()}


def modules(roots: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every .py file under the roots (a deeper root wins over the directory above)."""
    found: dict[str, tuple[int, Path]] = {}
    for package, root in roots.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            name = ".".join([package, *parts[:-1]] + ([] if parts[-1] == "__init__" else [parts[-1]]))
            depth = package.count(".")
            if name not in found or found[name][0] < depth:
                found[name] = (depth, path)
    return {name: path for name, (_, path) in found.items()}


def layer(module: str) -> int | None:
    """The rank of a module in LAYERS, APP for the app layer, None for an arvc module no layer holds."""
    if module == "arvc" or module == "arvc.__main__" or module.startswith("arvc.cli"):
        return APP
    return next((i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")), None)


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported arvc module, line) for every import statement in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up (level - 1) packages from the importer's own
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # `from pkg import name` imports the module pkg.name where there is one
                out.append((f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, node.lineno))
    return sorted({(m, line) for m, line in out if m == "arvc" or m.startswith("arvc.")}, key=lambda e: e[1])


def import_problems(roots: dict[str, Path]) -> list[str]:
    """Every import against the layer order, into arvc.tiny from the core, and every import cycle."""
    known = modules(roots)
    graph: dict[str, set[str]] = {m: set() for m in known}
    problems, top = [], Path(os.path.commonpath([r.parent for r in roots.values()]))
    for module, path in sorted(known.items()):
        where = path.relative_to(top)
        mine = layer(module)
        if mine is None:
            problems.append(f"{where}: {module} is in no layer; add its package to LAYERS in tests/test_layers.py")
            continue
        for target, line in imports(module, path, known):
            theirs = layer(target)
            if target in known:
                graph[module].add(target)
            if theirs is None:
                continue  # reported at the target's own file
            if target.startswith("arvc.tiny") and mine < CORE_END:
                problems.append(f"{where}:{line}: {module} imports {target}: arvc.tiny is a model like any other, "
                                "no core module (model, quant, checkpoints, runtime, reference, compiler) imports it")
            elif theirs > mine:
                problems.append(f"{where}:{line}: {module} imports {target}, a layer above its own "
                                f"({_name(mine)} may import only {', '.join(LAYERS[:mine + 1])})")
    return problems + [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


def _name(rank: int) -> str:
    return "the app layer" if rank == APP else LAYERS[rank]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each back edge a depth-first search meets."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                found.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_arvc_imports_one_way_without_cycles():
    problems = import_problems(package_roots())
    assert not problems, "imports against the layer order (issue 18):\n" + "\n".join(problems)


def test_the_checker_reports_a_planted_cycle_and_a_wrong_way_import(tmp_path):
    files = {
        "arvc/__init__.py": "",
        "arvc/model/__init__.py": "",
        "arvc/model/a.py": "from . import b\n",
        "arvc/model/b.py": "def f():\n    from arvc.model.a import g  # lazy: still an edge\n",
        "arvc/tiny/__init__.py": "",
        "compiler/__init__.py": "",
        "compiler/c.py": "import arvc.tiny\n",
        "runtime/__init__.py": "",
        "runtime/r.py": "def f():\n    from arvc.compiler import c\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    roots = {"arvc": tmp_path / "arvc", "arvc.compiler": tmp_path / "compiler", "arvc.runtime": tmp_path / "runtime"}
    problems = import_problems(roots)
    assert "import cycle: arvc.model.a -> arvc.model.b -> arvc.model.a" in problems
    assert any(p.startswith("runtime/r.py:2: arvc.runtime.r imports arvc.compiler.c, a layer above") for p in problems)
    assert any(p.startswith("compiler/c.py:1: arvc.compiler.c imports arvc.tiny: arvc.tiny is a model like")
               for p in problems)
    assert len(problems) == 3, problems
