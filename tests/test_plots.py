"""Plots stay readable when several axes vary, and tell the truth: the README's example sweep and the
suites, predicted on the CPU, and small hand-written runs.

Checked on the figures themselves (artists and legend texts, not pixels): no per-panel legends (one shared
legend outside, an entry per series or stage), a stage's colour the same in every panel and plot, no two
tick or value labels overlapping, titles that say what a line or bar stands for; failed points marked at
their length, G compared within one panel, coinciding lines all drawn and called identical, break-even
lengths and published figures where they belong, and an unwritable folder refused in one line.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from cli_runner import run_cli
from nsa_bench import breakeven, palette, plot_base, plot_lines, plot_marks, plots, published, results
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool
from nsa_bench.runner import run_sweep
from nsa_bench.schema import STATUS_OK, Row
from nsa_bench.spec import SweepSpec
from nsa_bench.suites import build_spec

H100 = gpu_spec("h100")
H200 = gpu_spec("h200")
README_EXAMPLE = {"seqlen": "1k..8k:+1k", "group-size": "1,4,16", "head-dim": "128,192-128", "block-slc": "32,64"}


def sweep_frame(folder: Path, spec: SweepSpec, gpu=H100):
    folder.mkdir(parents=True, exist_ok=True)
    run_sweep(spec, folder, gpu, InProcessPool(spec, gpu, None), resume=False)
    return results.read_rows(folder)


@pytest.fixture(scope="module")
def readme_frame(tmp_path_factory):
    return sweep_frame(tmp_path_factory.mktemp("readme"), build_spec(None, README_EXAMPLE))


def legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def flat(text: str) -> str:
    """A legend label as one line (long labels wrap)."""
    return " ".join(text.split())


def assert_readable(fig) -> None:
    assert all(ax.get_legend() is None for ax in fig.axes), "no legend inside a panel"
    assert len(fig.legends) == 1
    labels = legend_labels(fig)
    assert len(labels) == len(set(labels))
    assert plot_base.overlapping_texts(fig) == []


def test_readme_speedup_facets_by_the_varying_axes(readme_frame):
    figures = plots.speedup_figures(readme_frame)
    assert [name for name, _ in figures] == ["speedup"]
    fig = figures[0][1]
    assert_readable(fig)
    labels = legend_labels(fig)
    assert labels[:2] == ["l'=32", "l'=64"]  # not 24 entries: one per series value
    assert [flat(t) for t in labels[2:]] == [flat(plots.plot_marks.break_even_entry("fa2")[1])]  # and the marks'
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
    assert plot_base.overlapping_texts(fig) == []
    plt.close(fig)


def test_many_lengths_get_thinned_ticks(tmp_path: Path):
    spec = SweepSpec(seqlens=tuple(range(1024, 48 * 1024 + 1, 1024)), modes=("fwd",))
    frame = sweep_frame(tmp_path, spec)
    for _, fig in [*plots.speedup_figures(frame), *plots.stage_figures(frame)]:
        assert plot_base.overlapping_texts(fig) == []
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


# ------------------------------------------------------------------ helpers for the runs below
@pytest.fixture(scope="module")
def long_frame(tmp_path_factory):
    """The long suite predicted for an H200: its backward at 1M is an `oom` row for fa2 and NSA."""
    return sweep_frame(tmp_path_factory.mktemp("long"), build_spec("long", {}), H200)


@pytest.fixture(scope="module")
def gqa_frame(tmp_path_factory):
    return sweep_frame(tmp_path_factory.mktemp("gqa"), build_spec("gqa", {}))


@pytest.fixture(scope="module")
def dense_frame(tmp_path_factory):
    """NSA against three dense baselines whose predictions are one ideal kernel, so their lines coincide."""
    spec = build_spec(None, {"seqlen": "8k..32k", "mode": "fwd", "baseline": "fa2,cudnn,flex"})
    return sweep_frame(tmp_path_factory.mktemp("dense"), spec)


@pytest.fixture(scope="module")
def layer_frame(tmp_path_factory):
    """One layer point (a single length) against two baselines: the Amdahl bound is a lone point."""
    spec = build_spec(None, {"seqlen": "64k", "mode": "layer-fwd", "baseline": "fa2,cudnn"})
    return sweep_frame(tmp_path_factory.mktemp("layer"), spec)


def write_run(folder: Path, times: dict[str, dict[int, float | str]], mode: str = "fwd") -> pd.DataFrame:
    """A measured run by hand: backend -> {seqlen: ms, or a failed row's status}; no speedup column values,
    so the plots derive them from the times."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for backend, series in times.items():
        for seqlen, value in series.items():
            ms = value if isinstance(value, float) else None
            rows.append(Row(mode=mode, backend=backend, impl=backend, stage="total", seqlen=seqlen, batch=1,
                            kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16,
                            block_slc=64, n_slc=16, window=512, dtype="bfloat16", ms_median=ms, ms_p10=ms, ms_p90=ms,
                            samples=30 if ms else None, baseline="fa2" if ms else "",
                            status=STATUS_OK if ms else str(value), gpu="NVIDIA H100 SXM5 80GB"))
    results.append_rows(folder / results.CSV_NAME, rows)
    return results.read_rows(folder)


def panel(fig, mode: str):
    """The panel whose title starts with the mode."""
    return next(ax for ax in fig.axes if ax.get_title().split("\n")[0].split(" · ")[0] == mode)


def gap_marks(ax) -> list[tuple[float, str]]:
    """(length, colour) of each failed-point `x` in a panel."""
    return [(float(line.get_xdata()[0]), mcolors.to_hex(line.get_color())) for line in ax.get_lines()
            if line.get_marker() == plot_marks.GAP_MARKER]


def points(ax) -> set[float]:
    """Lengths at which a line of the panel has a point."""
    return {float(x) for line in ax.get_lines() if line.get_marker() not in (plot_marks.GAP_MARKER, "None", "")
            for x, y in zip(line.get_xdata(), line.get_ydata()) if not math.isnan(float(y))}


def accounted(fig, frame, baseline: str = "fa2") -> None:
    """Every length of a mode's total rows (other backends than the baseline) is a point or an `x`."""
    totals = frame[(frame["stage"] == "total") & (frame["backend"] != baseline)]
    for mode, rows in totals.groupby("mode"):
        ax = panel(fig, mode)
        shown = points(ax) | {x for x, _ in gap_marks(ax)}
        assert {float(s) for s in rows["seqlen"]} <= shown, mode


# ------------------------------------------------------------------ failed points
def test_long_suite_marks_the_backward_that_did_not_fit(long_frame):
    (_, fig), = plots.speedup_figures(long_frame)
    bwd = panel(fig, "bwd")
    # nsa-triton's 512k and 1M backwards (the 512k one with autotuning's copy of the fp32 dq sum)
    assert sorted(gap_marks(bwd)) == [(524288.0, palette.backend_color("nsa-triton")),
                                      (1048576.0, palette.backend_color("nsa-triton"))]
    assert "1m" in [t.get_text() for t in bwd.get_xticklabels()]  # the length is on the axis, not dropped
    assert not gap_marks(panel(fig, "fwd")) and not gap_marks(panel(fig, "decode"))
    (entry,) = [flat(t) for t in legend_labels(fig) if "no point here" in t]
    assert "(oom)" in entry and "fa2" in entry  # what the x means, which statuses, and that fa2's row failed too
    accounted(fig, long_frame)
    assert_readable(fig)
    plt.close(fig)


def test_long_suite_stage_and_roofline_plots_account_for_the_oom(long_frame):
    (_, fig), = plots.stage_figures(long_frame)
    assert sorted(x for x, _ in gap_marks(panel(fig, "bwd"))) == [2.0, 3.0]  # the third and fourth bars, 512k and 1m, are x
    assert any("no bar" in t and "oom" in t for t in map(flat, legend_labels(fig)))
    plt.close(fig)
    fig = plots.roofline_figure(long_frame, H200)
    assert "oom 3" in fig.axes[0].get_title()
    plt.close(fig)


def test_failed_rows_break_the_line_and_name_every_status(tmp_path):
    frame = write_run(tmp_path, {"fa2": {8192: 2.0, 16384: 8.0, 32768: "oom"},
                                 "nsa-triton": {8192: 1.0, 16384: "error", 32768: 4.0},
                                 "fla-nsa": {8192: "unsupported", 16384: "unsupported", 32768: "unsupported"}})
    (_, fig), = plots.speedup_figures(frame)
    ax = panel(fig, "fwd")
    nsa, fla = palette.backend_color("nsa-triton"), palette.backend_color("fla-nsa")
    assert sorted(gap_marks(ax)) == sorted([(16384.0, nsa), (32768.0, nsa), (8192.0, fla), (16384.0, fla),
                                            (32768.0, fla)])
    (line,) = [line for line in ax.get_lines() if line.get_label() == "nsa-triton"]
    assert [not math.isnan(y) for y in line.get_ydata()] == [True, False, False]  # no line across the gaps
    labels = [flat(t) for t in legend_labels(fig)]
    assert "fla-nsa" in labels  # the colour of its marks is named though it has no point
    (entry,) = [t for t in labels if "no point here" in t]
    assert "error, oom, unsupported" in entry and "fa2's" in entry
    accounted(fig, frame)
    plt.close(fig)


# ------------------------------------------------------------------ GQA groups
def test_gqa_compares_group_sizes_in_one_panel_per_mode(gqa_frame):
    (_, fig), = plots.speedup_figures(gqa_frame)
    assert_readable(fig)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["fwd", "bwd"]
    expected = [f"G={g} (Hkv={64 // g})" for g in (1, 2, 4, 8, 16, 32)]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines() if line.get_label() in expected] == expected
    assert legend_labels(fig) == expected
    assert "Hq=64" in fig._suptitle.get_text() and "a line per G" in fig._suptitle.get_text()
    plt.close(fig)
    for _, fig in plots.stage_figures(gqa_frame):
        titles = {ax.get_title().split(" · ")[1] for ax in fig.axes if " · " in ax.get_title()}
        assert titles == set(expected)
        plt.close(fig)


