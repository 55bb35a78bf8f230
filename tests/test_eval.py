"""`arvc eval`: a plan's quality against the fp32 reference, per block, with drift and the tiny judge."""
import json
import shutil

import pytest

from arvc.checkpoints.load import save_dit
from arvc.cli import main
from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.compiler.evaluate import EvalError, drift, evaluate
from arvc.model.config import WanConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.runtime.kv_cache import CacheGeometry
from arvc.runtime.schedule import Schedule
from arvc.tiny.data import parse_prompt

from conftest import SMALL_CFG_ARGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_plans(small_ckpt, tmp_path_factory):
    """The small random model as fp32 and nvfp4 plans (window 6 with sink 3: blocks 2+ evict)."""
    d, _ = small_ckpt
    out = tmp_path_factory.mktemp("eval_plans")
    for prec in ("fp32", "nvfp4"):
        opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0)), 32, 32, precision=prec,
                              min_psnr=0.0, verify_blocks=2)
        compile_plan(d, out / f"{prec}.plan", opts, log=lambda _m: None)
    return {p: out / f"{p}.plan" for p in ("fp32", "nvfp4")}


def test_drift_is_the_least_squares_slope_and_quarter_means():
    d = drift([10.0, 8.0, 6.0, 4.0, 2.0, 0.0, -2.0, -4.0])
    assert d["slope_per_block"] == pytest.approx(-2.0)
    assert d["quarter_blocks"] == 2 and d["first_quarter_mean"] == 9.0 and d["last_quarter_mean"] == -3.0
    assert d["first_minus_last"] == 12.0
    flat = drift([50.0])
    assert flat["slope_per_block"] == 0.0 and flat["first_quarter_mean"] == flat["last_quarter_mean"] == 50.0


def test_fp32_plan_matches_the_reference_and_nvfp4_measurably_does_not(small_plans):
    full = evaluate(small_plans["fp32"], blocks=4, prompts=2, log=lambda _m: None)
    quant = evaluate(small_plans["nvfp4"], blocks=4, prompts=2, log=lambda _m: None)
    for r in (full, quant):
        assert all(len(v) == 4 for v in r["per_block"].values())
        assert r["reference"]["kv_cache"] == "fp32" and r["seeds"] == [0, 1]
        assert "no text encoder" in r["judge"]["skipped"]  # the small model has no tiny vocabulary
    assert min(full["per_block"]["frame_psnr_db"]) > 80
    assert min(full["per_block"]["ssim"]) > 0.99999 and min(full["per_block"]["latent_cosine"]) > 0.99999
    assert quant["precision"] == "nvfp4"
    assert quant["summary"]["frame_psnr_db_mean"] < full["summary"]["frame_psnr_db_mean"] - 20
    assert quant["summary"]["latent_cosine_min"] < full["summary"]["latent_cosine_min"]
    assert quant["summary"]["ssim_mean"] <= full["summary"]["ssim_mean"]


def test_tiny_fp32_plan_scores_like_the_reference_with_the_judge(tiny_plan):
    plan, _ = tiny_plan
    r = evaluate(plan, blocks=2, prompts=2, seed=5, log=lambda _m: None)
    j = r["judge"]
    assert j["delta_points"] == {"color": 0.0, "direction": 0.0, "found": 0.0} and j["within_target"]
    assert j["plan_percent"] == j["reference_percent"]
    assert len(j["per_prompt"]) == 2 and len(set(r["prompt_texts"])) == 2
    for text in r["prompt_texts"]:
        parse_prompt(text)  # the judge's grammar
    assert min(r["per_block"]["frame_psnr_db"]) > 80 and r["video_frames_per_prompt"] == 21


def test_cli_json_has_per_block_arrays_and_writes_a_png(small_plans, tmp_path, capsys):
    png = tmp_path / "drift.png"
    rc = main(["eval", str(small_plans["nvfp4"]), "--blocks", "3", "--prompts", "1", "--json", "--plot", str(png)])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert [len(r["per_block"][k]) for k in ("frame_psnr_db", "ssim", "latent_cosine")] == [3, 3, 3]
    assert r["blocks"] == 3 and r["plot"] == str(png) and set(r["drift"]) == {"frame_psnr_db", "ssim"}
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_cli_table_output(small_plans, capsys):
    assert main(["eval", str(small_plans["fp32"]), "--blocks", "2", "--prompts", "1"]) == 0
    out = capsys.readouterr().out
    assert "frame PSNR" in out and "drift:" in out and "judge: skipped" in out


def test_a_reference_with_another_sha256_is_refused(small_plans, small_ckpt, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(small_ckpt[0], other)
    cfg = WanConfig(**SMALL_CFG_ARGS)
    save_dit(other / "model.safetensors", init_random_weights_(WanDiT(cfg), seed=9).state_dict(), cfg)
    rc = main(["eval", str(small_plans["fp32"]), "--blocks", "1", "--reference", str(other)])
    err = capsys.readouterr().err
    assert rc == 2 and "SHA-256" in err and "--reference" in err and "recompile" in err
    with pytest.raises(EvalError, match="does not exist; pass --reference"):
        evaluate(small_plans["fp32"], 1, reference=tmp_path / "missing.safetensors")
    # the right checkpoint, named explicitly as a file, is accepted
    r = evaluate(small_plans["fp32"], 1, prompts=1, reference=small_ckpt[0] / "model.safetensors", log=lambda _m: None)
    assert r["reference"]["checkpoint"] == str(small_ckpt[0] / "model.safetensors")


def test_bad_input_is_reported_before_any_rollout(small_plans, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.plan"), "--blocks", "2"]) == 2
    assert "does not exist; compile one with `arvc compile" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--blocks must be >= 1"):
        main(["eval", str(small_plans["fp32"]), "--blocks", "0"])
    (tmp_path / "afile").write_text("")
    for bad, why in ((tmp_path / "no" / "such" / "dir" / "d.png", "does not exist"),
                     (tmp_path / "afile" / "d.png", "is not a directory"), (tmp_path / "d.jpg", "ending in .png")):
        assert main(["eval", str(small_plans["fp32"]), "--blocks", "1", "--plot", str(bad)]) == 2
        err = capsys.readouterr().err
        assert why in err and "evaluating" not in err  # refused before the rollout started
