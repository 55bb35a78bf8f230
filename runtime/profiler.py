"""`arvc profile`: where the time of a stream goes, from events the streaming session records.

While a ``Recorder`` is attached (``session.recorder``), the pipeline records one event per stage call,
with wall-clock start and end (``time.perf_counter``) and the thread that ran it:

    text        the text stage of a new prompt (cross-attention K/V), DiT worker thread
    dit         one DiT call: ``step i`` (denoising step i of the schedule), ``cache`` (the t = 0 call that
                writes the block's K/V) or ``recache`` (a prompt switch re-running the window); args: block, t
    block       a whole block on the DiT thread (its steps and cache call)
    vae         one latent frame decoded (1 video frame for the first, 4 after), caller thread
    frame       a video frame handed to the caller (instant event)
    stream      the stream's start (instant event; args: frames asked for, seed)

``summarize`` turns them into the report's numbers, ``chrome_trace`` into the Trace Event Format that
Perfetto and chrome://tracing load (complete events ``ph: X`` in microseconds, one lane per thread), and
``plot_timeline`` into a PNG with one row per lane.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Event:
    name: str
    cat: str
    thread: str
    start: float  # perf_counter seconds
    end: float
    args: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start


class Recorder:
    """Thread-safe event list; ``span`` times a block of code, ``instant`` marks a moment."""

    def __init__(self):
        self.events: list[Event] = []
        self.origin = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, name: str, cat: str, start: float, end: float, **args) -> None:
        with self._lock:
            self.events.append(Event(name, cat, threading.current_thread().name, start, end, args))

    def instant(self, name: str, cat: str, **args) -> None:
        now = time.perf_counter()
        self.add(name, cat, now, now, **args)

    def of(self, cat: str) -> list[Event]:
        return [e for e in self.events if e.cat == cat]


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats_ms(values: list[float]) -> dict | None:
    if not values:
        return None
    ms = [1000.0 * v for v in values]
    return {"count": len(ms), "mean_ms": round(statistics.fmean(ms), 3), "p50_ms": round(_percentile(ms, 50), 3),
            "p99_ms": round(_percentile(ms, 99), 3), "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3)}


def summarize(rec: Recorder) -> dict:
    """The report's timing numbers from the recorded events of one stream."""
    start = rec.of("stream")
    if len(start) != 1:
        raise ValueError(f"summarize() reads the events of one stream; the recorder holds {len(start)}")
    stream_start, frames = start[0].start, len(rec.of("frame"))
    dit = rec.of("dit")
    by_call = {}
    for e in dit:
        by_call.setdefault(e.name, []).append(e.seconds)
    blocks = [e.seconds for e in rec.of("block")]
    frame_marks = sorted(e.start for e in rec.of("frame"))
    first = frame_marks[0] - stream_start if frame_marks else None
    # steady state: the frames after the first block's last one, over the time since that one arrived
    # (frames come in bursts, a block's worth at a time, so the rate is taken across whole blocks)
    first_block_frames = rec.of("block")[0].args.get("video_frames", 1) if blocks else 1
    steady = frame_marks[first_block_frames - 1:] if len(frame_marks) > first_block_frames else []
    steady_fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 and steady[-1] > steady[0] else None
    end = max((e.end for e in rec.events), default=stream_start)
    dit_s = sum(e.seconds for e in dit) + sum(e.seconds for e in rec.of("text"))
    vae_s = sum(e.seconds for e in rec.of("vae"))
    wall = end - stream_start
    shorter = min(dit_s, vae_s)
    overlap = max(0.0, min(1.0, (dit_s + vae_s - wall) / shorter)) if shorter > 0 else 0.0
    block_stats = _stats_ms(blocks)
    if block_stats and len(blocks) > 1:
        block_stats["jitter_ms"] = round(1000.0 * statistics.pstdev(blocks), 3)  # std of block latency
        block_stats["p99_minus_p50_ms"] = round(block_stats["p99_ms"] - block_stats["p50_ms"], 3)
    order = sorted(by_call, key=lambda n: (n == "recache", n == "cache", n))
    return {
        "frames": frames, "wall_s": round(wall, 4),
        "time_to_first_frame_s": None if first is None else round(first, 4),
        "frames_per_second": round(frames / wall, 3) if wall > 0 else None,
        "steady_frames_per_second": None if steady_fps is None else round(steady_fps, 3),
        "overlap": round(overlap, 3),
        "stages": {"text": _stats_ms([e.seconds for e in rec.of("text")]),
                   **{f"dit {name}": _stats_ms(by_call[name]) for name in order},
                   "vae frame": _stats_ms([e.seconds for e in rec.of("vae")])},
        "blocks": block_stats,
    }


