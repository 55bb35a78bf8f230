"""The `arvc` command line: one module per command, each with ``add_parser(sub)`` and the ``command(args)`` it
binds. Heavy libraries (torch, onnx, onnxruntime, rich) load inside the command that needs them, so `arvc --help`
stays fast. The exit codes, error prefix, console and suggested commands are contract.py's."""
from __future__ import annotations

import argparse
import importlib
import sys

from .contract import EXIT_INTERRUPTED, EXIT_UNEXPECTED, EXIT_USAGE, exit_code

# in the order --help lists them; each is a module here, its name spelled with _ for -
COMMANDS = ("run", "reference", "compile", "inspect", "plan-memory", "explain-cache", "judge", "eval", "profile",
            "selftest", "convert")


def build_parser() -> argparse.ArgumentParser:
    from arvc import __version__

    p = argparse.ArgumentParser(prog="arvc", description="Compile and stream causal video diffusion generators.")
    p.add_argument("--version", action="version", version=f"arvc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)  # argparse prints usage errors as "arvc <command>: error: ..."
    except SystemExit as e:  # --help, --version (0) and usage errors (2) return their code to main()'s caller
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    args.argv = argv
    prefix = f"arvc {args.command}: error:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix} interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - mapped to the exit-code contract; anything unknown is a bug
        code = exit_code(e)
        if code == EXIT_UNEXPECTED:
            import traceback

            traceback.print_exc()
            print(f"{prefix} unexpected {type(e).__name__}: {e} (a bug in arvc; the traceback above says where)",
                  file=sys.stderr)
        else:
            print(f"{prefix} {e}", file=sys.stderr)
        return code
