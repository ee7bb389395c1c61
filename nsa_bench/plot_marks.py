"""What a speedup panel marks besides its lines: failed points, the break-even length, published figures.

- Failed points. A row whose status is not ok/predicted (oom, error, check_failed, unsupported, skipped) has
  no time, so its line has no point there; left out silently, a reader takes a run that could not do 1M
  for one that was not asked to. Each such gap is an `x` at the panel's bottom edge at its length, in the
  colour of the line it belongs to, with a legend entry naming the statuses it covers.
- Break-even. Where NSA's time meets the baseline's between two swept lengths (`nsa_bench.breakeven`), a
  dotted vertical line at that length; a panel whose lines never cross says so in its title.
- Published figures (`nsa_bench.published`) of the same configuration, hollow markers labelled by source,
  GPU and what they are a speedup against (not always the run's baseline).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.transforms import offset_copy
import pandas as pd

from nsa_bench import breakeven, reading
from nsa_bench.breakeven import CONFIG_KEYS, BreakEven
from nsa_bench.published import Match

GAP_MARKER = "x"
GAP_Y = 0.035  # axes fraction: just above the bottom edge, below the data (plots keep a 12% margin)
GAP_SPREAD = 5.5  # points between the marks of several lines failing at one length
BREAK_EVEN_STYLE = ":"
PUBLISHED_MARKERS = ("o", "s", "D", "^", "v", "P", "h", "<", ">")
PUBLISHED_COLOR = "black"

Config = tuple[tuple[tuple[str, object], ...], str]  # (the configuration's (column, value) pairs, gpu)


# ------------------------------------------------------------------ failed points
def failed(frame: pd.DataFrame) -> pd.Series:
    """Rows with a status that gives no time (oom, error, check_failed, unsupported, skipped)."""
    status = frame["status"].astype(str)
    return ~status.isin(reading.USABLE) & (status != "")


@dataclass(frozen=True)
class Gap:
    """A length at which a line has no point because a row failed: the row's status and the line's colour."""

    x: float
    color: str
    status: str
    baseline: bool = False  # the baseline's row failed (the line's own row may have a time)


def draw_gaps(ax: plt.Axes, gaps: Sequence[Gap]) -> None:
    """An `x` per gap at the bottom edge of the panel, at its length; several at one length side by side."""
    by_x: dict[float, list[Gap]] = {}
    for gap in gaps:
        by_x.setdefault(gap.x, []).append(gap)
    for x, here in by_x.items():
        colors = list(dict.fromkeys(g.color for g in here))
        for j, color in enumerate(colors):
            shift = offset_copy(ax.get_xaxis_transform(), fig=ax.figure, units="points",
                                x=(j - (len(colors) - 1) / 2) * GAP_SPREAD, y=0)
            ax.plot([x], [GAP_Y], ls="", marker=GAP_MARKER, ms=6, mew=1.6, color=color, transform=shift,
                    clip_on=False, zorder=6, label="_failed")


def gap_entry(gaps: Sequence[Gap], baseline: str, of: str = "line") -> tuple[Line2D, str] | None:
    """The legend entry that says what an `x` means and which statuses it covers (None without gaps);
    `of`: what the x stands in for and takes its colour from."""
    statuses = sorted({g.status for g in gaps})
    if not statuses:
        return None
    why = f"its row or {baseline}'s failed" if any(g.baseline for g in gaps) else "its row failed"
    handle = Line2D([], [], ls="", marker=GAP_MARKER, ms=6, mew=1.6, color="dimgrey")
    return handle, f"no {'point' if of == 'line' else of} here: {why} ({', '.join(statuses)}); the x takes its {of}'s colour"


# ------------------------------------------------------------------ configurations
def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value


def configs(rows: pd.DataFrame) -> set[Config]:
    """The (configuration, gpu) pairs of some rows, as break-even records and published matches name them."""
    gpus = rows["gpu"].astype(str) if "gpu" in rows else pd.Series("", index=rows.index)
    found = set()
    for record, gpu in zip(rows[list(CONFIG_KEYS)].itertuples(index=False), gpus):
        found.add((tuple(zip(CONFIG_KEYS, (_plain(v) for v in record))), gpu))
    return found


# ------------------------------------------------------------------ break-even
def break_evens(frame: pd.DataFrame, baseline: str) -> dict[tuple[str, str, Config], BreakEven]:
    """Every NSA backend's break-even against the CSV's baseline, by (mode, NSA backend, configuration)."""
    return {(r.mode, r.nsa, (r.config, r.gpu)): r for r in breakeven.break_evens(frame) if r.baseline == baseline}


def line_break_evens(found: dict[tuple[str, str, Config], BreakEven], mode: str, backend: str,
                     rows: pd.DataFrame) -> list[BreakEven]:
    """The break-even records of one line: its mode, backend and the configurations of its rows."""
    return [found[key] for key in ((mode, backend, c) for c in configs(rows)) if key in found]


def crosses(record: BreakEven) -> bool:
    """Whether the record's break-even lies between two swept lengths (so it can be drawn)."""
    return record.seqlen is not None


