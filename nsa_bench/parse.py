"""Parsers for the sweep's axis syntax, as people know it from flash-attention's benchmarks.

`8k..64k` doubles, `8k,16k,32k` lists, `1k..8k:+1k` steps, `192-128` head dims (qk-v). Each parser
raises ValueError with a message that names the offending value; the CLI adds the flag's name.
"""
from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")
_MAX_POINTS = 4096


def parse_size(text: str) -> int:
    """`8k` -> 8192, `1m` -> 1048576, `100` -> 100; sizes must be positive."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 512, 8k, 1m)")
    value = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return value


def _parse_range(part: str) -> list[int]:
    """`a..b` (doubling) or `a..b:+s` (additive step) or `a..b:*f` (multiplicative)."""
    bounds, _, step = part.partition(":")
    lo_text, _, hi_text = bounds.partition("..")
    lo, hi = parse_size(lo_text), parse_size(hi_text)
    if hi < lo:
        raise ValueError(f"{part!r} is reversed: {lo_text.strip()} > {hi_text.strip()}")
    step = step.strip()
    if not step:
        step = "*2"
    if step[0] not in "+*":
        raise ValueError(f"{part!r}: step must look like :+1k or :*2")
    amount = parse_size(step[1:])
    if step[0] == "*" and amount < 2:
        raise ValueError(f"{part!r}: a multiplicative step must be at least 2")
    values, value = [], lo
    while value <= hi:
        values.append(value)
        if len(values) > _MAX_POINTS:
            raise ValueError(f"{part!r} expands to more than {_MAX_POINTS} values")
        value = value + amount if step[0] == "+" else value * amount
    return values


def parse_sizes(text: str) -> tuple[int, ...]:
    """A comma list of sizes and ranges, in order, without repeats: `8k..64k`, `1k,2k`, `1k..8k:+1k`."""
    if not text or not text.strip():
        raise ValueError("empty list")
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"{text!r} has an empty item")
        for value in _parse_range(part) if ".." in part else [parse_size(part)]:
            if value not in values:
                values.append(value)
    return tuple(values)


def parse_head_dims(text: str) -> tuple[tuple[int, int], ...]:
    """`192-128,128` -> ((192, 128), (128, 128)): qk-v pairs; a single number means both."""
    dims = []
    for part in text.split(","):
        match = re.match(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$", part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a head dim like 192-128 (qk-v) or 128")
        qk = int(match.group(1))
        v = int(match.group(2)) if match.group(2) else qk
        if qk <= 0 or v <= 0:
            raise ValueError(f"{part.strip()!r}: head dims must be positive")
        if (qk, v) not in dims:
            dims.append((qk, v))
    return tuple(dims)


def parse_names(text: str, known: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A comma list of names; with `known`, every name must be one of them."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ValueError("empty list")
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown {', '.join(map(repr, unknown))} (choose from {', '.join(known)})")
    return names
