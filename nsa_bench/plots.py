"""Plots of a run, read from its CSV: speedup vs seqlen, roofline, NSA time by stage (PNG and SVG).

Measured rows are used where a point has them; a CPU run's predicted rows are plotted the same way
and labelled as predictions, so a reader never mistakes a model for a measurement.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nsa_bench import results  # noqa: E402
from nsa_bench.gpus import GPUSpec, gpu_spec  # noqa: E402
from nsa_bench.schema import STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED  # noqa: E402
from nsa_bench.spec import LAYER_MODES  # noqa: E402

MODE_ORDER = ("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd")
_USABLE = (STATUS_OK, STATUS_PREDICTED)


def _time_ms(frame: pd.DataFrame) -> pd.Series:
    """Measured median where there is one, else the cost model's prediction."""
    return frame["ms_median"].where(frame["status"] == STATUS_OK, frame["predicted_ms"])


def _kind(frame: pd.DataFrame) -> str:
    return "measured" if (frame["status"] == STATUS_OK).any() else "predicted by the cost model"


def _modes(frame: pd.DataFrame) -> list[str]:
    present = set(frame["mode"])
    return [m for m in MODE_ORDER if m in present]


def _series_label(rec: pd.Series, backend: str, varying: list[str]) -> str:
    extra = ", ".join(f"{col}={rec[col]}" for col in varying)
    return f"{backend} ({extra})" if extra else backend


def _varying(frame: pd.DataFrame) -> list[str]:
    """Configuration columns (besides seqlen) that take several values in the run."""
    cols = ["batch", "kv_heads", "group_size", "head_dim_qk", "head_dim_v", "block_cmp", "stride_cmp",
            "block_slc", "n_slc", "window", "dtype", "doc_lens"]
    return [c for c in cols if c in frame and frame[c].nunique() > 1]


def _save(fig: plt.Figure, folder: Path, name: str) -> list[Path]:
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _log2_x(ax: plt.Axes, seqlens: np.ndarray) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(s) for s in seqlens))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t // 1024}k" if t >= 1024 and t % 1024 == 0 else str(t) for t in ticks])
    ax.minorticks_off()


def plot_speedup(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """Speedup vs seqlen, one panel per mode, one line per backend (and varying configuration)."""
    totals = frame[(frame["stage"] == STAGE_TOTAL) & frame["status"].isin(_USABLE) & frame["speedup"].notna()]
    if totals.empty:
        return []
    modes = _modes(totals)
    varying = _varying(totals)
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.8), squeeze=False)
    baseline = next((b for b in totals.get("baseline", pd.Series(dtype=str)) if b), "baseline")
    for ax, mode in zip(axes[0], modes):
        part = totals[totals["mode"] == mode]
        for keys, group in part.groupby(["backend", *varying], sort=True):
            keys = keys if isinstance(keys, tuple) else (keys,)
            group = group.sort_values("seqlen")
            ax.plot(group["seqlen"], group["speedup"], marker="o",
                    label=_series_label(group.iloc[0], keys[0], varying))
            for x, y in zip(group["seqlen"], group["speedup"]):
                ax.annotate(f"{y:.1f}x", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        _log2_x(ax, part["seqlen"].to_numpy())
        ax.set_title(mode)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(f"speedup vs {baseline}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Speedup over {baseline} ({_kind(totals)})")
    return _save(fig, folder, "speedup")


def plot_roofline(frame: pd.DataFrame, folder: Path, gpu: GPUSpec, calibration_dir: Path | None = None) -> list[Path]:
    """Achieved (or predicted) TFLOP/s vs arithmetic intensity under the GPU's compute and HBM ceilings.

    The datasheet ceiling is solid; when `nsa-bench env --calibrate` measured this GPU (a JSON under
    `calibration_dir`, default results/calibration), its measured ceiling is drawn dashed beside it.
    """
    from nsa_bench import calibrate

    measured = calibrate.for_gpu(gpu, calibration_dir)
    usable = frame[frame["status"].isin(_USABLE) & frame["intensity"].notna() & (frame["flops"] > 0)].copy()
    if usable.empty:
        return []
    usable["tflops_at"] = usable["flops"] / (_time_ms(usable) * 1e-3) / 1e12
    usable = usable[np.isfinite(usable["tflops_at"])]
    if usable.empty:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 5))
    lo = max(min(usable["intensity"].min() / 2, 1.0), 1e-2)
    hi = max(usable["intensity"].max() * 2, gpu.peak_flops / gpu.hbm_bytes_per_s * 4)
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(xs, np.minimum(gpu.peak_flops, gpu.hbm_bytes_per_s * xs) / 1e12, color="black", lw=1.2,
            label=f"{gpu.name} ceiling")
    if measured is not None:
        ax.plot(xs, np.minimum(measured.matmul_flops, measured.copy_bytes_per_s * xs) / 1e12, color="black",
                lw=1.0, ls="--", label=f"measured ceiling ({measured.device_name}, env --calibrate)")
    markers = {"fwd": "o", "bwd": "s", "fwdbwd": "D", "decode": "^", "layer-fwd": "P", "layer-bwd": "X"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, ((backend, stage), group) in enumerate(usable.groupby(["backend", "stage"], sort=True)):
        color = colors[i % len(colors)]
        total = stage == STAGE_TOTAL
        for mode, sub in group.groupby("mode"):
            ax.scatter(sub["intensity"], sub["tflops_at"], marker=markers.get(mode, "o"), color=color,
                       s=40 if total else 16, alpha=0.9 if total else 0.6)
        handles.append(Line2D([], [], ls="", marker="o", color=color, label=backend if total else f"{backend}: {stage}"))
    present = [m for m in markers if m in set(usable["mode"])]
    handles += [Line2D([], [], ls="", marker=markers[m], color="black", markerfacecolor="none", label=f"[{m}]")
                for m in present]
    ceiling_handles, _ = ax.get_legend_handles_labels()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of HBM traffic, cost model)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"Roofline ({_kind(usable)})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=ceiling_handles + handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0)
    return _save(fig, folder, "roofline")