# ------------------------------------------------------------------ coinciding lines
def test_curves_equal_within_1e_9_coincide_and_identical_needs_every_panel():
    a = plot_lines.Curve("a", (1.0, 2.0), (1.0, 2.0), "red")
    b = plot_lines.Curve("b", (1.0, 2.0), (1.0 + 1e-12, 2.0), "blue")
    c = plot_lines.Curve("c", (1.0, 2.0), (1.0, 2.0 * (1 + 1e-8)), "green")
    assert plot_lines.same(a, b) and not plot_lines.same(a, c)
    assert [[x.key for x in g] for g in plot_lines.clusters([a, b, c])] == [["a", "b"], ["c"]]
    other = plot_lines.Curve("b", (1.0,), (3.0,), "blue")
    assert plot_lines.identical_sets([[a, b, c]]) == [("a", "b")]
    assert plot_lines.identical_sets([[a, b], [plot_lines.Curve("a", (1.0,), (1.0,), "red"), other]]) == []
    assert plot_lines.merged_label(["nsa vs fa2 (G=4)", "nsa vs cudnn (G=4)"]) == "nsa vs fa2 = cudnn (G=4) (identical)"


def test_coinciding_baselines_are_all_drawn_and_called_identical(dense_frame):
    fig = plots.baselines_figure(dense_frame)
    labels = [flat(t) for t in legend_labels(fig)]
    (merged,) = [t for t in labels if "identical" in t]
    assert merged == "nsa-triton vs fa2 = cudnn = flex = fastest dense (identical)"
    drawn = [line for line in fig.axes[0].get_lines() if " vs " in line.get_label()]
    assert sorted(line.get_label() for line in drawn) == sorted(
        f"nsa-triton vs {b}" for b in ("fa2", "cudnn", "flex", "fastest dense"))
    assert len({line.get_markersize() for line in drawn}) == 4  # nested markers: each one shows
    assert len({line.get_color() for line in drawn}) == 4 and all(line.get_linestyle() == "--" for line in drawn)
    assert plot_base.legends_over_panels(fig) == [] and all(ax.get_legend() is None for ax in fig.axes)
    plt.close(fig)


