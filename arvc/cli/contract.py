"""The command line's contract with its user, apart from the commands themselves: exit codes and the error each
maps to, console output that keeps every number in logs, and suggestions built as commands that run as printed
(the user's own command line with flags changed, or the compile command that rebuilds a plan).

Exit codes (README "Exit codes"), one prefix per command (``arvc <command>: error: ...`` on stderr):
    0  success
    1  anything unexpected (a bug: the traceback is printed)
    2  usage or input error, raised before any work starts (argparse's own errors too), or an output that
       cannot be written (a full disk, a file size limit: arvc/atomic.py's WriteError)
    3  parity refusal: compile's gate, or a selftest check, found the plan too far from the reference
    4  integrity refusal: a tampered, truncated or unreadable plan
  130  interrupted (Ctrl-C), as a shell reports SIGINT
"""
from __future__ import annotations

from pathlib import Path
import shlex
import sys

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_PARITY, EXIT_INTEGRITY = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad flags or input, found before any work: exit 2."""


def rich_console(stderr: bool = False):
    """A rich console that never cuts a table: off a terminal (logs, pipes, CI) lines are as wide as they need to be."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(file=stream, width=4096, soft_wrap=True, color_system=None)


def rerun_command(args, *, command: str | None = None, drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    """The command line the user ran, under another command if given, with flags dropped (each with its value)
    and others added: suggestions name commands that run as printed."""
    argv, out, i = list(getattr(args, "argv", None) or sys.argv[1:]), [], 0
    if command:
        argv[0] = command  # the command comes first: arvc's only options before it are --help and --version
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in drop:
            takes_value = "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            i += 2 if takes_value and flag not in _BOOLEAN_FLAGS else 1
            continue
        out.append(argv[i])
        i += 1
    return "arvc " + " ".join(shlex.quote(a) for a in [*out, *add])


_BOOLEAN_FLAGS = ("--force", "--sensitivity", "--no-verify", "--json", "--quiet", "--no-cuda-graph",
                  "--modulation-bf16", "--no-modulation-bf16")


def recompile_hint(plan_dir, changes: dict) -> str:
    """The compile command that rebuilds ``plan_dir`` with ``changes`` (flag -> value), from its manifest."""
    from arvc.runtime.manifest import json_of
    from arvc.runtime.plan import read_manifest

    if {"--vae", "--modulation-bf16"} & set(changes):
        return "a plan holds the VAE and the numerics it was compiled with; compile the checkpoint with the ones you want"
    m = read_manifest(plan_dir, verify_files=False)
    source = Path(m.source.checkpoint)
    if not source.is_file():
        return f"recompile its checkpoint ({source}, not found from here) with {' '.join(changes)}"
    model = source.parent if source.name == "model.safetensors" else source  # the directory brings its VAE, encoder
    r, res = m.recipe, m.resolution
    flags = {"--precision": r.weights, "--kv-cache": r.kv_cache, "--kv-sink-precision": r.kv_sink,
             "--activations": r.activations, "--act-scales": r.act_scales if r.activations else None,
             "--target": m.target.name, "--height": res.height, "--width": res.width, "--fps": res.fps,
             "--timesteps": ",".join(f"{t:g}" for t in m.schedule.timesteps),
             **{f"--{k.replace('_', '-')}": v for k, v in json_of(m.geometry).items()}}
    if {"--shift", "--steps"} & set(changes):
        flags["--timesteps"] = None  # compile's --timesteps would override them
    flags.update(changes)
    switches = []
    if r.sensitivity:
        switches.append("--sensitivity")
    name = Path(plan_dir).name.removesuffix(".plan") + "-" + "-".join(f"{k.lstrip('-')}{v}" for k, v in changes.items())
    out = Path(plan_dir).with_name(f"{name}.plan")
    argv = ["arvc", "compile", str(model), "-o", str(out)]
    for k, v in flags.items():
        if v is not None:
            argv += [k, str(v)]
    return f"recompile it with them: `{' '.join(shlex.quote(a) for a in argv + switches)}`"


def gate_advice(args, e) -> str:
    """The ways past a parity-gate refusal, each as a command that runs on this input (compile_plan attaches
    what it measured as ``e.advice``)."""
    import math

    advice = getattr(e, "advice", None) or {}
    lines = []
    sweep = advice.get("sweep")
    if sweep and sweep.get("met"):
        kept = ", ".join(sweep["kept"])
        lines.append(f"keep the most sensitive layers at full precision (measured here: keeping {kept} gives "
                     f"{sweep['frame_psnr_db']:.1f} dB): `{rerun_command(args, drop=('--sensitivity',), add=('--sensitivity',))}`")
        if sweep.get("recipe"):
            lines.append(f"or compile with that measurement, written as a recipe: "
                         f"`{rerun_command(args, drop=('--recipe', '--sensitivity'), add=('--recipe', sweep['recipe']))}`")
    elif advice.get("sweep_skipped"):
        lines.append(f"find the layers to keep at full precision ({advice['sweep_skipped']}): "
                     f"`{rerun_command(args, drop=('--sensitivity',), add=('--sensitivity',))}`, or name them in a "
                     "recipe file (--recipe FILE, its \"keep\" map)")
    measured = advice.get("psnr_db")  # the lowest PSNR the gate compared
    if measured is not None and math.isfinite(measured) and measured > 0:
        floor = math.floor(measured * 2) / 2 - 0.5  # below the measured value by a margin, on the 0.5 dB grid
        lines.append(f"or accept this plan's quality ({measured:.1f} dB): "
                     f"`{rerun_command(args, drop=('--min-psnr',), add=('--min-psnr', f'{floor:g}'))}`")
    return "".join(f"\n  - {line}" for line in lines)


_INPUT_ERRORS = (UsageError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def exit_code(e: BaseException) -> int:
    # The error classes are looked up where they were raised from: importing them here would load torch for
    # every command (compiler/compile imports it).
    compile_mod, plan_mod = sys.modules.get("arvc.compiler.compile"), sys.modules.get("arvc.runtime.plan")
    if compile_mod and isinstance(e, compile_mod.ParityGateRefused):
        return EXIT_PARITY
    if plan_mod and isinstance(e, plan_mod.PlanIntegrityError):
        return EXIT_INTEGRITY
    atomic_mod = sys.modules.get("arvc.atomic")
    if atomic_mod and isinstance(e, atomic_mod.WriteError):
        return EXIT_USAGE
    if isinstance(e, _INPUT_ERRORS) or (compile_mod and isinstance(e, compile_mod.CompileError)):
        return EXIT_USAGE
    return EXIT_UNEXPECTED
