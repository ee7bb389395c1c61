"""Plots of a run, read from its CSV: speedup vs seqlen, roofline, NSA time by stage, NSA against each
dense baseline, one attention layer (PNG and SVG).

Measured rows are used where a point has them; a CPU run's predicted rows are plotted the same way
and labelled as predictions, so a reader never mistakes a model for a measurement. When the
configuration varies along several axes the plots facet (`nsa_bench.facets`): small multiples per
configuration group and mode, one shared legend outside the panels, a stage's colour the same in every
panel and plot (`nsa_bench.palette`), tick labels thinned until none collide, and a title that says what
each line or bar stands for. A run with many groups gets several pages (`speedup.png`, `speedup-2.png`).
A row that failed (oom, error, ...) has no time; the plots mark where it would have been rather than
leave it out (`nsa_bench.plot_marks`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import numpy as np
import pandas as pd

from nsa_bench import facets, palette, plot_base, plot_lines, plot_marks, reading, results
from nsa_bench.gpus import GPUSpec, gpu_spec
from nsa_bench.plot_base import MODE_MARKERS, MODE_ORDER, declutter
from nsa_bench.plot_speedup import speedup_figures
from nsa_bench.published import Match
from nsa_bench.schema import STAGE_TOTAL, STATUS_OK
from nsa_bench.spec import LAYER_MODES

_USABLE = reading.USABLE
FAILED_NOTE_COLOR = "black"


def _failed_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Total rows without a time because they failed (oom, error, ...)."""
    return frame[(frame["stage"].astype(str) == STAGE_TOTAL) & plot_marks.failed(frame)]


def _status_counts(rows: pd.DataFrame) -> str:
    """`oom 2, error 1`: how many rows of each status."""
    return ", ".join(f"{status} {n}" for status, n in rows["status"].astype(str).value_counts().sort_index().items())


# ------------------------------------------------------------------ speedup
def plot_speedup(frame: pd.DataFrame, folder: Path, published: Sequence[Match] = ()) -> list[Path]:
    return plot_base.save_all(speedup_figures(frame, published), folder)


