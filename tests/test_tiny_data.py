"""arvc.tiny: prompt grammar, held-out split, procedural renderer and the automatic judge."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from arvc.tiny import data as D
from arvc.tiny import judge as J

SIZE = 128


# --- grammar ---------------------------------------------------------------------------------------

def test_vocabulary_order_and_coverage():
    vocab = D.vocabulary()
    assert vocab[:4] == ["a", "moving", "on", "background"]
    assert vocab[4:12] == list(D.COLORS)
    assert vocab[12:15] == list(D.SHAPES)
    assert vocab[15:19] == list(D.DIRECTIONS)
    assert vocab[19:] == ["black", "dark", "gray"]
    assert len(vocab) == len(set(vocab))
    produced = {w for c, s, d, b in itertools.product(D.COLORS, D.SHAPES, D.DIRECTIONS, D.BACKGROUNDS)
                for w in D.prompt_of(D.ClipSpec(c, s, d, b, 0.0, 0.0, 2.0)).split()}
    assert produced == set(vocab)


def test_grammar_round_trip_every_combination():
    n = 0
    for c, s, d, b in itertools.product(D.COLORS, D.SHAPES, D.DIRECTIONS, D.BACKGROUNDS):
        prompt = D.prompt_of(D.ClipSpec(c, s, d, b, 1.0, 2.0, 2.0))
        assert prompt == f"a {c} {s} moving {d} on a {b} background"
        assert D.parse_prompt(prompt) == (c, s, d, b)
        messy = "  " + "\t ".join(prompt.upper().split()) + " \n"
        assert D.parse_prompt(messy) == (c, s, d, b)
        n += 1
    assert n == 8 * 3 * 4 * 4


def test_parse_unknown_word_lists_word_and_vocabulary():
    with pytest.raises(ValueError) as exc:
        D.parse_prompt("a purple circle moving left on a black background")
    msg = str(exc.value)
    assert "'purple'" in msg
    assert " ".join(D.vocabulary()) in msg
    with pytest.raises(ValueError) as exc:
        D.parse_prompt("a red hexagon moving sideways on a black background")
    assert "'hexagon'" in str(exc.value) and "'sideways'" in str(exc.value)


def test_parse_malformed_shows_template():
    for bad in ["red circle moving left", "", "a red circle moving left on a black", "a red circle left"]:
        with pytest.raises(ValueError) as exc:
            D.parse_prompt(bad)
        assert D.TEMPLATE in str(exc.value)


def test_parse_known_word_in_wrong_slot():
    with pytest.raises(ValueError) as exc:
        D.parse_prompt("a circle red moving left on a black background")
    msg = str(exc.value)
    assert "'circle' is not a color" in msg and "'red' is not a shape" in msg
    with pytest.raises(ValueError, match="'blue' is not a background"):
        D.parse_prompt("a red circle moving left on a blue background")
    with pytest.raises(ValueError):
        D.ClipSpec("purple", "circle", "left", "black", 0.0, 0.0, 2.0)


# --- splits ----------------------------------------------------------------------------------------

def test_held_out_coverage_property():
    assert len(D.HELD_OUT) == 16
    assert D.HELD_OUT <= set(D.ALL_TRIPLES)
    assert len(D.TRAIN_TRIPLES) == 96 - 16
    train = set(D.TRAIN_TRIPLES)
    values = (list(D.COLORS), list(D.SHAPES), list(D.DIRECTIONS))
    # every value of one attribute appears in training with every value of every other attribute
    for a, b in itertools.combinations(range(3), 2):
        for va, vb in itertools.product(values[a], values[b]):
            assert any(t[a] == va and t[b] == vb for t in train), (va, vb)
    # (backgrounds are sampled independently of the triple, so they pair with everything)
    for i, c in enumerate(D.COLORS):
        assert (c, D.SHAPES[i % 3], list(D.DIRECTIONS)[i % 4]) in D.HELD_OUT
        assert (c, D.SHAPES[(i + 1) % 3], list(D.DIRECTIONS)[(i + 2) % 4]) in D.HELD_OUT


def test_sample_spec_respects_splits():
    rng = np.random.default_rng(0)
    seen = {}
    for split in D.SPLITS:
        specs = [D.sample_spec(rng, split) for _ in range(600)]
        triples = {s.triple for s in specs}
        seen[split] = triples
        assert {s.background for s in specs} == set(D.BACKGROUNDS)
        assert all(0 <= s.x0 < SIZE and 0 <= s.y0 < SIZE for s in specs)
        assert all(D.SPEED_RANGE[0] <= s.speed <= D.SPEED_RANGE[1] for s in specs)
    assert seen["train"] == set(D.TRAIN_TRIPLES)
    assert seen["heldout"] == set(D.HELD_OUT)
    assert seen["any"] & D.HELD_OUT and seen["any"] - D.HELD_OUT
    with pytest.raises(ValueError):
        D.sample_spec(rng, "test")
    a = [D.sample_spec(np.random.default_rng(5), "train") for _ in range(2)]
    assert a[0] == a[1]


def test_canonical_specs_are_determined_by_the_prompt_and_speed_range_is_honoured():
    rng = np.random.default_rng(1)
    canon = [D.sample_spec(rng, "train", 96, canonical=True) for _ in range(50)]
    assert {(s.x0, s.y0, s.speed) for s in canon} == {(48.0, 48.0, D.CANONICAL_SPEED)}
    assert len({s.triple for s in canon}) > 20  # the prompt still varies
    fast = [D.sample_spec(rng, "train", speed_range=(4.0, 8.0)) for _ in range(200)]
    assert all(4.0 <= s.speed <= 8.0 for s in fast) and max(s.speed for s in fast) > 7.5


def test_make_dataset():
    frames, prompts, specs = D.make_dataset(6, 5, seed=3, split="heldout", size=64)
    assert frames.shape == (6, 5, 64, 64, 3) and frames.dtype == np.uint8
    assert prompts == [D.prompt_of(s) for s in specs]
    assert all(s.triple in D.HELD_OUT for s in specs)
    for f, s in zip(frames, specs):
        np.testing.assert_array_equal(f, D.render_clip(s, 5, 64))
    again, _, _ = D.make_dataset(6, 5, seed=3, split="heldout", size=64)
    np.testing.assert_array_equal(frames, again)


# --- rendering -------------------------------------------------------------------------------------

EDGE_POSITIONS = [(64.0, 64.0), (0.0, 0.0), (0.3, 70.2), (127.8, 5.5), (50.1, 127.6), (127.9, 127.9), (3.7, 0.6)]


def _torus_dist(n, c):
    d = np.abs(np.arange(n) - c)
    return np.minimum(d, n - d)


@pytest.mark.parametrize("shape", D.SHAPES)
def test_shape_area_colours_and_background(shape):
    for (x0, y0), bg, color in zip(EDGE_POSITIONS, itertools.cycle(D.BACKGROUNDS), itertools.cycle(D.COLORS)):
        spec = D.ClipSpec(color, shape, "right", bg, x0, y0, 2.0)
        frames = D.render_clip(spec, 3)
        cov = D.coverage(spec, 3)
        assert frames.shape == (3, SIZE, SIZE, 3) and frames.dtype == np.uint8
        area = D.SHAPE_AREAS[shape]
        fg, bgc = np.array(D.COLORS[color]), np.array(D.BACKGROUNDS[bg])
        for i in range(3):
            assert abs(cov[i].sum() - area) <= 0.05 * area
            # coverage recovered from the image itself (channel with the largest contrast)
            ch = int(np.argmax(np.abs(fg - bgc)))
            img_cov = (frames[i, ..., ch].astype(float) - bgc[ch]) / (fg[ch] - bgc[ch])
            assert abs(img_cov.sum() - area) <= 0.05 * area
            # interior colour exact; background exact wherever the shape is absent
            assert (cov[i] == 1).sum() > 0.6 * area
            assert (frames[i][cov[i] == 1] == fg).all()
            assert (frames[i][cov[i] == 0] == bgc).all()
            # ... in particular far (> 20 px on the torus) from the centre
            cx, cy = spec.centre(i)
            far = (_torus_dist(SIZE, cy)[:, None] > 20) | (_torus_dist(SIZE, cx)[None, :] > 20)
            assert (frames[i][far] == bgc).all()


def _coverage_centroid(cov):
    """Circular-mean centroid (x, y) of a [H, W] coverage map."""
    h, w = cov.shape
    out = []
    for weights, n in ((cov.sum(0), w), (cov.sum(1), h)):
        ang = 2 * np.pi * np.arange(n) / n
        out.append((np.arctan2(weights @ np.sin(ang), weights @ np.cos(ang)) * n / (2 * np.pi)) % n)
    return np.array(out)


@pytest.mark.parametrize("direction", list(D.DIRECTIONS))
def test_motion_speed_direction_and_wrap(direction):
    spec = D.ClipSpec("cyan", "circle", direction, "black", 120.0, 6.0, 2.3)
    t = 12  # crosses an edge whichever way it moves
    cov = D.coverage(spec, t)
    step = np.array(D.DIRECTIONS[direction]) * spec.speed
    cents = np.stack([_coverage_centroid(c) for c in cov])
    for i in range(t):
        expect = np.array(spec.centre(i))
        err = (cents[i] - expect + SIZE / 2) % SIZE - SIZE / 2
        assert np.abs(err).max() <= 0.1, (i, cents[i], expect)
    disp = (np.diff(cents, axis=0) + SIZE / 2) % SIZE - SIZE / 2
    np.testing.assert_allclose(disp.mean(0), step, atol=0.02)
    assert (np.abs(disp - step) <= 1 / D.SUBPIXEL + 0.05).all()
    # the shape is intact (full area) in every frame, including while split across the edge
    np.testing.assert_allclose(cov.sum((1, 2)), D.SHAPE_AREAS["circle"], rtol=0.01)


def test_render_other_size_and_zero_frames():
    spec = D.ClipSpec("red", "square", "down", "gray", 10.0, 90.0, 2.0)
    assert D.render_clip(spec, 0).shape == (0, SIZE, SIZE, 3)
    assert D.render_clip(spec, 2, size=96).shape == (2, 96, 96, 3)


# --- judge -----------------------------------------------------------------------------------------

def test_judge_every_combination_on_ground_truth():
    rng = np.random.default_rng(1)
    results = []
    for n, (c, s, d, b) in enumerate(itertools.product(D.COLORS, D.SHAPES, D.DIRECTIONS, D.BACKGROUNDS)):
        # every other clip starts on an edge so the object wraps during the clip
        x0, y0 = rng.uniform(0, SIZE, 2) if n % 2 else rng.choice([0.0, 126.5, 2.0, 127.9], 2)
        spec = D.ClipSpec(c, s, d, b, float(x0), float(y0), float(rng.uniform(*D.SPEED_RANGE)))
        r = J.judge_frames(D.render_clip(spec, 24), D.prompt_of(spec))
        assert r["color_match"] and r["direction_match"] and r["found_fraction"] == 1.0, r
        assert r["background_match"], r
        assert r["frames"] == 24
        v = np.array(r["median_velocity"])
        np.testing.assert_allclose(v, np.array(D.DIRECTIONS[d]) * spec.speed, atol=0.15)
        results.append(r)
    agg = J.judge_many(results)
    assert agg["count"] == 384
    assert agg["color_accuracy"] == agg["direction_accuracy"] == 1.0
    assert agg["mean_found_fraction"] == agg["min_found_fraction"] == 1.0


def test_judge_background_only_video():
    frames = np.zeros((20, SIZE, SIZE, 3), np.uint8)
    frames[...] = D.BACKGROUNDS["dark blue"]
    r = J.judge_frames(frames, "a red circle moving left on a dark blue background")
    assert r["found_fraction"] == 0.0
    assert r["direction"] == "static" and not r["direction_match"]
    assert r["color"] is None and not r["color_match"]
    assert r["median_velocity"] == [0.0, 0.0]


def test_judge_speckle_and_static():
    spec = D.ClipSpec("yellow", "triangle", "up", "black", 40.0, 40.0, 2.0)
    frames = D.render_clip(spec, 16)
    noisy = frames.copy()
    rng = np.random.default_rng(0)
    for f in noisy:  # a few isolated bright pixels far away must not move the centroid
        ys, xs = rng.integers(80, 120, 6), rng.integers(80, 120, 6)
        f[ys, xs] = 255
    r = J.judge_frames(noisy, D.prompt_of(spec))
    assert r["color_match"] and r["direction_match"] and r["found_fraction"] == 1.0
    static = np.repeat(frames[:1], 16, axis=0)
    r = J.judge_frames(static, D.prompt_of(spec))
    assert r["found_fraction"] == 1.0 and r["direction"] == "static" and not r["direction_match"]
    # noise everywhere: no single object
    junk = rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)
    assert J.judge_frames(junk, D.prompt_of(spec))["found_fraction"] == 0.0


def test_judge_wrong_direction_prompt():
    spec = D.ClipSpec("green", "square", "right", "gray", 30.0, 30.0, 2.0)
    r = J.judge_frames(D.render_clip(spec, 24), "a green square moving left on a gray background")
    assert r["color_match"] and r["direction"] == "right" and not r["direction_match"]
    r = J.judge_frames(D.render_clip(spec, 24), "a red square moving right on a gray background")
    assert not r["color_match"] and r["color"] == "green" and r["direction_match"]
    with pytest.raises(ValueError):
        J.judge_frames(D.render_clip(spec, 2), "a green square going right")


def _write_mp4(path, frames, fps=16):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_judge_video_mp4_compression_robust(tmp_path, capsys):
    rng = np.random.default_rng(7)
    results = []
    for k, (c, s, d, b) in enumerate([("blue", "circle", "left", "dark blue"),
                                      ("green", "triangle", "down", "dark green"),
                                      ("orange", "square", "up", "gray"),
                                      ("magenta", "triangle", "right", "black"),
                                      ("red", "square", "right", "gray"),
                                      ("white", "circle", "up", "gray")]):
        spec = D.ClipSpec(c, s, d, b, float(rng.uniform(0, SIZE)), float(rng.uniform(0, SIZE)), 2.0)
        path = tmp_path / f"clip{k}.mp4"
        _write_mp4(path, D.render_clip(spec, 32))
        r = J.judge_video(path, D.prompt_of(spec))
        assert r["frames"] == 32
        assert r["color_match"] and r["direction_match"] and r["found_fraction"] == 1.0, r
        results.append(r)
    assert J.judge_many(results)["min_found_fraction"] == 1.0

    assert J.main([str(path), "--prompt", D.prompt_of(spec), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["color_match"] and out["direction_match"]
    assert J.main([str(path), "--prompt", D.prompt_of(spec)]) == 0
    assert "direction" in capsys.readouterr().out
    assert J.main([str(path), "--prompt", "a teal circle"]) == 2
    assert "teal" in capsys.readouterr().err
