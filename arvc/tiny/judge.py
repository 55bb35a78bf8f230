"""Automatic judge for tiny text-to-video outputs: does the video show the prompt's colour moving in the
prompt's direction?

Per frame (all vectorised over the clip):

1. background = per-channel median colour of the frame (the object covers ~3% of it);
2. object mask = pixels whose RGB distance from that background exceeds ``MASK_THRESHOLD`` (60).
   The closest palette colour / background pair (green on dark green) is ~157 apart, so 60 keeps the
   whole interior plus edge pixels with >~40% coverage, and stays well above H.264 / sampling noise;
3. speckle rejection: the mask's row and column counts are summed over a circular (wrap-around) window of
   ``WINDOW`` px (40 at 128x128, i.e. the largest shape extent plus a margin) and only pixels inside the
   best row window x best column window are kept -- one compact blob, even when it straddles an edge;
4. the object is *found* when that blob's area is within [0.3x, 3x] of the prompt shape's analytic area
   (scaled by H*W / 128^2) and holds at least half of all mask pixels (a frame full of junk is not a
   found object);
5. colour = per-channel median colour of the blob -> nearest palette colour (Euclidean RGB); the video's
   colour is the majority vote over found frames;
6. centroid = circular mean over the blob (angle = 2*pi*coord/size), so a shape wrapping around an edge
   has the right centre; velocity between consecutive found frames = wrapped displacement / frame gap,
   wrapped into [-size/2, size/2); the video's velocity is the per-axis median; direction = sign of its
   dominant axis, or "static" when that component is below ``STATIC_SPEED`` (0.3 px/frame) or fewer than
   two frames were found.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import numpy as np

from arvc.tiny.data import BACKGROUNDS, COLORS, SHAPE_AREAS, parse_prompt, prompt_of, sample_spec, vocabulary

MASK_THRESHOLD = 60.0  # RGB distance from the frame's median colour
AREA_RANGE = (0.3, 3.0)  # accepted blob area, relative to the expected shape area
MIN_BLOB_SHARE = 0.5  # the blob must hold at least this share of all mask pixels
WINDOW = 40  # px at 128x128; circular window for the speckle rejection
STATIC_SPEED = 0.3  # px / frame
REF_SIZE = 128

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.array(list(COLORS.values()), np.float32)  # [8, 3]
_BG_NAMES = list(BACKGROUNDS)
_BG_PALETTE = np.array(list(BACKGROUNDS.values()), np.float32)


def _nearest(palette: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry for every rgb row ([..., 3])."""
    d = ((rgb[..., None, :].astype(np.float32) - palette) ** 2).sum(-1)
    return d.argmin(-1)


def _best_window(counts: np.ndarray, w: int) -> np.ndarray:
    """counts [T, N] -> bool [T, N]: the circular window of w bins with the largest sum, per row."""
    t, n = counts.shape
    w = min(w, n)
    ext = np.concatenate([np.zeros((t, 1), np.int64), counts, counts[:, : w - 1]], axis=1).cumsum(axis=1)
    sums = ext[:, w:w + n] - ext[:, :n]  # sums[:, i] = counts[:, i : i + w] (wrapped)
    start = sums.argmax(axis=1)
    offs = (np.arange(n)[None, :] - start[:, None]) % n
    return offs < w


def _circular_mean(weights: np.ndarray, n: int) -> np.ndarray:
    """weights [T, N] over positions 0..N-1 on a circle of period N -> mean position [T] in [0, N)."""
    ang = 2 * np.pi * np.arange(n) / n
    c = weights @ np.cos(ang)
    s = weights @ np.sin(ang)
    return (np.arctan2(s, c) * n / (2 * np.pi)) % n


def _wrap(d: np.ndarray, n: int) -> np.ndarray:
    return (d + n / 2) % n - n / 2


