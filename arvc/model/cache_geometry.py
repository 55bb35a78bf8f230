"""Where a block-causal self-attention KV cache keeps each frame: global, sink + rolling window, and
relative-RoPE modes. Every cache (the PyTorch reference's arvc/reference/kv_cache.py, the plan runtime's,
the C runtime's runtime/src/slot_map.cpp) places frames by these rules.

Layout: one preallocated K and one V tensor per model, ``[layers, B, slots * T, H, Dh]`` (T tokens per
latent frame). Slots ``0..sink-1`` are pinned to the first ``sink`` frames; the remaining
``ring = window - sink`` slots form a ring buffer that the newest frames overwrite in place, so the
cache never moves or copies memory. A block attends to every filled slot: by construction that is
the sink plus the ``ring`` most recent frames, its own included (LongLive: window 12 = sink 3 + 9).

Filled slots always form a prefix ``[0, filled)``, so attention reads a view of the cache with no
mask and no copy. ``ring_base`` (the frame that maps to the first ring slot) moves only when a
prompt switch resets the ring, which keeps that prefix property during the re-cache.

RoPE modes: ``absolute`` stores K rotated at absolute frame positions (sink frames keep 0..sink-1;
positions are limited by the RoPE table, 1024 frames for Wan). ``relative`` stores K un-rotated and
rotates at attention time with window-relative positions: sink frames at 0..sink-1, ring frames
at sink + (frame - oldest ring frame). Until the first eviction both modes are identical; relative
has no length limit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import check_range

ROPE_MODES = ("absolute", "relative")
MAX_FRAMES = 4096  # a cache's frames (window or max_frames)


@dataclass(frozen=True)
class CacheGeometry:
    frames_per_block: int = 3
    window: int = 0  # latent frames attended, sink included; 0 = global attention
    sink: int = 0
    max_frames: int = 21  # capacity in global mode (Self-Forcing's released config: 21)
    rope: str = "absolute"

    def __post_init__(self) -> None:
        check_range("frames_per_block", self.frames_per_block, 1, 64)
        if self.rope not in ROPE_MODES:
            raise ValueError(f"rope mode {self.rope!r} unknown; choose one of {ROPE_MODES}")
        check_range("max_frames", self.max_frames, self.frames_per_block, MAX_FRAMES)
        if self.window == 0:
            if self.sink:
                raise ValueError(f"sink {self.sink} needs a rolling window (--window > 0); global attention (window 0) "
                                 "keeps every frame")
        else:
            check_range("window", self.window, self.frames_per_block, MAX_FRAMES)
            if not 0 <= self.sink <= self.window - self.frames_per_block:
                raise ValueError(
                    f"sink {self.sink} must be in 0..{self.window - self.frames_per_block}: window {self.window} - "
                    f"sink leaves the ring's frames, and a block must fit in the ring "
                    f"({self.frames_per_block} frames): raise --window or lower --sink"
                )

    @property
    def ring(self) -> int:
        return self.window - self.sink if self.window else self.max_frames

    @property
    def capacity_frames(self) -> int:
        return self.window or self.max_frames

    @property
    def unbounded(self) -> bool:
        return self.window > 0

    def visible_frames(self, block: int) -> list[int]:
        """The specification: latent frames that block ``block`` attends to (its own included)."""
        end = (block + 1) * self.frames_per_block
        if not self.window:
            return list(range(end))
        return [g for g in range(end) if g < self.sink or g >= end - self.ring]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CallPlan:
    """Where one DiT call writes and what it reads; positions are RoPE frame positions."""

    frames: list[int]
    slots: list[int]
    num_key_slots: int
    key_frames: list[int]  # frame held by each of the slots [0, num_key_slots)
    query_positions: list[int]
    key_positions: list[int]


@dataclass
class SlotMap:
    """Host-side bookkeeping of the ring (no tensors): which frame sits in which slot."""

    geom: CacheGeometry
    rope_limit: int = 1024
    ring_base: int = -1
    slot_frame: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ring_base = self.geom.sink
        self.slot_frame = [-1] * self.geom.capacity_frames

    @property
    def filled(self) -> int:
        n = 0
        while n < len(self.slot_frame) and self.slot_frame[n] >= 0:
            n += 1
        return n

    def slot_of(self, frame: int) -> int:
        g = self.geom
        if not g.window:
            if frame >= g.max_frames:
                raise ValueError(
                    f"global cache holds {g.max_frames} latent frames and frame {frame} overflows it; "
                    "use a rolling window (--window 12 --sink 3) for long videos or raise --max-frames"
                )
            return frame
        if frame < g.sink:
            return frame
        return g.sink + (frame - self.ring_base) % g.ring

    def reset(self, first_frame: int, keep_sink: bool) -> None:
        """Forget cached frames before a re-cache starting at ``first_frame``."""
        g = self.geom
        keep = g.sink if (keep_sink and g.window) else 0
        for s in range(keep, len(self.slot_frame)):
            self.slot_frame[s] = -1
        if g.window:
            self.ring_base = max(first_frame, g.sink)

    def plan(self, frame_start: int, num_frames: int) -> CallPlan:
        frames = list(range(frame_start, frame_start + num_frames))
        slots = [self.slot_of(f) for f in frames]
        filled_before = self.filled
        if min(slots) > filled_before:
            raise ValueError(
                f"frames {frames} would leave a gap in the cache (slots {slots}, {filled_before} filled): "
                "blocks must be generated in order"
            )
        for f, s in zip(frames, slots):
            self.slot_frame[s] = f
        n = self.filled
        key_frames = self.slot_frame[:n]
        if self.geom.rope == "absolute":
            q_pos, k_pos = frames, key_frames
            if frames[-1] >= self.rope_limit:
                raise ValueError(
                    f"latent frame {frames[-1]} is past the model's {self.rope_limit} RoPE positions with absolute "
                    "positions; compile/run with relative RoPE (--rope relative) for unbounded length"
                )
        else:
            sink = self.geom.sink if self.geom.window else 0
            ring_frames = [f for f in key_frames if f >= sink]
            oldest = min(ring_frames) if ring_frames else sink

            def rel(f: int) -> int:
                return f if f < sink else sink + f - oldest

            q_pos, k_pos = [rel(f) for f in frames], [rel(f) for f in key_frames]
        return CallPlan(frames, slots, n, list(key_frames), q_pos, k_pos)
