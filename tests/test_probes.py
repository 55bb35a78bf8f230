"""The probes of issue 19 that concern the command line and its inputs, as regression tests: each is refused with
a short message naming the problem and the exit code of the contract (arvc/cli/contract.py), never a traceback,
and before any work (nothing generated, nothing left in the output's folder). Most run in-process through main();
a few run as `python -m arvc` subprocesses, where a traceback would really reach the terminal. Hostile plans of
the shared corpus (tests/plan_corpus.py) go through `arvc run` and `arvc inspect` the same way."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arvc.cli import contract, main
from conftest import REPO
from plan_corpus import apply_case, load_corpus

TINY = REPO / "models" / "tiny"
SHORT = 2048  # bytes: a message, not a dump of the input
UNKNOWN_WORDS = " ".join(f"w{i}" for i in range(10_000))  # the 10,000-word prompt that gave a 208 KB message
KNOWN_WORDS = " ".join(["red"] * 10_000)


def _readonly_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or /proc where root writes anyway."""
    if os.geteuid() == 0:
        return Path("/proc")
    d = tmp_path / "ro"
    d.mkdir(mode=0o555)
    return d


def _check_refusal(rc: int, out: str, err: str, code: int, message: str) -> None:
    assert rc == code, err
    assert "Traceback" not in out + err and len(err.encode()) < SHORT, err[-SHORT:]
    assert message in err, err
    assert "generating" not in err and "compiling" not in err  # refused before any work


RUN_PROBES = [  # (flags after `arvc run PLAN --prompt TEXT -o OUT`, message)
    (["--seconds", "inf"], "argument --seconds: a video length of inf s is out of range"),
    (["--seconds", "nan"], "argument --seconds: a video length of nan s is out of range"),
    (["--seconds", "1e12"], "argument --seconds: a video length of 1e+12 s"),
    (["--seconds", "-1"], "give 0 < seconds <= 86400"),
    (["--seconds", "0.01"], "less than one frame"),
    (["--seed", "-1"], "argument --seed: seed -1 is out of range"),
    (["--seed", str(2 ** 64)], f"seed {2 ** 64} is out of range: a seed is an integer in 0..{2 ** 64 - 1}"),
    (["--seed", "abc"], "argument --seed: 'abc' is not an integer"),
    (["--threads", "-3"], "argument --threads: threads -3 is out of range: give 0..256"),
    (["--threads", "100000"], "give 0..256"),
    (["--fps", "0"], "argument --fps: 0 fps is out of range"),
    (["--prompt", "a blue square@inf"], "--prompt 'a blue square@inf': a prompt switch at inf s is outside the video"),
    (["--prompt", "a blue square@nan"], "a prompt switch at nan s is outside the video"),
    (["--prompt", "a blue square@1e12"], "a prompt switch at 1e+12 s is outside the video"),
    (["--prompt", "a blue square@-1"], "a prompt switch at -1 s is outside the video"),
    (["--prompt", UNKNOWN_WORDS], "unknown word(s) ['w0', 'w1', 'w2', 'w3', 'w4'] and 9995 more in the prompt"),
    (["--prompt", KNOWN_WORDS], "the prompt has 10000 words; this model's text encoder takes at most 16"),
]


@pytest.mark.parametrize("flags,message", RUN_PROBES, ids=[" ".join(f)[:40] for f, _ in RUN_PROBES])
def test_run_refuses_bad_inputs_with_a_short_message(tiny_plan, tmp_path, capsys, flags, message):
    rc = main(["run", str(tiny_plan[0]), "--prompt", "a red circle", "--seconds", "1", "-o", str(tmp_path / "v.mp4"),
               "--quiet", *flags])
    _check_refusal(rc, *capsys.readouterr(), contract.EXIT_USAGE, message)
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_an_output_it_cannot_write_before_loading(tiny_plan, tmp_path, capsys):
    (tmp_path / "x.mp4").mkdir()
    for output, message in ((tmp_path / "x.mp4", "is a directory; give the video's file name"),
                            (_readonly_dir(tmp_path) / "v.mp4", "cannot create a file in"),
                            (tmp_path / "v.avi", "give a name ending in .mp4")):
        rc = main(["run", str(tiny_plan[0]), "--prompt", "a red circle", "--seconds", "1", "-o", str(output)])
        _check_refusal(rc, *capsys.readouterr(), contract.EXIT_USAGE, message)
    assert sorted(p.name for p in tmp_path.iterdir()) in (["x.mp4"], ["ro", "x.mp4"])
    assert not any((tmp_path / "x.mp4").iterdir())


