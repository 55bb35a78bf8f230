"""Procedural videos for the tiny text-to-video model: one coloured shape moving on a plain background.

Prompts follow one grammar exactly::

    a {color} {shape} moving {direction} on a {background} background

Geometry conventions (shared with `arvc.tiny.judge`):

* pixel ``(row y, col x)`` covers ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``, so its centre is the integer
  coordinate itself; a shape centred at ``(cx, cy)`` has its (coverage-weighted) centroid at ``(cx, cy)``.
* ``left`` = -x, ``right`` = +x, ``up`` = -y (towards row 0), ``down`` = +y.
* the frame is a torus: positions are taken modulo ``size`` and a shape crossing an edge reappears,
  partly, on the opposite side.
* the shape is anti-aliased by 4x4 supersampling: a pixel's colour is ``bg + k/16 * (color - bg)`` where
  ``k`` is the number of its 16 sub-samples inside the shape.

Rendering is vectorised: for every shape the 16-level coverage of a small patch is precomputed for
every 1/8-pixel sub-position of the centre (so motion is smooth to 1/8 px), and a clip is rendered by
gathering one patch per frame through a per-clip 17-entry colour lookup table and scattering it into
the frames with wrap-around index arithmetic.
"""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import numpy as np

from arvc.model.stream_inputs import shortened, some_words

# --- vocabulary (order is part of the interface) ---------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 220, 60),
    "blue": (60, 100, 255),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "magenta": (230, 50, 230),
    "cyan": (40, 220, 230),
    "orange": (255, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {  # name -> (dx, dy) unit vector in (col, row) pixels
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "dark blue": (10, 20, 90),
    "dark green": (10, 70, 25),
    "gray": (110, 110, 110),
}

TEMPLATE = "a {color} {shape} moving {direction} on a {background} background"

# Shape geometry at the reference size 128 (pixels).
CIRCLE_RADIUS = 11.0
SQUARE_SIDE = 22.0
TRIANGLE_BASE = 26.0
TRIANGLE_HEIGHT = 24.0
SHAPE_AREAS: dict[str, float] = {  # analytic areas, px^2 at size 128
    "circle": float(np.pi * CIRCLE_RADIUS**2),
    "square": SQUARE_SIDE**2,
    "triangle": TRIANGLE_BASE * TRIANGLE_HEIGHT / 2,
}

SPEED_RANGE = (1.5, 2.5)  # px / frame
CANONICAL_SPEED = 2.0  # px / frame; the generator's training clips (see sample_spec)
SUPERSAMPLE = 4  # 4x4 sub-samples per pixel -> coverage in sixteenths
SUBPIXEL = 8  # the centre is quantised to 1/8 px (one precomputed coverage patch per sub-position)
_PATCH_RADIUS = 18  # patch is (2R+1)^2 pixels; the triangle apex reaches 16 px + sub-pixel offset


def _held_out() -> frozenset[tuple[str, str, str]]:
    c, s, d = list(COLORS), SHAPES, list(DIRECTIONS)
    out = set()
    for i in range(len(c)):
        out.add((c[i], s[i % 3], d[i % 4]))
        out.add((c[i], s[(i + 1) % 3], d[(i + 2) % 4]))
    return frozenset(out)


#: (color, shape, direction) triples never shown in training: for colour index i,
#: ``(COLORS[i], SHAPES[i % 3], DIRECTIONS[i % 4])`` and ``(COLORS[i], SHAPES[(i+1) % 3], DIRECTIONS[(i+2) % 4])``.
#: 16 of the 96 triples.  Every pair of attribute values (colour-shape, colour-direction,
#: shape-direction, and each with every background) still occurs in training, so a held-out prompt
#: is a novel *composition* of seen parts (tests/test_tiny_data.py asserts this).
HELD_OUT: frozenset[tuple[str, str, str]] = _held_out()

ALL_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLORS, SHAPES, DIRECTIONS))
TRAIN_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(t for t in ALL_TRIPLES if t not in HELD_OUT)
HELD_OUT_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(t for t in ALL_TRIPLES if t in HELD_OUT)
SPLITS = ("train", "heldout", "any")


# --- specs and prompts -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipSpec:
    color: str
    shape: str
    direction: str
    background: str
    x0: float  # start centre, pixels (column)
    y0: float  # start centre, pixels (row)
    speed: float  # px / frame

    def __post_init__(self):
        for value, vocab, what in ((self.color, COLORS, "color"), (self.shape, SHAPES, "shape"),
                                   (self.direction, DIRECTIONS, "direction"),
                                   (self.background, BACKGROUNDS, "background")):
            if value not in vocab:
                raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(vocab)}")

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.direction)

    def centre(self, i: float, size: int = 128) -> tuple[float, float]:
        """Shape centre (x, y) at frame i, wrapped into [0, size)."""
        dx, dy = DIRECTIONS[self.direction]
        return ((self.x0 + i * self.speed * dx) % size, (self.y0 + i * self.speed * dy) % size)


