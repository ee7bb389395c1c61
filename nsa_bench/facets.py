"""How a plot splits a run whose configuration varies along several axes: panels, series, pages.

One line per configuration in one panel gave a 24-entry legend and colours that repeat. Instead, of the
configuration axes that vary (besides seqlen, the x axis), the one with the fewest values becomes the
*series* (one colour per value, a shared legend outside the panels) and the others *facet* the figure:
one panel per combination of their values and per mode, at most ROWS_PER_PAGE combinations to a page.
A plot that cannot encode a series (stacked bars) facets by every varying axis.

Derived axes: a sweep that holds the query heads fixed (`--q-heads 64 --group-size 1,2,...`) varies Hkv and G
together (Hkv = Hq / G). Taken as two axes, G and Hkv would each be one value per panel and G could never be
compared; so the query heads (Hq = Hkv x G) replace Hkv as the axis and Hkv rides along with G in its labels
("G=16 (Hkv=4)").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from nsa_bench.spec import LAYER_MODES

# configuration columns, in the order a person reads a point; head dims count as one axis (qk-v pairs)
AXES = ("batch", "kv_heads", "group_size", "head_dim", "block_cmp", "stride_cmp", "block_slc", "n_slc", "window",
        "dtype", "d_model", "doc_lens")
SHORT = {"batch": "B", "kv_heads": "Hkv", "group_size": "G", "head_dim": "D", "block_cmp": "l", "stride_cmp": "d",
         "block_slc": "l'", "n_slc": "n", "window": "w", "dtype": "dtype", "d_model": "d_model", "doc_lens": "docs",
         "backend": "backend", "q_heads": "Hq"}
ROWS_PER_PAGE = 6
MAX_SERIES = 6  # more values than this make colours hard to tell apart: the axis facets instead


def with_head_dim(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `head_dim` column `qk-v` (one axis, as the CLI takes it)."""
    return frame.assign(head_dim=frame["head_dim_qk"].astype(str) + "-" + frame["head_dim_v"].astype(str))


def with_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with the axes plots derive: `head_dim` (qk-v) and `q_heads` (Hkv x G)."""
    return with_head_dim(frame).assign(q_heads=frame["kv_heads"] * frame["group_size"])


def varying(frame: pd.DataFrame, axes: tuple[str, ...] = AXES) -> list[str]:
    """Configuration axes that take more than one value in the frame (needs `head_dim`)."""
    return [a for a in axes if a in frame and frame[a].nunique() > 1]


def _held_query_heads(frame: pd.DataFrame, axes: list[str]) -> bool:
    """Whether Hkv varies only because G does at fewer query-head counts: a sweep that held Hq fixed."""
    return ("q_heads" in frame and "kv_heads" in axes and "group_size" in axes
            and frame["q_heads"].nunique() < frame["kv_heads"].nunique())


def _layer_widths(frame: pd.DataFrame) -> int:
    """How many model widths the layer modes ran at (attention-only modes carry d_model 0, which is no axis)."""
    return frame[frame["mode"].isin(LAYER_MODES)]["d_model"].nunique() if "mode" in frame else frame["d_model"].nunique()


def _axes(frame: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The independent varying axes, and companions: axis -> the axis whose value each of its values implies."""
    axes = [a for a in varying(frame) if a != "d_model" or _layer_widths(frame) > 1]
    if not _held_query_heads(frame, axes):
        return axes, {}
    swapped = ["q_heads" if a == "kv_heads" else a for a in axes]
    axes = [a for a in swapped if a != "q_heads" or frame["q_heads"].nunique() > 1]
    implied = frame.groupby("group_size")["kv_heads"].nunique().max() == 1
    return axes, ({"group_size": "kv_heads"} if implied else {})


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
    """Which axes make panels and which one makes series, and the panel groups in order. `implied` holds, per
    axis, the label of the companion value each of its values implies (group_size 16 -> "Hkv=4"); `held` the
    derived axes the run held at one value (q_heads -> 64), which a title should state."""

    facets: tuple[str, ...]
    series: str | None
    groups: tuple[dict, ...]  # one dict axis -> value per panel row
    implied: dict[str, dict[object, str]] = field(default_factory=dict)
    held: dict[str, object] = field(default_factory=dict)

    def pages(self) -> list[tuple[dict, ...]]:
        rows = self.groups or ({},)
        return [rows[i:i + ROWS_PER_PAGE] for i in range(0, len(rows), ROWS_PER_PAGE)]

    def series_values(self, frame: pd.DataFrame) -> list[object]:
        return _order(frame, self.series) if self.series else [None]

    def value_label(self, axis: str, value: object) -> str:
        """`G=16 (Hkv=4)`: one axis value, with the companion value it implies."""
        companion = self.implied.get(axis, {}).get(value)
        return f"{SHORT.get(axis, axis)}={value}" + (f" ({companion})" if companion else "")

    def group_label(self, group: dict) -> str:
        """A panel's configuration, as value_label writes each axis."""
        return ", ".join(self.value_label(a, v) for a, v in group.items())

    def held_text(self) -> str:
        """What a derived axis held fixed means, for a title ("" when nothing was held)."""
        if "q_heads" not in self.held:
            return ""
        hq = self.held["q_heads"]
        return f"query heads held at Hq={hq} (Hkv = {hq} / G)"


def _implied(frame: pd.DataFrame, companions: dict[str, str]) -> dict[str, dict[object, str]]:
    return {axis: {value: f"{SHORT[other]}={part[other].iloc[0]}" for value, part in frame.groupby(axis)}
            for axis, other in companions.items()}


def layout(frame: pd.DataFrame, want_series: bool, extra: tuple[str, ...] = ()) -> Layout:
    """Split the varying axes of `frame` (plus `extra` columns that vary, e.g. backend) into facets and
    at most one series axis."""
    independent, companions = _axes(frame)
    axes = [*independent, *(c for c in extra if c in frame and frame[c].nunique() > 1)]
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
    held = ({"q_heads": int(frame["q_heads"].iloc[0])}
            if _held_query_heads(frame, varying(frame)) and frame["q_heads"].nunique() == 1 else {})
    return Layout(facets, series, tuple(groups), _implied(frame, companions), held)


def select(frame: pd.DataFrame, values: dict) -> pd.DataFrame:
    """Rows of `frame` whose columns equal `values`."""
    mask = pd.Series(True, index=frame.index)
    for axis, value in values.items():
        mask &= frame[axis] == value
    return frame[mask]