def plot_stages(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """NSA time by stage as stacked bars per seqlen, one panel per mode (backends that report stages)."""
    stages = frame[(frame["stage"] != STAGE_TOTAL) & frame["status"].isin(_USABLE)].copy()
    stages = stages[~stages["mode"].isin(LAYER_MODES)]  # layer modes: plot_layer
    if stages.empty:
        return []
    stages["ms"] = _time_ms(stages)
    modes = _modes(stages)
    fig, axes = plt.subplots(1, len(modes), figsize=(4.8 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        part = stages[stages["mode"] == mode]
        table = part.pivot_table(index=["backend", "seqlen"], columns="stage", values="ms", aggfunc="median",
                                 sort=False)
        order = list(dict.fromkeys(part["stage"]))
        table = table[order].fillna(0.0)
        labels = [f"{s // 1024}k" if s % 1024 == 0 else str(s) for _, s in table.index]
        if table.index.get_level_values(0).nunique() > 1:
            labels = [f"{b}\n{lab}" for (b, _), lab in zip(table.index, labels)]
        bottom = np.zeros(len(table))
        for stage in order:
            ax.bar(range(len(table)), table[stage].to_numpy(), bottom=bottom, label=stage)
            bottom += table[stage].to_numpy()
        ax.set_xticks(range(len(table)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yscale("log" if bottom.max() / max(bottom.min(), 1e-9) > 50 else "linear")
        ax.set_title(mode)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(f"NSA time by stage ({_kind(stages)})")
    return _save(fig, folder, "stages")


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
        _log2_x(ax, part["seqlen"].to_numpy())
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
    rows["ms"] = _time_ms(rows)
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
        ax.set_xticks(range(len(seqlens)))
        ax.set_xticklabels([f"{s // 1024}k" if s % 1024 == 0 else str(s) for s in seqlens])
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
    """Write every plot of a run into run_dir/plots; returns the files written."""
    run_dir = results.run_dir(Path(run_dir))
    frame = results.read_rows(run_dir)
    folder = run_dir / results.PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    spec = resolve_gpu(frame, gpu)
    return [*plot_speedup(frame, folder), *plot_roofline(frame, folder, spec), *plot_stages(frame, folder),
            *plot_baselines(frame, folder), *plot_layer(frame, folder)]
