"""The shipped tiny model (models/tiny): its files, its runtime path, and its vocabulary errors."""
import json
from pathlib import Path

import pytest

from arvc.cli import main
from arvc.tiny.judge import judge_frames, read_video

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny"


def test_shipped_files_fit_the_budget_and_load():
    files = {p.name: p.stat().st_size for p in MODEL.iterdir() if p.is_file()}
    assert {"model.safetensors", "vae.safetensors", "text_encoder.safetensors", "model.json", "README.md"} <= set(files)
    weights = sum(v for k, v in files.items() if k.endswith(".safetensors"))
    assert weights <= 25 * 2**20
    defaults = json.loads((MODEL / "model.json").read_text())
    assert defaults["geometry"]["window"] == 12 and defaults["geometry"]["sink"] == 3
    assert (defaults["height"], defaults["width"], defaults["fps"]) == (128, 128, 16)


@pytest.mark.parametrize("prompt", ["a red circle moving right on a dark blue background",
                                    "a cyan circle moving up on a gray background"])
def test_shipped_model_draws_an_object_in_its_first_block(tmp_path, prompt):
    # What the shipped weights do today (models/tiny/README.md): the first block (12 frames) shows
    # one object of the prompt's size; it fades in later blocks. Randomly initialised or wrongly
    # loaded weights draw none, so this guards the whole path: text encoder, DiT, cache, VAE, MP4.
    out = tmp_path / "v.mp4"
    assert main(["reference", str(MODEL), "--prompt", prompt, "--seconds", "4", "--seed", "0", "-o", str(out), "--quiet"]) == 0
    frames = read_video(out)
    assert frames.shape == (64, 128, 128, 3)
    first_block = judge_frames(frames[:12], prompt)
    assert first_block["found_fraction"] >= 0.5, first_block


def test_prompt_outside_the_vocabulary_is_a_clear_error(tmp_path, capsys):
    rc = main(["reference", str(MODEL), "--prompt", "a purple circle moving up on a black background", "-o",
               str(tmp_path / "v.mp4"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'purple'" in err and "magenta" in err
    assert not (tmp_path / "v.mp4").exists()
