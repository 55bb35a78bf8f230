"""`arvc eval`: a plan's quality against the fp32 reference, per block, with drift and the tiny judge."""
import json
import shutil
from contextlib import contextmanager

import pytest
import torch

from arvc.checkpoints.state_dicts import save_dit
from arvc.cli import main
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.compiler.evaluate import EvalError, drift, evaluate
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.schedule import Schedule
from arvc.tiny.data import parse_prompt
from arvc.tiny.judge import TinyJudge

from conftest import SMALL_CFG_ARGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUIET = lambda _m: None  # noqa: E731
# threads=1 for torch and ORT throughout: two OpenMP threads that must meet at every op of these small models
# run ~80x slower whenever another process holds one of the two cores


@contextmanager
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def nvfp4_plan(small_ckpt, tmp_path_factory):
    """The small random model with NVFP4 block linears (window 6, sink 3: blocks 2+ evict)."""
    out = tmp_path_factory.mktemp("eval_plans") / "nvfp4.plan"
    opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0)), 32, 32, precision="nvfp4", min_psnr=0.0,
                          verify_blocks=2)
    with one_thread():
        compile_plan(small_ckpt[0], out, opts, log=QUIET)
    return out


@pytest.fixture(scope="module")
def tiny_fp32(request):
    """conftest's tiny_plan (compiled once per session, on one thread if this module builds it) and its eval."""
    with one_thread():
        plan = request.getfixturevalue("tiny_plan")[0]
    return plan, evaluate(plan, blocks=2, prompts=2, seed=5, threads=1, log=QUIET, judge=TinyJudge())


def test_drift_is_the_least_squares_slope_and_quarter_means():
    d = drift([10.0, 8.0, 6.0, 4.0, 2.0, 0.0, -2.0, -4.0])
    assert d["slope_per_block"] == pytest.approx(-2.0)
    assert d["quarter_blocks"] == 2 and d["first_quarter_mean"] == 9.0 and d["last_quarter_mean"] == -3.0
    assert d["first_minus_last"] == 12.0
    flat = drift([50.0])
    assert flat["slope_per_block"] == 0.0 and flat["first_quarter_mean"] == flat["last_quarter_mean"] == 50.0


def test_an_fp32_plan_matches_the_reference_and_the_judge_scores_it_the_same(tiny_fp32):
    _, r = tiny_fp32
    assert all(len(v) == 2 for v in r["per_block"].values()) and r["video_frames_per_prompt"] == 21
    assert r["reference"]["kv_cache"] == "fp32" and r["seeds"] == [5, 6]
    assert min(r["per_block"]["frame_psnr_db"]) > 80
    assert min(r["per_block"]["ssim"]) > 0.99999 and min(r["per_block"]["latent_cosine"]) > 0.99999
    j = r["judge"]
    assert j["delta_points"] == {"color": 0.0, "direction": 0.0, "found": 0.0} and j["within_target"]
    assert j["plan_percent"] == j["reference_percent"] and j["points_per_prompt"] == 50.0
    assert len(j["per_prompt"]) == 2 and len(set(r["prompt_texts"])) == 2
    for text in r["prompt_texts"]:
        parse_prompt(text)  # the judge's grammar


def test_an_nvfp4_plan_scores_measurably_below_fp32(nvfp4_plan, tiny_fp32):
    q = evaluate(nvfp4_plan, blocks=4, prompts=2, threads=1, log=QUIET, judge=TinyJudge())
    full = tiny_fp32[1]["summary"]
    assert q["precision"] == "nvfp4" and all(len(v) == 4 for v in q["per_block"].values())
    assert q["summary"]["frame_psnr_db_mean"] < 60 < full["frame_psnr_db_mean"] - 20
    assert q["summary"]["latent_cosine_min"] < 0.9999 < full["latent_cosine_min"]
    assert q["summary"]["ssim_mean"] < full["ssim_mean"]
    assert "no text encoder" in q["judge"]["skipped"]  # the small model has no tiny vocabulary


def test_cli_json_has_per_block_arrays_and_writes_a_png(nvfp4_plan, tmp_path, capsys):
    png = tmp_path / "drift.png"
    rc = main(["eval", str(nvfp4_plan), "--blocks", "3", "--prompts", "1", "--threads", "1", "--json",
               "--plot", str(png)])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert [len(r["per_block"][k]) for k in ("frame_psnr_db", "ssim", "latent_cosine")] == [3, 3, 3]
    assert r["blocks"] == 3 and r["plot"] == str(png) and set(r["drift"]) == {"frame_psnr_db", "ssim"}
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_cli_table_output(nvfp4_plan, capsys):
    assert main(["eval", str(nvfp4_plan), "--blocks", "2", "--prompts", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "frame PSNR" in out and "drift:" in out and "judge: skipped" in out


def test_a_reference_with_another_sha256_is_refused(nvfp4_plan, small_ckpt, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(small_ckpt[0], other)
    cfg = WanConfig(**SMALL_CFG_ARGS)
    save_dit(other / "model.safetensors", init_random_weights_(WanDiT(cfg), seed=9).state_dict(), cfg)
    rc = main(["eval", str(nvfp4_plan), "--blocks", "1", "--reference", str(other)])
    err = capsys.readouterr().err
    assert rc == 2 and "SHA-256" in err and "--reference" in err and "recompile" in err
    with pytest.raises(EvalError, match="does not exist; pass --reference"):
        evaluate(nvfp4_plan, 1, reference=tmp_path / "missing.safetensors")
    # the right checkpoint, named explicitly as a file, is accepted
    r = evaluate(nvfp4_plan, 1, prompts=1, reference=small_ckpt[0] / "model.safetensors", threads=1, log=QUIET)
    assert r["reference"]["checkpoint"] == str(small_ckpt[0] / "model.safetensors")


def test_bad_input_is_reported_before_any_rollout(nvfp4_plan, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.plan"), "--blocks", "2"]) == 2
    assert "no such plan; `arvc compile --help`" in capsys.readouterr().err
    assert main(["eval", str(nvfp4_plan), "--blocks", "0"]) == 2
    assert "arvc eval: error: --blocks must be >= 1" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    for bad, why in ((tmp_path / "no" / "such" / "dir" / "d.png", "does not exist"),
                     (tmp_path / "afile" / "d.png", "is not a directory"), (tmp_path / "d.jpg", "ending in .png")):
        assert main(["eval", str(nvfp4_plan), "--blocks", "1", "--plot", str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and "evaluating" not in err  # refused before the rollout started
