"""JSON read from files arvc did not write (plan manifests, safetensors headers): the nesting is bounded before
parsing (a 100k-deep file is a message, not a RecursionError) and numbers are finite (Python's json reads
NaN, Infinity and 1e999, which no JSON writer means)."""
from __future__ import annotations

import json
import math
import re
from typing import Any

_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # strings (skipped whole) and brackets


def nesting(text: str) -> int:
    """How deep ``text`` nests: the brackets outside strings; the outermost object or list is depth 1."""
    depth = deepest = 0
    for token in _TOKENS.finditer(text):
        c = token.group()
        if c in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in ("]", "}"):
            depth -= 1
    return deepest


def loads(text: str, max_depth: int) -> Any:
    """``json.loads`` for untrusted text; ValueError with a message that stands alone."""
    depth = nesting(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} deep, more than the {max_depth} levels allowed")
    try:
        value = json.loads(text, parse_constant=_not_a_number, parse_float=_finite, parse_int=_int64)
        _check_strings(value)
        return value
    except ValueError as e:  # JSONDecodeError, NaN / Infinity, a lone surrogate, an integer past 64 bits
        raise ValueError(f"not valid JSON ({e})") from None


def _check_strings(value: Any) -> None:
    """A lone surrogate escape ("\\ud800") is no Unicode text: C's reader refuses it as invalid, and so does this one."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone UTF-16 surrogate escape") from None


def _int64(text: str) -> int:
    """Integers as C's reader holds them: -2^63 .. 2^64-1 (docs/plan-validation.md, step 2)."""
    value = int(text)
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"the integer {text[:24]}{'...' if len(text) > 24 else ''} does not fit in 64 bits")
    return value


def _not_a_number(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is past a float's range")
    return value
