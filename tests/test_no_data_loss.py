"""Issue 17, part 0: no data loss, no garbage passed.

- `arvc compile -o X --force` replaces only an existing arvc plan: never a directory of other files, a file,
  a link, a plan it cannot read, or the checkpoint being compiled; refused before any work, nothing touched.
- NaN / infinity never passes: weights are refused at load naming the file and the tensor; the parity gate
  fails a stage whose output is not finite and names it; `arvc eval` counts it as a failure everywhere.
- Issue 19: temporaries (a compile's plan, a run's video, arvc_stream's video) leave nothing behind on any exit,
  signals included, and a killed run's are cleaned once provably stale; a write error (full disk, `ulimit -f`)
  fails with a message and keeps the old output; arvc_stream refuses bad arguments and planted links.
"""
import errno
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from arvc import atomic
from arvc.checkpoints.safetensors_io import CheckpointError, read_safetensors, write_safetensors_atomic
from arvc.cli import main
from arvc.compiler import evaluate, verify
from arvc.compiler.compile import (CompileError, CompileOptions, OutputExists, OutputRefused,
                                   ParityGateRefused, compile_plan)
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.runtime.plan import read_manifest, seal_manifest
from arvc.tiny.judge import TinyJudge

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny"
QUIET = lambda _m: None  # noqa: E731
# small and quick: 32x32 frames (VAE factor 8 x patch 2), window of 2 blocks, two denoising steps
FAST = CompileOptions(CacheGeometry(3, 6, 3, 21, "relative"), Schedule((1000.0, 500.0)), 32, 32, verify=False,
                      verify_blocks=2)


def _snapshot(root: Path) -> dict:
    """Every file under root (relative path -> bytes) and every directory: what must survive a refusal."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[str(Path(dirpath, d).relative_to(root)) + "/"] = None
        for f in files:
            p = Path(dirpath, f)
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture
def model(tmp_path) -> Path:
    """A private copy of the tiny model (it may be corrupted, and nothing may touch the shipped one)."""
    return Path(shutil.copytree(TINY, tmp_path / "m"))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if compile gets as far as loading a model: refusals come before any work."""
    from arvc.checkpoints import text
    from arvc.reference import models

    def loaded(*_a, **_k):
        raise AssertionError("compile_plan loaded the model before refusing the output")

    for module, name in ((models, "load_dit_module"), (models, "load_vae_module"), (text, "load_text_encoder")):
        monkeypatch.setattr(module, name, loaded)


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    """The tiny model compiled quickly (--no-verify, small geometry): a real plan to replace and tamper with."""
    out = tmp_path_factory.mktemp("nodataloss") / "tiny.plan"
    compile_plan(TINY, out, FAST, log=QUIET)
    return out


def _force(**changes) -> CompileOptions:
    return replace(FAST, force=True, **changes)


def _put_nan(path: Path, name: str, value: float = math.nan, count: int = 1) -> None:
    tensors, meta = read_safetensors(path)
    t = tensors[name].clone()
    t.view(-1)[:count] = value
    tensors[name] = t
    write_safetensors_atomic(path, tensors, meta)


# -- --force replaces only a plan ------------------------------------------------------------------------------

def test_force_refuses_a_directory_that_is_not_a_plan_and_leaves_it_intact(tmp_path, no_work):
    target = tmp_path / "v"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("x\n")
    (tmp_path / "v.plan").mkdir()  # taken: the suggestion is the next free name
    before = _snapshot(tmp_path)
    with pytest.raises(OutputRefused, match=r"not an arvc plan.*notes\.txt.*choose another -o") as e:
        compile_plan(TINY, target, _force(), log=QUIET)
    assert _snapshot(tmp_path) == before
    assert e.value.suggested_output == tmp_path / "v-2.plan" and str(tmp_path / "v-2.plan") in str(e.value)


def test_the_issue_repro_through_the_cli_keeps_the_directory(tmp_path):
    target = tmp_path / "v"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("x\n")
    before = _snapshot(tmp_path)
    assert main(["compile", str(TINY), "-o", str(target), "--force", "--no-verify"]) != 0
    assert _snapshot(tmp_path) == before


def test_force_refuses_a_file_and_a_link(tmp_path, plan, no_work):
    f = tmp_path / "notes.txt"
    f.write_text("keep me\n")
    with pytest.raises(CompileError, match=r"is a file, not an arvc plan.*choose another -o"):
        compile_plan(TINY, f, _force(), log=QUIET)
    assert f.read_text() == "keep me\n"
    link = tmp_path / "latest.plan"
    link.symlink_to(plan)
    with pytest.raises(CompileError, match="symbolic link"):
        compile_plan(TINY, link, _force(), log=QUIET)
    assert link.is_symlink() and read_manifest(plan, verify_files=False)


