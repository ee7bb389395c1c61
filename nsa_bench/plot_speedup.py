"""The speedup plot: each backend's speedup over the run's baseline against the sequence length.

Panels per mode and configuration group (`nsa_bench.facets`), a line per backend and series value; lines that
coincide stay visible (`nsa_bench.plot_lines`); failed points, break-even lengths and, on request, published
figures of the same configuration are marked (`nsa_bench.plot_marks`). Each mark has its legend entry, so the
plot accounts for every total row the sweep wrote.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
import pandas as pd

from nsa_bench import facets, palette, plot_base, plot_lines, plot_marks, reading
from nsa_bench.breakeven import BreakEven
from nsa_bench.published import Match
from nsa_bench.schema import STAGE_TOTAL

ANNOTATE_MAX_POINTS = 12  # value labels only on a panel with one line and at most this many points


@dataclass(frozen=True)
class Line:
    """What one line of the plot stands for: a backend and, when a series axis is drawn, its value."""

    backend: str
    value: object


@dataclass(frozen=True)
class Speedups:
    """A run's speedup rows, read once for every page: total rows of the backends other than the baseline
    (`shown`: the speedup, NaN where there is none) and the baseline's failed rows, with the layout."""

    rows: pd.DataFrame
    base_failed: pd.DataFrame
    baseline: str
    layout: facets.Layout
    modes: list[str]
    backends: list[str]
    values: list[object]

    def lines(self) -> list[Line]:
        return [Line(b, v) for b in self.backends for v in self.values]

    def label(self, line: Line) -> str:
        parts = [line.backend if len(self.backends) > 1 or not self.layout.series else "",
                 self.layout.value_label(self.layout.series, line.value) if self.layout.series else ""]
        return ", ".join(filter(None, parts))

    def short(self, line: Line) -> str:
        """A line's name where room is scarce (along a break-even line)."""
        if not self.layout.series:
            return line.backend
        value = f"{facets.SHORT[self.layout.series]}={line.value}"
        return f"{line.backend} {value}" if len(self.backends) > 1 else value

    def color(self, line: Line) -> str:
        if self.layout.series:
            return palette.series_color(self.values.index(line.value))
        return palette.backend_color(line.backend)

    def same_series(self, rows: pd.DataFrame, line: Line) -> pd.DataFrame:
        """The rows of any backend at the line's series value (the baseline's rows a line is divided by)."""
        return rows[rows[self.layout.series] == line.value] if self.layout.series else rows

    def select(self, rows: pd.DataFrame, line: Line) -> pd.DataFrame:
        """The rows of one line."""
        rows = self.same_series(rows, line)
        return rows[rows["backend"] == line.backend]


def run_baseline(frame: pd.DataFrame) -> str:
    return next((b for b in frame.get("baseline", pd.Series(dtype=str)).astype(str) if b), "the baseline")


def read(frame: pd.DataFrame) -> Speedups | None:
    """The speedup rows of a run (None when no line has a point and no row failed)."""
    totals = frame[frame["stage"].astype(str) == STAGE_TOTAL]
    if totals.empty:
        return None
    baseline = run_baseline(frame)
    totals = facets.with_derived(totals).assign(shown=reading.row_speedups(totals))
    bad = plot_marks.failed(totals)
    usable = totals["status"].astype(str).isin(reading.USABLE)
    others = totals["backend"] != baseline
    rows = totals[others & (usable | bad)]
    if not (rows["shown"].notna().any() or bad[others].any()):
        return None
    layout = facets.layout(rows, want_series=True)
    return Speedups(rows=rows, base_failed=totals[~others & bad], baseline=baseline, layout=layout,
                    modes=plot_base.modes(rows), backends=sorted(set(rows["backend"])),
                    values=layout.series_values(rows))