COMPILE_PROBES = [
    (["--window", "1000000000"], "window must be in"),
    (["--window", "1e9"], "argument --window: invalid int value: '1e9'"),
    (["--height", "0"], "--height 0: give an integer in 1..8192"),
    (["--width", "100000"], "--width 100000: give an integer in 1..8192"),
    (["--fps", "1000"], "--fps 1000: give an integer in 1..240"),
    (["--seed", "-5"], "argument --seed: seed -5 is out of range"),
    (["--verify-blocks", "0"], "--verify-blocks 0: give an integer in 1..1024"),
]


@pytest.mark.parametrize("flags,message", COMPILE_PROBES, ids=[" ".join(f) for f, _ in COMPILE_PROBES])
def test_compile_refuses_bad_options_before_any_work(tmp_path, capsys, flags, message):
    rc = main(["compile", str(TINY), "-o", str(tmp_path / "x.plan"), *flags])
    _check_refusal(rc, *capsys.readouterr(), contract.EXIT_USAGE, message)
    assert list(tmp_path.iterdir()) == []


REFERENCE_PROBES = [
    (["--seconds", "inf"], "argument --seconds: a video length of inf s is out of range"),
    (["--height", "0"], "--height 0: give 1..8192"),
    (["--fps", "100000"], "argument --fps: 100000 fps is out of range"),
    (["--seed", str(2 ** 64)], "is out of range: a seed is an integer"),
    (["--prompt", "a blue square@inf"], "a prompt switch at inf s is outside the video"),
]


@pytest.mark.parametrize("flags,message", REFERENCE_PROBES, ids=[" ".join(f)[:40] for f, _ in REFERENCE_PROBES])
def test_reference_refuses_bad_inputs_before_loading_the_model(tmp_path, capsys, flags, message):
    rc = main(["reference", str(TINY), "--prompt", "a red circle", "--seconds", "1", "-o", str(tmp_path / "v.mp4"),
               *flags])
    _check_refusal(rc, *capsys.readouterr(), contract.EXIT_USAGE, message)
    assert list(tmp_path.iterdir()) == []


OTHER_PROBES = [
    (["profile", "{plan}", "--seconds", "inf"], "argument --seconds: a video length of inf s is out of range"),
    (["profile", "{plan}", "--seed", "-1"], "argument --seed: seed -1 is out of range"),
    (["eval", "{plan}", "--blocks", "1", "--threads", "-3"], "argument --threads: threads -3 is out of range"),
    (["plan-memory", "{plan}", "--gpu", "h100", "--height", "0"], "--height 0: give 1..8192"),
    (["plan-memory", "{plan}", "--gpu", "h100", "--window", "1000000000"], "window must be in"),
    (["explain-cache", "--blocks", "100000000"], "--blocks 100000000: give 1..1024"),
]


@pytest.mark.parametrize("argv,message", OTHER_PROBES, ids=[" ".join(a[:1] + a[2:]) for a, _ in OTHER_PROBES])
def test_other_commands_refuse_the_same_inputs(tiny_plan, capsys, argv, message):
    rc = main([a.format(plan=tiny_plan[0]) for a in argv])
    _check_refusal(rc, *capsys.readouterr(), contract.EXIT_USAGE, message)


def test_the_library_refuses_the_same_inputs(tiny_plan):
    """arvc.load(...).stream(...) holds the rules itself: a switch at 1e12 s no longer hangs looking for its
    block, nor does one at NaN apply from block 0."""
    import arvc

    session = arvc.load(tiny_plan[0], verify=False)
    for kwargs, message in (({"seconds": float("inf")}, "out of range"), ({"frames": 16 * 86400 + 1}, "out of range"),
                            ({"frames": 2.5}, "an integer"), ({"frames": 8, "seed": -1}, "seed -1"),
                            ({"frames": 8, "seed": True}, "an integer"),
                            ({"frames": 8, "switches": [(1e12, "a blue square")]}, "outside the video"),
                            ({"frames": 8, "switches": [(float("nan"), "a blue square")]}, "outside the video")):
        with pytest.raises(ValueError, match=message):
            session.stream("a red circle", **kwargs)
    with pytest.raises(ValueError, match="threads -3"):
        arvc.load(tiny_plan[0], verify=False, threads=-3)

    def first_block_at_or_after(seconds):  # the definition, one block at a time
        b = 0
        while session.frames_before_block(b) < seconds * session.fps:
            b += 1
        return b

    for seconds in (0.0, 1e-9, 0.0625, 0.8125, 2.5, 1000.3, 86399.9):
        assert session.block_for_time(seconds) == first_block_at_or_after(seconds)