def draw_break_even(ax: plt.Axes, record: BreakEven, color: str, name: str = "", left: bool = True) -> None:
    """A dotted vertical line at the break-even length, with its length written along it at the top (on its
    left, or its right)."""
    assert record.seqlen is not None
    ax.axvline(record.seqlen, color=color, ls=BREAK_EVEN_STYLE, lw=1.2, zorder=1.5, label="_break-even")
    last = "last " if record.where == breakeven.SEVERAL else ""
    text = f"{name}: {breakeven.tokens_text(record.seqlen)}" if name else \
        f"{last}break-even {breakeven.tokens_text(record.seqlen)}"
    ax.annotate(text, (record.seqlen, 0.97), xycoords=ax.get_xaxis_transform(), xytext=(-2 if left else 2, 0),
                textcoords="offset points", rotation=90, ha="right" if left else "left", va="top", fontsize=6.5,
                color=color)


def break_even_note(outcomes: dict[str, BreakEven], lines: int) -> str:
    """What a panel title says about its lines that do not cross 1 within the sweep: "NSA faster at every
    timed length" when that holds for all `lines` of the panel, else naming the lines it holds for."""
    below = [name for name, r in outcomes.items() if r.where == breakeven.BELOW]
    beyond = [name for name, r in outcomes.items() if r.where == breakeven.BEYOND]
    parts = []
    for names, what in ((below, "NSA faster at every timed length"),
                        (beyond, "break-even not within the swept lengths (NSA slower at the longest)")):
        if names:
            parts.append(what if len(names) == lines else f"{what}: {', '.join(names)}")
    return "; ".join(parts)


def break_even_entry(baseline: str) -> tuple[Line2D, str]:
    return (Line2D([], [], color="dimgrey", ls=BREAK_EVEN_STYLE, lw=1.2),
            f"break-even: NSA's time = {baseline}'s (log-log interpolation between swept lengths)")


# ------------------------------------------------------------------ published figures
def speedup_matches(matches: Iterable[Match]) -> list[Match]:
    """The published speedups among a run's matches (other units are not on a speedup axis)."""
    return [m for m in matches if m.published.unit == "speedup"]


def _source(text: str) -> str:
    return text.replace("Figure", "Fig.").replace("Table", "Tab.")


def published_labels(matches: Sequence[Match]) -> dict[int, str]:
    """A label per match (by index): source, GPU and what the figure is a speedup against, plus what it covers
    when one source gives several figures of different coverage."""
    covers: dict[tuple[str, str, str], set[str]] = {}
    for m in matches:
        p = m.published
        covers.setdefault((p.source, p.gpu, p.baseline), set()).add(p.covers)
    labels = {}
    for i, m in enumerate(matches):
        p = m.published
        extra = f", {p.covers}" if len(covers[(p.source, p.gpu, p.baseline)]) > 1 else ""
        text = f"{_source(p.source)} ({p.gpu or 'no GPU stated'}, vs {p.baseline}{extra})"
        labels[i] = "\n".join(textwrap.wrap(text, 48))
    return labels


def panel_matches(matches: Sequence[Match], mode: str, rows: pd.DataFrame) -> list[int]:
    """Indices of the matches set beside a panel: its mode, one of its rows' configurations, each figure once."""
    here = configs(rows)
    seen: set[object] = set()
    chosen = []
    for i, m in enumerate(matches):
        if (m.mode == mode and m.published.seqlen is not None and (m.config, m.gpu) in here
                and m.published not in seen):
            seen.add(m.published)
            chosen.append(i)
    return chosen


def published_marker(label: str, labels: Sequence[str]) -> str:
    order = list(dict.fromkeys(labels))
    return PUBLISHED_MARKERS[order.index(label) % len(PUBLISHED_MARKERS)]


def draw_published(ax: plt.Axes, match: Match, marker: str) -> None:
    """One published speedup as a hollow marker at its length."""
    p = match.published
    ax.plot([p.seqlen], [p.value], ls="", marker=marker, ms=8, mew=1.3, markerfacecolor="none",
            color=PUBLISHED_COLOR, zorder=4, label="_published")


def published_entry(label: str, marker: str) -> tuple[Line2D, str]:
    return Line2D([], [], ls="", marker=marker, ms=8, mew=1.3, markerfacecolor="none", color=PUBLISHED_COLOR), label
