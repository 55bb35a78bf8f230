"""Seeded, bounded mutation fuzzer of plans and the C API (issue 19: plans are untrusted input).

    python tools/fuzz_plans.py --plan out/tiny.plan --build BUILD [--cases N] [--families manifest,files,...]
        [--seed S] [--results OUT.json] [--findings DIR] [--work DIR]

BUILD is a CMake build of runtime/ configured with -DARVC_SANITIZE=ON (AddressSanitizer + UBSan) that holds
plan_check (the C reader: arvc_plan_describe and arvc_open on each plan folder) and capi_fuzz (C API call
sequences). Each case is a copy of the plan with one to three mutations of one family (tools/plan_mutations.py):

    manifest     manifest.json: edge values (0, -1, 2^31, 2^63, 1e308, "NaN", floats for ints, bool, null, [], {}),
                 deleted and added keys, deep nesting, duplicate keys, swapped values, unicode and NUL in names,
                 geometry relations off by one, raw bytes; resealed (seal_manifest) or not
    safetensors  a weights file's header: truncation, length field, bogus offsets, dtypes, shapes, deep JSON
    onnx         a graph replaced by another of the plan or a mutated one (input shapes and types, external data
                 locations and offsets, bytes)
    files        the folder: extra, removed, renamed files, symlinks (in, out, /dev/zero), FIFOs, folders
    capi         capi_fuzz sequences on the unmodified plan (a case is one sequence)
    corpus       the shared corpus (tests/plan_corpus.json), whose own decision must hold too (all of it by default)

Both readers judge every case: Python (arvc.load, in a worker process; the weights files also through the
checkpoint reader) and C (plan_check on batches of cases). A FINDING is: a Python exception other than
PlanError / PlanIntegrityError / CheckpointError, a C status other than a plan or integrity refusal, a signal,
a sanitizer report, a hang, the two readers deciding differently (accept / refuse, or integrity / plan), or a
capi_fuzz contract violation. Accepted cases also stream a block in both runtimes. Each finding's case folder
(its manifest, small mutated files, both outputs) is kept under --findings; `--only FAMILY:INDEX` with the
same seed rebuilds that one case. --results holds the counts, rewritten after every batch ("complete" once
the run ended), so a long run stopped early still leaves its counts.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

from plan_mutations import make_case

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from plan_corpus import apply_case, load_corpus  # noqa: E402 - the shared corpus lives with the tests

CORPUS = load_corpus()

FAMILIES = ("corpus", "manifest", "safetensors", "onnx", "files", "capi")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "AddressSanitizer:DEADLYSIGNAL")
PROMPT = "a red circle moving right"
C_BATCH, CASE_TIMEOUT_S = 24, 30
# ASan aborts on the first report; an allocation above 2 GiB (the tiny plan needs ~40 MB) is a size taken from
# the plan unchecked, reported like an overflow; the RSS cap keeps a runaway case from taking the machine.
ASAN_OPTIONS = ("halt_on_error=1:detect_leaks=1:max_allocation_size_mb=2048:hard_rss_limit_mb=6144:"
                "allocator_may_return_null=0:detect_odr_violation=0")
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1"


# ---- the Python reader, in a worker process (a crash or a hang ends the worker, not the fuzzer) ---------------
class Hang(Exception):
    pass


def python_judge(case: Path, weights: list[str], stream: bool) -> dict:
    """Accept or refuse the case as arvc.load does; any other exception is a finding."""
    import arvc
    from arvc.checkpoints.safetensors_io import CheckpointError, read_safetensors
    from arvc.runtime.plan import PlanError, PlanIntegrityError

    def on_alarm(*_):
        raise Hang(f"no answer in {CASE_TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(CASE_TIMEOUT_S)
    out = {"decision": None, "error": None, "finding": None}
    try:
        for name in weights:  # the checkpoint reader on each weights file: refusing is fine, a traceback is not
            try:
                read_safetensors(case / name)
            except CheckpointError:
                pass
        try:
            session = arvc.load(case, threads=1)
        except (PlanError, CheckpointError) as e:
            out.update(decision="refuse", error="integrity" if isinstance(e, PlanIntegrityError) else "plan",
                       message=str(e)[:500])
            return out
        out["decision"] = "accept"
        if stream:  # a message (ValueError: the stream's input errors) is the runtime's answer to garbage weights
            try:
                next(iter(session.stream(PROMPT, frames=1, seed=0)))
            except ValueError as e:
                out["stream_error"] = str(e)[:500]
    except Hang as e:
        out["finding"] = f"python-hang: {e}"
    except BaseException as e:  # noqa: BLE001 - what a reader must never raise
        out["finding"] = "python-exception: " + "".join(traceback.format_exception(e))[-3000:]
    finally:
        signal.alarm(0)
    return out


def worker_main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # ~1 GiB is used: a runaway allocation is a MemoryError
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the readers print (Python or C) goes to the log, not into the answers
    for line in sys.stdin:
        job = json.loads(line)
        answers.write(json.dumps(python_judge(Path(job["case"]), job["weights"], job["stream"])) + "\n")
        answers.flush()


class PythonWorker:
    def __init__(self, log: Path):
        self.proc, self.log = None, log

    def judge(self, case: Path, weights: list[str], stream: bool) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, __file__, "--python-worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True)
        self.proc.stdin.write(json.dumps({"case": str(case), "weights": weights, "stream": stream}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], CASE_TIMEOUT_S + 60)  # + the worker's imports
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        self.close()
        why = "python-hang: no answer" if not ready else f"python-crash: worker ended with {self.proc.returncode}"
        return {"decision": None, "error": None, "finding": why}

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait()


# ---- the C reader and the C API, sanitized, in subprocesses --------------------------------------------------
def find_exe(build: Path, name: str) -> Path:
    for p in (build / name, build / "runtime" / name):
        if p.is_file():
            return p
    raise SystemExit(f"fuzz_plans: no {name} in {build}; build it: cmake -S runtime -B {build} -DARVC_SANITIZE=ON && "
                     f"cmake --build {build} --target plan_check capi_fuzz")


def c_env() -> dict:
    # The drivers are linked with -fsanitize, so libasan loads first without LD_PRELOAD; ONNX Runtime, dlopen'ed and
    # uninstrumented, gives no leak reports (its globals stay reachable): leak checking stays on.
    return {**os.environ, "ASAN_OPTIONS": ASAN_OPTIONS, "UBSAN_OPTIONS": UBSAN_OPTIONS}


def run_c(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str, str]:
    """(exit status, None on a hang; stdout; stderr)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
            return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            return None, out.decode(errors="replace"), err.decode(errors="replace")


