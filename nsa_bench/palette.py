"""Colours that mean the same thing in every panel and every plot of a run.

A stage keeps its colour everywhere (slc_attn is red in the forward, the backward, decode and the
roofline alike); backends and series values use palettes of their own, so no colour of a stage is
reused to mean a backend.
"""
from __future__ import annotations

import hashlib

STAGE_COLORS = {
    "compress": "#1f77b4",
    "cmp_attn": "#ff7f0e",
    "scoring": "#2ca02c",
    "topn": "#bcbd22",
    "select": "#17becf",
    "slc_attn": "#d62728",
    "win_attn": "#9467bd",
    "gated_sum": "#8c564b",
    "attention": "#7f7f7f",
}
_SPARE_STAGE_COLORS = ("#e377c2", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2")
STAGE_ORDER = tuple(STAGE_COLORS)  # pipeline order: stacked bars and legends follow it

BACKEND_COLORS = {"fa2": "#444444", "nsa-triton": "#1b9e77", "fa2-triton": "#d95f02", "nsa-ref": "#7570b3",
                  "flex-nsa": "#e7298a", "fla-nsa": "#66a61e", "cudnn": "#e6ab02", "fa3": "#6a3d9a",
                  "flex": "#a6761d"}
_SPARE_BACKEND_COLORS = ("#666666", "#01665e", "#b15928")
# a line's style and marker tell backends apart where its colour stands for a series value
BACKEND_STYLES = {"nsa-triton": ("-", "o"), "nsa-ref": ("--", "s"), "fa2-triton": (":", "^"), "fa2": ("-.", "D"),
                  "flex-nsa": ("--", "v"), "fla-nsa": (":", "P"), "cudnn": ("--", "*"), "fa3": ("-.", "<"),
                  "flex": (":", ">")}
# series values: dark, saturated, none of them a stage colour
SERIES_COLORS = ("#08306b", "#e6550d", "#31a354", "#756bb1", "#636363", "#a50f15")


def _pick(name: str, spare: tuple[str, ...]) -> str:
    return spare[int(hashlib.sha1(name.encode()).hexdigest(), 16) % len(spare)]


def stage_color(stage: str) -> str:
    return STAGE_COLORS.get(stage) or _pick(stage, _SPARE_STAGE_COLORS)


def stage_sort_key(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def backend_color(backend: str) -> str:
    return BACKEND_COLORS.get(backend) or _pick(backend, _SPARE_BACKEND_COLORS)


def backend_style(backend: str) -> tuple[str, str]:
    """(line style, marker) of a backend's lines."""
    return BACKEND_STYLES.get(backend, ("-", "o"))


def series_color(index: int) -> str:
    return SERIES_COLORS[index % len(SERIES_COLORS)]
