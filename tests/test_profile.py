"""`arvc profile`: the report's numbers from known events, and a real profile of the tiny plan (every
field, a Chrome trace that follows the Trace Event Format, a PNG timeline)."""
from __future__ import annotations

import json

import pytest

from arvc.cli import main
from arvc.runtime.profiler import Recorder, chrome_trace, plot_timeline, profile_plan, summarize


def _synthetic() -> Recorder:
    """Two blocks of 2 steps + cache on the DiT thread, VAE frames on the caller's, at known times."""
    r = Recorder()
    r.origin = 0.0
    r.add("stream", "stream", 0.0, 0.0, frames=9)
    for b, t0 in ((0, 0.0), (1, 0.5)):
        for i, (a, z) in enumerate(((0.0, 0.1), (0.1, 0.2), (0.2, 0.3))):
            r.add("cache" if i == 2 else f"step {i}", "dit", t0 + a, t0 + z, block=b)
        r.add(f"block {b}", "block", t0, t0 + (0.3 if b == 0 else 0.4), block=b, video_frames=1 if b == 0 else 8)
    r.add("vae frame", "vae", 0.3, 0.4)  # block 0's single frame
    r.add("vae frame", "vae", 0.9, 1.1)  # block 1's frames (one latent -> four frames, twice)
    r.add("vae frame", "vae", 1.1, 1.3)
    for i, t in enumerate([0.4] + [1.1] * 4 + [1.3] * 4):
        r.add("frame", "frame", t, t, index=i)
    return r


def test_summary_numbers_from_known_events():
    s = summarize(_synthetic())
    assert s["frames"] == 9 and s["wall_s"] == pytest.approx(1.3)
    assert s["time_to_first_frame_s"] == pytest.approx(0.4)
    # steady: the 8 frames after block 0's last one, over the time since it arrived
    assert s["steady_frames_per_second"] == pytest.approx(8 / (1.3 - 0.4), abs=1e-3)  # rounded to 3 places
    assert s["stages"]["dit step 0"]["count"] == 2 and s["stages"]["dit cache"]["mean_ms"] == pytest.approx(100.0)
    assert list(s["stages"])[-2:] == ["dit cache", "vae frame"]  # steps first, then the cache call
    blocks = s["blocks"]
    assert blocks["p50_ms"] == pytest.approx(350.0) and blocks["p99_ms"] == pytest.approx(399.0)
    assert blocks["jitter_ms"] == pytest.approx(50.0)  # population std of {300, 400}
    # DiT 0.6 s + VAE 0.5 s in 1.3 s of wall: no time hidden (0.6 + 0.5 < 1.3)
    assert s["overlap"] == 0.0


def test_summary_refuses_a_recorder_without_exactly_one_stream():
    r = Recorder()
    with pytest.raises(ValueError, match="one stream"):
        summarize(r)


@pytest.fixture(scope="module")
def profiled(tiny_plan):
    plan, _ = tiny_plan
    return plan, *profile_plan(plan, seconds=2.0, prompt="a red circle moving right on a dark blue background")


def test_profile_of_the_tiny_plan_has_every_field(profiled):
    plan, report, rec = profiled
    assert report["frames"] == 32 and 0 < report["time_to_first_frame_s"] < report["wall_s"]
    assert report["frames_per_second"] > 0 and report["steady_frames_per_second"] > 0
    assert 0.0 <= report["overlap"] <= 1.0
    stages = report["stages"]
    assert {f"dit step {i}" for i in range(4)} | {"dit cache", "vae frame", "text"} <= set(stages)
    blocks = report["blocks"]["count"]
    assert all(stages[f"dit step {i}"]["count"] == blocks for i in range(4)) and stages["dit cache"]["count"] == blocks
    assert stages["vae frame"]["count"] == 1 + (32 - 1 + 3) // 4  # first latent -> 1 frame, later -> 4
    for key in ("p50_ms", "p99_ms", "jitter_ms", "p99_minus_p50_ms"):
        assert report["blocks"][key] >= 0
    mem = report["memory"]
    manifest = json.loads((plan / "manifest.json").read_text())
    assert mem["kv_cache_bytes"] == manifest["memory"]["kv_cache_bytes"]
    assert mem["vae_state_bytes"] == manifest["memory"]["vae_state_bytes"]
    assert mem["weights_stored_bytes"]["dit.safetensors"] == manifest["files"]["dit.safetensors"]["bytes"]
    assert mem["dit_activations_bytes_estimate"] > 0 and mem["process_resident_bytes"] > 0


def test_chrome_trace_follows_the_trace_event_format(profiled, tmp_path):
    _, report, rec = profiled
    trace = json.loads(chrome_trace(rec, tmp_path / "t.json").read_text())
    events = trace["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 and {"name", "cat", "pid", "tid"} <= set(e) for e in complete)
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "arvc-dit" in names and len(names) >= 2  # DiT worker and the decoding caller are separate lanes
    dit = [e for e in complete if e["cat"] == "dit"]
    assert len(dit) == 5 * report["blocks"]["count"]
    assert sum(e["ph"] == "i" and e["cat"] == "frame" for e in events) == report["frames"]


def test_timeline_png(profiled, tmp_path):
    _, _, rec = profiled
    png = plot_timeline(rec, tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_profile_json_trace_and_plot(tiny_plan, tmp_path, capsys):
    plan, _ = tiny_plan
    code = main(["profile", str(plan), "--seconds", "1", "--json", "--trace", str(tmp_path / "t.json"),
                 "--plot", str(tmp_path / "p.png")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 16 and (tmp_path / "t.json").is_file() and (tmp_path / "p.png").is_file()
    assert main(["profile", str(plan), "--trace", str(tmp_path / "t.txt")]) == 2
    assert "expected a .json file" in capsys.readouterr().err