def test_coinciding_nsa_backends_share_one_legend_entry(tmp_path):
    spec = build_spec(None, {"seqlen": "8k,16k", "mode": "fwd", "backend": "fa2,nsa-triton,nsa-ref"})
    (_, fig), = plots.speedup_figures(sweep_frame(tmp_path, spec))
    assert "nsa-ref = nsa-triton (identical)" in legend_labels(fig)
    assert {line.get_label() for line in fig.axes[0].get_lines()} >= {"nsa-ref", "nsa-triton"}
    plt.close(fig)


# ------------------------------------------------------------------ legends outside, and only what is drawn
def test_every_legend_lies_outside_the_panels(long_frame, dense_frame, layer_frame):
    figures = [fig for _, fig in [*plots.speedup_figures(long_frame), *plots.stage_figures(long_frame)]]
    figures += [plots.roofline_figure(long_frame, H200), plots.baselines_figure(dense_frame),
                plots.baselines_figure(layer_frame), plots.layer_figure(layer_frame),
                *(fig for _, fig in plots.speedup_figures(layer_frame))]
    for fig in figures:
        assert fig is not None
        assert plot_base.legends_over_panels(fig) == [], fig._suptitle.get_text() if fig._suptitle else ""
        plt.close(fig)


def _drawn_keys(fig) -> set[str]:
    """Labels of lines with at least one point and a visible marker (a lone point is still seen)."""
    return {line.get_label() for ax in fig.axes for line in ax.get_lines()
            if line.get_marker() not in ("None", "", None) and any(not math.isnan(float(y)) for y in line.get_ydata())}