def report(err: str) -> str:
    """The sanitizer's report from its first line (the stack that matters), else stderr's end."""
    starts = [err.find(mark) for mark in SANITIZER_MARKS if mark in err]
    return err[min(starts):][:8000] if starts else err[-4000:]


def c_trouble(rc: int | None, err: str) -> str | None:
    if rc is None:
        return "c-hang"
    if any(mark in err for mark in SANITIZER_MARKS):
        return "c-sanitizer"
    if rc < 0:
        return "c-signal"
    return None


def plan_check(exe: Path, cases: list[Path], env: dict) -> dict[Path, dict]:
    """Each case's C verdict: its plan_check line, or {"finding": ...}. When a batch fails, the first case
    without a line runs alone (to name it, or to clear it: a killed driver may not have written its lines)
    and the batch goes on after it."""
    rc, out, err = run_c([str(exe), *map(str, cases)], env, 20 + 3 * len(cases))
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # cut short by a crash
            break
    if rc == 0 and c_trouble(rc, err) is None and len(lines) == len(cases):
        return dict(zip(cases, lines))
    if len(cases) == 1:
        trouble = c_trouble(rc, err) or f"c-exit: plan_check ended with {rc}"
        return {cases[0]: {"finding": trouble, "stderr": report(err)}}
    done = dict(zip(cases, lines))
    rest = cases[len(done):]
    return {**done, **plan_check(exe, rest[:1], env), **(plan_check(exe, rest[1:], env) if rest[1:] else {})}


def c_decision(verdict: dict) -> tuple[str, str | None]:
    """plan_check's line as (accept | refuse, None | plan | integrity | status N)."""
    described, opened = verdict["describe"], verdict["open"]
    if described == opened == 0:
        return "accept", None
    if described and not opened:
        return "refuse", "status: arvc_plan_describe refuses what arvc_open accepts"
    status = described or opened
    return "refuse", {2: "plan", 3: "integrity"}.get(status, f"status {status}")


def capi_run(exe: Path, seed: int, sequences: int, max_blocks: int, plans: list[Path], env: dict,
             graphs_may_fail: bool = False) -> list[dict]:
    """capi_fuzz on plans: per plan, None or its finding. graphs_may_fail: the plans' graphs are mutated, so a
    run-time failure of ONNX Runtime is an answer (capi_fuzz --graphs-may-fail), not a violation."""
    flag = ["--graphs-may-fail"] if graphs_may_fail else []
    rc, out, err = run_c([str(exe), *flag, str(seed), str(sequences), str(max_blocks), *map(str, plans)], env,
                         60 + 20 * sequences * len(plans))
    trouble = c_trouble(rc, err) or ("capi-violation" if rc else None)
    if trouble is None:
        return [None] * len(plans)
    if len(plans) > 1:
        return [r for p in plans for r in capi_run(exe, seed, sequences, max_blocks, [p], env, graphs_may_fail)]
    return [{"finding": trouble, "stderr": report(err), "stdout": out[-2000:]}]