def _direction_of(v: tuple[float, float]) -> str:
    dx, dy = v
    if max(abs(dx), abs(dy)) < STATIC_SPEED:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def analyse_frames(frames: np.ndarray, shape: str = "circle") -> dict:
    """Prompt-independent per-frame measurements of a uint8 [T, H, W, 3] clip.

    Returns found [T] bool, centroid [T, 2] (x, y; NaN where not found), color_index [T] (-1 where not
    found), background_index [T], area [T] (blob pixels), and the per-video velocity / direction.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    t, h, w, _ = frames.shape
    scale = (h * w) / (REF_SIZE * REF_SIZE)
    expected_area = SHAPE_AREAS[shape] * scale
    lin = np.sqrt(scale)
    if t == 0:
        return {"found": np.zeros(0, bool), "centroid": np.zeros((0, 2)), "color_index": np.zeros(0, int),
                "background_index": np.zeros(0, int), "area": np.zeros(0, int), "velocity": [0.0, 0.0],
                "direction": "static", "expected_area": expected_area}

    planes = np.ascontiguousarray(np.moveaxis(frames, -1, 0)).reshape(3, t, h * w)  # channel planes
    bg = np.median(planes, axis=2).astype(np.float32)  # [3, T]
    dist2 = np.zeros((t, h * w), np.float32)
    for c in range(3):
        d = planes[c].astype(np.float32)
        d -= bg[c][:, None]
        d *= d
        dist2 += d
    dist2 = dist2.reshape(t, h, w)
    bg = bg.T  # [T, 3]
    mask = dist2 > MASK_THRESHOLD**2  # [T, H, W]

    total = mask.sum(axis=(1, 2))
    win_y = _best_window(mask.sum(axis=2), max(1, round(WINDOW * lin)))  # [T, H]
    win_x = _best_window(mask.sum(axis=1), max(1, round(WINDOW * lin)))  # [T, W]
    blob = mask & win_y[:, :, None] & win_x[:, None, :]
    area = blob.sum(axis=(1, 2))
    lo, hi = AREA_RANGE
    found = (area >= lo * expected_area) & (area <= hi * expected_area) & (area >= MIN_BLOB_SHARE * total)

    color_index = np.full(t, -1, np.int64)
    contrast = np.ones(t, np.float32)  # object colour's distance from the background
    for i in np.flatnonzero(found):
        rgb = np.median(frames[i][blob[i]], axis=0).astype(np.float32)
        color_index[i] = _nearest(_PALETTE, rgb[None, :])[0]
        contrast[i] = max(float(np.linalg.norm(rgb - bg[i])), MASK_THRESHOLD)

    # Sub-pixel centroid: inside the blob's windows, weight pixels by their contrast relative to the
    # object's (~ coverage of an anti-aliased edge), ignoring anything under half the mask threshold.
    # A binary mask would move in whole-pixel steps and bias the median velocity towards integers.
    soft = np.sqrt(dist2) / contrast[:, None, None]
    soft[dist2 <= (MASK_THRESHOLD / 2) ** 2] = 0.0
    np.clip(soft, 0.0, 1.0, out=soft)
    soft *= win_y[:, :, None]
    soft *= win_x[:, None, :]
    cx = _circular_mean(soft.sum(axis=1, dtype=np.float64), w)
    cy = _circular_mean(soft.sum(axis=2, dtype=np.float64), h)
    centroid = np.where(found[:, None], np.stack([cx, cy], axis=1), np.nan)

    background_index = _nearest(_BG_PALETTE, bg)

    idx = np.flatnonzero(found)
    if len(idx) >= 2:
        gap = np.diff(idx).astype(np.float64)
        dx = _wrap(np.diff(cx[idx]), w) / gap
        dy = _wrap(np.diff(cy[idx]), h) / gap
        velocity = [float(np.median(dx)), float(np.median(dy))]
    else:
        velocity = [0.0, 0.0]
    return {"found": found, "centroid": centroid, "color_index": color_index,
            "background_index": background_index, "area": area, "velocity": velocity,
            "direction": _direction_of(velocity), "expected_area": expected_area}


def _majority(indices, names) -> str | None:
    indices = [int(i) for i in indices if i >= 0]
    if not indices:
        return None
    counts = Counter(indices)
    best = max(counts.values())
    return names[min(i for i, c in counts.items() if c == best)]  # ties -> palette order


def judge_frames(frames: np.ndarray, prompt: str) -> dict:
    """Score a uint8 [T, H, W, 3] clip against its prompt (see the module docstring)."""
    color, shape, direction, background = parse_prompt(prompt)
    a = analyse_frames(frames, shape)
    t = len(a["found"])
    pred_color = _majority(a["color_index"], _PALETTE_NAMES)
    pred_bg = _majority(a["background_index"], _BG_NAMES)
    return {
        "prompt": prompt,
        "expected": {"color": color, "shape": shape, "direction": direction, "background": background},
        "color": pred_color,
        "color_match": pred_color == color,
        "direction": a["direction"],
        "direction_match": a["direction"] == direction,
        "found_fraction": float(a["found"].mean()) if t else 0.0,
        "frames": t,
        "median_velocity": a["velocity"],
        # extras (not used by the aggregate's required keys, but handy when reading failures)
        "background": pred_bg,
        "background_match": pred_bg == background,
    }


def read_video(path) -> np.ndarray:
    """Decode every frame of a video file to uint8 [T, H, W, 3] RGB with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames)


