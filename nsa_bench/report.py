"""`nsa-bench report`: one self-contained HTML page and a markdown file describing a run folder.

The HTML embeds its plots (base64 PNG, or inline SVG when there is no PNG) and uses no external asset,
so it can be uploaded as a CI artifact or mailed and still show everything. Both files are made from
the run's files only (results.csv, spec.json, env.json, plots/), never from live objects.
"""
from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nsa_bench import beside, breakeven, reading, repro
from nsa_bench.results import (CSV_NAME, ENV_NAME, PLOTS_DIR, SPEC_NAME, ResultsError, read_json,
                               read_rows_nonempty)
from nsa_bench.schema import KEY_FIELDS, STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED
from nsa_bench.spec import Point, SweepSpec

HTML_NAME = "report.html"
MD_NAME = "report.md"
PLOT_SUFFIXES = (".png", ".svg")
BREAKDOWN_WORDS = ("breakdown", "stage")  # plot file names that belong to the breakdown section
DETAIL_COLUMNS = ("impl", "status", "ms_median", "ms_p10", "ms_p90", "samples", "predicted_ms", "speedup",
                  "baseline", "tflops", "gbps", "intensity", "max_rel_err", "sm_clock_mhz", "throttled",
                  "message")

Plotter = Callable[[Path, "str | None"], Sequence[Path]]


class ReportError(ValueError):
    """A folder that cannot be reported on (not a run folder, unreadable CSV)."""


@dataclass(frozen=True)
class Plot:
    name: str  # file stem, e.g. "speedup_fwd"
    png: Path | None
    svg: Path | None

    @property
    def in_breakdown(self) -> bool:
        return any(word in self.name.lower() for word in BREAKDOWN_WORDS)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    plots: tuple[Plot, ...]
    warnings: tuple[str, ...]


# --- tables ------------------------------------------------------------------------------------