# ---- the run -------------------------------------------------------------------------------------------------
class Tally:
    def __init__(self):
        self.families = defaultdict(lambda: {"cases": 0, "accepted": 0, "refused": 0, "findings": Counter(),
                                             "mutators": defaultdict(Counter)})
        self.findings = []

    def add(self, family: str, mutator: str, decision: str | None, findings: list[str]) -> None:
        f = self.families[family]
        f["cases"] += 1
        f["mutators"][mutator]["cases"] += 1
        if decision:
            f["accepted" if decision == "accept" else "refused"] += 1
            f["mutators"][mutator]["accepted" if decision == "accept" else "refused"] += 1
        for kind in findings:
            f["findings"][kind] += 1
            f["mutators"][mutator]["findings"] += 1

    def to_json(self) -> dict:
        fams = {k: {**v, "findings": dict(v["findings"]),
                    "mutators": {m: dict(c) for m, c in sorted(v["mutators"].items())}} for k, v in self.families.items()}
        return {"families": fams, "cases": sum(f["cases"] for f in fams.values()),
                "findings": sum(sum(f["findings"].values()) for f in fams.values())}


def keep_finding(findings_dir: Path, case: Path | None, label: str, record: dict) -> Path:
    """The case's manifest and small files, and what both sides said, in findings_dir/label."""
    dest = findings_dir / label
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in sorted(case.iterdir()) if case and case.is_dir() else []:
        if f.is_file() and not f.is_symlink() and (f.name == "manifest.json" or f.stat().st_size < 2 << 20):
            shutil.copyfile(f, dest / f.name)
        else:
            what = f"symlink to {os.readlink(f)}" if f.is_symlink() else "big or special"
            record.setdefault("not_copied", []).append(f"{f.name} ({what})")
    (dest / "case.json").write_text(json.dumps(record, indent=2, default=str))
    return dest


