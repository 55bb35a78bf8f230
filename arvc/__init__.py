"""arvc: compile and stream causal video diffusion generators."""

__version__ = "0.1.0"


def load(plan_dir, threads: int | None = None, verify: bool = True, exact_qdq: bool = False):
    """Open a compiled plan: ``arvc.load(PLAN).stream(prompt, seconds)`` yields frames as they are decoded."""
    from arvc.runtime.plan_session import load as _load  # lazy: importing arvc stays cheap

    return _load(plan_dir, threads, verify, exact_qdq)