_EXAMPLE = ClipSpec("red", "circle", "left", "black", 64.0, 64.0, 2.0)


def prompt_of(spec: ClipSpec) -> str:
    return TEMPLATE.format(color=spec.color, shape=spec.shape, direction=spec.direction,
                           background=spec.background)


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order, without duplicates."""
    words = ["a", "moving", "on", "background", *COLORS, *SHAPES, *DIRECTIONS]
    for bg in BACKGROUNDS:
        words.extend(bg.split())
    return list(dict.fromkeys(words))


_PROMPT_RE = re.compile(r"a (\S+) (\S+) moving (\S+) on a (.+) background")


def parse_prompt(text: str) -> tuple[str, str, str, str]:
    """Prompt -> (color, shape, direction, background). Case and whitespace are normalised first.

    Raises ValueError for anything outside the grammar: the first unknown words are named, with the
    vocabulary; a sentence that does not fit the template is shown the template; a known word in the
    wrong slot is told which words that slot takes.
    """
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a string, got {type(text).__name__}")
    norm = " ".join(text.lower().split())
    vocab = vocabulary()
    unknown = list(dict.fromkeys(w for w in norm.split() if w not in vocab))
    problems = []
    if unknown:
        problems.append(f"unknown word(s): {some_words(unknown)}; vocabulary: {' '.join(vocab)}")
    m = _PROMPT_RE.fullmatch(norm)
    shown = shortened(text, 80)  # a prompt may be any length: the message stays short
    if m is None:
        problems.append(f"prompt does not follow the grammar {TEMPLATE!r} "
                        f"(e.g. {prompt_of(_EXAMPLE)!r})")
        raise ValueError(f"bad prompt {shown}: " + "; ".join(problems))
    color, shape, direction, background = m.groups()
    for value, slot, what in ((color, COLORS, "color"), (shape, SHAPES, "shape"),
                              (direction, DIRECTIONS, "direction"), (background, BACKGROUNDS, "background")):
        if value not in slot and value not in unknown:
            problems.append(f"{value!r} is not a {what} (expected one of {', '.join(slot)})")
    if problems:
        raise ValueError(f"bad prompt {shown}: " + "; ".join(problems))
    return color, shape, direction, background


# --- sampling --------------------------------------------------------------------------------------

def triples_of(split: str) -> tuple[tuple[str, str, str], ...]:
    if split == "train":
        return TRAIN_TRIPLES
    if split == "heldout":
        return HELD_OUT_TRIPLES
    if split == "any":
        return ALL_TRIPLES
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def sample_spec(rng: np.random.Generator, split: str = "train", size: int = 128,
                canonical: bool = False, speed_range: tuple[float, float] = SPEED_RANGE) -> ClipSpec:
    """Uniform over the split's (color, shape, direction) triples and the backgrounds; start centre
    uniform in [0, size)^2 and speed uniform in ``speed_range``, or (``canonical``) the frame centre
    and CANONICAL_SPEED, so that the prompt alone determines the clip."""
    triples = triples_of(split)
    color, shape, direction = triples[int(rng.integers(len(triples)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    if canonical:
        return ClipSpec(color, shape, direction, background, size / 2, size / 2, CANONICAL_SPEED)
    x0, y0 = (float(v) for v in rng.uniform(0.0, size, size=2))
    speed = float(rng.uniform(*speed_range))
    return ClipSpec(color, shape, direction, background, x0, y0, speed)


# --- rendering -------------------------------------------------------------------------------------

def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Point-in-shape for coordinates relative to the shape centre (y grows downwards)."""
    if shape == "circle":
        return x * x + y * y <= CIRCLE_RADIUS**2
    if shape == "square":
        h = SQUARE_SIDE / 2
        return (np.abs(x) <= h) & (np.abs(y) <= h)
    if shape == "triangle":
        # Pointing up, centred on its centroid: apex at y = -2h/3, base at y = +h/3.
        top, bottom = -2 * TRIANGLE_HEIGHT / 3, TRIANGLE_HEIGHT / 3
        half = (TRIANGLE_BASE / 2) * (y - top) / TRIANGLE_HEIGHT
        return (y >= top) & (y <= bottom) & (np.abs(x) <= half)
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=None)
def _coverage_table(shape: str) -> np.ndarray:
    """uint8 [SUBPIXEL, SUBPIXEL, P, P]: sub-samples (0..16) inside the shape, for a centre at
    (patch pixel R + fx/SUBPIXEL, R + fy/SUBPIXEL), indexed [fy, fx, row, col]."""
    r, ss, sub = _PATCH_RADIUS, SUPERSAMPLE, SUBPIXEL
    p = 2 * r + 1
    # sample offsets inside a pixel, relative to the pixel centre
    o = (np.arange(ss) + 0.5) / ss - 0.5
    base = (np.arange(p)[:, None] - r + o[None, :]).reshape(-1)  # [P*ss]
    table = np.empty((sub, sub, p, p), np.uint8)
    for fy in range(sub):
        ys = base - fy / sub
        for fx in range(sub):
            xs = base - fx / sub
            inside = _inside(shape, xs[None, :], ys[:, None])  # [P*ss, P*ss] (row, col)
            table[fy, fx] = inside.reshape(p, ss, p, ss).sum(axis=(1, 3), dtype=np.uint8)
    table.setflags(write=False)
    return table


