"""The tiny model's text encoder: vocabulary errors, padding, and umT5-like zero rows."""
import pytest
import torch

from arvc.model.tiny_text import TextEncoderConfig, TinyTextEncoder
from arvc.tiny import data


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return TinyTextEncoder(TextEncoderConfig(vocab=tuple(data.vocabulary()))).eval()


def test_context_has_one_row_per_word_and_zero_rows_after(enc):
    prompt = "a red circle moving right on a dark blue background"
    ctx = enc.encode([prompt])
    assert ctx.shape == (1, 16, 64)
    n = len(prompt.split())
    assert (ctx[0, :n].abs().sum(-1) > 0).all()
    assert torch.equal(ctx[0, n:], torch.zeros(16 - n, 64))


def test_batching_with_a_longer_prompt_does_not_change_a_prompt(enc):
    short = "a red circle moving up on a black background"
    long = "a cyan triangle moving left on a dark green background"
    alone = enc.encode([short])
    batched = enc.encode([long, short])
    torch.testing.assert_close(batched[1:], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batched[0], batched[1])


def test_unknown_word_lists_the_vocabulary(enc):
    with pytest.raises(ValueError) as e:
        enc.encode(["a purple circle moving up on a black background"])
    msg = str(e.value)
    assert "'purple'" in msg and "magenta" in msg and "triangle" in msg


def test_too_long_and_empty_prompts(enc):
    with pytest.raises(ValueError, match="at most 16"):
        enc.encode([" ".join(["a"] * 17)])
    with pytest.raises(ValueError, match="empty"):
        enc.encode(["   "])


def test_config_round_trips_through_json():
    cfg = TextEncoderConfig(vocab=("a", "b"), dim=32, layers=1, heads=2, max_len=4)
    assert TextEncoderConfig.from_json(cfg.to_json()) == cfg
