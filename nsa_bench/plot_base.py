"""What every plot of a run shares: figure and legend placement, the length axis, saving, and the checks
that keep a figure readable (no colliding labels, no legend over a panel).

Its own module so that each plot's module (speedup, marks, the rest in `nsa_bench.plots`) can use it without
importing one another.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nsa_bench import facets, reading  # noqa: E402

MODE_ORDER = ("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd")
MODE_MARKERS = {"fwd": "o", "bwd": "s", "fwdbwd": "D", "decode": "^", "layer-fwd": "P", "layer-bwd": "X"}
PANEL_W, PANEL_H = 4.3, 2.9  # inches per panel
LEGEND_W = 2.8  # inches kept beside the panels for the legend
LEGEND_CHARS = 40  # a legend label wraps at this many characters (8-point text: the legend fits LEGEND_W)
SAFE_TICKS = 8  # up to this many length labels ("64k", "1000") fit a PANEL_W-wide panel


def kind_text(frame: pd.DataFrame) -> str:
    return "measured" if reading.kind(frame) == "measured" else "predicted by the cost model"


def modes(frame: pd.DataFrame) -> list[str]:
    present = set(frame["mode"])
    return [m for m in MODE_ORDER if m in present]


def size_label(value: int) -> str:
    """8192 -> 8k, 1048576 -> 1m, 1000 -> 1000."""
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def save(fig: Figure, folder: Path, name: str) -> list[Path]:
    """Write the figure as PNG and SVG; it is closed even when writing fails (an unwritable folder)."""
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    try:
        fig.savefig(paths[0], dpi=110, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
    finally:
        plt.close(fig)
    return paths


def save_all(figures: list[tuple[str, Figure]], folder: Path) -> list[Path]:
    try:
        return [path for name, fig in figures for path in save(fig, folder, name)]
    finally:
        for _, fig in figures:
            plt.close(fig)


def page_names(base: str, count: int) -> list[str]:
    return [base if i == 0 else f"{base}-{i + 1}" for i in range(count)]


def page_text(page: int, pages: int) -> str:
    return f" · page {page + 1} of {pages}" if pages > 1 else ""


def seqlen_axis(ax: plt.Axes, seqlens: list[int], bars: bool = False) -> None:
    """Ticks at the lengths present: an evenly stepped sweep on a linear axis, a doubling one on log2."""
    ticks = sorted(set(int(s) for s in seqlens))
    if bars:
        ax.set_xticks(range(len(ticks)), [size_label(t) for t in ticks])
        return
    steps = np.diff(ticks)
    if len(ticks) > 2 and np.all(steps == steps[0]):
        pad = steps[0] * 0.3
        ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)
    elif len(ticks) > 1:
        ax.set_xscale("log", base=2)
        pad = (ticks[-1] / ticks[0]) ** 0.05  # 5% of the decades on each side, whatever lies at the ends
        ax.set_xlim(ticks[0] / pad, ticks[-1] * pad)
    ax.set_xticks(ticks, [size_label(t) for t in ticks])
    ax.minorticks_off()


def overlapping_texts(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible texts (tick labels, value labels) that collide within one axes: what a reader
    could not read. Empty on a readable figure (tests check it)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found: list[tuple[str, str]] = []
    for ax in fig.axes:
        for texts in (ax.get_xticklabels(), ax.get_yticklabels(), ax.texts):
            shown = [t for t in texts if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in shown]
            for i in range(len(shown)):
                for j in range(i + 1, len(shown)):
                    if boxes[i].overlaps(boxes[j]):
                        found.append((shown[i].get_text(), shown[j].get_text()))
    return found


def legends_over_panels(fig: Figure) -> list[str]:
    """Titles (or first entries) of legends that cover part of a panel: a legend must sit beside the
    panels, never over data (tests check it)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    found = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        if any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes):
            texts = [t.get_text() for t in legend.get_texts()]
            found.append(legend.get_title().get_text() or (texts[0] if texts else "legend"))
    return found


def declutter(fig: Figure) -> None:
    """Label every k-th x tick, k the smallest stride at which no two labels collide, and hide every
    value label that would collide with one kept before it."""
    if all(len(ax.get_xticks()) <= SAFE_TICKS and not ax.texts for ax in fig.axes):
        return  # a few short labels on a panel this wide never collide: spare the extra draw
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        boxes = [t.get_window_extent(renderer).expanded(1.1, 1.0) for t in labels]
        stride = 1  # an axes without tick labels (a legend panel) keeps its (absent) labels
        for stride in range(1, len(labels) + 1):
            kept = [i for i in range(0, len(labels), stride) if labels[i].get_text()]
            if not any(boxes[a].overlaps(boxes[b]) for a, b in zip(kept, kept[1:])):
                break
        if stride > 1:
            ax.set_xticks(ax.get_xticks(), [t.get_text() if i % stride == 0 else "" for i, t in enumerate(labels)])
        kept_boxes: list = []
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            if any(box.overlaps(k) for k in kept_boxes):
                text.set_visible(False)
            else:
                kept_boxes.append(box)


def figure(rows: int, cols: int, title: str, panel_w: float = PANEL_W, panel_h: float = PANEL_H
           ) -> tuple[Figure, np.ndarray]:
    """A grid of panels with room on the right for one shared legend, under a wrapped title."""
    width = panel_w * cols + LEGEND_W
    fig, axes = plt.subplots(rows, cols, figsize=(width, panel_h * rows + 0.9), squeeze=False, layout="constrained")
    wrap = max(int((width - LEGEND_W) * 13), 40)  # characters of 10-point text beside the legend
    text = "\n".join(textwrap.fill(part, wrap) for part in title.split("\n"))
    fig.suptitle(text, fontsize=10, x=(width - LEGEND_W) / 2 / width)  # over the panels, clear of the legend
    return fig, axes


def legend(fig: Figure, handles: list, labels: list[str] | None = None, title: str | None = None) -> None:
    """The figure's one legend, outside the panels on the right (constrained layout makes room)."""
    if labels is None:
        labels = [h.get_label() for h in handles]
    wrapped = [textwrap.fill(text, LEGEND_CHARS) for text in labels]  # a wide legend would squeeze the panels
    fig.legend(handles=handles, labels=wrapped, loc="outside right upper", fontsize=8, title=title, title_fontsize=8,
               handlelength=2.6)


def panel_title(ax: plt.Axes, mode: str, group: dict, layout: facets.Layout | None = None, note: str = "") -> None:
    """`fwd · G=4, D=192-128`, and a wrapped note under it (what the panel's break-even says)."""
    text = mode
    if group:
        text += " · " + (layout.group_label(group) if layout is not None else facets.label(group))
    if note:
        text += "\n" + textwrap.fill(note, 60)
    ax.set_title(text, fontsize=9)


def duplicates(frame: pd.DataFrame, columns: list[str]) -> int:
    """The most rows that share one plotted key (1: every bar or point is one row)."""
    return int(frame.groupby(columns, dropna=False).size().max()) if not frame.empty else 1