def _number(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce") if series is not None else series


def varying_axes(frame: pd.DataFrame) -> list[str]:
    """Key fields other than backend/stage that take more than one value: they must label rows.

    mode and seqlen always do, so the summary reads mode x seqlen x backend.
    """
    always = ["mode", "seqlen"]
    rest = [c for c in KEY_FIELDS if c not in (*always, "backend", "stage") and frame[c].nunique(dropna=False) > 1]
    return always + rest


def _in_run_order(table: pd.DataFrame, axes: Sequence[str], frame: pd.DataFrame) -> pd.DataFrame:
    """Sort rows as the sweep ran them: text axes by first appearance (fwd, bwd, decode), numbers ascending."""
    def key(column: pd.Series) -> pd.Series:
        if pd.api.types.is_numeric_dtype(column):
            return column
        first = {value: i for i, value in enumerate(dict.fromkeys(frame[column.name].astype(str)))}
        return column.astype(str).map(first)

    return table.sort_values(list(axes), key=key, kind="stable").reset_index(drop=True)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Speedup vs the baseline backend (the run's one summary, nsa_bench.reading): a row per point, a column
    per backend."""
    found = reading.summary(frame)
    if found is None:
        return pd.DataFrame()
    table = found.shown(found.speedups, "no baseline")
    table.columns = [f"speedup {c}" for c in table.columns]
    return table.reset_index()


def time_table(frame: pd.DataFrame) -> pd.DataFrame:
    """ms per backend of the whole operation (the same summary's times)."""
    found = reading.summary(frame)
    if found is None:
        return pd.DataFrame()
    table = found.shown(found.times)
    table.columns = [f"ms {c}" for c in table.columns]
    return table.reset_index()


def breakdown_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-branch ms of each backend that reports stages, beside its total and the stages' share of it."""
    rows = frame.copy()
    rows["ms_shown"] = reading.time_ms(rows)
    staged = rows[rows["stage"].astype(str) != STAGE_TOTAL]
    if staged.empty:
        return pd.DataFrame()
    axes = varying_axes(frame) + ["backend"]
    keep = rows.set_index(axes).index.isin(staged.set_index(axes).index)
    table = rows[keep].pivot_table(index=axes, columns="stage", values="ms_shown", aggfunc="last", dropna=False)
    stages = [c for c in dict.fromkeys(staged["stage"].astype(str)) if c in table.columns]
    ordered = stages + ([STAGE_TOTAL] if STAGE_TOTAL in table.columns else [])
    table = table[ordered]
    if STAGE_TOTAL in table.columns:
        table["stages / total"] = table[stages].sum(axis=1, min_count=1) / table[STAGE_TOTAL]
    table.columns = [f"ms {c}" if c in ordered else c for c in table.columns]
    return _in_run_order(table.reset_index(), axes, frame)


def detail_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every row with the columns that vary; columns with one value for all rows are returned apart,
    to be said once (a CPU run's 46 identical "predicted by the cost model" messages say nothing)."""
    columns = [c for c in (*varying_axes(frame), "backend", "stage", *DETAIL_COLUMNS) if c in frame.columns]
    table = frame[columns]
    constant: dict[str, str] = {}
    keep = []
    for column in columns:
        values = {_cell(v) for v in table[column]}
        if column in ("mode", "seqlen", "backend", "stage", "status") or len(values) > 1:
            keep.append(column)
        elif values and values != {""}:
            constant[column] = values.pop()
    return table[keep], constant


def failed_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Points that were not measured or predicted, with the reason."""
    failed = frame[~frame["status"].astype(str).isin((STATUS_OK, STATUS_PREDICTED))]
    columns = [c for c in (*varying_axes(frame), "backend", "stage", "status", "message") if c in frame.columns]
    return failed[columns]


def rerun_table(frame: pd.DataFrame, settings: SweepSpec) -> pd.DataFrame:
    """Each point of the run (its label, as progress lines print it) and the one command that re-runs exactly
    it: its axis values, its backends, the run's measurement settings (nsa_bench.repro)."""
    totals = frame[frame["stage"].astype(str) == STAGE_TOTAL]
    rows = []
    for _key, part in totals.groupby([c for c in KEY_FIELDS if c not in ("backend", "stage")], sort=False):
        point = Point.from_record(part.iloc[0].to_dict())
        backends = [b for b in dict.fromkeys(part["backend"].astype(str)) if b != settings.baseline]
        rows.append({"point": point.label(), "command": repro.sweep_command(point, backends, settings)})
    return pd.DataFrame(rows, columns=["point", "command"])


def config_table(payload: dict) -> pd.DataFrame:
    """spec.json / env.json as field | value (nested values flattened with dots)."""
    flat: list[tuple[str, str]] = []

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for name, inner in value.items():
                walk(inner, f"{prefix}{name}.")
        else:
            flat.append((prefix.rstrip("."), value if isinstance(value, str) else json.dumps(value)))

    for name, value in payload.items():
        walk(value, f"{name}.")
    return pd.DataFrame(flat, columns=["field", "value"])


# --- rendering ---------------------------------------------------------------------------------

def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    return str(value)


def markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "_none_\n"

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(_cell(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [line(table.columns), "|" + "---|" * len(table.columns)]
    lines += [line(row) for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _svg_inline(path: Path) -> str:
    """The <svg> element of a file, without its XML prolog/doctype, so it can sit inside HTML."""
    text = path.read_text()
    start = text.find("<svg")
    return text[start:] if start >= 0 else ""


def plot_html(plot: Plot) -> str:
    caption = html.escape(plot.name.replace("_", " "))
    if plot.png is not None:
        data = base64.b64encode(plot.png.read_bytes()).decode("ascii")
        body = f'<img alt="{caption}" src="data:image/png;base64,{data}">'
    elif plot.svg is not None:
        body = _svg_inline(plot.svg)
    else:
        return ""
    return f'<figure id="plot-{html.escape(plot.name)}">{body}<figcaption>{caption}</figcaption></figure>'


def plot_markdown(plot: Plot, base: Path) -> str:
    path = plot.png or plot.svg
    assert path is not None
    return f"![{plot.name}]({path.relative_to(base).as_posix()})\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;
color:#1b1b1b;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #d0d0d0;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em;max-width:100%}figure img,figure svg{max-width:100%;height:auto}
figcaption{text-align:center;font-size:.85em;color:#555}.warn{color:#a40000}.note{color:#555}
nav a{margin-right:1em}
"""


# --- the report --------------------------------------------------------------------------------

def find_plots(directory: Path) -> list[Plot]:
    folder = directory / PLOTS_DIR
    if not folder.is_dir():
        return []
    stems: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in PLOT_SUFFIXES:
            stems.setdefault(path.stem, {})[path.suffix.lower()] = path
    plots = [Plot(stem, files.get(".png"), files.get(".svg")) for stem, files in stems.items()]
    return sorted(plots, key=lambda plot: ("speedup" not in plot.name.lower(), plot.name))  # the headline first


def default_plotter(directory: Path, gpu: str | None) -> Sequence[Path]:
    from nsa_bench.plots import plot_run  # late: plotting pulls in matplotlib

    return plot_run(directory, gpu=gpu)


def _ensure_plots(directory: Path, gpu: str | None, plotter: Plotter) -> tuple[list[Plot], list[str]]:
    plots = find_plots(directory)
    if plots:
        return plots, []
    try:
        plotter(directory, gpu)
    except Exception as exc:  # noqa: BLE001 - a report without plots is still worth writing
        return [], [f"plots could not be made: {type(exc).__name__}: {exc}"]
    plots = find_plots(directory)
    return plots, ([] if plots else [f"no plots in {directory / PLOTS_DIR}"])


@dataclass(frozen=True)
class _Content:
    title: str
    spec: pd.DataFrame
    env: pd.DataFrame
    summary: pd.DataFrame
    times: pd.DataFrame
    breakdown: pd.DataFrame
    failed: pd.DataFrame
    detail: pd.DataFrame
    detail_constant: dict[str, str]
    counts: pd.DataFrame
    plots: tuple[Plot, ...]
    warnings: tuple[str, ...]
    baseline: str
    predicted: bool
    against_each: pd.DataFrame = field(default_factory=pd.DataFrame)  # NSA vs every dense backend (nsa_bench.baselines)
    break_even: pd.DataFrame = field(default_factory=pd.DataFrame)  # where NSA starts to pay (nsa_bench.breakeven)
    published: pd.DataFrame = field(default_factory=pd.DataFrame)  # this run beside published figures (nsa_bench.beside)
    rerun: pd.DataFrame = field(default_factory=pd.DataFrame)  # the command that re-runs each point (nsa_bench.repro)
    rerun_note: str = ""  # why the commands use the default settings, when the run's could not be read
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # layer modes: speedup, Amdahl bound, attention share
    baseline_notes: tuple[str, ...] = ()  # strongest dense kernel, padding at Dk != Dv


def _baselines_section(frame: pd.DataFrame) -> dict:
    """The dense-baselines section's tables and notes, from the same functions as the sweep summary."""
    from nsa_bench import baselines

    notes = tuple(n for n in (baselines.strongest_dense(frame), *baselines.padding_notes(frame)) if n)
    tables = {"against_each": baselines.baseline_speedups(frame), "layers": baselines.layer_table(frame)}
    return {name: table.reset_index() if not table.empty else table for name, table in tables.items()} | {
        "baseline_notes": notes}


BREAK_EVEN_NOTE = ("The sequence length at which NSA's time equals the baseline's, interpolated in log-log between "
                   "the swept lengths (k = 1024 tokens); also in breakeven.csv beside results.csv.")
RERUN_NOTE = ("Each command re-runs exactly one point of this run (every axis value, its backends, the run's "
              "measurement settings); `nsa-bench sweep --point \"<point>\" --backend ...` does the same from the label.")
PUBLISHED_NOTE = ("Published figures of the same configuration (nsa_bench/published.csv, each with its source), "
                  "beside this run's own figure at the same mode and length. A partial match says what differs "
                  "(another GPU, a shape the source does not state); `covers` says what part of attention a "
                  "figure times.")
LAYER_NOTE = ("Layer modes: one attention layer (projections, NSA's gate MLP, attention, output projection). "
              "The bound is the layer speedup if NSA's attention took no time (dense layer time / NSA's "
              "projections + gate MLP).")


def _load(directory: Path, plotter: Plotter) -> _Content:
    try:
        is_dir = directory.is_dir()
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        raise ReportError(f"{directory} is not a run folder (expected a folder holding {CSV_NAME})")
    try:
        frame = read_rows_nonempty(directory)
        spec = read_json(directory / SPEC_NAME)
        env = read_json(directory / ENV_NAME)
    except ResultsError as exc:
        raise ReportError(str(exc)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{directory}: spec.json or env.json is not valid JSON ({exc})") from exc
    if "status" not in frame.columns:
        raise ReportError(f"{directory / CSV_NAME}: not a results CSV, missing column status")
    target = env.get("target_gpu")
    gpu = target.get("key") if isinstance(target, dict) else None  # the spec the sweep predicted for
    gpu = gpu if isinstance(gpu, str) and gpu else None
    plots, warnings = _ensure_plots(directory, gpu, plotter)
    warnings = [*warnings, *filter(None, [reading.duplicates_warning(frame, directory / CSV_NAME)])]
    settings, why_default = repro.run_settings(directory)
    statuses = frame["status"].astype(str)
    baselines = sorted({b for b in frame.get("baseline", pd.Series(dtype=str)) if b})
    counts = statuses.value_counts().rename_axis("status").reset_index(name="rows")
    detail, detail_constant = detail_table(frame)
    return _Content(
        title=f"nsa-bench report: {directory.resolve().name}",
        spec=config_table(spec), env=config_table(env), summary=summary_table(frame),
        times=time_table(frame), breakdown=breakdown_table(frame), failed=failed_table(frame),
        detail=detail, detail_constant=detail_constant, counts=counts, plots=tuple(plots), warnings=tuple(warnings),
        baseline=", ".join(baselines) or "the baseline backend",
        predicted=bool((statuses == STATUS_PREDICTED).any()),
        break_even=breakeven.report_table(breakeven.break_evens(frame)),
        rerun=rerun_table(frame, settings), rerun_note=why_default,
        published=beside.beside_published(frame, str(target.get("name", "")) if isinstance(target, dict) else ""),
        **_baselines_section(frame),
    )


def _subtitle(content: _Content) -> str:
    if content.predicted:
        return ("Rows with status `predicted` come from the cost model (no GPU was used): "
                "their times and speedups are predictions, not measurements.")
    return "Measured on a GPU; every timed row passed the check against the float64 reference."


def _constants_html(constant: dict[str, str]) -> str:
    if not constant:
        return ""
    items = "; ".join(f"<b>{html.escape(k)}</b> = {html.escape(v)}" for k, v in constant.items())
    return f'<p class="note">Same in every row: {items}</p>'


def _constants_markdown(constant: dict[str, str]) -> str:
    if not constant:
        return ""
    return "Same in every row: " + "; ".join(f"**{k}** = {v}" for k, v in constant.items()) + "\n"


def _sections(content: _Content) -> list[tuple[str, str, list[tuple[str, object]]]]:
    """(anchor, title, parts) of every section that has something to show, in order; a part is ("p", text),
    ("h3", title), ("table", DataFrame), ("plots", [Plot]) or ("constants", dict). A run without layer
    points, failed points or plots gets no empty heading for them."""
    main_plots = [p for p in content.plots if not p.in_breakdown]
    breakdown_plots = [p for p in content.plots if p.in_breakdown]
    sections: list[tuple[str, str, list[tuple[str, object]]]] = [
        ("summary", "Summary", [("p", f"Speedup vs {content.baseline} (higher is better); a failed point shows its "
                                      "status."), ("table", content.summary), ("h3", "Time (ms)"),
                                ("table", content.times), ("h3", "Rows per status"), ("table", content.counts)])]
    baselines: list[tuple[str, object]] = [("p", note) for note in content.baseline_notes]
    if not content.against_each.empty:
        baselines += [("h3", "NSA speedup against each dense baseline"), ("table", content.against_each)]
    if not content.layers.empty:
        baselines += [("h3", "One attention layer"), ("p", LAYER_NOTE), ("table", content.layers)]
    if baselines:
        sections.append(("baselines", "Dense baselines", baselines))
    if not content.break_even.empty:
        sections.append(("break-even", "Break-even", [("p", BREAK_EVEN_NOTE), ("table", content.break_even)]))
    if not content.published.empty:
        sections.append(("published", "Beside published figures", [("p", PUBLISHED_NOTE), ("table", content.published)]))
    if main_plots:
        sections.append(("plots", "Plots", [("plots", main_plots)]))
    breakdown: list[tuple[str, object]] = [("plots", breakdown_plots)] if breakdown_plots else []
    if not content.breakdown.empty:
        breakdown.append(("table", content.breakdown))
    if breakdown:
        sections.append(("breakdown", "Per-branch breakdown", breakdown))
    if not content.failed.empty:
        sections.append(("failed", "Failed points", [("table", content.failed)]))
    if not content.spec.empty:
        sections.append(("config", "Configuration (spec.json)", [("table", content.spec)]))
    if not content.env.empty:
        sections.append(("env", "Environment (env.json)", [("table", content.env)]))
    if not content.rerun.empty:
        note = RERUN_NOTE + (f" (The run's settings could not be read: {content.rerun_note}; the sweep's defaults "
                             "stand in.)" if content.rerun_note else "")
        sections.append(("rerun", "Re-run a point", [("p", note), ("table", content.rerun)]))
    sections.append(("rows", "All rows", [("constants", content.detail_constant), ("table", content.detail)]))
    return sections


@dataclass(frozen=True)
class _Format:
    """How one output format writes each kind of part of a section (see `_sections`)."""

    p: Callable[[str], str]
    h3: Callable[[str], str]
    plots: Callable[[list[Plot]], str]
    constants: Callable[[dict[str, str]], str]
    table: Callable[[pd.DataFrame], str]

    def part(self, kind: str, value: object) -> str:
        return getattr(self, kind)(value)


_HTML = _Format(p=lambda text: f"<p>{html.escape(str(text))}</p>", h3=lambda text: f"<h3>{html.escape(str(text))}</h3>",
                plots=lambda plots: "".join(plot_html(p) for p in plots), constants=lambda c: _constants_html(c),
                table=lambda table: html_table(table))


def _markdown_format(directory: Path) -> _Format:
    return _Format(p=lambda text: f"{text}\n", h3=lambda text: f"### {text}\n",
                   plots=lambda plots: "".join(plot_markdown(p, directory) for p in plots),
                   constants=lambda c: _constants_markdown(c), table=lambda table: markdown_table(table))


def render_html(content: _Content) -> str:
    sections = _sections(content)
    nav = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    warnings = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in content.warnings)
    body = "".join(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
                   + "".join(_HTML.part(kind, value) for kind, value in parts) + "</section>"
                   for anchor, title, parts in sections)
    subtitle = html.escape(_subtitle(content).replace("`", ""))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(content.title)}</title><style>{CSS}</style></head><body>"
            f'<h1>{html.escape(content.title)}</h1><p class="note">{subtitle}</p>{warnings}'
            f"<nav>{nav}</nav>{body}</body></html>\n")


def render_markdown(content: _Content, directory: Path) -> str:
    markdown = _markdown_format(directory)
    parts = [f"# {content.title}\n", _subtitle(content) + "\n"]
    parts += [f"**Warning:** {w}\n" for w in content.warnings]
    for _anchor, title, section in _sections(content):
        parts.append(f"## {title}\n")
        parts += [text for kind, value in section if (text := markdown.part(kind, value))]
    return "\n".join(parts)


def build_report(directory: Path, plotter: Plotter = default_plotter) -> ReportFiles:
    """Write report.html and report.md into a run folder (making its plots first if there are none)."""
    directory = Path(directory)
    content = _load(directory, plotter)
    html_path, md_path = directory / HTML_NAME, directory / MD_NAME
    try:
        html_path.write_text(render_html(content))
        md_path.write_text(render_markdown(content, directory))
    except OSError as exc:
        raise ReportError(f"cannot write the report into {directory}: {exc}") from exc
    return ReportFiles(html_path, md_path, content.plots, content.warnings)

