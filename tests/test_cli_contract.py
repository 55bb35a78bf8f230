"""The command line as one tool: the exit-code contract (one test per code), one error prefix per command,
--version and `python -m arvc`, tables that keep every number off a terminal, backends that refuse options
they would ignore, `arvc run` and `arvc reference` each naming the other for the other's input, and every command
an error message suggests runs as printed on that input."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import arvc
from arvc.cli import contract, explain_cache, main
from arvc.compiler.selftest import write_random_checkpoint
from conftest import REPO

# a model directory whose model.json makes every suggested compile small and quick
SMALL_DEFAULTS = {"format": "arvc-model-dir", "version": 1, "height": 32, "width": 32, "fps": 16,
                  "schedule": {"timesteps": [1000.0, 500.0]},
                  "geometry": {"frames_per_block": 3, "window": 6, "sink": 3, "max_frames": 21, "rope": "absolute"}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d, _ = write_random_checkpoint(tmp_path_factory.mktemp("contract") / "small")
    (d / "model.json").write_text(json.dumps(SMALL_DEFAULTS))
    import torch

    from arvc.checkpoints.safetensors_io import write_safetensors_atomic

    write_safetensors_atomic(d.parent / "prompt.safetensors", {"context": torch.randn(5, 32)})
    return d


@pytest.fixture(scope="module")
def plan(model_dir):
    out = model_dir.parent / "small.plan"
    assert main(["compile", str(model_dir), "-o", str(out), "--verify-blocks", "4", "--json"]) == 0
    return out


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- one test per exit code -------------------------------------------------------------------------

def test_exit_0_success(capsys):
    rc, out, _ = _run(["explain-cache", "--blocks", "2", "--json"], capsys)
    assert rc == contract.EXIT_OK == 0 and len(json.loads(out)["blocks"]) == 2


@pytest.mark.parametrize("argv,message", [
    (["compile", "{m}", "-o", "{t}/x.plan", "--precision", "int4"], "invalid choice: 'int4' (choose from 'fp32'"),
    (["compile", "{t}/missing", "-o", "{t}/x.plan"], "missing"),
    (["compile", "{m}", "-o", "{t}/x.plan", "--recipe", "{t}/no.json"], "no such file"),
    (["run", "{p}", "--prompt-embeds", "{m}/../prompt.safetensors", "--seconds", "0", "-o", "{t}/v.mp4"],
     "argument --seconds: a video length of 0 s is out of range: give 0 < seconds <= 86400"),
    (["run", "{p}", "--prompt-embeds", "{m}/../prompt.safetensors", "--device", "cuda", "-o", "{t}/v.mp4"],
     "apply to the torch backend"),
    (["run", "{m}", "--prompt-embeds", "{m}/../prompt.safetensors", "-o", "{t}/v.mp4"],
     "is a checkpoint; arvc run streams compiled plans"),
    (["reference", "{p}", "--prompt-embeds", "{m}/../prompt.safetensors", "-o", "{t}/v.mp4"],
     "is a compiled plan; arvc reference streams checkpoints"),
    (["eval", "{p}", "--blocks", "0"], "--blocks must be >= 1"),
    (["selftest", "--precisions", "int4"], "unknown precision(s) ['int4']; choose from fp32,fp16,bf16,int8,fp8,nvfp4"),
])
def test_exit_2_input_errors_before_any_work(argv, message, model_dir, plan, tmp_path, capsys):
    argv = [a.format(m=model_dir, t=tmp_path, p=plan) for a in argv]
    rc, out, err = _run(argv, capsys)
    assert rc == contract.EXIT_USAGE == 2
    assert message in err and f"arvc {argv[0]}: error:" in err  # one prefix per command
    assert "compiling" not in err and "evaluating" not in err  # refused before any work started
    assert list(tmp_path.iterdir()) == []


def test_exit_3_parity_gate_refusal_only(model_dir, tmp_path, capsys):
    out = tmp_path / "x.plan"
    rc, _, err = _run(["compile", str(model_dir), "-o", str(out), "--verify-blocks", "4", "--min-psnr", "150"],
                      capsys)
    assert rc == contract.EXIT_PARITY == 3
    assert "arvc compile: error: parity gate failed" in err and "No plan was written" in err and not out.exists()


def test_exit_4_integrity_refusal(plan, tmp_path, capsys):
    tampered = tmp_path / "tampered.plan"
    shutil.copytree(plan, tampered)
    weights = next(p for p in tampered.iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    for argv in (["inspect", str(tampered)],
                 ["run", str(tampered), "--prompt-embeds", str(plan.parent / "prompt.safetensors"), "-o",
                  str(tmp_path / "v.mp4")]):
        rc, _, err = _run(argv, capsys)
        assert rc == contract.EXIT_INTEGRITY == 4, err
        assert f"arvc {argv[0]}: error:" in err and "integrity check failed" in err and weights.name in err
    assert not (tmp_path / "v.mp4").exists()


def test_exit_1_anything_unexpected_prints_the_traceback(monkeypatch, capsys):
    def broken(_args):
        return {}["a bug"]

    monkeypatch.setattr(explain_cache, "command", broken)  # main binds each command when it builds the parser
    rc, _, err = _run(["explain-cache"], capsys)
    assert rc == contract.EXIT_UNEXPECTED == 1
    assert "Traceback" in err and "arvc explain-cache: error: unexpected KeyError" in err


def test_version_and_python_dash_m(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"arvc {arvc.__version__}"
    r = subprocess.run([sys.executable, "-m", "arvc", "explain-cache", "--blocks", "1", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["blocks"][0]["frames"] == [0, 1, 2]
    r = subprocess.run([sys.executable, "-m", "arvc", "compile", "x", "-o", "y", "--precision", "int4"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "arvc compile: error: argument --precision" in r.stderr


def test_load_refuses_options_its_backend_ignores(plan):
    with pytest.raises(ValueError, match=r"the ort backend does not use device .*backend=\"torch\""):
        arvc.load(plan, device="cuda")
    with pytest.raises(ValueError, match="the ort backend does not use cuda_graph, dtype"):
        arvc.load(plan, backend="ort", dtype="bf16", cuda_graph=False)
    with pytest.raises(ValueError, match="unknown backend option"):
        arvc.load(plan, devcie="cuda")
    assert arvc.load(plan, threads=1).backend.name == "ort"


def test_tables_keep_every_number_off_a_terminal():
    """Piped output (logs, CI) is not cut at 80 columns: the widest table prints whole."""
    r = subprocess.run([sys.executable, "-m", "arvc", "plan-memory", "wan2.1-t2v-14b", "--gpu", "h100"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout and "FPS bound" in r.stdout and "DiT call TFLOP" in r.stdout
    steady = next(line for line in r.stdout.splitlines() if "steady" in line)
    as_json = subprocess.run([sys.executable, "-m", "arvc", "plan-memory", "wan2.1-t2v-14b", "--gpu", "h100",
                              "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    fps = json.loads(as_json.stdout)["roofline"]["steady_block"]["fps_bound"]
    assert f"{fps:.1f}" in steady


# --- every suggested command runs as printed ---------------------------------------------------------

SUGGESTION = re.compile(r"`(arvc [^`]+)`")


def _suggestions(err: str) -> list[str]:
    return SUGGESTION.findall(err)


def _scenarios(model_dir, plan, tmp):
    """(what goes wrong, argv) pairs whose error messages suggest commands."""
    junk = tmp / "notes"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    import torch

    from arvc.checkpoints.safetensors_io import read_safetensors

    vae, _ = read_safetensors(model_dir / "vae.safetensors")
    torch.save(vae, tmp / "Wan2.1_VAE.pth")  # how Wan ships its VAE: a pickled state dict
    return [
        ("a pickled VAE", ["inspect", str(tmp / "Wan2.1_VAE.pth")]),
        ("a checkpoint where a plan belongs", ["profile", str(model_dir), "--seconds", "0.5"]),
        ("an existing plan without --force", ["compile", str(model_dir), "-o", str(plan), "--verify-blocks", "4"]),
        ("a plan flag changed at run time",
         ["run", str(plan), "--prompt-embeds", str(plan.parent / "prompt.safetensors"), "--window", "9",
          "-o", str(tmp / "w.mp4")]),
        ("a checkpoint given to run", ["run", str(model_dir), "--prompt-embeds", str(plan.parent / "prompt.safetensors"),
                                       "--seconds", "0.5", "--backend", "ort", "-o", str(tmp / "c.mp4")]),
        ("a plan given to reference",
         ["reference", str(plan), "--prompt-embeds", str(plan.parent / "prompt.safetensors"), "--seconds", "0.5",
          "--window", "6", "--dtype", "fp32", "-o", str(tmp / "r.mp4")]),
        ("nvfp4 under its gate", ["compile", str(model_dir), "-o", str(tmp / "nv.plan"), "--precision", "nvfp4",
                                  "--verify-blocks", "4", "--min-psnr", "30"]),
        ("--force onto a directory that is no plan",
         ["compile", str(model_dir), "-o", str(junk), "--force", "--verify-blocks", "4"]),
    ]


def test_every_suggested_command_runs(model_dir, plan, tmp_path, capsys, monkeypatch):
    from arvc.compiler import gate_advice

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gate_advice, "AUTO_SWEEP_BUDGET_S", 1e9)  # the refusal measures the layers on any machine
    ran = []
    for what, argv in _scenarios(model_dir, plan, tmp_path):
        rc, _, err = _run(argv, capsys)
        assert rc in (2, 3), f"{what}: expected a refusal, got {rc}: {err}"
        commands = _suggestions(err)
        assert commands, f"{what}: the message suggests no command:\n{err}"
        for command in commands:  # each is an alternative: run it on the input as the refusal left it
            argv = shlex.split(command)[1:]
            out = Path(argv[argv.index("-o") + 1]) if "-o" in argv else None
            existed = out is not None and out.exists()
            if existed:
                shutil.move(out, tmp_path / "backup")  # e.g. --force replaces the shared plan
                shutil.copytree(tmp_path / "backup", out)
            rc, _, err2 = _run(argv, capsys)
            assert rc == 0, f"{what}: suggested `{command}` failed ({rc}):\n{err2}"
            ran.append(command)
            if out is not None and out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            if existed:
                shutil.move(tmp_path / "backup", out)
    # VAE pickle 1, profile 1, existing plan 1, run-time flag 1, checkpoint to run 1, plan to reference 1, nvfp4 gate 3,
    # --force on a non-plan 1
    assert len(ran) == 10
    assert (tmp_path / "notes" / "notes.txt").read_text() == "x"  # the refused --force left it alone


def test_no_message_suggests_a_placeholder_command():
    """A backticked `arvc ...` in a message is a command to run as printed: no CHECKPOINT / FILE / ... in it.
    (Prose may name placeholders, outside backticks.) Docstrings are documentation, not messages."""
    import ast

    placeholder = re.compile(r"\.\.\.|\b[A-Z][A-Z_]{2,}\b")
    found = []
    for layer in ("arvc", "compiler", "runtime", "quant"):
        for path in sorted((REPO / layer).rglob("*.py")):
            tree = ast.parse(path.read_text())
            docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                          if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                          and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    for span in re.findall(r"(?<!`)`(arvc [^`]*)", node.value):
                        if placeholder.search(span):
                            found.append(f"{path.relative_to(REPO)}:{node.lineno}: `{span}`")
    assert not found, "messages suggest commands that cannot run as printed:\n" + "\n".join(found)
