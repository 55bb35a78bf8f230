"""The shared plan corpus (tests/plan_corpus.json) through both readers: the C one (runtime/tests/plan_check.cpp:
arvc_plan_describe with the files verified, then arvc_open, which also checks the graphs against the manifest) and
the Python one (read_manifest, graphs included). On every case both make the case's decision, accept or refuse
(docs/plan-validation.md). plan_check runs in a subprocess: a crash or a hang fails the case it happened on."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from plan_corpus import apply_case, load_corpus

from arvc.runtime.plan import PlanError, read_manifest

CASES = load_corpus()
ARVC_OK = 0


def run_plan_check(exe: Path, plans: list[Path]) -> dict[Path, dict]:
    """plan_check's line for each plan; a plan it crashed or hung on gets {"crash": ...}, the rest run on."""
    verdicts: dict[Path, dict] = {}
    while plans:
        try:
            r = subprocess.run([str(exe), "--stdin"], input="".join(f"{p}\n" for p in plans), capture_output=True,
                               text=True, timeout=30 + 5 * len(plans))
            lines, ended = r.stdout.splitlines(), f"exit status {r.returncode}: {r.stderr[-2000:]}"
            if r.returncode == 0 and len(lines) == len(plans):
                ended = None
        except subprocess.TimeoutExpired as e:
            lines, ended = (e.stdout or b"").decode().splitlines(), "hang (timeout)"
        for plan, line in zip(plans, lines):
            verdicts[plan] = json.loads(line)
        if ended is None:
            break
        verdicts[plans[len(lines)]] = {"crash": ended}
        plans = plans[len(lines) + 1:]
    return verdicts


@pytest.fixture(scope="module")
def corpus_plans(tiny_plan, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus_c")
    plans = {}
    for case in CASES:
        (root / case["name"]).mkdir()
        plans[case["name"]] = apply_case(case, tiny_plan[0], root / case["name"])
    return plans


@pytest.fixture(scope="module")
def c_verdicts(c_build, corpus_plans) -> dict[str, dict]:
    verdicts = run_plan_check(next(c_build.rglob("plan_check")), list(corpus_plans.values()))
    return {name: verdicts[plan] for name, plan in corpus_plans.items()}


def python_decision(plan: Path) -> tuple[str, str]:
    try:
        read_manifest(plan)
    except PlanError as e:
        return "refuse", str(e)
    return "accept", ""


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_both_readers_decide_the_corpus_alike(case, c_verdicts, corpus_plans):
    verdict = c_verdicts[case["name"]]
    assert "crash" not in verdict, f"{case['name']}: plan_check {verdict['crash']}"
    c = "accept" if verdict["describe"] == verdict["open"] == ARVC_OK else "refuse"
    py, py_error = python_decision(corpus_plans[case["name"]])
    assert (c, py) == (case["expect"], case["expect"]), \
        f"{case['name']} ({case['why']}): C {c} ({verdict['error']}), Python {py} ({py_error})"
    if c == "refuse" and case.get("where"):
        assert case["where"] in verdict["error"], f"{case['name']}: the C reader's refusal does not name {case['where']!r}"