@dataclass
class Panel:
    """What one panel draws, worked out before anything is drawn (identical lines are found across panels)."""

    mode: str
    group: dict
    lengths: list[int]
    curves: list[plot_lines.Curve] = field(default_factory=list)
    ghosts: list[Line] = field(default_factory=list)  # lines with no point at all, only failures
    gaps: list[plot_marks.Gap] = field(default_factory=list)
    crossings: list[tuple[BreakEven, str, str]] = field(default_factory=list)  # record, colour, short name
    outcomes: dict[str, BreakEven] = field(default_factory=dict)  # lines that do not cross, by label
    published: list[int] = field(default_factory=list)


def _gaps(data: Speedups, line: Line, rows: pd.DataFrame, base_failed: pd.DataFrame) -> list[plot_marks.Gap]:
    """Where the line has no point because its row or the baseline's at the same point failed."""
    color = data.color(line)
    own = rows[plot_marks.failed(rows)]
    theirs = data.same_series(base_failed, line)
    return [plot_marks.Gap(float(s), color, str(status), part is theirs)
            for part in (own, theirs) for s, status in zip(part["seqlen"], part["status"])]


def _line_panel(data: Speedups, panel: Panel, line: Line, part: pd.DataFrame, base_failed: pd.DataFrame,
                found: dict) -> None:
    rows = data.select(part, line)
    if rows.empty:
        return
    points = rows.groupby("seqlen")["shown"].median().sort_index()
    style, marker = palette.backend_style(line.backend)
    if points.notna().any():
        panel.curves.append(plot_lines.Curve(data.label(line), tuple(float(x) for x in points.index),
                                             tuple(float(y) for y in points), data.color(line), style, marker))
    else:
        panel.ghosts.append(line)
    panel.gaps += _gaps(data, line, rows, base_failed)
    timed = rows[rows["shown"].notna()]
    for record in plot_marks.line_break_evens(found, panel.mode, line.backend, timed):
        if plot_marks.crosses(record):
            panel.crossings.append((record, data.color(line), data.short(line)))
        else:
            panel.outcomes[data.label(line)] = record


def _panel(data: Speedups, mode: str, group: dict, found: dict, matches: Sequence[Match]) -> Panel:
    part = facets.select(data.rows[data.rows["mode"] == mode], group)
    base_failed = facets.select(data.base_failed[data.base_failed["mode"] == mode], group) \
        if not data.base_failed.empty else data.base_failed
    panel = Panel(mode, group, sorted({int(s) for s in (*part["seqlen"], *base_failed["seqlen"])}))
    for line in data.lines():
        _line_panel(data, panel, line, part, base_failed, found)
    panel.published = plot_marks.panel_matches(matches, mode, part[part["shown"].notna()])
    return panel


def _draw_crossings(ax: plt.Axes, panel: Panel) -> None:
    """Break-even lines, their labels on alternate sides (left, right, ...) so neighbours do not collide."""
    several = len(panel.crossings) > 1
    ordered = sorted(panel.crossings, key=lambda c: c[0].seqlen or 0.0)
    for i, (record, color, name) in enumerate(ordered):
        plot_marks.draw_break_even(ax, record, color, name if several else "", left=i % 2 == 0)


def _annotate(ax: plt.Axes, panel: Panel) -> None:
    """Value labels on a panel of one line with few points."""
    if len(panel.curves) != 1 or len(panel.curves[0].x) > ANNOTATE_MAX_POINTS:
        return
    for x, y in zip(panel.curves[0].x, panel.curves[0].y):
        if not math.isnan(y):
            ax.annotate(f"{y:.1f}x", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)


def _draw_panel(ax: plt.Axes, data: Speedups, panel: Panel, matches: Sequence[Match], labels: dict[int, str]
                ) -> None:
    note = plot_marks.break_even_note(panel.outcomes, len(panel.curves) + len(panel.ghosts))
    plot_base.panel_title(ax, panel.mode, panel.group, data.layout, note)
    if not panel.lengths:
        ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_xticks([])
        return
    plot_lines.draw(ax, panel.curves)
    for i in panel.published:
        plot_marks.draw_published(ax, matches[i], plot_marks.published_marker(labels[i], list(labels.values())))
    if not panel.curves:
        ax.text(0.5, 0.5, "no point: every row failed", transform=ax.transAxes, ha="center", va="center",
                color="grey", fontsize=8)
    _draw_crossings(ax, panel)
    _annotate(ax, panel)
    plot_marks.draw_gaps(ax, panel.gaps)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.margins(y=0.12)
    plot_base.seqlen_axis(ax, panel.lengths)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)