def test_layer_legends_list_only_what_is_drawn(layer_frame):
    fig = plots.baselines_figure(layer_frame)
    drawn = _drawn_keys(fig)
    for label in map(flat, legend_labels(fig)):
        if "identical" in label:  # "bound vs fa2 = cudnn (Amdahl: ...) (identical)": each member is drawn
            head, rest = label.split(" vs ", 1)
            names, tail = rest.split(" (", 1)
            keys = {f"{head} vs {name} ({tail}".removesuffix(" (identical)") for name in names.split(" = ")}
        else:
            keys = {label}
        assert keys <= drawn, (label, drawn)
    assert any(label.startswith("bound vs fa2 = cudnn") for label in map(flat, legend_labels(fig)))
    plt.close(fig)
    fig = plots.layer_figure(layer_frame)
    (legend,) = fig.legends
    bar_colours = {mcolors.to_hex(bar.get_facecolor()) for ax in fig.axes for bar in ax.patches if bar.get_height() > 0}
    assert {mcolors.to_hex(h.get_facecolor()) for h in legend.legend_handles} <= bar_colours
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0].startswith("projections") and sorted(labels[1:]) == ["cudnn: attention", "fa2: attention",
                                                                          "nsa-triton: attention"]
    plt.close(fig)


# ------------------------------------------------------------------ break-even
def test_break_even_line_at_the_interpolated_length(tmp_path):
    frame = sweep_frame(tmp_path, build_spec(None, {"seqlen": "2k..16k", "mode": "fwd,decode"}))
    (record,) = [r for r in breakeven.break_evens(frame) if r.mode == "fwd" and r.baseline == "fa2"]
    assert record.where == breakeven.BETWEEN
    (_, fig), = plots.speedup_figures(frame)
    fwd = panel(fig, "fwd")
    (line,) = [line for line in fwd.get_lines() if line.get_linestyle() == ":"]
    assert list(line.get_xdata()) == pytest.approx([record.seqlen, record.seqlen])
    assert f"break-even {breakeven.tokens_text(record.seqlen)}" in [t.get_text() for t in fwd.texts]
    assert "NSA faster at every timed length" in panel(fig, "decode").get_title()
    assert any("break-even" in t for t in legend_labels(fig))
    assert_readable(fig)
    plt.close(fig)


def test_no_crossing_within_the_sweep_is_said_in_the_title(tmp_path):
    frame = write_run(tmp_path, {"fa2": {8192: 1.0, 16384: 2.0}, "nsa-triton": {8192: 3.0, 16384: 4.0}})
    (_, fig), = plots.speedup_figures(frame)
    assert "break-even not within the swept lengths" in panel(fig, "fwd").get_title()
    assert not [line for line in panel(fig, "fwd").get_lines() if line.get_linestyle() == ":"]
    plt.close(fig)