def test_output_that_is_the_source_model_is_refused_and_the_weights_kept(model, no_work):
    before = _snapshot(model.parent)
    with pytest.raises(OutputRefused, match=r"is the checkpoint being compiled.*choose another -o") as e:
        compile_plan(model, model, _force(), log=QUIET)
    assert e.value.suggested_output == model.parent / "m.plan"  # beside the model, not in it
    # the checkpoint given as its DiT file, and the output the same file
    with pytest.raises(CompileError, match="is the checkpoint being compiled"):
        compile_plan(model / "model.safetensors", model / "model.safetensors", _force(), log=QUIET)
    # the same directory spelled another way
    with pytest.raises(CompileError, match="is the checkpoint being compiled"):
        compile_plan(model, model / "sub" / "..", _force(), log=QUIET)
    assert _snapshot(model.parent) == before


def test_output_inside_the_source_model_is_refused(model, no_work):
    before = _snapshot(model.parent)
    for out in (model / "plan", model / "model.safetensors", model / "vae.safetensors"):
        for force in (False, True):
            with pytest.raises(CompileError, match=r"inside the checkpoint directory.*choose another -o"):
                compile_plan(model, out, replace(FAST, force=force), log=QUIET)
    assert _snapshot(model.parent) == before


def test_output_holding_the_source_model_is_refused(model, no_work):
    before = _snapshot(model.parent)
    with pytest.raises(CompileError, match="holds the checkpoint being compiled"):
        compile_plan(model, model.parent, _force(), log=QUIET)
    with pytest.raises(CompileError, match="holds the checkpoint being compiled"):  # given as its DiT file
        compile_plan(model / "model.safetensors", model.parent, _force(), log=QUIET)
    assert _snapshot(model.parent) == before


def test_a_model_whose_weights_are_linked_from_the_output_is_refused(tmp_path, model, no_work):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.move(model / "vae.safetensors", other / "vae.safetensors")
    (model / "vae.safetensors").symlink_to(other / "vae.safetensors")
    with pytest.raises(CompileError, match="holds the checkpoint being compiled"):
        compile_plan(model, other, _force(), log=QUIET)
    assert (other / "vae.safetensors").is_file()


def test_a_real_plan_is_replaced_with_force(plan, tmp_path):
    target = tmp_path / "p.plan"
    shutil.copytree(plan, target)
    with pytest.raises(OutputExists, match="already exists; pass --force"):
        compile_plan(TINY, target, FAST, log=QUIET)
    assert read_manifest(target).resolution.fps == 16
    compile_plan(TINY, target, _force(fps=8), log=QUIET)
    assert read_manifest(target).resolution.fps == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.plan"]  # no old plan or temporary left behind


def test_force_without_an_atomic_exchange_still_replaces_and_leaves_nothing(plan, tmp_path, monkeypatch):
    """Where renameat2 cannot swap (another OS or filesystem), the old plan is moved aside, then removed."""
    target = tmp_path / "p.plan"
    shutil.copytree(plan, target)
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    compile_plan(TINY, target, _force(fps=8), log=QUIET)
    assert read_manifest(target).resolution.fps == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.plan"]


def test_a_file_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """atomic.write_bytes (engines, recipes; safetensors through atomic.writing): the old content or the new."""
    path = tmp_path / "engines" / "k.engine"
    atomic.write_bytes(path, b"first")
    atomic.write_bytes(path, b"second engine")
    assert path.read_bytes() == b"second engine" and sorted(p.name for p in path.parent.iterdir()) == ["k.engine"]

    def fail(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(atomic.WriteError, match=r"k.engine: cannot write: No space left on device \(errno 28\); free"):
        atomic.write_bytes(path, b"partial")
    assert path.read_bytes() == b"second engine" and sorted(p.name for p in path.parent.iterdir()) == ["k.engine"]


def test_exchange_swaps_two_entries_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "f").write_text("a")
    b.write_text("b")
    if not atomic.exchange(a, b):
        pytest.skip("this filesystem has no RENAME_EXCHANGE")
    assert b.is_dir() and (b / "f").read_text() == "a" and a.read_text() == "b"
    with pytest.raises(FileNotFoundError):
        atomic.exchange(a, tmp_path / "missing")
    assert a.read_text() == "b"


