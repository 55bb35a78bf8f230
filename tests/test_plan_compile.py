"""`arvc compile`: the plan on disk (integrity, schema, atomic write), the parity gate's refusal, and the
compile / run / inspect commands on a small random model."""
import json
import shutil

import numpy as np
import pytest
import torch

import arvc
from arvc.checkpoints.safetensors_io import write_safetensors_atomic
from arvc.checkpoints.state_dicts import save_dit
from arvc.cli import main
from arvc.compiler import lower_traced
from arvc.compiler.compile import CompileError, CompileOptions, compile_plan
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig, WanVAEConfig
from arvc.model.dit import WanDiT, init_random_weights_
from arvc.model.schedule import Schedule
from arvc.model.vae import WanVAEDecoder
from arvc.model.vae import init_random_weights_ as init_vae_
from arvc.runtime.plan import PlanError, PlanIntegrityError, read_manifest, seal_manifest
from arvc.runtime.video import read_mp4

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32)
OPTS = CompileOptions(CacheGeometry(3, 6, 3, rope="absolute"), Schedule((1000.0, 500.0)), 32, 32, verify_blocks=4)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    save_dit(d / "model.safetensors", init_random_weights_(WanDiT(CFG), seed=1).state_dict(), CFG)
    vae = init_vae_(WanVAEDecoder(WanVAEConfig(base_dim=4)), seed=1)
    write_safetensors_atomic(d / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})
    write_safetensors_atomic(d / "prompt.safetensors", {"context": torch.randn(5, CFG.text_dim)})
    return d