# Corpus cases: a crashing C reader or a traceback in Python before issue 19, a folder that escapes, a FIFO
HOSTILE = ("temporal-upsample-empty", "sink-negative", "resolution-4096", "num-heads-0", "patch-0", "fps-int-max",
           "files-empty-corrupted", "stage-outside", "graph-not-onnx", "nesting-100k", "int-1e12")


@pytest.fixture(scope="module")
def corpus():
    return {case["name"]: case for case in load_corpus()}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_plans_get_a_message_from_run_and_inspect(tiny_plan, corpus, tmp_path, capsys, name):
    case = corpus[name]
    plan = apply_case(case, tiny_plan[0], tmp_path)
    for argv in (["inspect", str(plan)],
                 ["run", str(plan), "--prompt", "a red circle", "--seconds", "0.5", "-o", str(tmp_path / "v.mp4")]):
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc in (contract.EXIT_USAGE, contract.EXIT_INTEGRITY), err
        assert "Traceback" not in out + err and len(err.encode()) < SHORT, err[-SHORT:]
        assert f"arvc {argv[0]}: error:" in err and case.get("where", "") in err, err
    assert not (tmp_path / "v.mp4").exists()


def _arvc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arvc", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_probes_as_real_processes(tiny_plan, corpus, tmp_path):
    """What a user's terminal shows: the message and the exit code, no traceback; a manifest that is a FIFO is
    refused, not waited on."""
    fifo = apply_case(corpus["manifest-fifo"], tiny_plan[0], tmp_path / "fifo")
    plan, out = str(tiny_plan[0]), str(tmp_path / "v.mp4")
    for args, code, message in (
            (["run", plan, "--prompt", "a red circle", "--seconds", "inf", "-o", out], 2, "--seconds"),
            (["run", plan, "--prompt", "a red circle", "--prompt", "a blue square@1e12", "-o", out], 2,
             "outside the video"),
            (["run", plan, "--prompt", UNKNOWN_WORDS, "-o", out], 2, "and 9995 more"),
            (["run", str(fifo), "--prompt", "a red circle", "-o", out], 4, "not a regular file"),
            (["compile", str(TINY), "-o", str(tmp_path / "x.plan"), "--height", "0"], 2, "--height 0")):
        r = _arvc(*args, timeout=60)
        assert r.returncode == code, r.stderr[-SHORT:]
        assert "Traceback" not in r.stdout + r.stderr and len(r.stderr.encode()) < SHORT, r.stderr[-SHORT:]
        assert message in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_graph_that_passes_every_check_but_fails_to_run_gets_a_message(tiny_plan, tmp_path, capsys):
    """An attacker's dit.onnx (rehashed, manifest resealed) whose inputs and outputs match the manifest, but whose
    Expand asks ONNX Runtime for terabytes when it runs (a fuzz finding): `arvc run` refuses with exit 4 naming
    the graph, nothing written; before, the worker's RuntimeError was a traceback (exit 1)."""
    import hashlib
    import json

    import onnx
    from onnx import numpy_helper

    from arvc.runtime.plan import seal_manifest
    from plan_corpus import copy_plan

    plan = tmp_path / "p.plan"
    copy_plan(tiny_plan[0], plan)
    graph = onnx.load(str(plan / "dit.onnx"), load_external_data=False)
    inits = {t.name: t for t in graph.graph.initializer}
    shape = inits[next(n for n in graph.graph.node if n.op_type == "Expand").input[1]]
    huge = numpy_helper.to_array(shape).copy()
    huge[-2] = 2**31  # a broadcast dimension (1 in the input): ONNX Runtime loads it, and fails allocating at run
    shape.CopyFrom(numpy_helper.from_array(huge, shape.name))
    (plan / "dit.onnx").unlink()  # a hard link to the tiny plan's: replaced, never written through
    (plan / "dit.onnx").write_bytes(graph.SerializeToString())
    manifest = json.loads((plan / "manifest.json").read_text())
    data = (plan / "dit.onnx").read_bytes()
    manifest["files"]["dit.onnx"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (plan / "manifest.json").unlink()
    (plan / "manifest.json").write_text(seal_manifest(manifest))
    out = tmp_path / "v.mp4"
    rc = main(["run", str(plan), "--prompt", "a red circle", "--seconds", "0.5", "-o", str(out)])
    _, err = capsys.readouterr()
    assert rc == contract.EXIT_INTEGRITY, err[-SHORT:]
    assert "Traceback" not in err and len(err.encode()) < SHORT
    assert "dit.onnx: integrity check failed: ONNX Runtime failed running this graph of the plan" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["p.plan"]
