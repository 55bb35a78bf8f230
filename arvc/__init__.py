"""arvc: compile and stream causal video diffusion generators."""

from arvc.version import __version__


def load(plan_dir, threads: int | None = None, verify: bool = True, exact_qdq: bool = False, backend: str | None = None,
         **backend_options):
    """Open a compiled plan: ``arvc.load(PLAN).stream(prompt, seconds)`` yields frames as they are decoded.

    backend: ort | torch | tensorrt (default: the plan's compile target); the torch backend takes device,
    dtype, cache_ops and cuda_graph, e.g. ``arvc.load(PLAN, backend="torch", device="cuda")``."""
    from arvc.runtime.plan_session import load as _load  # lazy: importing arvc stays cheap

    return _load(plan_dir, threads, verify, exact_qdq, backend, **backend_options)