# ------------------------------------------------------------------ roofline
def roofline_figure(frame: pd.DataFrame, gpu: GPUSpec, calibration_dir: Path | None = None) -> Figure | None:
    """Achieved (or predicted) TFLOP/s vs arithmetic intensity under the GPU's compute and HBM ceilings.

    The datasheet ceiling is solid; when `nsa-bench env --calibrate` measured this GPU (a JSON under
    `calibration_dir`, default results/calibration), its measured ceiling is drawn dashed beside it.
    Totals are coloured by backend, stages by the stage's own colour (as in the stage plot), modes by marker.
    Failed rows have no time and no place on it: the title counts them.
    """
    from nsa_bench import calibrate

    measured = calibrate.for_gpu(gpu, calibration_dir)
    usable = frame[frame["status"].isin(_USABLE) & frame["intensity"].notna() & (frame["flops"] > 0)].copy()
    if usable.empty:
        return None
    usable["tflops_at"] = usable["flops"] / (reading.time_ms(usable) * 1e-3) / 1e12
    usable = usable[np.isfinite(usable["tflops_at"]) & (usable["tflops_at"] > 0)]
    if usable.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    lo = max(min(usable["intensity"].min() / 2, 1.0), 1e-2)
    hi = max(usable["intensity"].max() * 2, gpu.peak_flops / gpu.hbm_bytes_per_s * 4)
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(xs, np.minimum(gpu.peak_flops, gpu.hbm_bytes_per_s * xs) / 1e12, color="black", lw=1.2,
            label=f"{gpu.name} ceiling")
    if measured is not None:
        ax.plot(xs, np.minimum(measured.matmul_flops, measured.copy_bytes_per_s * xs) / 1e12, color="black",
                lw=1.0, ls="--", label=f"measured ceiling ({measured.device_name}, env --calibrate)")
    handles: dict[str, Line2D] = {}
    for (backend, stage), group in usable.groupby(["backend", "stage"], sort=True):
        total = stage == STAGE_TOTAL
        color = palette.backend_color(backend) if total else palette.stage_color(stage)
        for mode, sub in group.groupby("mode"):
            ax.scatter(sub["intensity"], sub["tflops_at"], marker=MODE_MARKERS.get(mode, "o"), color=color,
                       s=40 if total else 16, alpha=0.9 if total else 0.6)
        label = f"{backend} (total)" if total else f"stage: {stage}"
        handles.setdefault(label, Line2D([], [], ls="", marker="o", color=color, ms=7 if total else 5, label=label))
    order = sorted(handles, key=lambda k: (not k.endswith("(total)"), palette.stage_sort_key(k.removeprefix("stage: "))))
    present = [m for m in MODE_MARKERS if m in set(usable["mode"])]
    marks = [Line2D([], [], ls="", marker=MODE_MARKERS[m], color="black", markerfacecolor="none", label=f"[{m}]")
             for m in present]
    ceiling_handles, _ = ax.get_legend_handles_labels()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of HBM traffic, cost model)")
    ax.set_ylabel("TFLOP/s")
    failed = _failed_totals(frame)
    missing = f"\nnot drawn: failed rows, which have no time ({_status_counts(failed)})" if not failed.empty else ""
    ax.set_title(f"Roofline ({plot_base.kind_text(usable)})\neach marker one row: a point's total or one of its "
                 f"stages{missing}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=ceiling_handles + [handles[k] for k in order] + marks, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def plot_roofline(frame: pd.DataFrame, folder: Path, gpu: GPUSpec, calibration_dir: Path | None = None) -> list[Path]:
    fig = roofline_figure(frame, gpu, calibration_dir)
    return [] if fig is None else plot_base.save(fig, folder, "roofline")


# ------------------------------------------------------------------ stages
def _stage_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timed stage rows with `ms`, failed total rows of the same backends), layer modes left to the layer plot."""
    attention = frame[~frame["mode"].isin(LAYER_MODES)]
    stages = attention[(attention["stage"] != STAGE_TOTAL) & attention["status"].isin(_USABLE)].copy()
    stages["ms"] = reading.time_ms(stages)
    stages = facets.with_derived(stages[stages["ms"].notna()])
    failed = _failed_totals(attention)
    failed = facets.with_derived(failed[failed["backend"].isin(set(stages["backend"]))])
    return stages, failed


def _stage_units(stages: pd.DataFrame, modes: list[str]) -> dict[str, tuple[float, str]]:
    """One unit per mode on every page: the largest stacked bar of the mode decides."""
    stacked = stages.groupby(["mode", "backend", "seqlen", *facets.AXES])["ms"].sum()
    return {mode: (1e3, "µs") if stacked.xs(mode, level="mode").max() < 0.1 else (1.0, "ms") for mode in modes}


def _stage_panel(ax: plt.Axes, part: pd.DataFrame, failed: pd.DataFrame, order: list[str],
                 unit: tuple[float, str]) -> None:
    """Stacked bars per length; an `x` at a length whose total failed."""
    lengths = sorted({int(s) for s in (*part["seqlen"], *failed["seqlen"])})
    table = part.pivot_table(index="seqlen", columns="stage", values="ms", aggfunc="median").reindex(lengths)
    table = table[[s for s in order if s in table.columns]].fillna(0.0)
    scale, name = unit
    bottom = np.zeros(len(table))
    for stage in table.columns:
        heights = table[stage].to_numpy() * scale
        ax.bar(range(len(table)), heights, bottom=bottom, color=palette.stage_color(stage), label=stage, width=0.75)
        bottom += heights
    plot_marks.draw_gaps(ax, [plot_marks.Gap(float(lengths.index(int(s))), FAILED_NOTE_COLOR, str(status))
                              for s, status in zip(failed["seqlen"], failed["status"])])
    plot_base.seqlen_axis(ax, lengths, bars=True)
    ax.set_ylabel(name, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.tick_params(labelsize=8)


def stage_figures(frame: pd.DataFrame) -> list[tuple[str, Figure]]:
    """NSA time by stage: stacked bars per seqlen, a panel per configuration (and backend) x mode."""
    stages, failed = _stage_rows(frame)
    if stages.empty:
        return []
    layout = facets.layout(stages, want_series=False, extra=("backend",))
    modes = plot_base.modes(stages)
    order = sorted(set(stages["stage"]), key=palette.stage_sort_key)
    repeats = plot_base.duplicates(stages, ["mode", "backend", "stage", "seqlen", *facets.AXES])
    measured = (stages["status"] == STATUS_OK).any()
    each = "the median of its timed calls" if measured else "predicted"
    aggregate = (f"; where a key repeats, the median of up to {repeats} rows" if repeats > 1 else "")
    panels = " x ".join(["mode", *(facets.SHORT[a] for a in layout.facets)])
    backend = next(iter(set(stages["backend"]))) if stages["backend"].nunique() == 1 else None
    held = f" · {layout.held_text()}" if layout.held_text() else ""
    units = _stage_units(stages, modes)
    pages = layout.pages()
    figures = []
    for number, (name, groups) in enumerate(zip(plot_base.page_names("stages", len(pages)), pages)):
        title = (f"{backend or 'NSA'} time by stage ({plot_base.kind_text(stages)}) · each bar: one configuration at "
                 f"one length, its stages stacked, each stage {each}{aggregate}{held}"
                 f"\npanels: {panels}{plot_base.page_text(number, len(pages))}")
        fig, axes = plot_base.figure(len(groups), len(modes), title)
        shown_failed = []
        for r, group in enumerate(groups):
            for c, mode in enumerate(modes):
                ax = axes[r][c]
                part = facets.select(stages[stages["mode"] == mode], group)
                lost = facets.select(failed[failed["mode"] == mode], group) if not failed.empty else failed
                plot_base.panel_title(ax, mode, group, layout)
                if part.empty and lost.empty:
                    ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", va="center", color="grey")
                    ax.set_xticks([])
                    continue
                _stage_panel(ax, part, lost, order, units[mode])
                shown_failed.append(lost)
                if r == len(groups) - 1:
                    ax.set_xlabel("sequence length", fontsize=8)
        handles: list = [Patch(color=palette.stage_color(s), label=s) for s in order]
        lost = pd.concat(shown_failed) if shown_failed else failed.iloc[:0]
        if not lost.empty:
            handles.append(Line2D([], [], ls="", marker=plot_marks.GAP_MARKER, ms=6, mew=1.6, color=FAILED_NOTE_COLOR,
                                  label=f"no bar: the point's total failed ({', '.join(sorted(set(lost['status'])))})"))
        plot_base.legend(fig, handles, title="stage")
        declutter(fig)
        figures.append((name, fig))
    return figures


def plot_stages(frame: pd.DataFrame, folder: Path) -> list[Path]:
    return plot_base.save_all(stage_figures(frame), folder)


# ------------------------------------------------------------------ NSA against each dense baseline
def _key_suffix(extra: list[str], keys: tuple) -> str:
    return f" ({', '.join(f'{c}={k}' for c, k in zip(extra, keys))})" if extra else ""


def _column_color(columns: list[str], column: str) -> str:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return colors[columns.index(column) % len(colors)]


def _bound_color(columns: list[str], bound: str) -> str:
    """A bound against a baseline takes the colour of the first line against the same baseline."""
    base = bound.removeprefix("bound vs ")
    same = [c for c in columns if c.endswith(f" vs {base}")]
    return _column_color(columns, same[0]) if same else "grey"


def _select_keys(rows: pd.DataFrame, extra: list[str], keys: tuple) -> pd.DataFrame:
    for column, key in zip(extra, keys):
        rows = rows[rows[column] == key] if column in rows else rows
    return rows


def _baseline_curves(table: pd.DataFrame, bounds: pd.DataFrame, mode: str, extra: list[str]
                     ) -> list[plot_lines.Curve]:
    """The lines of one mode's panel: NSA against each baseline (solid), the layer's Amdahl bound (dashed,
    hollow markers, so a bound at one length is still seen)."""
    columns = [c for c in table.columns if " vs " in c]
    part = table[table["mode"] == mode]
    curves = []
    for keys, group in part.groupby(extra, sort=True) if extra else [((), part)]:
        keys = keys if isinstance(keys, tuple) else (keys,)
        suffix = _key_suffix(extra, keys)
        group = group.sort_values("seqlen")
        for column in columns:
            if group[column].notna().any():
                curves.append(plot_lines.Curve(column + suffix, tuple(float(s) for s in group["seqlen"]),
                                               tuple(float(v) for v in group[column]), _column_color(columns, column)))
        rows = _select_keys(bounds[bounds["mode"] == mode], extra, keys).sort_values("seqlen")
        for bound in (c for c in bounds.columns if c.startswith("bound vs ")):
            if rows[bound].notna().any():
                curves.append(plot_lines.Curve(f"{bound} (Amdahl: if NSA's attention took no time){suffix}", tuple(float(s) for s in rows["seqlen"]),
                                               tuple(float(v) for v in rows[bound]), _bound_color(columns, bound),
                                               style="--", marker="^", filled=False))
    return curves


def _baseline_gaps(failed: pd.DataFrame, table: pd.DataFrame, mode: str, extra: list[str]) -> list[plot_marks.Gap]:
    """An `x` for each line of the panel with no point at a length because NSA's or that baseline's row failed."""
    columns = [c for c in table.columns if " vs " in c]
    rows = failed[failed["mode"] == mode]
    gaps = []
    for column in columns:
        nsa, base = column.split(" vs ", 1)
        lost = rows[rows["backend"].isin({nsa, base})]
        gaps += [plot_marks.Gap(float(s), _column_color(columns, column), str(status), backend == base)
                 for s, status, backend in zip(lost["seqlen"], lost["status"], lost["backend"])]
    return gaps


def baselines_figure(frame: pd.DataFrame) -> Figure | None:
    """NSA's speedup against each dense baseline (times from the CSV), one panel per mode; layer panels add
    the Amdahl bound (dashed). Drawn when several dense backends ran or a layer mode did."""
    from nsa_bench import baselines

    dense, nsa = baselines.dense_backends(frame), baselines.nsa_backends(frame)
    layers = baselines.layer_table(frame)
    if not dense or not nsa or (len(dense) < 2 and layers.empty):
        return None
    table = baselines.baseline_speedups(frame).reset_index()
    bounds = layers.reset_index() if not layers.empty else pd.DataFrame(columns=["mode", "seqlen"])
    failed = _failed_totals(frame)
    failed = failed[failed["backend"].isin({*dense, *nsa})]
    modes = [m for m in MODE_ORDER if m in {*table["mode"], *failed["mode"]}]
    extra = [c for c in table.columns if c not in ("mode", "seqlen") and " vs " not in c and c != "fastest dense"]
    title = f"NSA against each dense baseline ({plot_base.kind_text(frame[frame['status'].isin(_USABLE)])})"
    fig, axes = plot_base.figure(1, len(modes), title, panel_w=4.6, panel_h=3.4)
    panels = [_baseline_curves(table, bounds, mode, extra) for mode in modes]
    gaps = [_baseline_gaps(failed, table, mode, extra) for mode in modes]
    for ax, mode, curves, marks in zip(axes[0], modes, panels, gaps):
        plot_lines.draw(ax, curves)
        plot_marks.draw_gaps(ax, marks)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.margins(y=0.12)
        lengths = [*table[table["mode"] == mode]["seqlen"], *(g.x for g in marks)]
        plot_base.seqlen_axis(ax, [int(s) for s in lengths])
        ax.set_title(mode, fontsize=9)
        ax.set_xlabel("sequence length", fontsize=8)
        ax.set_ylabel("NSA speedup", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    handles, labels = plot_lines.figure_legend(panels)
    entry = plot_marks.gap_entry([g for marks in gaps for g in marks], "the baseline")
    if entry is not None:
        handles.append(entry[0])
        labels.append(entry[1])
    plot_base.legend(fig, handles, labels)
    return fig


def plot_baselines(frame: pd.DataFrame, folder: Path) -> list[Path]:
    fig = baselines_figure(frame)
    return [] if fig is None else plot_base.save(fig, folder, "speedup_baselines")


# ------------------------------------------------------------------ one attention layer
def _layer_panel(ax: plt.Axes, part: pd.DataFrame, failed: pd.DataFrame, names: list[str]) -> dict[str, object]:
    """Bars of one layer mode: per backend at each length, projections (grey) under attention (the backend's
    colour); an `x` where a backend's layer failed. Returns the legend entries of what it drew."""
    from nsa_bench.cost import PROJECTION_STAGES

    total = part[part["stage"] == STAGE_TOTAL].pivot_table(index="seqlen", columns="backend", values="ms",
                                                           aggfunc="last", sort=False)
    proj = part[part["stage"].isin(PROJECTION_STAGES)].pivot_table(index="seqlen", columns="backend", values="ms",
                                                                   aggfunc="sum", sort=False)
    seqlens = sorted({int(s) for s in (*total.index, *failed["seqlen"])})
    width = 0.8 / max(len(names), 1)
    drawn: dict[str, object] = {}
    gaps = []
    for i, name in enumerate(names):
        x = np.arange(len(seqlens)) + (i - (len(names) - 1) / 2) * width
        if name in total.columns and name in proj.columns:
            p_ms = proj[name].reindex(seqlens).to_numpy()
            a_ms = (total[name].reindex(seqlens) - proj[name].reindex(seqlens)).to_numpy()
            if np.isfinite(a_ms).any():
                ax.bar(x, p_ms, width, color="#999999")
                ax.bar(x, a_ms, width, bottom=p_ms, color=f"C{i}")
                drawn["projections (q/k/v, NSA gate MLP, out)"] = Patch(color="#999999")
                drawn[f"{name}: attention"] = Patch(color=f"C{i}")
        lost = failed[failed["backend"] == name]
        gaps += [plot_marks.Gap(float(x[seqlens.index(int(s))]), f"C{i}", str(status))
                 for s, status in zip(lost["seqlen"], lost["status"])]
    plot_marks.draw_gaps(ax, gaps)
    entry = plot_marks.gap_entry(gaps, "the baseline", of="bar")
    if entry is not None:
        drawn[entry[1]] = entry[0]
    plot_base.seqlen_axis(ax, seqlens, bars=True)
    return drawn