def _legend_entries(data: Speedups, panels: list[Panel], matches: Sequence[Match], labels: dict[int, str]
                    ) -> tuple[list[object], list[str]]:
    handles, texts = plot_lines.figure_legend([p.curves for p in panels])
    drawn = {c.key for p in panels for c in p.curves}
    for line in dict.fromkeys(g for p in panels for g in p.ghosts):
        if data.label(line) not in drawn:  # a line with no point anywhere: its colour still needs a name
            style, marker = palette.backend_style(line.backend)
            handles.append(plot_lines.proxy(plot_lines.Curve(data.label(line), (), (), data.color(line), style, marker)))
            texts.append(data.label(line))
    extra = [plot_marks.break_even_entry(data.baseline) if any(p.crossings for p in panels) else None,
             plot_marks.gap_entry([g for p in panels for g in p.gaps], data.baseline)]
    markers = list(labels.values())
    extra += [plot_marks.published_entry(label, plot_marks.published_marker(label, markers))
              for label in dict.fromkeys(labels[i] for p in panels for i in p.published)]
    for entry in filter(None, extra):
        handles.append(entry[0])
        texts.append(entry[1])
    return handles, texts


def _title(data: Speedups, number: int, pages: int) -> str:
    layout = data.layout
    what = " and ".join(filter(None, ["backend" if len(data.backends) > 1 or not layout.series else "",
                                      f"{facets.SHORT[layout.series]}" if layout.series else ""]))
    repeats = plot_base.duplicates(data.rows, ["mode", "backend", "seqlen", *facets.AXES])
    aggregate = f"median of up to {repeats} rows" if repeats > 1 else "one configuration"
    panels = " x ".join(["mode", *(facets.SHORT[a] for a in layout.facets)])
    held = f" · {layout.held_text()}" if layout.held_text() else ""
    kind = plot_base.kind_text(data.rows[data.rows["shown"].notna()]) if data.rows["shown"].notna().any() else \
        "no row has a time"
    return (f"Speedup over {data.baseline} ({kind}) · a line per {what}, each point {aggregate}{held}"
            f"\npanels: {panels}{plot_base.page_text(number, pages)}")


def speedup_figures(frame: pd.DataFrame, published: Sequence[Match] = ()) -> list[tuple[str, Figure]]:
    """Speedup vs seqlen: panels per configuration group x mode, a line per backend and series value;
    `published`: matches (`published.matching`) whose speedups are set beside the run's."""
    data = read(frame)
    if data is None:
        return []
    matches = plot_marks.speedup_matches(published)
    labels = plot_marks.published_labels(matches)
    found = plot_marks.break_evens(frame, data.baseline)
    pages = data.layout.pages()
    figures = []
    for number, (name, groups) in enumerate(zip(plot_base.page_names("speedup", len(pages)), pages)):
        fig, axes = plot_base.figure(len(groups), len(data.modes), _title(data, number, len(pages)))
        panels = [[_panel(data, mode, group, found, matches) for mode in data.modes] for group in groups]
        for r, row in enumerate(panels):
            for c, panel in enumerate(row):
                _draw_panel(axes[r][c], data, panel, matches, labels)
                if c == 0:
                    axes[r][c].set_ylabel(f"speedup vs {data.baseline}", fontsize=8)
                if r == len(groups) - 1:
                    axes[r][c].set_xlabel("sequence length", fontsize=8)
        flat = [p for row in panels for p in row]
        handles, texts = _legend_entries(data, flat, matches, labels)
        one_backend = len(data.backends) == 1 and data.layout.series
        plot_base.legend(fig, handles, texts, title=data.backends[0] if one_backend else None)
        plot_base.declutter(fig)
        figures.append((name, fig))
    return figures
