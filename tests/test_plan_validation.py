"""Plans are untrusted input (docs/plan-validation.md): every case of the shared corpus (tests/plan_corpus.json)
gets its decision from the Python reader, a refusal is a PlanError naming the field or file, and the folder's
closure holds with file verification skipped. tests/test_plan_corpus_c.py holds the C reader to the same corpus."""
from __future__ import annotations

import pytest
from plan_corpus import apply_case, load_corpus

import arvc
from arvc.cli import main
from arvc.cli.contract import EXIT_INTEGRITY
from arvc.runtime.plan import PlanError, PlanIntegrityError, read_manifest

CASES = load_corpus()
# refused only by a file's size or SHA-256: what --no-verify gives up
CONTENT_ONLY = {"file-edited", "file-edited-resealed", "file-appended", "bytes-wrong"}
# the issue's probes, each a case: the corpus keeps them
PROBES = {"temporal-upsample-empty", "sink-negative", "resolution-4096", "resolution-256", "num-heads-0", "patch-0",
          "text-dim-0", "sink-equals-window", "timesteps-empty", "latent-swapped", "files-empty", "stage-outside",
          "stage-absolute", "files-absolute-key", "files-nul-key", "schema-version-true", "int-1e12", "nan",
          "infinity", "nesting-100k", "fps-int-max", "manifest-fifo", "file-fifo", "graph-swap"}


def _decision(plan, verify: bool) -> tuple[str, str]:
    try:
        read_manifest(plan, verify_files=verify)
    except PlanError as e:
        return "refuse", str(e)
    return "accept", ""


def test_the_corpus_holds_the_issues_probes_and_valid_plans():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)) and PROBES <= set(names)
    assert sum(c["expect"] == "accept" for c in CASES) >= 20
    assert all(c.get("where") for c in CASES if c["expect"] == "refuse")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_each_corpus_case_gets_its_decision_naming_the_field_or_file(tiny_plan, tmp_path, case):
    plan = apply_case(case, tiny_plan[0], tmp_path)
    decision, message = _decision(plan, verify=True)
    assert decision == case["expect"], f"{case['name']} ({case['why']}): {message}"
    if decision == "refuse":
        assert case["where"] in message, message
        assert len(message) < 1000, message
    # the closure, the fields and the graphs hold without verification; only hashing is skipped (an edited
    # graph may still fail to parse)
    unverified = _decision(plan, verify=False)[0]
    assert unverified == case["expect"] or case["name"] in CONTENT_ONLY


def test_arvc_load_refuses_a_swapped_graph_and_loads_its_valid_plan(tiny_plan, tmp_path):
    by_name = {c["name"]: c for c in CASES}
    swapped = apply_case(by_name["graph-swap"], tiny_plan[0], tmp_path / "swap")
    with pytest.raises(PlanIntegrityError, match="dit.onnx.*the dit graph has no input 'latents'"):
        arvc.load(swapped, threads=1)
    with pytest.raises(PlanIntegrityError, match="vae_first.onnx.*not a regular file"):
        arvc.load(apply_case(by_name["file-symlink-inside"], tiny_plan[0], tmp_path / "link"), threads=1, verify=False)
    renamed = apply_case(by_name["renamed-and-relisted"], tiny_plan[0], tmp_path / "renamed")
    assert arvc.load(renamed, threads=1).manifest.stages.vae.graphs.steady == "vae_steady.onnx"


def test_inspect_says_verified_only_when_it_verified(tiny_plan, tmp_path, capsys):
    plan = tiny_plan[0]
    assert main(["inspect", str(plan)]) == 0
    assert "plan files: 8 verified" in capsys.readouterr().out
    assert main(["inspect", str(plan), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "plan files: NOT verified" in out and "8 verified" not in out
    edited = apply_case({"name": "e", "file_ops": [{"op": "edit", "name": "dit.safetensors", "offset": -1}]},
                        plan, tmp_path)
    assert main(["inspect", str(edited)]) == EXIT_INTEGRITY
    captured = capsys.readouterr()
    assert "dit.safetensors: integrity check failed" in captured.err and "verified" not in captured.out