def layer_figure(frame: pd.DataFrame) -> Figure | None:
    """Layer modes: each backend's layer time split into projections (qkv, gate MLP, out) and attention
    (the rest of the layer), one bar per backend at each seqlen, one panel per layer mode."""
    layer = frame[frame["mode"].isin(LAYER_MODES)]
    rows = layer[layer["status"].isin(_USABLE)].copy()
    if rows.empty:
        return None
    rows["ms"] = reading.time_ms(rows)
    failed = _failed_totals(layer)
    modes = [m for m in LAYER_MODES if m in set(rows["mode"])]
    widths = sorted({int(w) for w in rows["d_model"]})
    title = f"One attention layer, d_model={', '.join(map(str, widths))} ({plot_base.kind_text(rows)})"
    fig, axes = plot_base.figure(1, len(modes), title, panel_w=5.2, panel_h=3.6)
    entries: dict[str, object] = {}
    for ax, mode in zip(axes[0], modes):
        part, lost = rows[rows["mode"] == mode], failed[failed["mode"] == mode]
        names = list(dict.fromkeys([*part[part["stage"] == STAGE_TOTAL]["backend"], *lost["backend"]]))
        entries.update(_layer_panel(ax, part, lost, names))
        ax.set_title(mode, fontsize=9)
        ax.set_xlabel("sequence length", fontsize=8)
        ax.set_ylabel("ms per layer", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    plot_base.legend(fig, list(entries.values()), list(entries))
    return fig


def plot_layer(frame: pd.DataFrame, folder: Path) -> list[Path]:
    fig = layer_figure(frame)
    return [] if fig is None else plot_base.save(fig, folder, "layer")


# ------------------------------------------------------------------ a run
def resolve_gpu(frame: pd.DataFrame, gpu: str | None, env: dict | None = None) -> GPUSpec:
    """The GPU whose ceilings the roofline draws: --gpu, else the run's GPU (its rows, else env.json), else H100."""
    if gpu:
        return gpu_spec(gpu)
    for name in [*frame.get("gpu", pd.Series(dtype=str)), env_gpu(env or {})]:
        if isinstance(name, str) and name:
            try:
                return gpu_spec(name)
            except ValueError:
                continue
    return gpu_spec("h100")


def env_gpu(env: dict) -> str | None:
    """The GPU spec key env.json names for the run (`target_gpu`: what it predicted for, or measured on)."""
    target = env.get("target_gpu")
    key = target.get("key") if isinstance(target, dict) else None
    return key if isinstance(key, str) and key else None


def plots_folder(path: Path) -> Path:
    """Where the plots of `path` go: a run folder's (or its results.csv's) into its plots/, any other CSV's
    into `<stem>-plots/` beside it, so plotting a copy or a slice never overwrites the run's plots."""
    path = Path(path)
    if path.is_dir() or path.name == results.CSV_NAME:
        return results.run_dir(path) / results.PLOTS_DIR
    return path.parent / f"{path.stem}-plots"


def _plots_folder(run_dir: Path) -> Path:
    """plots_folder(run_dir), made, with the extra pages of an earlier drawing removed."""
    folder = plots_folder(run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob("speedup-*.*"), *folder.glob("stages-*.*")]:
            stale.unlink()
    except OSError as exc:
        raise results.ResultsError(f"cannot make the plots folder {folder}: {exc.strerror or exc}") from None
    return folder


def read_run(path: Path) -> pd.DataFrame:
    """The rows to plot: a CSV without a baseline column takes the run's baseline (spec.json's, else the
    sweep's default), so its speedups derive from its times."""
    from nsa_bench.repro import run_settings

    frame = results.read_rows_nonempty(path)
    return reading.with_default_baseline(frame, run_settings(results.run_dir(Path(path)))[0].baseline)


def nothing_to_plot(path: Path) -> str:
    """Why no plot of `path` was drawn, for a run that plot_run drew nothing of."""
    frame = read_run(path)
    timed = len(reading.usable(frame))
    if not timed:
        return "nothing to plot (no row has a measured or predicted time)"
    baselines = ", ".join(sorted({b for b in frame["baseline"].astype(str) if b})) or "none named"
    rows = f"{timed} row has a time" if timed == 1 else f"{timed} rows have a time"
    return (f"nothing to plot: {rows}, but no plot applies (a speedup needs its baseline backend's row at the "
            f"same point: baseline {baselines}; the roofline needs flops and intensity; the stage plot stage rows)")


def plot_run(run_dir: Path, gpu: str | None = None, published: bool = False) -> list[Path]:
    """Write every plot of a run into plots_folder(run_dir) (replacing older pages); returns the files written.
    `published`: set published speedups of the same configuration beside the run's (nsa_bench/published.csv).
    A folder that cannot be written is a ResultsError naming the path (the CLI's one-line exit 2)."""
    from nsa_bench import published as published_mod

    frame = read_run(run_dir)
    env = results.read_json(results.run_dir(Path(run_dir)) / results.ENV_NAME)  # refused unless a JSON object
    folder = _plots_folder(run_dir)
    spec = resolve_gpu(frame, gpu, env)
    matches = published_mod.matching(frame[frame["stage"] == STAGE_TOTAL], gpu=spec.name) if published else []
    try:
        return [*plot_speedup(frame, folder, matches), *plot_roofline(frame, folder, spec),
                *plot_stages(frame, folder), *plot_baselines(frame, folder), *plot_layer(frame, folder)]
    except OSError as exc:
        where = exc.filename or folder
        raise results.ResultsError(f"cannot write the plot {where}: {exc.strerror or exc}") from None
