"""How a plot splits a run whose configuration varies along several axes: panels, series, pages.

One line per configuration in one panel gave a 24-entry legend and colours that repeat. Instead, of the
configuration axes that vary (besides seqlen, the x axis), the one with the fewest values becomes the
*series* (one colour per value, a shared legend outside the panels) and the others *facet* the figure:
one panel per combination of their values and per mode, at most ROWS_PER_PAGE combinations to a page.
A plot that cannot encode a series (stacked bars) facets by every varying axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# configuration columns, in the order a person reads a point; head dims count as one axis (qk-v pairs)
AXES = ("batch", "kv_heads", "group_size", "head_dim", "block_cmp", "stride_cmp", "block_slc", "n_slc", "window",
        "dtype", "d_model", "doc_lens")
SHORT = {"batch": "B", "kv_heads": "Hkv", "group_size": "G", "head_dim": "D", "block_cmp": "l", "stride_cmp": "d",
         "block_slc": "l'", "n_slc": "n", "window": "w", "dtype": "dtype", "d_model": "d_model", "doc_lens": "docs",
         "backend": "backend"}
ROWS_PER_PAGE = 6
MAX_SERIES = 6  # more values than this make colours hard to tell apart: the axis facets instead


def with_head_dim(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `head_dim` column `qk-v` (one axis, as the CLI takes it)."""
    return frame.assign(head_dim=frame["head_dim_qk"].astype(str) + "-" + frame["head_dim_v"].astype(str))


def varying(frame: pd.DataFrame, axes: tuple[str, ...] = AXES) -> list[str]:
    """Configuration axes that take more than one value in the frame (needs `head_dim`)."""
    return [a for a in axes if a in frame and frame[a].nunique() > 1]


def _order(frame: pd.DataFrame, axis: str) -> list[object]:
    values = list(dict.fromkeys(frame[axis]))
    if axis == "head_dim":
        return sorted(values, key=lambda v: tuple(int(x) for x in str(v).split("-")))
    try:
        return sorted(values)
    except TypeError:
        return values


def label(values: dict[str, object]) -> str:
    """`G=4, D=192-128`: the values of some axes, short."""
    return ", ".join(f"{SHORT.get(a, a)}={v}" for a, v in values.items())


@dataclass(frozen=True)
class Layout:
    """Which axes make panels and which one makes series, and the panel groups in order."""

    facets: tuple[str, ...]
    series: str | None
    groups: tuple[dict, ...]  # one dict axis -> value per panel row

    def pages(self) -> list[tuple[dict, ...]]:
        rows = self.groups or ({},)
        return [rows[i:i + ROWS_PER_PAGE] for i in range(0, len(rows), ROWS_PER_PAGE)]

    def series_values(self, frame: pd.DataFrame) -> list[object]:
        return _order(frame, self.series) if self.series else [None]


def layout(frame: pd.DataFrame, want_series: bool, extra: tuple[str, ...] = ()) -> Layout:
    """Split the varying axes of `frame` (plus `extra` columns that vary, e.g. backend) into facets and
    at most one series axis."""
    axes = [*varying(frame), *(c for c in extra if c in frame and frame[c].nunique() > 1)]
    series = None
    if want_series and axes:
        fits = [a for a in axes if frame[a].nunique() <= MAX_SERIES]
        if fits:  # fewest values; on a tie the innermost axis, as a sweep's inner loop
            series = min(reversed(fits), key=lambda a: frame[a].nunique())
    facets = tuple(a for a in axes if a != series)
    groups: list[dict] = [{}]
    for axis in facets:
        groups = [{**g, axis: v} for g in groups for v in _order(frame, axis)]
    present = {tuple(r) for r in frame[list(facets)].itertuples(index=False)} if facets else None
    groups = [g for g in groups if present is None or tuple(g.values()) in present]
    return Layout(facets, series, tuple(groups))


def select(frame: pd.DataFrame, values: dict) -> pd.DataFrame:
    """Rows of `frame` whose columns equal `values`."""
    mask = pd.Series(True, index=frame.index)
    for axis, value in values.items():
        mask &= frame[axis] == value
    return frame[mask]
