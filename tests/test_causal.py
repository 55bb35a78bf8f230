"""The reference causal generator: model pieces, cache modes, schedule, teacher-forcing equivalence."""
import math

import pytest
import torch

from arvc.model.cache_geometry import CacheGeometry, SlotMap
from arvc.model.config import WAN_PRESETS, Numerics, WanConfig
from arvc.model import dit
from arvc.model.dit import FullAttention, ReferenceOps, WanDiT, init_random_weights_
from arvc.model.rope import RotaryTable, rope_angles
from arvc.model.schedule import Schedule
from arvc.reference.causal import CausalGenerator

CFG = WAN_PRESETS["test-tiny"]
HW = (4, 4)  # latent size -> 2x2 = 4 tokens per frame


@pytest.fixture(scope="module")
def model():
    return init_random_weights_(WanDiT(CFG).eval(), seed=1)


def context(seed=0, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)


def latents(frames, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, CFG.in_channels, frames, *HW, generator=g)


def token_mask(geom: CacheGeometry, num_frames: int, frame_tokens: int) -> torch.Tensor:
    fpb = geom.frames_per_block
    vis = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for q in range(num_frames):
        vis[q, geom.visible_frames(q // fpb)] = True
    return vis.repeat_interleave(frame_tokens, 0).repeat_interleave(frame_tokens, 1)


def test_schedule_from_shift_matches_released_configs():
    assert Schedule.from_shift(5).timesteps == pytest.approx((1000, 937.5, 833.333333, 625))
    assert Schedule.from_shift(8).timesteps == pytest.approx((1000, 960, 888.888889, 727.272727))
    with pytest.raises(ValueError, match="strictly decrease"):
        Schedule((1000.0, 1000.0))


def test_rope_against_complex_formula():
    """Wan's own formulation: per-axis complex frequencies, adjacent pairs as complex numbers."""
    cfg = WAN_PRESETS["wan2.1-t2v-1.3b"]
    assert cfg.rope_axis_dims == (44, 42, 42)
    f, h, w, heads, d = 3, 2, 5, 2, cfg.head_dim
    start = 7
    x = torch.randn(1, f * h * w, heads, d, dtype=torch.float64)
    table = RotaryTable(rope_angles(cfg.rope_axis_dims, torch.arange(start, start + f), h, w))
    got = table.rotate(x)
    expect = torch.empty_like(x)
    for fi in range(f):
        for hi in range(h):
            for wi in range(w):
                n = (fi * h + hi) * w + wi
                angles = []
                for pos, dim in ((start + fi, 44), (hi, 42), (wi, 42)):
                    angles += [pos / 10000 ** (2 * i / dim) for i in range(dim // 2)]
                rot = torch.polar(torch.ones(len(angles), dtype=torch.float64), torch.tensor(angles, dtype=torch.float64))
                z = torch.view_as_complex(x[0, n].reshape(heads, d // 2, 2).contiguous())
                expect[0, n] = torch.view_as_real(z * rot).reshape(heads, d)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-12)


def test_unpatchify_is_channel_fastest_wan_order(model):
    f, h, w = 2, 3, 2
    p, c = CFG.patch_size, CFG.out_channels
    out = torch.randn(1, f * h * w, math.prod(p) * c)
    expect = torch.einsum("fhwpqrc->cfphqwr", out[0].view(f, h, w, *p, c)).reshape(c, f * p[0], h * p[1], w * p[2])
    assert torch.equal(ReferenceOps(model, grid=(f, h, w)).unpatchify(out)[0], expect)


def test_time_embedding_accepts_fractional_and_per_frame_t(model):
    x = latents(3, 0)
    v1 = model.forward_full(x, torch.tensor([833.3333]), context())
    v2 = model.forward_full(x, torch.tensor([[833.3333] * 3]), context())
    assert torch.equal(v1, v2)
    v3 = model.forward_full(x, torch.tensor([[833.3333, 500.0, 833.3333]]), context())
    assert not torch.allclose(v1, v3)


@pytest.mark.parametrize(
    "geom,query_block",
    [
        (CacheGeometry(frames_per_block=3, window=0, max_frames=12), 3),
        (CacheGeometry(frames_per_block=3, window=9, sink=3), 5),  # ring of 6 frames rolled twice
        (CacheGeometry(frames_per_block=2, window=7, sink=1), 5),  # blocks that wrap around the ring
    ],
    ids=["global", "window9-sink3", "window7-sink1-wrapping"],
)
def test_teacher_forcing_equivalence(model, geom, query_block):
    """A cached call on block b == rows of block b in one masked forward over [clean 0..b-1 @ t=0, b @ t]."""
    fpb = geom.frames_per_block
    n_prev = query_block * fpb
    clean, noisy, t = latents(n_prev, 10), latents(fpb, 11), 812.5
    gen = CausalGenerator(model, geom, Schedule.from_shift(5), HW)
    gen.set_prompt(context())
    for b in range(query_block):
        gen.dit_call(clean[:, :, b * fpb:(b + 1) * fpb], 0.0, b * fpb)
    cached = gen.dit_call(noisy, t, n_prev)

    full_x = torch.cat([clean, noisy], dim=2)
    tf = torch.tensor([[0.0] * n_prev + [t] * fpb])
    mask = token_mask(geom, n_prev + fpb, 4)
    reference = model.forward_masked(full_x, tf, context(), mask)[:, :, n_prev:]
    assert (cached - reference).abs().max().item() <= 1e-5
    # the mask really mattered: without it (global, unmasked) the answer differs
    unmasked = model.forward_full(full_x, tf, context())[:, :, n_prev:]
    assert (unmasked - reference).abs().max().item() > 1e-3


def test_window_visibility_and_slots_match_longlive():
    geom = CacheGeometry(frames_per_block=3, window=12, sink=3)
    assert geom.visible_frames(0) == [0, 1, 2]
    assert geom.visible_frames(3) == list(range(12))
    assert geom.visible_frames(4) == [0, 1, 2] + list(range(6, 15))
    slots = SlotMap(geom)
    for b in range(8):
        plan = slots.plan(3 * b, 3)
        assert sorted(plan.key_frames) == geom.visible_frames(b)
    # frames 21..23 overwrote the slots of 12..14 (9-frame ring after the 3 sink slots)
    assert plan.slots == [3, 4, 5]
    assert slots.slot_frame == [0, 1, 2, 21, 22, 23, 15, 16, 17, 18, 19, 20]


def test_cache_is_written_in_place_and_bounded(model):
    geom = CacheGeometry(frames_per_block=3, window=6, sink=3, rope="relative")
    gen = CausalGenerator(model, geom, Schedule((1000.0, 500.0)), HW)
    gen.set_prompt(context())
    k_ptr, v_ptr, shape = gen.cache.k.data_ptr(), gen.cache.v.data_ptr(), gen.cache.k.shape
    for _ in range(6):
        gen.next_block()
    assert gen.cache.k.data_ptr() == k_ptr and gen.cache.v.data_ptr() == v_ptr
    assert gen.cache.k.shape == shape == (CFG.num_layers, 1, 6 * 4, CFG.num_heads, CFG.head_dim)


def test_relative_rope_equals_absolute_until_eviction_and_outlives_rope_table(model):
    small = WanConfig(**{**CFG.to_dict(), "patch_size": (1, 2, 2), "rope_max_positions": 12})
    m = WanDiT(small).eval()
    m.load_state_dict(model.state_dict())
    outs = {}
    for rope in ("absolute", "relative"):
        geom = CacheGeometry(frames_per_block=3, window=9, sink=3, rope=rope)
        gen = CausalGenerator(m, geom, Schedule.from_shift(5, steps=2), HW, seed=3)
        gen.set_prompt(context())
        outs[rope] = [gen.next_block() for _ in range(3)]  # frames 0..8: ring not yet evicted
        if rope == "absolute":
            gen.next_block()  # frames 9..11 still inside the 12-position table
            with pytest.raises(ValueError, match="relative"):
                gen.next_block()
        else:
            for _ in range(6):  # frames up to 26: far past the 12-entry RoPE table
                x0 = gen.next_block()
            assert torch.isfinite(x0).all()
    for a, r in zip(outs["absolute"], outs["relative"]):
        assert (a - r).abs().max().item() <= 1e-5


def test_global_cache_overflow_is_a_clear_error(model):
    geom = CacheGeometry(frames_per_block=3, window=0, max_frames=6)
    gen = CausalGenerator(model, geom, Schedule((1000.0,)), HW)
    gen.set_prompt(context())
    gen.next_block(), gen.next_block()
    with pytest.raises(ValueError, match="global cache holds 6 latent frames"):
        gen.next_block()


def test_generation_is_deterministic_per_seed(model):
    def run(seed):
        gen = CausalGenerator(model, CacheGeometry(3, 6, 3), Schedule.from_shift(5), HW, seed=seed)
        gen.set_prompt(context())
        return torch.cat([gen.next_block() for _ in range(3)], dim=2)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_prompt_switch_recache_global_equals_fresh_cache(model):
    geom = CacheGeometry(frames_per_block=3, window=0, max_frames=12)
    gen = CausalGenerator(model, geom, Schedule.from_shift(5, steps=2), HW)
    gen.set_prompt(context(0))
    blocks = [gen.next_block() for _ in range(2)]
    rerun = gen.switch_prompt(context(1))
    assert rerun == list(range(6))

    fresh = CausalGenerator(model, geom, Schedule.from_shift(5, steps=2), HW)
    fresh.set_prompt(context(1))
    for b, x0 in enumerate(blocks):
        fresh.dit_call(x0, 0.0, 3 * b)
    n = 6 * 4
    torch.testing.assert_close(gen.cache.k[:, :, :n], fresh.cache.k[:, :, :n], rtol=0, atol=1e-6)
    torch.testing.assert_close(gen.cache.v[:, :, :n], fresh.cache.v[:, :, :n], rtol=0, atol=1e-6)
    # and generation continues from the re-cached state exactly like the fresh one
    gen.block_index = fresh.block_index = 2
    torch.testing.assert_close(gen.next_block(), fresh.next_block(), rtol=0, atol=1e-6)


def test_prompt_switch_recache_window_keeps_sink_and_rewrites_window(model):
    geom = CacheGeometry(frames_per_block=3, window=9, sink=3)
    gen = CausalGenerator(model, geom, Schedule.from_shift(5, steps=2), HW)
    gen.set_prompt(context(0))
    blocks = [gen.next_block() for _ in range(5)]  # frames 0..14
    sink_k = gen.cache.k[:, :, :12].clone()
    rerun = gen.switch_prompt(context(1))
    assert rerun == list(range(6, 15))  # last min(9, 15) frames, none of them sink frames
    assert torch.equal(gen.cache.k[:, :, :12], sink_k)

    # independent construction: sink from prompt 0, then frames 6..14 re-run at t=0 under prompt 1
    ref = CausalGenerator(model, geom, Schedule.from_shift(5, steps=2), HW)
    ref.set_prompt(context(0))
    ref.dit_call(blocks[0], 0.0, 0)
    ref.set_prompt(context(1))
    ref.cache.reset_for_recache(6, keep_sink=True)
    for b in (2, 3, 4):
        ref.dit_call(blocks[b], 0.0, 3 * b)
    assert sorted(gen.cache.slots.slot_frame) == sorted(ref.cache.slots.slot_frame) == [0, 1, 2] + list(range(9, 15))
    for frame in range(9, 15):
        s_gen, s_ref = gen.cache.slots.slot_of(frame), ref.cache.slots.slot_of(frame)
        a = gen.cache.k[:, :, s_gen * 4:(s_gen + 1) * 4]
        r = ref.cache.k[:, :, s_ref * 4:(s_ref + 1) * 4]
        torch.testing.assert_close(a, r, rtol=0, atol=1e-6)


def test_bf16_modulation_switch_rounds_the_residual_stream(model):
    m16 = WanDiT(CFG, Numerics(modulation_bf16=True)).eval()
    m16.load_state_dict(model.state_dict())
    x, t = latents(3, 4), torch.tensor([625.0])
    rope = RotaryTable(rope_angles(CFG.rope_axis_dims, torch.arange(3), 2, 2))
    ops = ReferenceOps(m16, FullAttention(rope), grid=m16.grid(x))
    tokens = ops.patchify(x)
    _, e0 = dit.time_embedding(ops, m16._frame_times(t, 1, 3))
    out = dit.block(ops, 0, tokens, e0, m16.cross_kv(context())[0])
    assert tokens.dtype == e0.dtype == out.dtype == torch.bfloat16  # the residual stream and modulation
    a, b = model.forward_full(x, t, context()), m16.forward_full(x, t, context())
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.05