def run_family(family: str, n: int, args, base: Path, outside: Path, work: Path, exes: dict, env: dict,
               worker: PythonWorker, tally: Tally, log) -> None:
    if family == "capi":  # one sequence per case, on the unmodified plan, 8 to a process
        for start in range(0, n, 8):
            count, seed = min(8, n - start), args.seed * 1_000_003 + start
            result = capi_run(exes["capi_fuzz"], seed, count, 4, [base], env)[0]
            for i in range(count):
                tally.add("capi", "sequence", None, [result["finding"]] if result and i == 0 else [])
            if result:
                rec = {"family": "capi", **result, "reproduce": f"{exes['capi_fuzz']} {seed} {count} 4 {args.plan}"}
                saved = keep_finding(args.findings, None, f"{result['finding']}-capi-{start:06d}", rec)
                tally.findings.append({"kind": result["finding"], "family": "capi", "case": start, "saved": str(saved)})
                log(f"FINDING {result['finding']} capi:{start} -> {saved}")
        log(f"capi: {n} sequences, {sum(tally.families['capi']['findings'].values())} findings")
        return
    indices = [args.only[1]] if args.only else range(n)
    for start in range(0, len(indices), C_BATCH):
        batch = []
        for i in indices[start:start + C_BATCH]:
            folder = work / f"{family}-{i:06d}"
            shutil.rmtree(folder, ignore_errors=True)
            if family == "corpus":  # the case's plan, and what lies outside it, in its folder
                folder.mkdir()
                entry = CORPUS[i]
                batch.append((i, folder, apply_case(entry, base, folder), f"expect-{entry['expect']}",
                              f"{entry['name']}: {entry['why']}", entry["expect"]))
            else:
                batch.append((i, folder, folder, *make_case(family, args.seed, i, base, folder, outside), None))
        c_verdicts = plan_check(exes["plan_check"], [b[2] for b in batch], env)
        for i, folder, case, mutator, note, expect in batch:
            weights = ([f for f in sorted(os.listdir(case)) if f.endswith(".safetensors") and (case / f).is_file()
                        and not (case / f).is_symlink()] if family == "safetensors" else [])
            py = worker.judge(case, weights, stream=not args.no_stream)
            c = c_verdicts[case]
            findings = [k for k in (py.get("finding"), c.get("finding")) if k]
            decision = None
            if not findings:
                c_dec, c_why = c_decision(c)
                if c_why and c_why.startswith("status"):
                    findings.append(f"c-status: {c_why} ({c['error'][:200]})")
                elif c_dec != py["decision"]:
                    findings.append(f"disagree: python {py['decision']}, C {c_dec}")
                elif c_dec == "refuse" and c_why != py["error"]:
                    findings.append(f"refusal-class: python {py['error']}, C {c_why}")
                elif expect and c_dec != expect:
                    findings.append(f"corpus-expect: both {c_dec}, the corpus says {expect}")
                decision = py["decision"]
            if decision == "accept" and not args.no_stream:
                streamed = capi_run(exes["capi_fuzz"], i, 1, 2, [case], env, graphs_may_fail=family == "onnx")[0]
                if streamed:
                    findings.append(streamed["finding"])
                    c = {**c, "stream": streamed}
            kinds = [f.split(":")[0] for f in findings]
            tally.add(family, mutator, decision, kinds)
            if findings:
                rec = {"family": family, "index": i, "seed": args.seed, "mutation": note, "findings": findings,
                       "python": py, "c": c, "reproduce": f"--seed {args.seed} --only {family}:{i}"}
                saved = keep_finding(args.findings, case, f"{kinds[0]}-{family}-{i:06d}", rec)
                tally.findings.append({"kind": kinds[0], "family": family, "case": i, "mutation": note,
                                       "saved": str(saved)})
                log(f"FINDING {kinds[0]} {family}:{i} ({note[:120]}) -> {saved}")
            if not args.only:
                shutil.rmtree(folder, ignore_errors=True)
        log(f"{family}: {min(start + C_BATCH, len(indices))}/{len(indices)} cases, "
            f"{sum(tally.families[family]['findings'].values())} findings")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", type=Path, default=Path("out/tiny.plan"))
    p.add_argument("--build", type=Path, required=True, help="a runtime/ build with -DARVC_SANITIZE=ON")
    p.add_argument("--cases", type=int, default=100, help="cases per family")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated; FAMILY=N sets its own count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, help="write the counts here as JSON")
    p.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--no-stream", action="store_true", help="do not stream a block from accepted cases")
    p.add_argument("--only", help="FAMILY:INDEX: rebuild and judge that one case (its folder stays in --work)")
    args = p.parse_args(argv)
    counts = {}
    for item in args.families.split(","):
        fam, _, n = item.partition("=")
        if fam not in FAMILIES:
            p.error(f"unknown family {fam!r}; families: {', '.join(FAMILIES)}")
        counts[fam] = int(n) if n else args.cases
    if "corpus" in counts:  # all of it unless told fewer
        counts["corpus"] = min(counts["corpus"] if "corpus=" in args.families else len(CORPUS), len(CORPUS))
    if args.only:
        fam, _, idx = args.only.partition(":")
        args.only, counts = (fam, int(idx)), {fam: 1}
    exes = {name: find_exe(args.build, name) for name in ("plan_check", "capi_fuzz")}
    work = Path(args.work or tempfile.mkdtemp(prefix="arvc-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    base, outside = work / "base.plan", work / "outside"
    for d in (base, outside):  # private copies: the cases hard-link base, symlinks point into outside
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(args.plan, d)
    env, worker, tally = c_env(), PythonWorker(work / "python-worker.log"), Tally()
    t0 = time.monotonic()

    def results(complete: bool) -> dict:
        """The counts so far, written after every batch: a run stopped early still leaves them."""
        result = {"date": datetime.date.today().isoformat(), "seed": args.seed, "plan": str(args.plan),
                  "build": str(args.build), "sanitizers": "address,undefined", "stream_accepted": not args.no_stream,
                  "complete": complete, "wall_s": round(time.monotonic() - t0, 1), **tally.to_json(),
                  "finding_list": tally.findings}
        if args.results:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(result, indent=2) + "\n")
        return result

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.0f} s] {msg}", flush=True)
        results(complete=False)

    try:
        baseline = plan_check(exes["plan_check"], [base], env)[base]
        if c_decision(baseline)[0] != "accept" or worker.judge(base, [], stream=False)["decision"] != "accept":
            raise SystemExit(f"fuzz_plans: the unmodified plan {args.plan} is not accepted by both readers: {baseline}")
        for fam, n in counts.items():
            run_family(fam, n, args, base, outside, work, exes, env, worker, tally, log)
    finally:
        worker.close()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result = results(complete=True)
    for fam, f in result["families"].items():
        print(f"{fam:12s} cases {f['cases']:6d}  accepted {f['accepted']:6d}  refused {f['refused']:6d}  "
              f"findings {dict(f['findings']) or 0}")
    print(f"total: {result['cases']} cases, {result['findings']} findings in {result['wall_s']} s")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--python-worker"]:
        worker_main()
    else:
        sys.exit(main())
