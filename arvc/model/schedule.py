"""The few-step flow-matching schedule of the causal generators (DESIGN section 1)."""
from __future__ import annotations

from dataclasses import dataclass

MAX_STEPS = 64


@dataclass(frozen=True)
class Schedule:
    """Timesteps t in [0, 1000] of the denoising calls of one block; sigma = t / 1000."""

    timesteps: tuple[float, ...]

    def __post_init__(self) -> None:
        ts = self.timesteps
        if not 1 <= len(ts) <= MAX_STEPS:
            raise ValueError(f"timesteps must hold 1..{MAX_STEPS} values (a schedule's steps), not {len(ts)}")
        if any(not (0 < t <= 1000) for t in ts):
            raise ValueError(f"timesteps must lie in (0, 1000]; got {list(ts)[:8]}")
        if any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must strictly decrease; got {list(ts)[:8]}")

    @classmethod
    def from_shift(cls, shift: float, steps: int = 4) -> "Schedule":
        """sigma(u) = s*u / (1 + (s-1)*u) at u = 1, 1 - 1/steps, ...; shift 5 -> [1000, 937.5, 833.33, 625]."""
        if not (0 < shift < float("inf")) or not 1 <= steps <= MAX_STEPS:  # before a list of `steps` values is built
            raise ValueError(f"shift must be finite and > 0, and steps in 1..{MAX_STEPS}; got shift={shift}, steps={steps}")
        us = [1 - i / steps for i in range(steps)]
        return cls(tuple(1000.0 * shift * u / (1 + (shift - 1) * u) for u in us))

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(t / 1000.0 for t in self.timesteps)

    def to_dict(self) -> dict:
        return {"timesteps": list(self.timesteps)}
