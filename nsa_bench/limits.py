"""Upper bounds on every size a sweep takes, and on how many points one sweep may hold.

Why bounds at all: `--seqlen 99999999999k` used to be accepted and broke the plots much later, and a
product of axes with 10^9 points allocated until the machine ran out of memory. The bounds are far past
what one GPU holds (16m tokens, 4096 sequences, 1024 heads, head dims of 1024), so they never refuse a
real benchmark, and low enough that no size overflows the kernels' 32-bit token indexing, the cost
model's floats or the plots' axes. The point count is checked from the axis lengths alone, before a
single point is made.
"""
from __future__ import annotations

import math
from typing import Mapping

MAX_SEQLEN = 16 * 1024 * 1024

# SweepSpec field -> (smallest, largest) value
BOUNDS: Mapping[str, tuple[int, int]] = {
    "seqlens": (1, MAX_SEQLEN),
    "batches": (1, 4096),
    "kv_heads": (1, 1024),
    "group_sizes": (1, 1024),
    "head_dims": (1, 1024),
    "block_cmp": (1, 65536),
    "stride_cmp": (1, 65536),
    "block_slc": (1, 65536),
    "n_slc": (1, 65536),
    "window": (1, MAX_SEQLEN),
    "reps": (1, 100_000),
    "warmup": (0, 100_000),
    "seed": (0, 2**63 - 1),
    "check_seqlen": (1, MAX_SEQLEN),
    "d_models": (1, 65536),
    "q_heads": (1, 1024),
}

DEFAULT_MAX_POINTS = 10_000  # configurations x modes; the paper suite has 12, the README example 288
MAX_POINTS_CEILING = 1_000_000  # what --max-points may raise it to: the task list must fit in memory

# the axes whose product is the sweep (SweepSpec field names)
AXES = ("modes", "dtypes", "batches", "kv_heads", "group_sizes", "head_dims", "block_cmp", "stride_cmp",
        "block_slc", "n_slc", "window", "d_models", "doc_lens", "seqlens")


def _short(value: int) -> str:
    """A size as the axis syntax writes it (8k, 16m); a number past any size (a seed) as it is."""
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if size <= value < (1 << 40) and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def bounds_text(field: str) -> str:
    """`1..16m`: the range `-h` shows for a field."""
    lo, hi = BOUNDS[field]
    return f"{_short(lo)}..{_short(hi)}"


def out_of_bounds(field: str, value: object) -> str | None:
    """Why `value` (an int, or a tuple of ints or of (qk, v) pairs) is outside the field's bounds, or None."""
    if field not in BOUNDS:
        return None
    lo, hi = BOUNDS[field]
    values = value if isinstance(value, tuple) else (value,)
    flat = [v for item in values for v in (item if isinstance(item, tuple) else (item,))]
    for v in flat:
        if isinstance(v, int) and not lo <= v <= hi:
            side = f"at most {_short(hi)}" if v > hi else f"at least {lo}"
            return f"{_short(v) if v > 0 else v} is out of range: must be {side} ({bounds_text(field)})"
    return None


def _axis_length(spec: object, axis: str) -> int:
    if axis == "kv_heads":  # --q-heads, when given, takes the place of the KV-head axis
        return len(getattr(spec, "q_heads", ()) or spec.kv_heads)
    return len(getattr(spec, axis, ()) or (None,))


def point_count(spec: object) -> int:
    """How many points (configurations x modes) the sweep's product holds, from the axis lengths alone
    (an upper bound: d_model only multiplies the layer modes)."""
    return math.prod(_axis_length(spec, axis) for axis in AXES)


def too_many_points(spec: object, max_points: int) -> str | None:
    """Why the sweep is refused for its size, or None."""
    count = point_count(spec)
    if count <= max_points:
        return None
    lengths = " x ".join(f"{_axis_length(spec, axis)}" for axis in AXES if _axis_length(spec, axis) > 1)
    return (f"the sweep has {count:,} points ({lengths}), over the limit of {max_points:,}: "
            f"narrow an axis or raise --max-points (up to {MAX_POINTS_CEILING:,})")