def judge_video(path, prompt: str) -> dict:
    out = judge_frames(read_video(path), prompt)
    out["path"] = str(path)
    return out


def judge_many(results: list[dict]) -> dict:
    """Aggregate a list of judge_frames / judge_video results."""
    n = len(results)
    if n == 0:
        return {"count": 0, "color_accuracy": 0.0, "direction_accuracy": 0.0, "background_accuracy": 0.0,
                "mean_found_fraction": 0.0, "min_found_fraction": 0.0}
    return {
        "count": n,
        "color_accuracy": sum(bool(r["color_match"]) for r in results) / n,
        "direction_accuracy": sum(bool(r["direction_match"]) for r in results) / n,
        "background_accuracy": sum(bool(r.get("background_match", False)) for r in results) / n,
        "mean_found_fraction": float(np.mean([r["found_fraction"] for r in results])),
        "min_found_fraction": float(np.min([r["found_fraction"] for r in results])),
    }


class TinyJudge:
    """This judge as `arvc eval` takes it (compiler/evaluate.py's ``judge``): the prompts it can score, and
    the scores."""

    grammar = "the tiny model's prompt grammar"

    def accepts(self, vocab) -> bool:
        """Whether a text encoder of this vocabulary can say every prompt of the grammar."""
        return set(vocabulary()) <= set(vocab)

    def prompts(self, rng: np.random.Generator, k: int) -> list[str]:
        """k distinct prompts; canonical clips, since the prompt alone fixes them."""
        prompts: list[str] = []
        while len(prompts) < k:
            p = prompt_of(sample_spec(rng, "any", canonical=True))
            prompts += [p] if p not in prompts else []
        return prompts

    def score(self, frames: np.ndarray, prompt: str) -> dict:
        return judge_frames(frames, prompt)

    def summarize(self, scores: list[dict]) -> dict:
        return judge_many(scores)


def summary(r: dict) -> str:
    e = r["expected"]
    ok = {True: "ok", False: "MISMATCH"}
    vx, vy = r["median_velocity"]
    return "\n".join([
        f"prompt     : {r['prompt']}",
        f"frames     : {r['frames']}  (object found in {100 * r['found_fraction']:.0f}%)",
        f"color      : {r['color']} (expected {e['color']}) {ok[r['color_match']]}",
        f"direction  : {r['direction']} (expected {e['direction']}) {ok[r['direction_match']]}"
        f"  median velocity ({vx:+.2f}, {vy:+.2f}) px/frame",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arvc.tiny.judge",
                                description="Score a tiny text-to-video output against its prompt.")
    p.add_argument("video", help="video file (e.g. MP4)")
    p.add_argument("--prompt", required=True, help="'a {color} {shape} moving {direction} on a {background} background'")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = p.parse_args(argv)
    import av

    try:
        r = judge_video(args.video, args.prompt)
    except (ValueError, OSError, av.FFmpegError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=2) if args.json else summary(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
