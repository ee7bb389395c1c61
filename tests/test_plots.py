"""Plots stay readable when several axes vary: the README's example sweep, predicted on the CPU.

Checked on the figures themselves: no per-panel legends (one shared legend outside, an entry per series
or stage), a stage's colour the same in every panel and plot, no two tick or value labels overlapping,
and titles that say what a line or bar stands for.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest

from nsa_bench import palette, plots, results
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool
from nsa_bench.runner import run_sweep
from nsa_bench.spec import SweepSpec
from nsa_bench.suites import build_spec

H100 = gpu_spec("h100")
README_EXAMPLE = {"seqlen": "1k..8k:+1k", "group-size": "1,4,16", "head-dim": "128,192-128", "block-slc": "32,64"}


def sweep_frame(folder: Path, spec: SweepSpec):
    folder.mkdir(parents=True, exist_ok=True)
    run_sweep(spec, folder, H100, InProcessPool(spec, H100, None), resume=False)
    return results.read_rows(folder)


@pytest.fixture(scope="module")
def readme_frame(tmp_path_factory):
    return sweep_frame(tmp_path_factory.mktemp("readme"), build_spec(None, README_EXAMPLE))


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def assert_readable(fig) -> None:
    assert all(ax.get_legend() is None for ax in fig.axes), "no legend inside a panel"
    assert len(fig.legends) == 1
    labels = legend_labels(fig)
    assert len(labels) == len(set(labels))
    assert plots.overlapping_texts(fig) == []


def test_readme_speedup_facets_by_the_varying_axes(readme_frame):
    figures = plots.speedup_figures(readme_frame)
    assert [name for name, _ in figures] == ["speedup"]
    fig = figures[0][1]
    assert_readable(fig)
    assert legend_labels(fig) == ["l'=32", "l'=64"]  # not 24 entries: one per series value
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert len(panels) == 3 * 6  # modes x (G x D)
    assert {ax.get_title().split(" · ")[1] for ax in panels} == {
        f"G={g}, D={d}" for g in (1, 4, 16) for d in ("128-128", "192-128")}
    for ax in panels:
        series = [line for line in ax.get_lines() if line.get_label() in ("l'=32", "l'=64")]
        assert len(series) == 2 and len({line.get_color() for line in series}) == 2
        assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()]  # lengths are labelled
    title = fig._suptitle.get_text()
    assert "a line per l'" in title and "each point one configuration" in title and "predicted" in title
    plt.close(fig)


def test_readme_stages_keep_one_colour_per_stage(readme_frame):
    figures = plots.stage_figures(readme_frame)
    assert [name for name, _ in figures] == ["stages", "stages-2"]  # 12 configurations, 6 to a page
    seen: dict[str, set[str]] = {}
    for _, fig in figures:
        assert_readable(fig)
        assert legend_labels(fig) == ["compress", "cmp_attn", "scoring", "topn", "slc_attn", "win_attn", "gated_sum"]
        assert "each bar: one configuration at one length" in fig._suptitle.get_text()
        for ax in fig.axes:
            for container in ax.containers:
                colours = {mcolors.to_hex(bar.get_facecolor()) for bar in container}
                seen.setdefault(container.get_label(), set()).update(colours)
        plt.close(fig)
    assert seen and all(colours == {palette.stage_color(stage)} for stage, colours in seen.items())


def test_readme_roofline_uses_the_stage_colours(readme_frame):
    fig = plots.roofline_figure(readme_frame, H100)
    (legend,) = [ax.get_legend() for ax in fig.axes]  # one legend, outside the axes
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels)) and "stage: slc_attn" in labels and "nsa-triton (total)" in labels
    handles = dict(zip(labels, legend.legend_handles))
    assert mcolors.to_hex(handles["stage: slc_attn"].get_color()) == palette.stage_color("slc_attn")
    assert plots.overlapping_texts(fig) == []
    plt.close(fig)


def test_many_lengths_get_thinned_ticks(tmp_path: Path):
    spec = SweepSpec(seqlens=tuple(range(1024, 48 * 1024 + 1, 1024)), modes=("fwd",))
    frame = sweep_frame(tmp_path, spec)
    for _, fig in [*plots.speedup_figures(frame), *plots.stage_figures(frame)]:
        assert plots.overlapping_texts(fig) == []
        shown = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() if t.get_text()]
        assert 3 <= len(shown) < 48  # thinned, not dropped
        plt.close(fig)


def test_one_configuration_keeps_its_value_labels(tmp_path: Path):
    frame = sweep_frame(tmp_path, SweepSpec(seqlens=(8192, 16384, 32768, 65536)))
    (name, fig), = plots.speedup_figures(frame)
    assert_readable(fig)
    assert legend_labels(fig) == ["nsa-triton"]
    assert all(len([t for t in ax.texts if t.get_visible()]) == 4 for ax in fig.axes)  # 4 lengths labelled
    plt.close(fig)