# ------------------------------------------------------------------ published figures
def test_published_speedups_are_hollow_markers_labelled_by_source(tmp_path):
    frame = sweep_frame(tmp_path, SweepSpec(seqlens=(8192, 16384, 32768, 65536), modes=("fwd", "bwd")))
    (_, plain), = plots.speedup_figures(frame)
    assert not any("Fig. 6" in t for t in legend_labels(plain))  # off by default
    plt.close(plain)
    matches = published.matching(frame, gpu=H100.name)
    (_, fig), = plots.speedup_figures(frame, matches)
    labels = [flat(t) for t in legend_labels(fig)]
    assert "arXiv 2502.11089 Fig. 6 (A100, vs fa2-triton)" in labels
    hollow = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in panel(fig, "fwd").get_lines()
              if line.get_markerfacecolor() == "none"]
    assert (65536.0, 9.0) in hollow and (8192.0, 2.1) in hollow
    assert all(m.published.unit != "ms" or m.published.value not in {y for _, y in hollow} for m in matches)
    plt.close(fig)


def test_plot_run_passes_published_matches_only_when_asked(tmp_path, monkeypatch):
    sweep_frame(tmp_path, SweepSpec(seqlens=(65536,), modes=("fwd",)))
    seen = []

    def capture(frame, matches=()):
        seen.append(list(matches))
        return []

    monkeypatch.setattr(plots, "speedup_figures", capture)
    plots.plot_run(tmp_path)
    plots.plot_run(tmp_path, published=True)
    assert seen[0] == [] and any(m.published.source == "arXiv 2502.11089 Figure 6" for m in seen[1])


def test_plot_command_takes_published(tmp_path, monkeypatch, capsys):
    sweep_frame(tmp_path, SweepSpec(seqlens=(65536,), modes=("fwd",)))
    code, out, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path), "--published")
    assert code == 0 and "speedup.png" in out and not err


# ------------------------------------------------------------------ an unwritable folder
def _assert_one_line_naming(code: int, err: str, path: Path) -> None:
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("nsa-bench: error: ") and str(path) in err and "internal error" not in err


def test_unwritable_plot_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    sweep_frame(tmp_path, SweepSpec(seqlens=(8192,), modes=("fwd",)))
    blocked = tmp_path / results.PLOTS_DIR / "speedup.png"
    blocked.mkdir(parents=True)  # a folder where the PNG goes: unwritable even for root
    open_before = set(plt.get_fignums())
    code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path))
    _assert_one_line_naming(code, err, blocked)
    assert set(plt.get_fignums()) <= open_before  # no figure left open by the failed save


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_plots_folder_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    sweep_frame(tmp_path, SweepSpec(seqlens=(8192,), modes=("fwd",)))
    folder = tmp_path / results.PLOTS_DIR
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path))
    finally:
        folder.chmod(0o755)
    _assert_one_line_naming(code, err, folder)


def test_permission_denied_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """What a read-only folder gives a user who is not root (simulated: the tests may run as root)."""
    from matplotlib.figure import Figure

    sweep_frame(tmp_path, SweepSpec(seqlens=(8192,), modes=("fwd",)))

    def denied(self, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Figure, "savefig", denied)
    code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path))
    _assert_one_line_naming(code, err, tmp_path / results.PLOTS_DIR / "speedup.png")
    assert "Permission denied" in err


# ------------------------------------------------------------------ times that are no times, env.json not an object
@pytest.mark.parametrize("command", ["plot", "report"])
@pytest.mark.parametrize("cells", [{"status": "ok", "ms_median": "0"}, {"status": "ok", "ms_median": "inf"},
                                   {"predicted_ms": "0"}])