def _origin(rec: Recorder) -> float:
    start = rec.of("stream")
    return start[0].start if start else rec.origin


def chrome_trace(rec: Recorder, path: str | Path, process: str = "arvc") -> Path:
    """Write the events as Trace Event Format JSON (Perfetto, chrome://tracing)."""
    threads = {t: i + 1 for i, t in enumerate(dict.fromkeys(e.thread for e in rec.events))}
    events = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": process}}]
    events += [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": t}} for t, tid in threads.items()]
    for e in rec.events:
        base = {"name": e.name, "cat": e.cat, "pid": 1, "tid": threads[e.thread],
                "ts": round(1e6 * (e.start - _origin(rec)), 3), "args": e.args}
        events.append({**base, "ph": "i", "s": "t"} if e.cat == "frame" else
                      {**base, "ph": "X", "dur": round(1e6 * e.seconds, 3)})
    path = Path(path)
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}) + "\n")
    return path


COLORS = {"text": "#8c564b", "step": "#1f77b4", "cache": "#ff7f0e", "recache": "#d62728", "vae": "#2ca02c"}


def plot_timeline(rec: Recorder, path: str | Path, title: str = "") -> Path:
    """A PNG timeline: one row per lane (DiT calls, blocks, VAE frames), seconds from the stream start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    lanes = [("DiT calls", [e for e in rec.events if e.cat in ("dit", "text")]), ("blocks", rec.of("block")),
             ("VAE frames", rec.of("vae"))]
    origin = _origin(rec)
    fig, ax = plt.subplots(figsize=(12, 2.8))
    for row, (_, events) in enumerate(lanes):
        for e in events:
            kind = e.cat if e.cat != "dit" else e.name.split()[0]
            color = COLORS.get(kind, "#7f7f7f") if e.cat != "block" else ("#c7c7c7" if e.args["block"] % 2 else "#9e9e9e")
            ax.broken_barh([(e.start - origin, e.seconds)], (row - 0.4, 0.8), facecolors=color, edgecolor="none")
    for e in rec.of("frame"):
        ax.axvline(e.start - origin, ymin=0, ymax=0.04, color="black", linewidth=0.5)
    ax.set_yticks(range(len(lanes)), [name for name, _ in lanes])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the stream started (ticks: frames delivered)")
    ax.set_title(title or "arvc profile")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="upper right", ncols=5, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def memory_report(session) -> dict:
    """Bytes by category: what the plan stores, what the backend holds, and the process's peak."""
    import os

    memory, b = session.manifest.memory, session.backend
    out = {"weights_stored_bytes": dict(memory.weights_bytes),
           "kv_cache_bytes": b.kv_cache_bytes,
           "vae_state_bytes": b.vae_state_bytes,
           "dit_activations_bytes_estimate": memory.dit_activation_bytes_estimate}
    if getattr(b, "device", None) is not None and str(b.device).startswith("cuda"):
        import torch

        out["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(b.device)
    try:
        import psutil

        info = psutil.Process(os.getpid()).memory_info()
        out["process_resident_bytes"] = info.rss
    except ImportError:  # psutil is a dependency; a bare embed still gets the rest
        pass
    return out


def profile_plan(plan_dir, seconds: float = 5.0, prompt=None, seed: int = 0, warmup: bool = True,
                 backend: str | None = None, **backend_options) -> tuple[dict, Recorder]:
    """Load a plan, stream ``seconds`` of video once to warm up (unless warmup=False) and once recorded;
    -> (report, recorder). prompt: text or [L, text_dim] embeddings; default: the plan's verification prompt."""
    from .plan_session import load
    from .prompts import verification_prompts

    t0 = time.perf_counter()
    session = load(plan_dir, backend=backend, **backend_options)
    load_s = time.perf_counter() - t0
    context = verification_prompts(session)[0][0] if prompt is None else prompt
    if warmup:
        for _ in session.stream(context, frames=1, seed=seed):
            pass
    rec = Recorder()
    session.recorder = rec
    try:
        for _ in session.stream(context, seconds=seconds, seed=seed):
            pass
    finally:
        session.recorder = None
    report = {"plan": str(plan_dir), "backend": session.backend.name, "precision": session.manifest.precision,
              "resolution": f"{session.width}x{session.height}", "fps_video": session.fps, "seconds": seconds,
              "seed": seed, "load_s": round(load_s, 3), "warmup": warmup, **summarize(rec),
              "memory": memory_report(session),
              "execution": {stage: str(e) for stage, e in session.backend.execution().items()}}
    return report, rec
