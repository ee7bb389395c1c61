"""Lines that coincide stay visible, and a legend says when they are identical.

Predictions give every dense baseline the same ideal kernel (and NSA backends the same model), so their
lines lie exactly on one another and the last one drawn hides the others: a reader sees one line and
three legend entries. Here the lines of a panel that are equal at every point (within REL) are drawn as
one path striped in their colours (interleaved dashes, each with its own marker, larger under smaller), and
lines that are equal in every panel of a figure share one legend entry, "a = b = c (identical)".
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence, TypeVar

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

T = TypeVar("T")

REL = 1e-9  # relative: values closer than this are the same number
DASH = 3.0  # length of one colour's stripe, in line widths
LINE_W = 1.4
MARKER = 4.0  # size of the smallest marker of a stripe


@dataclass(frozen=True)
class Curve:
    """One line of a panel: its legend key, its points (x ascending; NaN y is a gap) and its look."""

    key: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    color: str
    style: object = "-"
    marker: str = "o"
    filled: bool = True


def _same_value(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= REL * max(abs(a), abs(b))


def same(a: Curve, b: Curve) -> bool:
    """Equal within REL at every point, at the same lengths (a gap in one is a gap in the other)."""
    return a.x == b.x and all(_same_value(p, q) for p, q in zip(a.y, b.y))


def _grouped(items: Iterable[T], together: Callable[[T, T], bool]) -> list[list[T]]:
    """Items in groups whose first member each later member goes `together` with, in order."""
    groups: list[list[T]] = []
    for item in items:
        home = next((g for g in groups if together(g[0], item)), None)
        if home is None:
            groups.append([item])
        else:
            home.append(item)
    return groups


def clusters(curves: Sequence[Curve]) -> list[list[Curve]]:
    """The curves of one panel in groups of lines that coincide, in drawing order."""
    return _grouped(curves, same)


def identical_sets(panels: Iterable[Sequence[Curve]]) -> list[tuple[str, ...]]:
    """Keys whose lines coincide in every panel where any of them is drawn (sets of two or more)."""
    drawn = [{c.key: c for c in panel} for panel in panels]
    keys = list(dict.fromkeys(k for panel in drawn for k in panel))

    def together(a: str, b: str) -> bool:
        return all((a in p) == (b in p) and (a not in p or same(p[a], p[b])) for p in drawn)

    return [tuple(s) for s in _grouped(keys, together) if len(s) > 1]


def _striped(group: list[Curve]) -> list[Curve]:
    """The members of a coinciding group as stripes of one path: equal dashes, each shifted by one stripe."""
    n = len(group)
    if n == 1:
        return group
    return [replace(c, style=(((n - i) % n) * DASH, (DASH, (n - 1) * DASH))) for i, c in enumerate(group)]


def _marker_size(index: int, count: int) -> float:
    return MARKER + 1.8 * (count - 1 - index)  # the first drawn is the largest, so each stays visible


def _kwargs(curve: Curve, index: int, count: int) -> dict:
    return dict(color=curve.color, ls=curve.style, marker=curve.marker, ms=_marker_size(index, count), lw=LINE_W,
                markerfacecolor=curve.color if curve.filled else "none")


def draw(ax: plt.Axes, curves: Sequence[Curve]) -> list[Line2D]:
    """Draw a panel's curves; coinciding ones as stripes of one path. Returns the lines drawn."""
    lines = []
    for group in clusters(curves):
        for i, curve in enumerate(_striped(group)):
            (line,) = ax.plot(curve.x, curve.y, label=curve.key, zorder=2 + i * 0.01, **_kwargs(curve, i, len(group)))
            lines.append(line)
    return lines


def merged_label(keys: Sequence[str]) -> str:
    """`nsa-triton vs fa2 = cudnn = flex (identical)`: the keys' shared head (up to " vs ") and tail (from " (")
    written once."""
    head = os.path.commonprefix(list(keys))
    head = head[: head.rfind(" vs ") + 4] if " vs " in head else ""
    tails = [k[len(head):] for k in keys]
    tail = os.path.commonprefix([t[::-1] for t in tails])[::-1]
    tail = tail[tail.find(" ("):] if " (" in tail else ""
    middles = [t[: len(t) - len(tail)] for t in tails]
    return f"{head}{' = '.join(middles)}{tail} (identical)"


def figure_legend(panels: Sequence[Sequence[Curve]]) -> tuple[list[object], list[str]]:
    """(handles, labels) for the curves of every panel of a figure."""
    first: dict[str, Curve] = {}
    for panel in panels:
        for curve in panel:
            first.setdefault(curve.key, curve)
    return _entries(first, identical_sets(panels))


def proxy(curve: Curve, index: int = 0, count: int = 1) -> Line2D:
    """A legend handle drawn like the curve (the index-th of `count` coinciding ones)."""
    return Line2D([], [], **_kwargs(curve, index, count))


def _entries(first: dict[str, Curve], sets: list[tuple[str, ...]]) -> tuple[list[object], list[str]]:
    member = {k: s for s in sets for k in s}
    handles: list[object] = []
    labels: list[str] = []
    for key, curve in first.items():
        if key not in member:
            handles.append(proxy(curve))
            labels.append(key)
        elif member[key][0] == key:
            group = _striped([first[k] for k in member[key]])
            handles.append(tuple(proxy(c, i, len(group)) for i, c in enumerate(group)))
            labels.append(merged_label(member[key]))
    return handles, labels
