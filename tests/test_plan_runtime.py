"""The plan runtime against the PyTorch reference: pipelined streaming, prompt switches, in-place KV
cache, worker errors, and the Python API. Uses the shipped tiny model compiled once (conftest)."""
import threading

import numpy as np
import pytest
import torch

import arvc
from arvc.checkpoints.text import load_text_encoder
from arvc.reference.models import load_dit_module, load_vae_module
from arvc.reference.stream import TorchStreamSession
from conftest import REPO

TINY = REPO / "models" / "tiny"
RED = "a red circle moving right on a dark blue background"
GREEN = "a green square moving up on a white background"


def _psnr(a, b, peak=2.0):
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def test_compile_gate_recorded_fp32_parity_over_a_rolled_window(tiny_plan):
    _, m = tiny_plan
    v = m.verification
    # 8 blocks x 3 frames = 24 latent frames through a 12-frame window (evictions from block 4 on),
    # with a prompt switch (KV re-cache) at block 4
    assert v["passed"] and v["blocks"] >= 8 and v["latent_frames"] > m.geometry.window
    assert v["prompt_switch_at_block"] == 4
    assert v["max_abs_latent_error"] <= 1e-4
    assert v["frame_psnr_db"] >= 60.0


@torch.no_grad()
def test_pipelined_stream_equals_the_reference_with_a_prompt_switch(tiny_plan):
    plan, _ = tiny_plan
    session = arvc.load(plan)
    frames = session.fps * 8  # 128 frames = 11 blocks; a switch at 2.5 s (frame 40) applies from block 4 (frame 45)
    got = np.stack(list(session.stream(RED, frames=frames, seed=5, switches=[(2.5, GREEN)], raw=True)))
    switch_block = session.block_for_time(2.5)
    assert switch_block == 4 and session.stats.blocks == 11

    enc = load_text_encoder(TINY / "text_encoder.safetensors")
    ref = TorchStreamSession(load_dit_module(TINY / "model.safetensors"), load_vae_module(TINY / "vae.safetensors"),
                             session.geometry, session.schedule, 128, 128, seed=5)
    ref.set_prompt(enc.encode([RED]))
    want = []
    for b in range(11):
        if b == switch_block:
            ref.switch_prompt(enc.encode([GREEN]))
        x0 = ref.gen.next_block()
        want += [ref.vae.decode_frame(x0[:, :, i:i + 1], ref.vae_state)[0] for i in range(x0.shape[2])]
    want = torch.cat(want, dim=1).transpose(0, 1).numpy()[:frames]  # [N, 3, H, W]
    assert got.shape == want.shape == (frames, 3, 128, 128)
    assert _psnr(want, got) >= 60.0
    before, after = slice(0, session.frames_before_block(4)), slice(session.frames_before_block(4), None)
    assert _psnr(want[before], got[before]) >= 60.0 and _psnr(want[after], got[after]) >= 60.0


def test_kv_cache_buffers_keep_their_addresses_and_are_written_in_place(tiny_plan):
    plan, _ = tiny_plan
    session = arvc.load(plan)
    backend = session.backend
    addresses = backend.kv_addresses()
    assert all(a == arr.ctypes.data for a, arr in zip(addresses, backend.kv_arrays))
    assert not any(arr.any() for arr in backend.kv_arrays)
    gen = session.generator(seed=0)
    gen.set_prompt(session.context_for(RED))
    for _ in range(6):  # past the 12-frame window: ring slots are overwritten
        gen.next_block()
        assert backend.kv_addresses() == addresses
    # the graph's outputs landed in the bound buffers (no copies elsewhere): every slot is filled
    rows = session.manifest.cache_rows
    assert all(arr.shape == (rows, session.cfg.dim) and np.abs(arr).sum(axis=1).min() > 0 for arr in backend.kv_arrays)


def test_stream_yields_requested_frames_as_uint8_and_reports_overlap(tiny_plan):
    plan, _ = tiny_plan
    session = arvc.load(plan, threads=1)
    frames = list(session.stream(RED, seconds=1.5))
    assert len(frames) == 24 and all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in frames)
    st = session.stats
    assert st.frames == 24 and st.blocks == 3 and st.first_frame_s is not None and 0.0 <= st.overlap <= 1.0
    assert st.dit_s > 0 and st.vae_s > 0


def test_worker_errors_surface_in_the_caller_and_closing_stops_the_worker(tiny_plan, monkeypatch):
    plan, _ = tiny_plan
    session = arvc.load(plan, verify=False)
    calls = {"n": 0}
    real = session.backend.run_dit

    def failing(feeds):
        calls["n"] += 1
        if calls["n"] == 7:  # inside the second block
            raise RuntimeError("simulated kernel failure")
        return real(feeds)

    monkeypatch.setattr(session.backend, "run_dit", failing)
    with pytest.raises(RuntimeError, match="simulated kernel failure"):
        for _ in session.stream(RED, seconds=5):
            pass
    monkeypatch.setattr(session.backend, "run_dit", real)
    it = session.stream(RED, seconds=60)
    next(it)
    it.close()  # the consumer stops early: the worker must stop too
    assert not [t for t in threading.enumerate() if t.name == "arvc-dit" and t.is_alive()]


def test_bad_prompts_get_clear_errors(tiny_plan):
    plan, _ = tiny_plan
    session = arvc.load(plan, verify=False)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['purple', 'unicorn'\].*vocabulary"):
        session.stream("a purple unicorn", seconds=1)
    with pytest.raises(ValueError, match=r"must be \[L, 64\].*got \(4, 65\)"):
        session.stream(np.zeros((4, 65), np.float32), seconds=1)
    with pytest.raises(ValueError, match="exceed"):
        session.context_for(np.zeros((17, 64), np.float32))
    emb = session.context_for(RED)[0, :9]  # embeddings work too, zero-padded to the text length
    assert session.context_for(emb).shape == (1, 16, 64)


def test_one_stream_at_a_time_and_switches_need_a_stream(tiny_plan):
    plan, _ = tiny_plan
    session = arvc.load(plan, verify=False)
    with pytest.raises(RuntimeError, match="changes a running stream"):
        session.switch_prompt(GREEN)
    first = session.stream(RED, seconds=3)
    next(first)
    session.switch_prompt(GREEN)  # accepted while streaming
    with pytest.raises(RuntimeError, match="already streaming"):
        next(session.stream(RED, seconds=1))
    first.close()
    assert len(list(session.stream(RED, seconds=0.5))) == 8  # the session is free again