@pytest.fixture(scope="module")
def small_plan(small_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("plans") / "small.plan"
    rc = main(["compile", str(small_ckpt), "-o", str(out), "--height", "32", "--width", "32", "--window", "6",
               "--sink", "3", "--rope", "absolute", "--timesteps", "1000,500", "--verify-blocks", "4", "--json"])
    assert rc == 0
    return out


def test_plan_holds_checked_graphs_and_each_weight_once(small_plan):
    import onnx

    m = read_manifest(small_plan)
    assert m.schema_version == 2 and m.precision == "fp32" and m.target.backend == "ort"
    assert m.geometry == CacheGeometry(3, 6, 3, 21, "absolute")
    assert m.schedule.timesteps == (1000.0, 500.0) and m.recipe.version == 1
    assert set(m.files) == {"dit.safetensors", "vae.safetensors", "text.onnx", "dit.onnx", "vae_first.onnx", "vae.onnx"}
    referenced = {"dit.safetensors": set(), "vae.safetensors": set()}
    for name in ("text.onnx", "dit.onnx", "vae_first.onnx", "vae.onnx"):
        onnx.checker.check_model(str(small_plan / name), full_check=True)
        model = onnx.load(str(small_plan / name), load_external_data=False)
        assert model.opset_import[0].version == 23
        inline = sum(len(t.raw_data) for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL)
        assert inline < 4096, f"{name} carries {inline} bytes of inline tensors"
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                ext = {e.key: e.value for e in t.external_data}
                referenced[ext["location"]].add((int(ext["offset"]), int(ext["length"])))
    # every stored tensor is referenced by some graph, and no graph holds a copy of one
    from arvc.checkpoints.safetensors_io import read_safetensors_header

    for file, refs in referenced.items():
        header, _ = read_safetensors_header(small_plan / file)
        assert len(refs) == len(header)
    v = m.verification
    assert v["passed"] and v["max_abs_latent_error"] <= 1e-4 and v["frame_psnr_db"] >= 60


@pytest.mark.parametrize("name", ["dit.safetensors", "vae.safetensors", "dit.onnx", "vae.onnx", "text.onnx", "manifest.json"])
def test_a_tampered_byte_is_refused_naming_the_file(small_plan, tmp_path, name):
    plan = tmp_path / "p"
    shutil.copytree(small_plan, plan)
    data = bytearray((plan / name).read_bytes())
    i = len(data) // 2
    data[i] = (data[i] + 1) % 256 if name != "manifest.json" or chr(data[i]) not in '"{}' else data[i]
    if name == "manifest.json":  # change a digit of a recorded number: the JSON stays valid
        text = data.decode()
        j = text.index('"frame_psnr_db": ') + len('"frame_psnr_db": ')
        data = bytearray((text[:j] + ("9" if text[j] != "9" else "8") + text[j + 1:]).encode())
    (plan / name).write_bytes(bytes(data))
    with pytest.raises(PlanIntegrityError, match=name.replace(".", r"\.")):
        arvc.load(plan)


def test_a_manifest_from_a_newer_schema_is_refused(small_plan, tmp_path):
    plan = tmp_path / "p"
    shutil.copytree(small_plan, plan)
    m = json.loads((plan / "manifest.json").read_text())
    m["schema_version"] = 3
    (plan / "manifest.json").write_text(seal_manifest(m))
    with pytest.raises(PlanError, match="schema version 3 is newer than this arvc reads.*upgrade arvc"):
        read_manifest(plan)


def test_run_and_inspect_a_plan_from_the_cli(small_plan, small_ckpt, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    rc = main(["run", str(small_plan), "--prompt-embeds", str(small_ckpt / "prompt.safetensors"), "--seconds", "1",
               "-o", str(out), "--json", "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    frames, fps = read_mp4(out)
    assert frames.shape == (16, 32, 32, 3) and summary["frames"] == 16 and summary["backend"] == "ort"
    assert main(["inspect", str(small_plan), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    mem = info["memory_bytes"]
    # KV cache: 2 layers x (K, V) x 6 frames x 4 tokens (32 px / 8 / patch 2, squared) x 64 dims x fp32
    assert mem["kv_cache"] == 2 * 2 * 6 * 4 * 64 * 4 and mem["weights"] > 0 and mem["vae_state"] > 0
    assert info["verification"]["passed"] and info["geometry"]["window"] == 6
    assert info["kv_bytes_per_cached_token"] == 2 * 2 * 64 * 4  # layers x (K, V) x dim x fp32
    assert info["dit_weight_bytes_per_parameter"] == pytest.approx(4.0, rel=0.02)  # fp32 + the file header
    # geometry is compiled in: changing it at run time is an error that says to recompile
    assert main(["run", str(small_plan), "--prompt-embeds", str(small_ckpt / "prompt.safetensors"), "--window", "9",
                 "-o", str(tmp_path / "w.mp4")]) == 2
    assert "fixed when a plan is compiled" in capsys.readouterr().err
    # text prompts need a text encoder, which this plan lacks
    assert main(["run", str(small_plan), "--prompt", "hello", "-o", str(tmp_path / "t.mp4"), "--quiet"]) == 2
    assert "no text encoder" in capsys.readouterr().err and not (tmp_path / "t.mp4").exists()


def test_compile_refuses_to_overwrite_without_force(small_plan, small_ckpt):
    with pytest.raises(CompileError, match="already exists; pass --force"):
        compile_plan(small_ckpt, small_plan, OPTS, log=lambda _m: None)


def test_gate_refuses_a_diverging_vae_and_names_it(small_ckpt, tmp_path, monkeypatch):
    real = lower_traced.build_vae_graphs

    def broken(vae, latent_hw, weights):
        import copy

        bad = copy.deepcopy(vae)
        with torch.no_grad():
            bad.decoder.head[2].bias += 0.25  # one tensor differs from the stored weights: kept inline, wrong
        return real(bad, latent_hw, weights)

    monkeypatch.setattr(lower_traced, "build_vae_graphs", broken)
    target = tmp_path / "bad.plan"
    with pytest.raises(CompileError, match=r"stage 'vae' diverged.*No plan was written"):
        compile_plan(small_ckpt, target, OPTS, log=lambda _m: None)
    assert not target.exists() and list(tmp_path.iterdir()) == []  # no plan, no temporary left behind


def test_an_interrupted_compile_leaves_no_plan_and_keeps_the_old_one(small_ckpt, small_plan, tmp_path, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lower_traced, "build_vae_graphs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compile_plan(small_ckpt, tmp_path / "new.plan", OPTS, log=lambda _m: None)
    assert list(tmp_path.iterdir()) == []
    before = (small_plan / "manifest.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        compile_plan(small_ckpt, small_plan, CompileOptions(**{**OPTS.__dict__, "force": True}), log=lambda _m: None)
    assert (small_plan / "manifest.json").read_bytes() == before
    assert [p.name for p in small_plan.parent.iterdir()] == ["small.plan"]


def test_an_unknown_precision_is_refused_with_the_choices(small_ckpt, tmp_path):
    with pytest.raises(CompileError, match=r"unknown precision 'int4'.*nvfp4"):
        compile_plan(small_ckpt, tmp_path / "q.plan", CompileOptions(**{**OPTS.__dict__, "precision": "int4"}))
    assert not (tmp_path / "q.plan").exists()


@pytest.mark.slow
def test_a_long_rollout_keeps_resident_memory_flat(small_plan):
    """300 blocks (900 latent frames, inside the absolute-RoPE limit of 1024) through the whole pipeline;
    bench/soak_memory.py runs the tiny plan (relative RoPE) for 2000."""
    import psutil

    proc = psutil.Process()
    session = arvc.load(small_plan)
    prompt = torch.randn(5, CFG.text_dim)
    per_block = session.frames_before_block(2) - session.frames_before_block(1)
    rss = {}
    for n, _ in enumerate(session.stream(prompt, frames=session.frames_before_block(300)), start=1):
        block = 1 + (n - session.frames_before_block(1)) // per_block
        if (n - session.frames_before_block(1)) % per_block == 0 and block in (50, 300):
            rss[block] = proc.memory_info().rss
    assert session.stats.blocks == 300
    assert (rss[300] - rss[50]) / rss[50] < 0.02
