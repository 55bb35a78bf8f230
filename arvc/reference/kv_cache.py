"""The PyTorch reference's self-attention KV cache: one preallocated K and one V tensor per model, written in
place at the slots arvc/model/cache_geometry.py's SlotMap assigns (that module documents the layout and the
RoPE modes)."""
from __future__ import annotations

import torch

from arvc.model.cache_geometry import CacheGeometry, CallPlan, SlotMap
from arvc.model.dit import attention
from arvc.model.rope import RotaryTable, rope_angles


class KVCache:
    """The self-attention cache of every layer, written in place; implements ``attend`` for WanDiT.run."""

    def __init__(self, num_layers, num_heads, head_dim, geom: CacheGeometry, grid_hw: tuple[int, int], batch=1,
                 dtype=torch.float32, device="cpu", rope_axis_dims=(44, 42, 42), rope_limit=1024, kv_format="fp32",
                 kv_sink_format: str | None = None):
        from arvc.quant.kv import KV_FORMATS

        for f in (kv_format, kv_sink_format or kv_format):
            if f not in KV_FORMATS:
                raise ValueError(f"reference KV cache format {f!r} unknown; choose one of {KV_FORMATS}")
        if kv_sink_format and not geom.sink:
            raise ValueError("a sink precision needs a sink (--sink > 0 with a rolling window)")
        # a quantized format is what a plan's cache holds (one scale per token and head, quantized once
        # on write), emulated by storing decode(encode(x)): the reference for the plan's cache
        self.kv_format, self.kv_sink_format = kv_format, kv_sink_format or kv_format
        self.geom, self.grid_hw = geom, grid_hw
        self.frame_tokens = grid_hw[0] * grid_hw[1]
        self.sink_rows = geom.sink * self.frame_tokens
        self.rope_axis_dims = rope_axis_dims
        self.slots = SlotMap(geom, rope_limit)
        shape = (num_layers, batch, geom.capacity_frames * self.frame_tokens, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._call: CallPlan | None = None

    @classmethod
    def for_model(cls, model, geom: CacheGeometry, grid_hw, batch=1, device="cpu", kv_format="fp32",
                  kv_sink_format: str | None = None):
        c = model.cfg
        return cls(c.num_layers, c.num_heads, c.head_dim, geom, grid_hw, batch, model.compute_dtype, device,
                   c.rope_axis_dims, c.rope_max_positions, kv_format, kv_sink_format)

    def _write(self, cache: torch.Tensor, x: torch.Tensor) -> None:
        # x: [B, N, H, Dh] of the block; each run of cache rows is stored in its region's format
        from arvc.quant.kv import kv_round_trip

        for c0, c1, n0, _n1 in self._runs:
            cuts = sorted({c0, c1, min(max(self.sink_rows, c0), c1)})
            for a, b in zip(cuts, cuts[1:]):
                fmt = self.kv_sink_format if a < self.sink_rows else self.kv_format
                cache[:, a:b].copy_(kv_round_trip(x[:, n0 + a - c0:n0 + b - c0], fmt))

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def _rope(self, positions: list[int]) -> RotaryTable:
        ang = rope_angles(self.rope_axis_dims, torch.tensor(positions), *self.grid_hw)
        return RotaryTable(ang).to(self.k.device)

    def begin_call(self, frame_start: int, num_frames: int) -> CallPlan:
        plan = self.slots.plan(frame_start, num_frames)
        t = self.frame_tokens
        # contiguous slot runs: a block whose frames wrap around the ring is written in two pieces
        runs, i = [], 0
        while i < len(plan.slots):
            j = i
            while j + 1 < len(plan.slots) and plan.slots[j + 1] == plan.slots[j] + 1:
                j += 1
            runs.append((plan.slots[i] * t, (plan.slots[j] + 1) * t, i * t, (j + 1) * t))
            i = j + 1
        self._runs = runs
        self._rope_q = self._rope(plan.query_positions)
        self._rope_k = self._rope(plan.key_positions) if self.geom.rope == "relative" else None
        self._call = plan
        return plan

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: [B, F*T, H, Dh] of the block being computed
        plan = self._call
        if plan is None:
            raise RuntimeError("KVCache.attend called before begin_call")
        if self._rope_k is None:
            k = self._rope_q.rotate(k)  # absolute: stored rotated
        self._write(self.k[layer], k)
        self._write(self.v[layer], v)
        n = plan.num_key_slots * self.frame_tokens
        keys, vals = self.k[layer, :, :n], self.v[layer, :, :n]  # views, no copy
        if self._rope_k is not None:
            keys = self._rope_k.rotate(keys)
        return attention(self._rope_q.rotate(q), keys, vals)

    def reset_for_recache(self, first_frame: int, keep_sink: bool) -> None:
        self.slots.reset(first_frame, keep_sink)
