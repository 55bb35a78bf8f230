"""`arvc explain-cache`: which frames each block attends to, which cache slots it writes, what it evicts."""
from __future__ import annotations

import json

from .common import add_geometry_args, fill_defaults, geometry
from .contract import UsageError, rich_console

MAX_BLOCKS = 1024  # a table to read, not a stream: --blocks 10^8 would print for hours


def add_parser(sub) -> None:
    e = sub.add_parser("explain-cache", help="which frames each block attends to and which cache slots it writes")
    e.add_argument("--blocks", type=int, default=8, help=f"blocks to explain, 1..{MAX_BLOCKS} (default 8)")
    e.add_argument("--json", action="store_true")
    add_geometry_args(e)
    e.set_defaults(func=command)


def _ranges(frames: list[int]) -> str:
    """[0, 1, 2, 6, 7] -> '0-2,6-7'"""
    out, i = [], 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        out.append(f"{frames[i]}" if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return ",".join(out)


def command(args) -> int:
    from arvc.model.cache_geometry import SlotMap

    if not 1 <= args.blocks <= MAX_BLOCKS:
        raise UsageError(f"--blocks {args.blocks}: give 1..{MAX_BLOCKS}")
    fill_defaults(args)
    geom = geometry(args)
    slots = SlotMap(geom, rope_limit=10**9)
    rows, held = [], set()
    for b in range(args.blocks):
        plan = slots.plan(b * geom.frames_per_block, geom.frames_per_block)
        attended = sorted(plan.key_frames)
        evicted = sorted(held - set(attended))
        held = set(attended)
        rows.append({"block": b, "frames": plan.frames, "writes_slots": plan.slots, "attends_frames": attended,
                     "evicted_frames": evicted, "rope_query_positions": plan.query_positions})
    result = {"geometry": geom.to_dict(), "capacity_slots": geom.capacity_frames, "blocks": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.table import Table

    mode = "global" if not geom.window else f"window {geom.window} (sink {geom.sink} + ring {geom.ring})"
    t = Table(title=f"KV cache: {mode}, {geom.frames_per_block} frames/block, {geom.capacity_frames} slots, RoPE {geom.rope}")
    for col in ("block", "frames", "writes slots", "attends frames", "evicted", "RoPE positions"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["block"]), _ranges(r["frames"]), _ranges(r["writes_slots"]), _ranges(r["attends_frames"]),
                  _ranges(r["evicted_frames"]) or "-", _ranges(r["rope_query_positions"]))
    rich_console().print(t)
    return 0