def test_a_zero_or_infinite_time_is_refused_as_compare_refuses_it(tmp_path, monkeypatch, capsys, command, cells):
    sweep_frame(tmp_path, SweepSpec(seqlens=(8192,), modes=("fwd",)))
    table = pd.read_csv(tmp_path / results.CSV_NAME, dtype=str, keep_default_na=False)
    for column, text in cells.items():
        table.loc[1, column] = text
    table.to_csv(tmp_path / results.CSV_NAME, index=False)
    column, text = list(cells.items())[-1]
    code, _, err = run_cli(monkeypatch, capsys, command, str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{tmp_path / results.CSV_NAME} line 3: column {column}: '{text}' is not a finite positive number" in err
    compared = run_cli(monkeypatch, capsys, "compare", str(tmp_path), str(tmp_path), "--metric", "predicted_ms")
    assert compared[0] == 2 and f"line 3: column {column}" in compared[2]


@pytest.mark.parametrize("text", ["null", "[1, 2]", "{gpu"])
def test_plot_refuses_an_env_json_that_is_not_an_object(tmp_path, monkeypatch, capsys, text):
    sweep_frame(tmp_path, SweepSpec(seqlens=(8192,), modes=("fwd",)))
    (tmp_path / results.ENV_NAME).write_text(text)
    code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "env.json" in err, err


# ------------------------------------------------------------------ a CSV other than the run's, a CSV without speedups
def test_plots_of_another_csv_go_beside_it_not_over_the_runs(tmp_path, monkeypatch, capsys):
    sweep_frame(tmp_path, SweepSpec(seqlens=(8192, 16384), modes=("fwd",)))
    code, out, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path))
    assert code == 0 and str(tmp_path / results.PLOTS_DIR / "speedup.png") in out.splitlines(), err
    before = {p.name: p.read_bytes() for p in (tmp_path / results.PLOTS_DIR).iterdir()}
    table = pd.read_csv(tmp_path / results.CSV_NAME, dtype=str, keep_default_na=False)
    table[table["seqlen"] == "8192"].to_csv(tmp_path / "other.csv", index=False)
    code, out, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path / "other.csv"))
    assert code == 0, err
    own = tmp_path / "other-plots"
    assert str(own / "speedup.png") in out.splitlines() and (own / "speedup.png").is_file()
    assert f"in {own}" in out and results.PLOTS_DIR in out  # says where, and that the run's plots stay
    assert {p.name: p.read_bytes() for p in (tmp_path / results.PLOTS_DIR).iterdir()} == before
    code, out, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path / results.CSV_NAME))
    assert code == 0 and str(tmp_path / results.PLOTS_DIR / "speedup.png") in out.splitlines(), err


@pytest.mark.parametrize("spec_baseline", [None, "fa2-triton"])
def test_a_csv_without_speedups_or_baselines_plots_speedups_from_its_times(tmp_path, monkeypatch, capsys,
                                                                           spec_baseline):
    """Key columns and ms_median only (a hand-made CSV): speedups derive from the times, against the run's
    baseline (spec.json's, else fa2), as compare takes them."""
    sweep_frame(tmp_path / "run", SweepSpec(seqlens=(8192, 16384), modes=("fwd",)))
    table = pd.read_csv(tmp_path / "run" / results.CSV_NAME, dtype=str, keep_default_na=False)
    table = table[table["stage"] == "total"].assign(ms_median=lambda t: t["predicted_ms"], status="ok")
    if spec_baseline:
        table["backend"] = table["backend"].replace("fa2", spec_baseline)
        results.write_json(tmp_path / "spec.json", {"baseline": spec_baseline})
    columns = [c for c in table.columns if c in (*results.KEY_FIELDS, "ms_median") and c not in ("d_model", "doc_lens")]
    table[columns].to_csv(tmp_path / "times.csv", index=False)
    code, out, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path / "times.csv"))
    assert code == 0, err
    assert str(tmp_path / "times-plots" / "speedup.png") in out.splitlines()


def test_nothing_to_plot_says_why_when_rows_have_times(tmp_path, monkeypatch, capsys):
    sweep_frame(tmp_path / "run", SweepSpec(seqlens=(8192,), modes=("fwd",)))
    table = pd.read_csv(tmp_path / "run" / results.CSV_NAME, dtype=str, keep_default_na=False)
    table = table[(table["stage"] == "total") & (table["backend"] == "nsa-triton")]
    table[[*results.REQUIRED_COLUMNS, "predicted_ms"]].to_csv(tmp_path / "one.csv", index=False)
    code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path / "one.csv"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "nothing to plot" in err and "1 row has a time" in err and "no row has a measured" not in err, err
