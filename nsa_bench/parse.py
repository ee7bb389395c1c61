"""Parsers for the sweep's axis syntax, as people know it from flash-attention's benchmarks.

`8k..64k` doubles, `8k,16k,32k` lists, `1k..8k:+1k` steps, `192-128` head dims (qk-v). Each parser
raises ValueError with a message that names the offending value; the CLI adds the flag's name.
An empty item (`1k,,2k`, `fwd,,bwd`) is an error everywhere, never silently dropped.
"""
from __future__ import annotations

import re

from nsa_bench.messages import show

# ASCII digits only: Python's \d and int() also take full-width and Arabic-Indic digits, which no user means
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$", re.ASCII)
_INT = re.compile(r"^\s*[+-]?\d+\s*$", re.ASCII)
_HEAD_DIM = re.compile(r"^(\d+\s*[kKmM]?)\s*(?:-\s*(\d+\s*[kKmM]?))?$", re.ASCII)
_MAX_POINTS = 4096  # values one range may expand to
_MAX_DIGITS = 19  # 2^63 - 1 has 19; longer numbers are typos (and int() of 5000 digits is refused by Python)


def _number(digits: str, text: str) -> int:
    if len(digits.lstrip("+-0")) > _MAX_DIGITS:
        raise ValueError(f"{show(text)} is far too large")
    return int(digits)


def parse_size(text: str) -> int:
    """`8k` -> 8192, `1m` -> 1048576, `100` -> 100; sizes must be positive."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{show(text)} is not a size (examples: 512, 8k, 1m)")
    value = _number(match.group(1), text) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{show(text)} must be positive")
    return value


def parse_int(text: str) -> int:
    """A whole number (sign allowed): `5`, `-1`; 'abc' is refused in words, not by int()'s message."""
    if not _INT.match(text):
        raise ValueError(f"{show(text)} is not a whole number")
    return _number(text.strip(), text)


def _items(text: str) -> list[str]:
    """The stripped comma-separated items of a list; refuses an empty list or an empty item."""
    if not text or not text.strip():
        raise ValueError("empty list")
    items = [part.strip() for part in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"{show(text)} has an empty item")
    return items


def _parse_range(part: str) -> list[int]:
    """`a..b` (doubling) or `a..b:+s` (additive step) or `a..b:*f` (multiplicative)."""
    bounds, _, step = part.partition(":")
    lo_text, _, hi_text = bounds.partition("..")
    lo, hi = parse_size(lo_text), parse_size(hi_text)
    if hi < lo:
        raise ValueError(f"{show(part)} is reversed: {lo_text.strip()} > {hi_text.strip()}")
    step = step.strip()
    if not step:
        step = "*2"
    if step[0] not in "+*":
        raise ValueError(f"{show(part)}: step must look like :+1k or :*2")
    amount = parse_size(step[1:])
    if step[0] == "*" and amount < 2:
        raise ValueError(f"{show(part)}: a multiplicative step must be at least 2")
    values, value = [], lo
    while value <= hi:
        values.append(value)
        if len(values) > _MAX_POINTS:
            raise ValueError(f"{show(part)} expands to more than {_MAX_POINTS} values")
        value = value + amount if step[0] == "+" else value * amount
    return values


def parse_sizes(text: str) -> tuple[int, ...]:
    """A comma list of sizes and ranges, in order, without repeats: `8k..64k`, `1k,2k`, `1k..8k:+1k`."""
    values: dict[int, None] = {}
    for part in _items(text):
        for value in _parse_range(part) if ".." in part else [parse_size(part)]:
            values.setdefault(value)
    return tuple(values)


def parse_head_dims(text: str) -> tuple[tuple[int, int], ...]:
    """`192-128,128` -> ((192, 128), (128, 128)): qk-v pairs; a single number means both."""
    dims: dict[tuple[int, int], None] = {}
    for part in _items(text):
        match = _HEAD_DIM.match(part)
        if not match:
            raise ValueError(f"{show(part)} is not a head dim like 192-128 (qk-v) or 128")
        try:
            qk = parse_size(match.group(1))
            v = parse_size(match.group(2)) if match.group(2) else qk
        except ValueError:
            raise ValueError(f"{show(part)}: head dims must be positive") from None
        dims.setdefault((qk, v))
    return tuple(dims)


def parse_names(text: str, known: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A comma list of names; with `known`, every name must be one of them."""
    names = tuple(dict.fromkeys(_items(text)))
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            listed = ", ".join(show(n, 30) for n in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
            raise ValueError(f"unknown {listed} (choose from {', '.join(known)})")
    return names


def parse_name(text: str) -> str:
    """One non-empty name (a backend, a GPU key)."""
    name = text.strip()
    if not name:
        raise ValueError("must not be empty")
    if "," in name:
        raise ValueError(f"{show(text)} takes a single name, not a list")
    return name
