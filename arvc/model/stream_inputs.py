"""The inputs of a stream, checked once for every caller (docs/plan-validation.md, "Inputs of a stream"): a seed,
a thread count, a length and frame rate, switch times and prompt words; the C runtime and arvc_stream hold the
same rules. The bounds keep a request from hanging or allocating without end (a switch at 1e12 s). Nothing heavy
is imported here: the command line checks its flags with these before loading anything."""
from __future__ import annotations

import math
import operator

SEED_MAX = (1 << 64) - 1  # the C API's uint64_t
MAX_THREADS = 256
MAX_SECONDS = 86400  # a day of video
MAX_FPS = 240
SHOWN_WORDS = 5  # unknown words a refusal names; the rest are counted
_SHOWN_WORD_CHARS = 32
_LISTED_VOCAB_CHARS = 600  # a vocabulary longer than this is counted, not listed


def _number(value) -> str:
    """A number as a message shows it: a 4000-digit seed is cut, like any other input."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= _SHOWN_WORD_CHARS else text[:_SHOWN_WORD_CHARS] + "..."


def _integer(value, what: str) -> int:
    if isinstance(value, bool):  # an int to Python, never meant as a number here
        raise ValueError(f"{what} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, not {type(value).__name__} {_number(value)}") from None


def check_seed(seed) -> int:
    """An integer in 0..2^64-1; anything else is refused, never masked or saturated."""
    seed = _integer(seed, "the seed")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed {_number(seed)} is out of range: a seed is an integer in 0..{SEED_MAX} (2^64-1)")
    return seed


def check_threads(threads) -> int:
    """0 (one per physical core) .. 256."""
    threads = _integer(threads, "threads")
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"threads {_number(threads)} is out of range: give 0..{MAX_THREADS} (0: one per physical "
                         "core)")
    return threads


def check_seconds(seconds) -> float:
    """A video length: finite, 0 < seconds <= 86400."""
    seconds = float(seconds)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"a video length of {_number(seconds)} s is out of range: give 0 < seconds <= {MAX_SECONDS} "
                         "(a day)")
    return seconds


def check_fps(fps) -> int:
    """A video's frame rate: 1..240."""
    fps = _integer(fps, "fps")
    if not 1 <= fps <= MAX_FPS:
        raise ValueError(f"{_number(fps)} fps is out of range: give 1..{MAX_FPS}")
    return fps


def check_frames(frames, fps: int) -> int:
    """A video length in frames: 1..fps * 86400."""
    frames = _integer(frames, "frames")
    if not 1 <= frames <= fps * MAX_SECONDS:
        raise ValueError(f"{_number(frames)} frames is out of range: a video has 1..{fps * MAX_SECONDS} frames "
                         f"({MAX_SECONDS} s at {fps} fps)")
    return frames


def check_switch_time(seconds, length_s: float) -> float:
    """A prompt switch: finite, 0 <= seconds < the video's length (a switch at or past the end never applies)."""
    seconds = float(seconds)
    if not (math.isfinite(seconds) and 0 <= seconds < length_s):
        raise ValueError(f"a prompt switch at {_number(seconds)} s is outside the video: give 0 <= seconds < "
                         f"its length ({length_s:g} s)")
    return seconds


def shortened(text: str, chars: int = _SHOWN_WORD_CHARS) -> str:
    """``text`` as a message quotes it: repr, cut after ``chars`` characters."""
    return repr(text if len(text) <= chars else text[:chars] + "...")


def some_words(words: list[str]) -> str:
    """The first few of ``words``, each shortened, and how many more there are."""
    more = f" and {len(words) - SHOWN_WORDS} more" if len(words) > SHOWN_WORDS else ""
    return f"[{', '.join(shortened(w) for w in words[:SHOWN_WORDS])}]{more}"


def prompt_words(text: str, vocab, max_len: int) -> list[str]:
    """The prompt's words (lowercased), each in ``vocab``, at most ``max_len`` of them. A refusal names the first
    few unknown words and counts the rest: never the whole prompt, which may be any length."""
    words = text.lower().split()
    if not words:
        raise ValueError("empty prompt")
    unknown = list(dict.fromkeys(w for w in words if w not in vocab))
    if unknown:
        listed = " ".join(vocab)
        known = (f"this model's vocabulary is: {listed}" if len(listed) <= _LISTED_VOCAB_CHARS else
                 f"this model's vocabulary has {len(vocab)} words")
        raise ValueError(f"unknown word(s) {some_words(unknown)} in the prompt; {known}")
    if len(words) > max_len:
        raise ValueError(f"the prompt has {len(words)} words; this model's text encoder takes at most {max_len}")
    return words
