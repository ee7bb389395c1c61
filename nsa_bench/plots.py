"""Plots of a run, read from its CSV: speedup vs seqlen, roofline, NSA time by stage (PNG and SVG).

Measured rows are used where a point has them; a CPU run's predicted rows are plotted the same way
and labelled as predictions, so a reader never mistakes a model for a measurement. When the
configuration varies along several axes the plots facet (`nsa_bench.facets`): small multiples per
configuration group and mode, one shared legend outside the panels, a stage's colour the same in every
panel and plot (`nsa_bench.palette`), tick labels thinned until none collide, and a title that says what
each line or bar stands for. A run with many groups gets several pages (`speedup.png`, `speedup-2.png`).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nsa_bench import facets, palette, reading, results  # noqa: E402
from nsa_bench.gpus import GPUSpec, gpu_spec  # noqa: E402
from nsa_bench.schema import STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED  # noqa: E402
from nsa_bench.spec import LAYER_MODES  # noqa: E402

MODE_ORDER = ("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd")
MODE_MARKERS = {"fwd": "o", "bwd": "s", "fwdbwd": "D", "decode": "^", "layer-fwd": "P", "layer-bwd": "X"}
_USABLE = (STATUS_OK, STATUS_PREDICTED)
PANEL_W, PANEL_H = 4.3, 2.9  # inches per panel
ANNOTATE_MAX_POINTS = 12  # value labels only on a panel with one line and at most this many points
SAFE_TICKS = 8  # up to this many length labels ("64k", "1000") fit a PANEL_W-wide panel


def _kind(frame: pd.DataFrame) -> str:
    return "measured" if reading.kind(frame) == "measured" else "predicted by the cost model"


def _modes(frame: pd.DataFrame) -> list[str]:
    present = set(frame["mode"])
    return [m for m in MODE_ORDER if m in present]


def size_label(value: int) -> str:
    """8192 -> 8k, 1048576 -> 1m, 1000 -> 1000."""
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def _save(fig: plt.Figure, folder: Path, name: str) -> list[Path]:
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _save_all(figures: list[tuple[str, Figure]], folder: Path) -> list[Path]:
    return [path for name, fig in figures for path in _save(fig, folder, name)]


def _page_names(base: str, count: int) -> list[str]:
    return [base if i == 0 else f"{base}-{i + 1}" for i in range(count)]


def _seqlen_axis(ax: plt.Axes, seqlens: list[int], bars: bool = False) -> None:
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


def _figure(rows: int, cols: int, title: str) -> tuple[Figure, np.ndarray]:
    width = PANEL_W * cols + 2.2
    fig, axes = plt.subplots(rows, cols, figsize=(width, PANEL_H * rows + 0.9), squeeze=False, layout="constrained")
    wrap = max(int((width - 2.2) * 13), 40)  # characters of 10-point text beside the legend
    fig.suptitle("\n".join(textwrap.fill(part, wrap) for part in title.split("\n")), fontsize=10)
    return fig, axes


def _legend(fig: Figure, handles: list, title: str | None = None) -> None:
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title=title, title_fontsize=8)


def _panel_title(ax: plt.Axes, mode: str, group: dict) -> None:
    ax.set_title(f"{mode} · {facets.label(group)}" if group else mode, fontsize=9)


def _duplicates(frame: pd.DataFrame, columns: list[str]) -> int:
    """The most rows that share one plotted key (1: every bar or point is one row)."""
    return int(frame.groupby(columns, dropna=False).size().max()) if not frame.empty else 1


def _page_text(page: int, pages: int) -> str:
    return f" · page {page + 1} of {pages}" if pages > 1 else ""


# ------------------------------------------------------------------ speedup
def speedup_figures(frame: pd.DataFrame) -> list[tuple[str, Figure]]:
    """Speedup vs seqlen: panels per configuration group x mode, a line per backend and series value."""
    totals = frame[(frame["stage"] == STAGE_TOTAL) & frame["status"].isin(_USABLE) & frame["speedup"].notna()]
    totals = totals[totals["backend"] != totals.get("baseline", "")]  # the baseline's own 1.0 is the dashed line
    if totals.empty:
        return []
    totals = facets.with_head_dim(totals)
    baseline = next((b for b in frame.get("baseline", pd.Series(dtype=str)) if b), "the baseline")
    layout = facets.layout(totals, want_series=True)
    modes = _modes(totals)
    backends = sorted(set(totals["backend"]))
    series_values = layout.series_values(totals)
    repeats = _duplicates(totals, ["mode", "backend", "seqlen", *facets.AXES])
    pages = layout.pages()
    what = " and ".join(filter(None, ["backend" if len(backends) > 1 or not layout.series else "",
                                      f"{facets.SHORT[layout.series]}" if layout.series else ""]))
    aggregate = f"median of up to {repeats} rows" if repeats > 1 else "one configuration"
    panels = " x ".join(["mode", *(facets.SHORT[a] for a in layout.facets)])
    figures = []
    for number, (name, groups) in enumerate(zip(_page_names("speedup", len(pages)), pages)):
        title = (f"Speedup over {baseline} ({_kind(totals)}) · a line per {what}, each point {aggregate}"
                 f"\npanels: {panels}{_page_text(number, len(pages))}")
        fig, axes = _figure(len(groups), len(modes), title)
        handles: dict[str, Line2D] = {}
        for r, group in enumerate(groups):
            for c, mode in enumerate(modes):
                ax = axes[r][c]
                part = facets.select(totals[totals["mode"] == mode], group)
                lines = []
                for backend in backends:
                    style, marker = palette.backend_style(backend)
                    for i, value in enumerate(series_values):
                        sub = part[part["backend"] == backend]
                        if layout.series:
                            sub = sub[sub[layout.series] == value]
                        if sub.empty:
                            continue
                        points = sub.groupby("seqlen")["speedup"].median().sort_index()
                        color = palette.series_color(i) if layout.series else palette.backend_color(backend)
                        label = ", ".join(filter(None, [backend if len(backends) > 1 or not layout.series else "",
                                                        f"{facets.SHORT[layout.series]}={value}" if layout.series else ""]))
                        (line,) = ax.plot(points.index, points.to_numpy(), color=color, ls=style, marker=marker,
                                          ms=4, lw=1.4, label=label)
                        handles.setdefault(label, line)
                        lines.append(points)
                if not lines:
                    ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", va="center", color="grey")
                    ax.set_xticks([])
                    _panel_title(ax, mode, group)
                    continue
                if len(lines) == 1 and len(lines[0]) <= ANNOTATE_MAX_POINTS:
                    for x, y in lines[0].items():
                        ax.annotate(f"{y:.1f}x", (x, y), textcoords="offset points", xytext=(0, 5), ha="center",
                                    fontsize=7)
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                ax.margins(y=0.12)
                _seqlen_axis(ax, list(part["seqlen"]))
                _panel_title(ax, mode, group)
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=8)
                if c == 0:
                    ax.set_ylabel(f"speedup vs {baseline}", fontsize=8)
                if r == len(groups) - 1:
                    ax.set_xlabel("sequence length", fontsize=8)
        _legend(fig, list(handles.values()), title=backends[0] if len(backends) == 1 and layout.series else None)
        declutter(fig)
        figures.append((name, fig))
    return figures


def plot_speedup(frame: pd.DataFrame, folder: Path) -> list[Path]:
    return _save_all(speedup_figures(frame), folder)


# ------------------------------------------------------------------ roofline
def roofline_figure(frame: pd.DataFrame, gpu: GPUSpec, calibration_dir: Path | None = None) -> Figure | None:
    """Achieved (or predicted) TFLOP/s vs arithmetic intensity under the GPU's compute and HBM ceilings.

    The datasheet ceiling is solid; when `nsa-bench env --calibrate` measured this GPU (a JSON under
    `calibration_dir`, default results/calibration), its measured ceiling is drawn dashed beside it.
    Totals are coloured by backend, stages by the stage's own colour (as in the stage plot), modes by marker.
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
    ax.set_title(f"Roofline ({_kind(usable)})\neach marker one row: a point's total or one of its stages", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=ceiling_handles + [handles[k] for k in order] + marks, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def plot_roofline(frame: pd.DataFrame, folder: Path, gpu: GPUSpec, calibration_dir: Path | None = None) -> list[Path]:
    fig = roofline_figure(frame, gpu, calibration_dir)
    return [] if fig is None else _save(fig, folder, "roofline")


# ------------------------------------------------------------------ stages
def stage_figures(frame: pd.DataFrame) -> list[tuple[str, Figure]]:
    """NSA time by stage: stacked bars per seqlen, a panel per configuration (and backend) x mode."""
    stages = frame[(frame["stage"] != STAGE_TOTAL) & frame["status"].isin(_USABLE)
                   & ~frame["mode"].isin(LAYER_MODES)].copy()  # layer modes: plot_layer
    if stages.empty:
        return []
    stages["ms"] = reading.time_ms(stages)
    stages = facets.with_head_dim(stages[stages["ms"].notna()])
    if stages.empty:
        return []
    layout = facets.layout(stages, want_series=False, extra=("backend",))
    modes = _modes(stages)
    order = sorted(set(stages["stage"]), key=palette.stage_sort_key)
    repeats = _duplicates(stages, ["mode", "backend", "stage", "seqlen", *facets.AXES])
    measured = (stages["status"] == STATUS_OK).any()
    each = "the median of its timed calls" if measured else "predicted"
    aggregate = (f"; where a key repeats, the median of up to {repeats} rows" if repeats > 1 else "")
    panels = " x ".join(["mode", *(facets.SHORT[a] for a in layout.facets)])
    backend = next(iter(set(stages["backend"]))) if stages["backend"].nunique() == 1 else None
    # one unit per mode on every page: the largest stacked bar of the mode decides
    stacked = stages.groupby(["mode", "backend", "seqlen", *facets.AXES])["ms"].sum()
    units = {mode: (1e3, "µs") if stacked.xs(mode, level="mode").max() < 0.1 else (1.0, "ms") for mode in modes}
    pages = layout.pages()
    figures = []
    for number, (name, groups) in enumerate(zip(_page_names("stages", len(pages)), pages)):
        title = (f"{backend or 'NSA'} time by stage ({_kind(stages)}) · each bar: one configuration at one length, "
                 f"its stages stacked, each stage {each}{aggregate}\npanels: {panels}{_page_text(number, len(pages))}")
        fig, axes = _figure(len(groups), len(modes), title)
        for r, group in enumerate(groups):
            for c, mode in enumerate(modes):
                ax = axes[r][c]
                part = facets.select(stages[stages["mode"] == mode], group)
                _panel_title(ax, mode, group)
                if part.empty:
                    ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", va="center", color="grey")
                    ax.set_xticks([])
                    continue
                table = part.pivot_table(index="seqlen", columns="stage", values="ms", aggfunc="median").sort_index()
                table = table[[s for s in order if s in table.columns]].fillna(0.0)
                scale, unit = units[mode]
                bottom = np.zeros(len(table))
                for stage in table.columns:
                    heights = table[stage].to_numpy() * scale
                    ax.bar(range(len(table)), heights, bottom=bottom, color=palette.stage_color(stage), label=stage,
                           width=0.75)
                    bottom += heights
                _seqlen_axis(ax, list(table.index), bars=True)
                ax.set_ylabel(unit, fontsize=8)
                ax.grid(alpha=0.3, axis="y")
                ax.tick_params(labelsize=8)
                if r == len(groups) - 1:
                    ax.set_xlabel("sequence length", fontsize=8)
        _legend(fig, [Patch(color=palette.stage_color(s), label=s) for s in order], title="stage")
        declutter(fig)
        figures.append((name, fig))
    return figures


def plot_stages(frame: pd.DataFrame, folder: Path) -> list[Path]:
    return _save_all(stage_figures(frame), folder)


# ------------------------------------------------------------------ a run
def plot_baselines(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """NSA's speedup against each dense baseline (times from the CSV), one panel per mode; layer panels add
    the Amdahl bound (dashed). Drawn when several dense backends ran or a layer mode did."""
    from nsa_bench import baselines

    dense, nsa = baselines.dense_backends(frame), baselines.nsa_backends(frame)
    layers = baselines.layer_table(frame)
    if not dense or not nsa or (len(dense) < 2 and layers.empty):
        return []
    table = baselines.baseline_speedups(frame).reset_index()
    bounds = layers.reset_index() if not layers.empty else pd.DataFrame(columns=["mode"])
    modes = [m for m in MODE_ORDER if m in set(table["mode"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    extra = [c for c in table.columns if c not in ("mode", "seqlen") and " vs " not in c and c != "fastest dense"]
    for ax, mode in zip(axes[0], modes):
        part = table[table["mode"] == mode]
        for keys, group in part.groupby(extra, sort=True) if extra else [((), part)]:
            keys = keys if isinstance(keys, tuple) else (keys,)
            suffix = f" ({', '.join(f'{c}={k}' for c, k in zip(extra, keys))})" if extra else ""
            group = group.sort_values("seqlen")
            for i, column in enumerate(c for c in table.columns if " vs " in c):
                if group[column].notna().any():
                    ax.plot(group["seqlen"], group[column], marker="o", color=colors[i % len(colors)],
                            label=column + suffix)
            bound_part = bounds[bounds["mode"] == mode]
            for column, key in zip(extra, keys):
                bound_part = bound_part[bound_part[column] == key] if column in bound_part else bound_part
            for i, column in enumerate(c for c in bounds.columns if c.startswith("bound vs ")):
                rows = bound_part.sort_values("seqlen")
                if rows[column].notna().any():
                    ax.plot(rows["seqlen"], rows[column], ls="--", color=colors[i % len(colors)], alpha=0.7,
                            label=f"{column} (attention free)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        _seqlen_axis(ax, list(part["seqlen"]))
        ax.set_title(mode)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("NSA speedup")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"NSA against each dense baseline ({_kind(frame[frame['status'].isin(_USABLE)])})")
    return _save(fig, folder, "speedup_baselines")


def plot_layer(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """Layer modes: each backend's layer time split into projections (qkv, gate MLP, out) and attention
    (the rest of the layer), one bar per backend at each seqlen, one panel per layer mode."""
    from nsa_bench.cost import PROJECTION_STAGES

    rows = frame[frame["mode"].isin(LAYER_MODES) & frame["status"].isin(_USABLE)].copy()
    if rows.empty:
        return []
    rows["ms"] = reading.time_ms(rows)
    modes = [m for m in LAYER_MODES if m in set(rows["mode"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        part = rows[rows["mode"] == mode]
        total = part[part["stage"] == STAGE_TOTAL].pivot_table(index="seqlen", columns="backend", values="ms",
                                                               aggfunc="last", sort=False)
        proj = part[part["stage"].isin(PROJECTION_STAGES)].pivot_table(index="seqlen", columns="backend", values="ms",
                                                                       aggfunc="sum", sort=False)
        names = [b for b in total.columns if b in proj.columns]
        seqlens = sorted(total.index)
        width = 0.8 / max(len(names), 1)
        for i, name in enumerate(names):
            x = np.arange(len(seqlens)) + (i - (len(names) - 1) / 2) * width
            p_ms = proj[name].reindex(seqlens).to_numpy()
            a_ms = (total[name].reindex(seqlens) - proj[name].reindex(seqlens)).to_numpy()
            ax.bar(x, p_ms, width, color="#999999", label="projections" if i == 0 else None)
            ax.bar(x, a_ms, width, bottom=p_ms, color=f"C{i}", label=f"{name}: attention")
        _seqlen_axis(ax, seqlens, bars=True)
        ax.set_title(mode)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms per layer")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    widths = sorted({int(w) for w in rows["d_model"]})
    fig.suptitle(f"One attention layer, d_model={', '.join(map(str, widths))} ({_kind(rows)})")
    return _save(fig, folder, "layer")


def resolve_gpu(frame: pd.DataFrame, gpu: str | None) -> GPUSpec:
    """The GPU whose ceilings the roofline draws: --gpu, else the run's GPU, else H100."""
    if gpu:
        return gpu_spec(gpu)
    for name in frame.get("gpu", pd.Series(dtype=str)):
        if isinstance(name, str) and name:
            try:
                return gpu_spec(name)
            except ValueError:
                continue
    return gpu_spec("h100")


def plot_run(run_dir: Path, gpu: str | None = None) -> list[Path]:
    """Write every plot of a run into run_dir/plots (replacing older pages); returns the files written."""
    frame = results.read_rows_nonempty(run_dir)
    folder = results.run_dir(Path(run_dir)) / results.PLOTS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob("speedup-*.*"), *folder.glob("stages-*.*")]:
            stale.unlink()
    except OSError as exc:
        raise results.ResultsError(f"cannot make the plots folder {folder}: {exc.strerror or exc}") from None
    spec = resolve_gpu(frame, gpu)
    return [*plot_speedup(frame, folder), *plot_roofline(frame, folder, spec), *plot_stages(frame, folder),
            *plot_baselines(frame, folder), *plot_layer(frame, folder)]
