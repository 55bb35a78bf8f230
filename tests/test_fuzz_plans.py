"""Fuzzing that stays in the suite (issue 19): the C runtime built once with AddressSanitizer and UBSan, and a
bounded, seeded run of tools/fuzz_plans.py (mutated manifests, safetensors headers, ONNX graphs, plan folders,
C API call sequences) through both readers must find nothing. `make fuzz` is the long run. A planted bug (a
plan_check stand-in that overflows a heap buffer and accepts every plan) proves that the run can fail."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "tools" / "fuzz_plans.py"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}:\n{(r.stdout + r.stderr)[-4000:]}"
    return r


@pytest.fixture(scope="session")
def sanitized_build(tmp_path_factory) -> Path:
    """libarvc and the two fuzz drivers with -DARVC_SANITIZE=ON, unoptimized: the build is most of the cost,
    ONNX Runtime (not instrumented) most of the run time."""
    build = tmp_path_factory.mktemp("c_sanitized")
    _run(["cmake", "-S", str(REPO / "runtime"), "-B", str(build), "-DCMAKE_BUILD_TYPE=", "-DARVC_SANITIZE=ON",
          f"-DPython3_EXECUTABLE={sys.executable}"])
    _run(["cmake", "--build", str(build), "-j", "2", "--target", "plan_check", "capi_fuzz"])
    for exe in ("plan_check", "capi_fuzz", "libarvc.so"):
        linked = _run(["ldd", str(build / exe)]).stdout
        assert "libasan" in linked and "libubsan" in linked, f"{exe} is not sanitized:\n{linked}"
    return build


def fuzz(build: Path, tiny_plan, tmp_path: Path, families: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    results = tmp_path / "results.json"
    r = subprocess.run([sys.executable, str(FUZZ), "--plan", str(tiny_plan[0]), "--build", str(build), "--families", families,
                        "--seed", "19", "--results", str(results), "--findings", str(tmp_path / "findings"), *extra],
                       capture_output=True, text=True, timeout=600)
    assert results.is_file(), r.stdout + r.stderr
    return r, json.loads(results.read_text())


def test_a_bounded_fuzz_run_finds_nothing(sanitized_build, tiny_plan, tmp_path):
    r, results = fuzz(sanitized_build, tiny_plan, tmp_path, "manifest=150,safetensors=10,onnx=24,files=30,capi=4",
                      "--no-stream")
    assert results["findings"] == 0, f"{r.stdout[-6000:]}\nreproduce with tools/fuzz_plans.py and the saved cases: " \
                                     f"{json.dumps(results['finding_list'], indent=1)[:4000]}"
    fams = results["families"]
    assert {f: fams[f]["cases"] for f in fams} == {"manifest": 150, "safetensors": 10, "onnx": 24, "files": 30, "capi": 4}
    assert fams["manifest"]["refused"] > 100 and fams["files"]["refused"] == 30  # the mutations do reach the checks
    assert r.returncode == 0


PLANTED = textwrap.dedent("""\
    // accepts every plan, and overflows a heap buffer on a plan whose manifest.json is not a regular file
    #include <sys/stat.h>
    #include <cstdio>
    #include <string>
    int main(int argc, char **argv) {
      for (int i = 1; i < argc; ++i) {
        struct stat st;
        if (lstat((std::string(argv[i]) + "/manifest.json").c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
          volatile char *p = new char[8];
          p[8 + argc] = 1;
          delete[] p;
        }
        std::printf("{\\"dir\\": \\"%s\\", \\"describe\\": 0, \\"open\\": 0, \\"error\\": \\"\\"}\\n", argv[i]);
        std::fflush(stdout);
      }
    }
    """)


def test_the_fuzzer_reports_a_planted_overflow_and_disagreement(tiny_plan, tmp_path):
    """A reader that writes past a buffer and accepts broken plans: the run reports both, names the cases, keeps
    their manifests, and fails."""
    build = tmp_path / "planted"
    build.mkdir()
    (build / "plan_check.cpp").write_text(PLANTED)
    _run(["c++", "-fsanitize=address,undefined", "-O0", str(build / "plan_check.cpp"), "-o", str(build / "plan_check")])
    (build / "capi_fuzz").symlink_to("/bin/false")  # never reached: the stand-in accepts no case Python accepts
    r, results = fuzz(build, tiny_plan, tmp_path, "files=40", "--no-stream")
    kinds = results["families"]["files"]["findings"]
    assert kinds.get("c-sanitizer", 0) >= 1 and kinds.get("disagree", 0) >= 1, r.stdout[-4000:]
    assert r.returncode == 1
    overflow = next(f for f in results["finding_list"] if f["kind"] == "c-sanitizer")
    saved = json.loads((Path(overflow["saved"]) / "case.json").read_text())
    assert "heap-buffer-overflow" in saved["c"]["stderr"] and saved["mutation"].startswith("manifest.json")
    assert saved["reproduce"] == f"--seed 19 --only files:{overflow['case']}"