def test_an_empty_directory_needs_force_and_is_then_used(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    with pytest.raises(CompileError, match="already exists.*pass --force"):
        compile_plan(TINY, target, FAST, log=QUIET)
    compile_plan(TINY, target, _force(), log=QUIET)
    assert read_manifest(target).format == "arvc-plan"


def test_a_plan_with_a_tampered_or_unreadable_manifest_is_not_deleted(plan, tmp_path, no_work):
    target = tmp_path / "p.plan"
    shutil.copytree(plan, target)
    m = json.loads((target / "manifest.json").read_text())
    m["precision"] = "int8"  # edited after compile: the seal no longer matches
    (target / "manifest.json").write_text(json.dumps(m, sort_keys=True, indent=2) + "\n")
    before = _snapshot(tmp_path)
    with pytest.raises(CompileError, match=r"does not read as an arvc plan.*delete it yourself"):
        compile_plan(TINY, target, _force(), log=QUIET)
    assert _snapshot(tmp_path) == before
    (target / "manifest.json").write_text("{not json")
    before = _snapshot(tmp_path)
    with pytest.raises(CompileError, match=r"does not read as an arvc plan.*delete it yourself"):
        compile_plan(TINY, target, _force(), log=QUIET)
    assert _snapshot(tmp_path) == before


def test_a_plan_holding_other_files_is_not_replaced(plan, tmp_path, no_work):
    target = tmp_path / "p.plan"
    shutil.copytree(plan, target)
    (target / "video.mp4").write_bytes(b"user data")
    before = _snapshot(tmp_path)
    with pytest.raises(CompileError, match=r"also holds files it does not list \(video\.mp4\)"):
        compile_plan(TINY, target, _force(), log=QUIET)
    assert _snapshot(tmp_path) == before


def test_what_appears_at_the_output_during_a_compile_is_not_replaced(tmp_path, monkeypatch):
    from arvc.compiler import compile as compile_mod

    target = tmp_path / "out"
    real = compile_mod._build

    def build_then_someone_writes_there(*a, **k):
        manifest = real(*a, **k)
        target.mkdir()
        (target / "notes.txt").write_text("x\n")
        return manifest

    monkeypatch.setattr(compile_mod, "_build", build_then_someone_writes_there)
    with pytest.raises(CompileError, match="not an arvc plan"):
        compile_plan(TINY, target, _force(), log=QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "notes.txt").read_text() == "x\n"


# -- NaN / infinity in the weights: refused at load ----------------------------------------------------------

def test_nan_in_the_vae_is_refused_at_load_naming_the_tensor(model, no_work):
    from arvc.checkpoints.load import load_vae

    _put_nan(model / "vae.safetensors", "decoder.conv1.weight", count=3)
    with pytest.raises(CheckpointError, match=r"vae\.safetensors: non-finite weights.*decoder\.conv1\.weight "
                                              r"\(3 NaN of \d+ values\)"):
        load_vae(model / "vae.safetensors")


def test_nan_in_the_vae_stops_the_compile_naming_the_file_and_tensor(model, tmp_path, capsys):
    _put_nan(model / "vae.safetensors", "conv2.bias")
    with pytest.raises(ValueError, match=r"vae\.safetensors: non-finite weights.*conv2\.bias"):
        compile_plan(model, tmp_path / "x.plan", FAST, log=QUIET)
    # the CLI: an input error (exit 2), the tensor named, no plan
    assert main(["compile", str(model), "-o", str(tmp_path / "x.plan"), "--no-verify"]) == 2
    assert "conv2.bias" in capsys.readouterr().err and not (tmp_path / "x.plan").exists()


def test_nan_in_the_vae_past_the_loader_is_refused_by_the_gate_naming_vae(model, tmp_path, monkeypatch):
    from arvc.checkpoints import load

    _put_nan(model / "vae.safetensors", "decoder.conv1.weight")
    monkeypatch.setattr(load, "check_finite", lambda *_a, **_k: None)  # as if the loader had not looked
    target = tmp_path / "x.plan"
    with pytest.raises(ParityGateRefused, match=r"stage 'vae \(NaN or infinity in the reference's and the "
                                                r"plan's output\)'.*No plan was written"):
        compile_plan(model, target, replace(FAST, verify=True), log=QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no plan, no temporary


def test_nan_and_infinity_in_the_dit_are_refused_at_load_naming_the_tensor(model, tmp_path):
    from arvc.reference.models import load_dit_module

    _put_nan(model / "model.safetensors", "blocks.1.ffn.0.weight", count=2)
    _put_nan(model / "model.safetensors", "head.head.bias", value=math.inf)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: non-finite weights .* in 2 tensor\(s\): "
                                              r".*blocks\.1\.ffn\.0\.weight \(2 NaN of \d+ values\)"
                                              r".*head\.head\.bias \(1 infinite of \d+ values\)"):
        load_dit_module(model / "model.safetensors")
    with pytest.raises(ValueError, match=r"blocks\.1\.ffn\.0\.weight"):
        compile_plan(model, tmp_path / "x.plan", FAST, log=QUIET)
    assert not (tmp_path / "x.plan").exists()


def test_nan_in_the_dit_past_the_loader_is_refused_by_the_gate_not_a_json_error(model, tmp_path, monkeypatch):
    from arvc.checkpoints import load

    _put_nan(model / "model.safetensors", "head.head.bias")
    monkeypatch.setattr(load, "check_finite", lambda *_a, **_k: None)
    with pytest.raises(ParityGateRefused, match=r"stage 'dit \(NaN or infinity in the reference's and the plan's "
                                                r"output\)'"):
        compile_plan(model, tmp_path / "x.plan", replace(FAST, verify=True), log=QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_nan_in_the_text_encoder_is_refused_at_load(model):
    from arvc.checkpoints.text import load_text_encoder

    _put_nan(model / "text_encoder.safetensors", "embed.weight")
    with pytest.raises(ValueError, match=r"text_encoder\.safetensors: non-finite weights.*embed\.weight"):
        load_text_encoder(model / "text_encoder.safetensors")


def test_a_nan_min_psnr_is_refused(tmp_path, no_work):
    with pytest.raises(CompileError, match="--min-psnr nan"):
        compile_plan(TINY, tmp_path / "x.plan", replace(FAST, min_psnr=math.nan), log=QUIET)


# -- the gate and eval: a non-finite output is never a pass -------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_psnr_of_a_non_finite_output_is_not_a_pass(bad):
    ref = np.linspace(-1, 1, 64, dtype=np.float32)
    test = ref.copy()
    test[5] = bad
    for a, b in ((ref, test), (test, ref), (test, test)):
        value = verify.psnr(a, b, 2.0)
        assert value == verify.PSNR_FLOOR and math.isfinite(value) and value < 0
    assert verify.psnr(ref, ref, 2.0) == verify.PSNR_CAP
    assert verify.psnr(ref, ref, math.nan) == verify.PSNR_FLOOR  # a NaN peak (the max of a NaN reference)
    assert verify.psnr(np.zeros(4), np.ones(4), 0.0) == verify.PSNR_FLOOR  # an all-zero reference, no crash


def test_diverged_stage_names_the_first_non_finite_stage_whatever_the_threshold():
    fine = {"stages": {s: {"psnr_db": verify.PSNR_CAP} for s in ("text", "dit", "vae")},
            "frame_psnr_db": verify.PSNR_CAP}
    assert verify.diverged_stage(fine, 40.0) is None
    for non_finite, want in (({"vae": "reference and plan", "frames": "plan"}, "vae"), ({"frames": "plan"}, "frames"),
                             ({"dit": "plan", "vae": "plan"}, "dit"), ({"text": "reference"}, "text")):
        bad = verify.diverged_stage({**fine, "non_finite": non_finite}, -math.inf)
        assert bad is not None and bad.split()[0] == want and "NaN or infinity" in bad
    assert verify.non_finite_side(np.ones(3), np.array([1.0, np.nan, 1.0])) == "plan"
    assert verify.non_finite_side(torch.tensor([math.inf]), np.ones(1)) == "reference"
    assert verify.non_finite_side(np.ones(2), np.ones(2)) is None


def test_eval_comparisons_fail_on_non_finite_outputs_and_name_the_stage():
    rng = np.random.default_rng(0)
    ref_fr = rng.uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    ref_lat = rng.standard_normal((1, 16, 3, 2, 2)).astype(np.float32)
    ctx = rng.standard_normal((1, 16, 64)).astype(np.float32)
    bad_fr, bad_lat, bad_ctx = ref_fr.copy(), ref_lat.copy(), ctx.copy()
    bad_fr[0, 1, 2, 3], bad_lat[0, 2, 1, 0, 0], bad_ctx[0, 3, 4] = np.nan, np.inf, np.nan
    assert evaluate._cosine(ref_lat, ref_lat) == pytest.approx(1.0)
    assert evaluate._cosine(ref_lat, bad_lat) == evaluate.WORST_SIMILARITY == -1.0
    ssim = evaluate._ssim(ref_fr, bad_fr)
    assert ssim[1] == -1.0 and ssim[0] == pytest.approx(1.0) and all(math.isfinite(v) for v in ssim)
    assert evaluate.psnr(ref_fr, bad_fr, 2.0) == verify.PSNR_FLOOR
    stage = evaluate.non_finite_stage
    assert stage(ctx, ctx, ref_lat, ref_lat, ref_fr, ref_fr) is None
    assert stage(torch.from_numpy(ctx), bad_ctx, ref_lat, bad_lat, ref_fr, bad_fr) == ("text", "plan")
    assert stage(ctx, ctx, bad_lat, bad_lat, ref_fr, bad_fr) == ("dit", "reference and plan")
    assert stage(ctx, ctx, ref_lat, ref_lat, ref_fr, bad_fr) == ("vae", "plan")
    judged = evaluate._failed_judge({"color_match": True, "direction_match": True, "found_fraction": 1.0})
    assert not judged["color_match"] and not judged["direction_match"] and judged["found_fraction"] == 0.0


def test_eval_of_a_plan_with_nan_output_reports_failures_and_valid_json(plan, monkeypatch):
    """End to end: the plan's VAE made to emit NaN; every frame comparison fails, the stage is named, and the
    report is strict JSON (no NaN)."""
    from arvc.runtime import ort_backend

    real = ort_backend.OrtBackend.run_vae

    def nan_vae(self, *a, **k):
        out = real(self, *a, **k)
        out[0][...] = np.nan
        return out

    monkeypatch.setattr(ort_backend.OrtBackend, "run_vae", nan_vae)
    result = evaluate.evaluate(plan, blocks=2, prompts=1, seed=0, threads=1, log=QUIET, judge=TinyJudge())
    assert result["non_finite"] == [{"prompt": 0, "seed": 0, "stage": "vae", "output": "plan", "first_block": 0,
                                     "blocks": 2}]
    assert result["per_block"]["frame_psnr_db"] == [verify.PSNR_FLOOR] * 2
    assert result["per_block"]["ssim"] == [-1.0] * 2
    assert result["summary"]["latent_cosine_min"] > 0.99  # the latents themselves are fine
    json.dumps(result, allow_nan=False)


def test_a_manifest_never_holds_nan():
    with pytest.raises(ValueError):
        seal_manifest({"verification": {"frame_psnr_db": math.nan}})


def test_weights_beyond_fp16_range_are_refused_not_stored_as_infinity(model, tmp_path):
    """Finite fp32 weights above 65504 become infinity in fp16: the gate would catch it, --no-verify would not."""
    tensors, meta = read_safetensors(model / "model.safetensors")
    big = tensors["blocks.0.ffn.2.weight"].float()  # the shipped file is 16-bit: store this tensor in fp32
    big.view(-1)[0] = 1e6
    write_safetensors_atomic(model / "model.safetensors", {**tensors, "blocks.0.ffn.2.weight": big}, meta)
    with pytest.raises(CompileError, match=r"--precision fp16: 1 weight tensor\(s\) overflow .*blocks\.0\.ffn\.2\.weight"
                                           r".*--precision bf16"):
        compile_plan(model, tmp_path / "x.plan", replace(FAST, precision="fp16"), log=QUIET)
    assert not (tmp_path / "x.plan").exists() and not list(tmp_path.glob(".x.plan*"))
    compile_plan(model, tmp_path / "x.plan", replace(FAST, precision="bf16"), log=QUIET)  # bf16 holds it


# -- issue 19: nothing left behind (temporaries), nothing lost (write errors) ----------------------------------
# Temporaries have unique O_EXCL names beside their target (arvc/atomic.py), are removed on any exit, signals
# included, and a later run removes those a killed process left once their owner is provably gone. A write error
# fails the command with a message naming the output; the output is then untouched.

ARVC = [sys.executable, "-m", "arvc"]
PROMPT = "a red circle moving right on a dark blue background"


def _default_signals() -> None:
    # A suite started in the background (`make test &`, nohup) passes SIGINT / SIGHUP on ignored, and a process
    # leaves an ignored signal ignored (as arvc does): the processes these tests stop get the defaults back.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _start(cmd: list, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals, **kw)


def _wait_for(proc: subprocess.Popen, directory: Path, pattern: str) -> Path:
    """The first entry of ``directory`` matching ``pattern``, once the process has made it."""
    deadline = time.monotonic() + 120  # a safety net against a hang, not a timing assertion
    while time.monotonic() < deadline:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before making {pattern}:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {pattern} in {directory}")


def _file_size_limit(limit: int, xfsz=signal.SIG_IGN):
    def apply():
        signal.signal(signal.SIGXFSZ, xfsz)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid  # gone (were it reused meanwhile, its start time tells the new process apart)


def test_stale_temporaries_are_removed_only_when_their_owner_is_provably_gone(tmp_path):
    here = atomic.Owner.current()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = replace(here, pid=sleeper.pid, start=atomic.process_start(sleeper.pid))
        dead = replace(here, pid=_dead_pid())
        owners = {"alive": alive, "this process": here, "dead": dead,
                  "pid reused": replace(alive, start=alive.start + 1),
                  "earlier boot": replace(dead, boot="0" * 32 if here.boot != "0" * 32 else "1" * 32),
                  "another host": replace(dead, host="f" * 12 if here.host != "f" * 12 else "e" * 12),
                  "impossible pid": replace(dead, pid=9_999_999_999)}
        target = tmp_path / "x.plan"
        made = {what: tmp_path / atomic.temp_name(target, ".compiling", owner) for what, owner in owners.items()}
        other_kind = tmp_path / atomic.temp_name(target, ".mp4.part", dead)
        unknown = [tmp_path / ".x.plan.abc123.compiling", tmp_path / ".x.plan.arvc-zz-1-2-abcdefgh.compiling"]
        for path in [*made.values(), other_kind, *unknown]:
            path.mkdir()
            (path / "dit.safetensors").write_bytes(b"weights")
        new = atomic.temp_dir(target, ".compiling")
        atomic.discard(new)
        kept = {p.name for p in tmp_path.iterdir()}
        assert {w for w, p in made.items() if p.name not in kept} == {"dead", "pid reused", "earlier boot", "impossible pid"}
        assert other_kind.name in kept and all(p.name in kept for p in unknown) and new.name not in kept
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_temporary_name_is_unique_and_never_opened_through_a_planted_link(tmp_path, monkeypatch):
    target = tmp_path / "v.mp4"
    made = [atomic.temp_file(target, ".mp4.part") for _ in range(3)]
    assert len({p for _, p in made}) == 3 and all(atomic.Owner.current().tag() in p.name for _, p in made)
    for fd, path in made:
        os.close(fd)
        atomic.discard(path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "taken").symlink_to(victim)
    names = iter(["taken", "free"])
    monkeypatch.setattr(atomic, "temp_name", lambda *_a: next(names))
    fd, path = atomic.temp_file(target, ".mp4.part")
    os.write(fd, b"video")
    os.close(fd)
    assert path.name == "free" and victim.read_bytes() == b"precious" and (tmp_path / "taken").is_symlink()
    atomic.discard(path)


def test_write_errors_name_the_output_and_the_fix():
    """ENOSPC, EFBIG, EIO as OSError or as a Rust library words them (safetensors, writing a plan's weights): a
    WriteError, exit 2 with its message; any other error passes unchanged."""
    from arvc.cli.contract import EXIT_USAGE, exit_code

    cases = ((OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC,
              "out/demo.mp4: cannot write: No space left on device (errno 28); free space or choose another -o"),
             (RuntimeError("Error while serializing: I/O error: File too large (os error 27)"), errno.EFBIG,
              "out/demo.mp4: cannot write: File too large (errno 27); raise the file size limit (ulimit -f)"),
             (OSError(errno.EIO, "Input/output error"), errno.EIO, "(errno 5); check the disk"))
    for error, code, message in cases:
        with pytest.raises(atomic.WriteError) as e:
            with atomic.write_errors("out/demo.mp4"):
                raise error
        assert message in str(e.value) and e.value.errno == code and exit_code(e.value) == EXIT_USAGE
    with pytest.raises(FileNotFoundError):
        with atomic.write_errors("out/demo.mp4"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")


_HOLDS_TEMPORARIES = """
import sys, time
from pathlib import Path
from arvc import atomic
out = Path(sys.argv[1])
atomic.temp_dir(out / "p.plan", ".compiling")
fd, _ = atomic.temp_file(out / "v.mp4", ".mp4.part")
print("ready", flush=True)
if sys.argv[2] == "raise":
    raise RuntimeError("boom")
if sys.argv[2] == "exit":
    sys.exit(0)
if sys.argv[2] == "SIGTERM in a swap":
    import os, signal
    with atomic.signals_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # a signal handler would run here, between two renames
        print("swapped", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("end", ["SIGTERM", "SIGHUP", "SIGINT", "raise", "exit", "SIGTERM in a swap"])
def test_temporaries_go_on_any_exit(tmp_path, end):
    proc = _start([sys.executable, "-c", _HOLDS_TEMPORARIES, tmp_path, end])
    assert proc.stdout.readline() == "ready\n"
    if end in ("SIGTERM", "SIGHUP", "SIGINT"):
        proc.send_signal(getattr(signal, end))
    out, _ = proc.communicate(timeout=60)
    # SIGINT raises KeyboardInterrupt, as before (uncaught, Python then ends by SIGINT); SIGTERM and SIGHUP end the
    # process by their signal, as without the handler; in signals_deferred, once the block is done
    expected = {"raise": 1, "exit": 0}[end] if end in ("raise", "exit") else -getattr(signal, end.split()[0])
    assert proc.returncode == expected and list(tmp_path.iterdir()) == []
    assert ("swapped" in out) == (end == "SIGTERM in a swap")


def _other_owners(target: Path, sleeper: subprocess.Popen) -> list[Path]:
    """Temporaries for ``target`` of a live process (``sleeper``) and of another host: no run may remove them."""
    here = atomic.Owner.current()
    alive = replace(here, pid=sleeper.pid, start=atomic.process_start(sleeper.pid))
    another_host = replace(here, host="f" * 12 if here.host != "f" * 12 else "e" * 12)
    paths = [target.parent / atomic.temp_name(target, ".compiling", owner) for owner in (alive, another_host)]
    for path in paths:
        path.mkdir()
    return paths


def test_a_killed_compile_is_cleaned_by_the_next_and_signals_leave_nothing(tmp_path, monkeypatch):
    """SIGKILL leaves a .compiling directory (nothing can run then); the next compile into the same folder
    removes it; SIGTERM and SIGINT during a compile leave nothing; temporaries of a live process or of another
    host stay."""
    from arvc.compiler import compile as compile_mod

    killed_dir, term_dir = tmp_path / "killed", tmp_path / "term"
    killed_dir.mkdir()
    term_dir.mkdir()
    killed, term = (_start([*ARVC, "compile", TINY, "--no-verify", "-o", d / "a.plan"]) for d in (killed_dir, term_dir))
    stale = _wait_for(killed, killed_dir, ".a.plan.*.compiling")
    killed.kill()
    _wait_for(term, term_dir, ".a.plan.*.compiling")
    term.send_signal(signal.SIGTERM)
    assert killed.wait() == -signal.SIGKILL and term.wait() == -signal.SIGTERM
    assert stale.is_dir() and list(term_dir.iterdir()) == []

    def interrupted(tmp, *_a, **_k):
        assert tmp.is_dir() and not stale.exists()  # the stale one went before this compile made its own
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(compile_mod, "_build", interrupted)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # a suite started in the background (see _start)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        others = _other_owners(killed_dir / "b.plan", sleeper)
        with pytest.raises(KeyboardInterrupt):
            compile_plan(TINY, killed_dir / "b.plan", FAST, log=QUIET)
        assert sorted(killed_dir.iterdir()) == sorted(others)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_stopped_by_a_signal_leaves_nothing(tiny_plan, tmp_path):
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / sig.name
        out.mkdir()
        runs[sig] = out, _start([*ARVC, "run", tiny_plan[0], "--prompt", PROMPT, "--seconds", "600", "--threads", "1",
                                 "--quiet", "-o", out / "x.mp4"])
    for sig, (out, proc) in runs.items():
        _wait_for(proc, out, ".x.mp4.*.mp4.part")
        proc.send_signal(sig)
    for sig, (out, proc) in runs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130}[sig], err[-3000:]
        assert list(out.iterdir()) == []


def test_a_run_past_the_file_size_limit_fails_and_keeps_the_old_video(tiny_plan, tmp_path):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"the old video")
    r = subprocess.run([*ARVC, "run", str(tiny_plan[0]), "--prompt", PROMPT, "--seconds", "1", "--threads", "1",
                        "--quiet", "-o", str(out)], capture_output=True, text=True, preexec_fn=_file_size_limit(2048))
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"{out}: cannot write: File too large (errno 27); raise the file size limit (ulimit -f)" in r.stderr
    assert "Traceback" not in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4"] and out.read_bytes() == b"the old video"


# -- arvc_stream (examples/stream.cpp) ------------------------------------------------------------------------


def _stream(c_build, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c_build / "runtime" / "arvc_stream"), *map(str, args)], capture_output=True, text=True,
                          **kw)


def test_stream_past_the_file_size_limit_exits_1_and_keeps_the_old_video(c_build, tiny_plan, tmp_path):
    """`ulimit -f`: SIGXFSZ at its default (it would kill the process); arvc_stream reports EFBIG itself."""
    out = tmp_path / "x.y4m"
    out.write_bytes(b"the old video")
    r = _stream(c_build, tiny_plan[0], "--seconds", "1", "--threads", "1", "-o", out,
                preexec_fn=_file_size_limit(100_000, signal.SIG_DFL))
    assert r.returncode == 1, r.stderr
    assert f"{out}: cannot write: File too large (errno 27); raise the file size limit (ulimit -f)" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.y4m"] and out.read_bytes() == b"the old video"


def test_stream_never_follows_a_link_at_the_old_part_name(c_build, tiny_plan, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "v.y4m.part").symlink_to(victim)
    r = _stream(c_build, tiny_plan[0], "--seconds", "0.2", "--threads", "1", "-o", tmp_path / "v.y4m")
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == b"precious" and (tmp_path / "v.y4m.part").is_symlink()
    assert (tmp_path / "v.y4m").read_bytes().startswith(b"YUV4MPEG2 W128 H128 F16:1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.y4m", "v.y4m.part", "victim"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stream_stopped_by_a_signal_leaves_nothing(c_build, tiny_plan, tmp_path, sig):
    proc = _start([c_build / "runtime" / "arvc_stream", tiny_plan[0], "--seconds", "600", "--threads", "1", "-o",
                   tmp_path / "v.y4m"])
    _wait_for(proc, tmp_path, ".v.y4m.*.part")
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == -sig and list(tmp_path.iterdir()) == []


def test_stream_parts_name_their_owner_as_python_does_and_stale_ones_are_cleaned(c_build, tiny_plan, tmp_path):
    """arvc_stream removes a part a killed run left (its owner provably gone), keeps the rest, and names its own
    part as arvc/atomic.py does: Python cleans the part a SIGKILLed arvc_stream leaves, and the reverse."""
    here = atomic.Owner.current()
    dead = replace(here, pid=_dead_pid())
    planted = {"dead": tmp_path / atomic.temp_name(tmp_path / "old.y4m", ".part", dead),
               "this process": tmp_path / atomic.temp_name(tmp_path / "old.y4m", ".part", here),
               "another host": tmp_path / atomic.temp_name(tmp_path / "old.y4m", ".part",
                                                           replace(dead, host="f" * 12 if here.host != "f" * 12 else "e" * 12)),
               "another kind": tmp_path / atomic.temp_name(tmp_path / "old.mp4", ".mp4.part", dead)}
    for path in planted.values():
        path.write_bytes(b"half a video")
    proc = _start([c_build / "runtime" / "arvc_stream", tiny_plan[0], "--seconds", "600", "--threads", "1", "-o",
                   tmp_path / "v.y4m"])
    try:
        part = _wait_for(proc, tmp_path, ".v.y4m.*.part")
        left = {what for what, path in planted.items() if path.exists()}
        assert left == {"this process", "another host", "another kind"}
        assert atomic._owner_of(part.name, ".part") == replace(here, pid=proc.pid, start=atomic.process_start(proc.pid))
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert part.exists()  # SIGKILL: nothing could remove it
    assert atomic.clean_stale(tmp_path, ".part") == [part]


@pytest.mark.parametrize("args,why", [
    (["--seed", "abc"], "--seed 'abc': give a whole number in 0..18446744073709551615"),
    (["--seed", "-1"], "--seed '-1'"),
    (["--seed", "18446744073709551616"], "--seed '18446744073709551616'"),
    (["--seed", " 5"], "--seed ' 5'"),
    (["--threads", "-3"], "--threads '-3': give a whole number in 0..256"),
    (["--threads", "257"], "--threads '257'"),
    (["--threads", "2x"], "--threads '2x'"),
    (["--seconds", "inf"], "--seconds 'inf': give a length in seconds, more than 0 and at most 86400"),
    (["--seconds", "nan"], "--seconds 'nan'"),
    (["--seconds", "0"], "--seconds '0'"),
    (["--seconds", "86401"], "--seconds '86401'"),
    (["--frames", "0"], "--frames '0': give a whole number of frames, at least 1"),
    (["--frames", "1382401"], "--frames 1382401: at most 1382400 (86400 s at 16 fps)"),
    (["--switch", "nan", "a red circle"], "--switch 'nan': give the switch time in seconds, a finite number >= 0"),
    (["--switch", "-1", "a red circle"], "--switch '-1'"),
    (["--seconds", "1", "--switch", "1", "a red circle"], "--switch 1: after the end of the video (1 s)"),
    (["--switch", "1e12", "a red circle"], "--switch 1e+12: after the end of the video (5 s)"),
])
def test_stream_refuses_bad_arguments_before_any_work(c_build, tiny_plan, tmp_path, args, why):
    r = _stream(c_build, tiny_plan[0], *args, "-o", tmp_path / "v.y4m")
    assert r.returncode == 2 and f"arvc_stream: {why}" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_stream_takes_the_largest_seed(c_build, tiny_plan, tmp_path):
    r = _stream(c_build, tiny_plan[0], "--seed", str(2**64 - 1), "--frames", "1", "--threads", "1", "-o",
                tmp_path / "v.rgb")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["v.rgb"] and (tmp_path / "v.rgb").stat().st_size == 128 * 128 * 3
