"""The command line: reference (real MP4 out), explain-cache, inspect, and its errors; what --help imports."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from arvc.checkpoints.safetensors_io import write_safetensors_atomic
from arvc.checkpoints.state_dicts import save_dit
from arvc.cli import main
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig, WanVAEConfig, latent_frames_for
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.schedule import Schedule
from arvc.model.vae import WanVAEDecoder
from arvc.reference.models import load_dit_module, load_prompt_embeds, load_vae_module
from arvc.reference.stream import TorchStreamSession
from arvc.runtime.video import read_mp4

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)
SIZE = ["--height", "32", "--width", "32"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    save_dit(d / "model.safetensors", init_random_weights_(WanDiT(CFG), seed=0).state_dict(), CFG)
    torch.manual_seed(0)
    vae = WanVAEDecoder(WanVAEConfig(base_dim=4))
    write_safetensors_atomic(d / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})
    write_safetensors_atomic(d / "p0.safetensors", {"context": torch.randn(5, CFG.text_dim)})
    write_safetensors_atomic(d / "p1.safetensors", {"context": torch.randn(3, CFG.text_dim)})
    write_safetensors_atomic(d / "wide.safetensors", {"context": torch.randn(3, CFG.text_dim + 1)})
    return d


def test_latent_frame_count_follows_the_vae_first_frame_rule():
    assert [latent_frames_for(n) for n in (1, 2, 5, 6, 9, 16, 81)] == [1, 2, 2, 3, 3, 5, 21]


def test_reference_writes_an_h264_mp4_with_the_requested_frames(ckpt, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    rc = main(["reference", str(ckpt), "--prompt-embeds", str(ckpt / "p0.safetensors"),
               f"--prompt-embeds={ckpt / 'p1.safetensors'}@1", "--seconds", "1.5", "--seed", "3",
               "--window", "6", "--sink", "3", "--steps", "2", "-o", str(out), "--json", "--quiet", *SIZE])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    frames, fps = read_mp4(out)
    assert frames.shape == (24, 32, 32, 3) and fps == 16 and summary["frames"] == 24
    import av

    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert not list(tmp_path.glob("*.part"))
    from arvc.checkpoints.safetensors_io import default_file_mode

    assert out.stat().st_mode & 0o777 == default_file_mode()


def test_stream_is_deterministic_and_matches_the_decoded_latents(ckpt):
    dit = load_dit_module(ckpt / "model.safetensors")
    vae = load_vae_module(ckpt / "vae.safetensors")
    ctx = load_prompt_embeds(ckpt / "p0.safetensors", CFG)

    def frames(seed):
        s = TorchStreamSession(dit, vae, CacheGeometry(3, 6, 3), Schedule.from_shift(5, 2), 32, 32, seed=seed)
        s.set_prompt(ctx)
        return np.concatenate([r.frames for r in s.stream(20)])

    a, b, c = frames(1), frames(1), frames(2)
    assert a.shape == (20, 32, 32, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_explain_cache_longlive_geometry(capsys):
    assert main(["explain-cache", "--frames-per-block", "3", "--window", "12", "--sink", "3", "--blocks", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["blocks"]
    assert rows[4]["attends_frames"] == [0, 1, 2] + list(range(6, 15))
    assert rows[4]["evicted_frames"] == [3, 4, 5]
    assert rows[4]["writes_slots"] == [3, 4, 5]
    assert rows[7]["attends_frames"] == [0, 1, 2] + list(range(15, 24))


def test_explain_cache_global_and_table(capsys):
    assert main(["explain-cache", "--window", "0", "--blocks", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["blocks"]
    assert rows[2]["attends_frames"] == list(range(9)) and rows[2]["writes_slots"] == [6, 7, 8]
    assert main(["explain-cache", "--blocks", "5"]) == 0
    table = capsys.readouterr().out
    assert "window 12 (sink 3 + ring 9)" in table and "0-2,6-14" in table


def test_inspect_reports_architecture_and_naming(ckpt, capsys):
    assert main(["inspect", str(ckpt / "model.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "wan2.1-dit" and info["naming"] == "wan"
    assert info["config"]["dim"] == 64 and info["parameters"] == CFG.param_count()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt-embeds", "{d}/wide.safetensors"], "must be [L, 32]"),
        (["--prompt-embeds", "{d}/p0.safetensors", "--height", "40"], "not a multiple of 16x16"),
        (["--prompt-embeds", "{d}/p0.safetensors", "--window", "4", "--sink", "3"], "a block must fit in the ring"),
        (["--prompt-embeds", "{d}/missing.safetensors"], "missing.safetensors"),
    ],
)
def test_reference_bad_inputs_give_clear_errors(ckpt, tmp_path, capsys, extra, message):
    out = tmp_path / "v.mp4"
    args = ["reference", str(ckpt / "model.safetensors"), "--vae", str(ckpt / "vae.safetensors"), "--seconds", "0.5",
            "-o", str(out), "--quiet", *SIZE]
    rc = main(args + [a.format(d=ckpt) for a in extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_reference_without_vae_says_how_to_pass_one(ckpt, tmp_path, capsys):
    assert main(["reference", str(ckpt / "model.safetensors"), "--prompt-embeds", str(ckpt / "p0.safetensors"),
                 "-o", str(tmp_path / "v.mp4")]) == 2
    assert "arvc reference: error: no VAE: pass --vae" in capsys.readouterr().err


def test_failed_stream_leaves_no_output(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "v.mp4"
    calls = {"n": 0}
    original = TorchStreamSession.next_block

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(TorchStreamSession, "next_block", failing)
    rc = main(["reference", str(ckpt), "--prompt-embeds", str(ckpt / "p0.safetensors"), "--seconds", "2",
               "-o", str(out), "--quiet", *SIZE])
    assert rc == 130  # interrupted, as a shell reports SIGINT
    assert not out.exists() and not list(tmp_path.iterdir())


def test_help_and_version_import_no_heavy_library():
    """`arvc --help`, `arvc --version` and every command's --help build the parser from each command module:
    none of them may load torch, onnx, onnxruntime or rich (each command loads what it needs when it runs)."""
    code = ("import sys, contextlib, io\n"
            "from arvc.cli import COMMANDS, main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    codes = [main(['--help']), main(['--version'])] + [main([c, '--help']) for c in COMMANDS]\n"
            "assert codes == [0] * len(codes), codes\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'rich') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "arvc", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("run", "reference", "compile", "inspect", "plan-memory", "explain-cache", "judge", "eval", "profile",
                "selftest", "convert"):
        assert cmd in r.stdout


def test_convert_self_forcing_cli_records_causal_numerics(ckpt, tmp_path, capsys):
    from arvc.checkpoints.load import load_dit

    src = load_dit(ckpt / "model.safetensors").state_dict
    pt = tmp_path / "self_forcing.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in src.items()}, "step": 100}, pt)
    out = tmp_path / "model.safetensors"
    assert main(["convert", "self-forcing", str(pt), "--num-heads", "2", "-o", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["which"] == "generator_ema"
    model = load_dit_module(out)
    assert model.numerics.modulation_bf16  # the causal checkpoints' training numerics
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.items())
    assert not load_dit_module(out, modulation_bf16=False).numerics.modulation_bf16


def test_reference_in_bf16(ckpt, tmp_path):
    out = tmp_path / "bf16.mp4"
    assert main(["reference", str(ckpt), "--prompt-embeds", str(ckpt / "p0.safetensors"), "--seconds", "0.5",
                 "--dtype", "bf16", "--modulation-bf16", "--steps", "2", "-o", str(out), "--quiet", *SIZE]) == 0
    frames, _ = read_mp4(out)
    assert frames.shape == (8, 32, 32, 3)


def test_no_verify_plan_says_it_is_unverified_and_runs_on_the_torch_backend(ckpt, tmp_path, capsys):
    """--no-verify skips the gate but never hides it (compile, manifest, inspect); --target cuda records the
    torch backend as the default, which `arvc run --backend torch --device cpu` honours here."""
    plan = tmp_path / "p.plan"
    assert main(["compile", str(ckpt), "-o", str(plan), *SIZE, "--window", "6", "--sink", "3", "--no-verify",
                 "--target", "cuda", "--kv-cache", "int8"]) == 0
    assert "WITHOUT verification" in capsys.readouterr().out
    m = json.loads((plan / "manifest.json").read_text())
    assert m["verification"]["skipped"] and m["verification"]["passed"] is None
    assert m["target"] == {**m["target"], "name": "cuda", "backend": "torch"}
    assert main(["inspect", str(plan)]) == 0
    assert "verification: skipped" in capsys.readouterr().out
    emb = tmp_path / "emb.safetensors"
    write_safetensors_atomic(emb, {"context": torch.randn(4, CFG.text_dim)})
    out = tmp_path / "v.mp4"
    assert main(["run", str(plan), "--backend", "torch", "--device", "cpu", "--cache-ops", "csrc",
                 "--prompt-embeds", str(emb), "--seconds", "1", "-o", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"] == "torch" and summary["frames"] == 16 and out.stat().st_size > 0