def _lut(spec: ClipSpec) -> np.ndarray:
    """uint8 [17, 3]: colour of a pixel with k/16 coverage."""
    bg = np.array(BACKGROUNDS[spec.background], np.float64)
    fg = np.array(COLORS[spec.color], np.float64)
    k = np.arange(SUPERSAMPLE * SUPERSAMPLE + 1)[:, None] / (SUPERSAMPLE * SUPERSAMPLE)
    return np.rint(bg + k * (fg - bg)).astype(np.uint8)


def _placement(spec: ClipSpec, num_frames: int, size: int):
    """Per frame: integer pixel of the centre and its 1/SUBPIXEL sub-position, after wrapping."""
    if size <= 2 * _PATCH_RADIUS + 1:
        raise ValueError(f"size must exceed {2 * _PATCH_RADIUS + 1}, got {size}")
    dx, dy = DIRECTIONS[spec.direction]
    i = np.arange(num_frames, dtype=np.float64)
    cx = spec.x0 + i * spec.speed * dx
    cy = spec.y0 + i * spec.speed * dy
    qx = np.floor(cx * SUBPIXEL + 0.5).astype(np.int64) % (size * SUBPIXEL)
    qy = np.floor(cy * SUBPIXEL + 0.5).astype(np.int64) % (size * SUBPIXEL)
    return qx // SUBPIXEL, qx % SUBPIXEL, qy // SUBPIXEL, qy % SUBPIXEL


def _scatter(spec: ClipSpec, num_frames: int, size: int):
    """(flat pixel indices [T, P, P] into a [T*size*size] frame stack, coverage counts [T, P, P])."""
    ix, fx, iy, fy = _placement(spec, num_frames, size)
    table = _coverage_table(spec.shape)
    offs = np.arange(table.shape[-1]) - _PATCH_RADIUS
    rows = (iy[:, None] + offs) % size  # [T, P]
    cols = (ix[:, None] + offs) % size
    base = (np.arange(num_frames) * (size * size))[:, None] + rows * size
    return base[:, :, None] + cols[:, None, :], table[fy, fx]


def render_into(spec: ClipSpec, out: np.ndarray) -> np.ndarray:
    """Render into a preallocated C-contiguous uint8 [T, size, size, 3] array; returns it."""
    num_frames, size = out.shape[0], out.shape[1]
    if out.shape != (num_frames, size, size, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 [T, S, S, 3] array, got {out.dtype} {out.shape}")
    if num_frames == 0:
        return out
    # One background frame, then a plain block copy per frame (broadcasting a 3-tuple is ~20x slower).
    out[...] = np.tile(np.array(BACKGROUNDS[spec.background], np.uint8), (size, size, 1))
    flat, counts = _scatter(spec, num_frames, size)
    # Whole RGB pixels as 3-byte void items: one gather through the LUT, one 1-D put.
    lut = np.ascontiguousarray(_lut(spec)).view("V3").reshape(-1)
    np.put(out.reshape(-1, 3).view("V3").reshape(-1), flat, lut[counts])
    return out


def render_clip(spec: ClipSpec, num_frames: int, size: int = 128) -> np.ndarray:
    """uint8 [T, size, size, 3]: the clip described by `spec` (see the module docstring)."""
    out = np.empty((num_frames, size, size, 3), np.uint8)
    return render_into(spec, out)


def coverage(spec: ClipSpec, num_frames: int, size: int = 128) -> np.ndarray:
    """float32 [T, size, size]: the shape's coverage fraction (0..1) per pixel, exactly as rendered."""
    out = np.zeros(num_frames * size * size, np.float32)
    if num_frames:
        flat, counts = _scatter(spec, num_frames, size)
        out[flat] = counts.astype(np.float32) / (SUPERSAMPLE * SUPERSAMPLE)
    return out.reshape(num_frames, size, size)


def make_dataset(n_clips: int, num_frames: int, seed: int, split: str = "train", size: int = 128):
    """(frames uint8 [N, T, size, size, 3], prompts list[str], specs list[ClipSpec]), deterministic in seed."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, split, size) for _ in range(n_clips)]
    # np.zeros (calloc) first-touches fresh pages markedly faster than np.empty on some kernels
    frames = np.zeros((n_clips, num_frames, size, size, 3), np.uint8)
    for n, spec in enumerate(specs):
        render_into(spec, frames[n])
    return frames, [prompt_of(s) for s in specs], specs
