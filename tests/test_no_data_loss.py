"""Issue 17, part 0: no data loss, no garbage passed.

- `arvc compile -o X --force` replaces only an existing arvc plan: never a directory of other files, a file,
  a link, a plan it cannot read, or the checkpoint being compiled; refused before any work, nothing touched.
- NaN / infinity never passes: weights are refused at load naming the file and the tensor; the parity gate
  fails a stage whose output is not finite and names it; `arvc eval` counts it as a failure everywhere.
"""
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

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
