"""`arvc selftest`: the CPU target checks every stage of every precision; other targets say what is missing."""
import json
import subprocess
import sys

import pytest

from arvc.compiler.selftest import run_selftest, target_problem


def test_cpu_selftest_checks_every_stage_and_passes():
    rows = run_selftest("cpu", ("fp32", "nvfp4"), log=lambda _m: None)
    stages = {(r["precision"], r["stage"]) for r in rows}
    for p in ("fp32", "nvfp4"):
        assert {(p, s) for s in ("text", "dit", "vae", "frames (end to end)")} <= stages
    assert all(r["passed"] and r["psnr_db"] >= 60.0 for r in rows), rows


def test_a_broken_backend_fails_the_selftest(monkeypatch):
    """A wrong DiT result must turn the dit and frames rows into failures (the check can fail)."""
    import arvc.runtime.ort_backend as ob

    real = ob.OrtBackend.run_dit

    def corrupted(self, feeds):
        return real(self, feeds) * 1.01  # x0 off by 1 %

    monkeypatch.setattr(ob.OrtBackend, "run_dit", corrupted)
    rows = run_selftest("cpu", ("fp32",), log=lambda _m: None)
    failed = {r["stage"] for r in rows if not r["passed"]}
    assert "dit" in failed and "frames (end to end)" in failed
    assert "text" not in failed


@pytest.mark.parametrize("target", ["tensorrt", "warp"])
def test_targets_this_machine_cannot_run_are_reported_not_faked(target):
    assert target_problem(target)
    out = subprocess.run([sys.executable, "-m", "arvc", "selftest", "--target", target, "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 2  # this machine cannot run the target: an input error, not a failed check
    report = json.loads(out.stdout)
    assert report["passed"] is False and report["checks"][0]["stage"] == "backend"
