"""`arvc selftest --target T`: build a small plan on this machine for each precision, run it, and check every
stage against the reference (compiler/selftest.py)."""
from __future__ import annotations

import json
import sys

# the format table imports nothing heavy: argparse refuses a bad value before any heavy import
from arvc.quant.format_table import WEIGHT_FORMATS

from .contract import EXIT_OK, EXIT_PARITY, EXIT_USAGE, UsageError, rich_console


def add_parser(sub) -> None:
    st = sub.add_parser("selftest", help="build a small plan here, run it, and check every stage against the reference")
    st.add_argument("--target", default="cpu", help="cpu (ONNX Runtime) | cuda (torch backend) | tensorrt")
    st.add_argument("--device", help="--target cuda: the torch device (default cuda; cpu checks the same code "
                                     "path without a GPU)")
    st.add_argument("--precisions", help="comma-separated (default fp32,fp16,int8,fp8,nvfp4)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=command)


def command(args) -> int:
    from arvc.compiler.selftest import SELFTEST_PRECISIONS, run_selftest

    precisions = tuple(args.precisions.split(",")) if args.precisions else SELFTEST_PRECISIONS
    unknown = [p for p in precisions if p not in WEIGHT_FORMATS]
    if unknown:
        raise UsageError(f"unknown precision(s) {unknown}; choose from {','.join(WEIGHT_FORMATS)}")
    log = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    rows = run_selftest(args.target, precisions, log, device=args.device)
    passed = all(r["passed"] for r in rows)
    if args.json:
        print(json.dumps({"target": args.target, "passed": passed, "checks": rows}, indent=2))
    else:
        from rich.table import Table

        t = Table(title=f"arvc selftest --target {args.target}: {'PASS' if passed else 'FAIL'}")
        for col in ("precision", "stage", "PSNR vs reference (dB)", "needs (dB)", "result", "detail"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["precision"], r["stage"], "-" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}",
                      "-" if r["min_psnr_db"] is None else f"{r['min_psnr_db']:.0f}",
                      "pass" if r["passed"] else "FAIL", r["detail"])
        rich_console().print(t)
    if passed:
        return EXIT_OK
    # this machine cannot run the target at all: the request is the problem; else a check found a difference
    return EXIT_USAGE if all(r["stage"] == "backend" for r in rows) else EXIT_PARITY
