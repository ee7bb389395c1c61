"""The regression gate: compare two runs point by point, against the noise of both runs.

Each matched point gets an nvbench-style label. A gate that cries wolf on noise gets switched off,
so SLOWER needs two things at once: a change beyond the threshold (default 5%) that is also clearly
outside the measurement noise. Changes beyond the threshold but inside the noise are AMBIGUOUS and
never fail the gate. The rules are spelled out in docs/regression-gate.md.

Noise rule (per run, per point): the p10..p90 range of a normal distribution is 2 x 1.2816 standard
deviations, so sigma ~= (p90 - p10) / 2.563 is a robust per-sample spread. The uncertainty of the
median of `samples` timings is then sqrt(pi/2) * sigma / sqrt(samples); divided by the median it is
the run's relative noise (unknown below MIN_SAMPLES samples). For `speedup` (a ratio of two timings of the same run) the noises of the
point and of its baseline row add in quadrature. Predicted figures come from a cost model: noise 0.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nsa_bench.output_paths import OutputError, check_outputs, write_output
from nsa_bench.results import ENV_NAME, ResultsError, absent_columns, read_json, read_rows, run_dir
from nsa_bench.schema import KEY_FIELDS, STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED

SAME, FASTER, SLOWER, AMBIGUOUS = "SAME", "FASTER", "SLOWER", "AMBIGUOUS"
LABELS = (SLOWER, AMBIGUOUS, FASTER, SAME)  # report order: what needs attention first

P10_P90_WIDTH_SIGMAS = 2 * 1.2815515655446004  # width of a normal's p10..p90 range in sigmas
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # se(median) = this * sigma / sqrt(n) for a normal
MIN_SAMPLES = 5  # below this, p10/p90 say nothing about the spread: the noise is unknown
DEFAULT_THRESHOLD = 0.05
DEFAULT_SIGMAS = 3.0

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2

Key = tuple[str, ...]


class CompareError(ValueError):
    """Inputs that cannot be compared (missing file, schema mismatch, no common rows): exit code 2."""


@dataclass(frozen=True)
class Metric:
    """What is gated: a CSV column, which direction is better, and which rows carry it."""

    name: str
    column: str
    higher_is_better: bool
    statuses: tuple[str, ...]
    measured: bool  # has sampling noise (p10/p90); predicted figures do not


METRICS: dict[str, Metric] = {
    "speedup": Metric("speedup", "speedup", True, (STATUS_OK,), True),
    "ms": Metric("ms", "ms_median", False, (STATUS_OK,), True),
    "predicted_ms": Metric("predicted_ms", "predicted_ms", False, (STATUS_OK, STATUS_PREDICTED), False),
}


@dataclass(frozen=True)
class Options:
    metric: str = "speedup"
    threshold: float = DEFAULT_THRESHOLD  # a fraction: 0.05 = 5%
    sigmas: float = DEFAULT_SIGMAS  # how far outside the combined noise counts as "clearly"
    all_stages: bool = False  # also gate the per-branch breakdown rows, not only stage == total
    allow_different_gpu: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise CompareError(f"metric={self.metric!r} unknown (choose from {', '.join(METRICS)})")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise CompareError(f"threshold={self.threshold * 100:g}% must be positive")
        if not (math.isfinite(self.sigmas) and self.sigmas > 0):
            raise CompareError(f"sigmas={self.sigmas} must be positive")


@dataclass(frozen=True)
class Run:
    """One side of the comparison: its rows and where and with what it ran."""

    label: str
    path: Path
    frame: pd.DataFrame
    env: dict
    gpu: str | None  # None: unknown or no GPU (a CPU run)


@dataclass(frozen=True)
class PointResult:
    key: Key
    baseline: float
    current: float
    noise_baseline: float  # relative noise of the baseline run's value (NaN: unknown)
    noise_current: float
    status: str
    remeasured: bool = False

    @property
    def change(self) -> float:
        """Relative change of the metric, current vs baseline (0.05 = +5%)."""
        return self.current / self.baseline - 1.0

    @property
    def noise(self) -> float:
        return math.hypot(self.noise_baseline, self.noise_current)

    def key_dict(self) -> dict[str, str]:
        return dict(zip(KEY_FIELDS, self.key))

    def label(self, shown: Sequence[str] = KEY_FIELDS) -> str:
        """A short name of the point: mode, backend, seqlen, stage and the `shown` fields."""
        k = self.key_dict()
        extra = " ".join(f"{SHORT_NAMES.get(name, name)}={k[name]}" for name in shown
                         if name not in ("mode", "backend", "seqlen", "stage"))
        stage = "" if k["stage"] == STAGE_TOTAL else f" [{k['stage']}]"
        return f"{k['mode']} {k['backend']} T={k['seqlen']}{stage}" + (f" {extra}" if extra else "")


SHORT_NAMES = {"batch": "B", "kv_heads": "Hkv", "group_size": "G", "head_dim_qk": "Dqk", "head_dim_v": "Dv",
               "block_cmp": "l", "stride_cmp": "d", "block_slc": "l'", "n_slc": "n", "window": "w"}


@dataclass(frozen=True)
class Comparison:
    options: Options
    baseline: Run
    current: Run
    points: tuple[PointResult, ...]
    only_baseline: tuple[Key, ...]
    only_current: tuple[Key, ...]
    skipped_baseline: dict[str, int]  # reason -> rows not eligible for the metric
    skipped_current: dict[str, int]
    env_differences: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def metric(self) -> Metric:
        return METRICS[self.options.metric]

    def varying_fields(self) -> list[str]:
        """Key fields that differ among the compared points: the rest is printed once."""
        return [name for i, name in enumerate(KEY_FIELDS) if len({p.key[i] for p in self.points}) > 1]

    def common_configuration(self) -> str:
        first = self.points[0].key_dict()
        return " ".join(f"{SHORT_NAMES.get(name, name)}={first[name]}" for name in KEY_FIELDS
                        if name not in self.varying_fields() and name not in ("mode", "backend", "seqlen", "stage"))

    def counts(self) -> dict[str, int]:
        return {label: sum(p.status == label for p in self.points) for label in LABELS}

    def geomean_ratio(self) -> float:
        """Geometric mean of current/baseline over the compared points."""
        return math.exp(sum(math.log(p.current / p.baseline) for p in self.points) / len(self.points))

    def regressions(self) -> list[PointResult]:
        """Points that got worse, worst first (any status)."""
        sign = -1.0 if self.metric.higher_is_better else 1.0
        worse = [p for p in self.points if sign * p.change > 0]
        return sorted(worse, key=lambda p: sign * p.change, reverse=True)

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if any(p.status == SLOWER for p in self.points) else EXIT_OK


# --- noise and labels --------------------------------------------------------------------------

def relative_noise(median: float, p10: float, p90: float, samples: float) -> float:
    """Relative standard error of a run's median (see the module docstring); NaN when unknown."""
    values = (median, p10, p90, samples)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return math.nan
    if median <= 0 or samples < MIN_SAMPLES or p90 < p10:
        return math.nan
    sigma = (p90 - p10) / P10_P90_WIDTH_SIGMAS
    return MEDIAN_SE_FACTOR * sigma / math.sqrt(samples) / median


def classify(baseline: float, current: float, noise: float, threshold: float, sigmas: float,
             higher_is_better: bool) -> str:
    """SAME inside the threshold; beyond it FASTER/SLOWER only when clearly outside the noise."""
    change = current / baseline - 1.0
    if abs(change) <= threshold:
        return SAME
    if not math.isfinite(noise) or noise > threshold or abs(math.log(current / baseline)) <= sigmas * noise:
        return AMBIGUOUS
    better = change > 0 if higher_is_better else change < 0
    return FASTER if better else SLOWER


# --- loading -----------------------------------------------------------------------------------

def _gpu_name(env: dict, frame: pd.DataFrame) -> str | None:
    """The run's GPU, named as its rows name it: the measured card (env.json's `gpu`), or for a run
    predicted without a GPU the spec it predicted for (`target_gpu`); without env.json (a copied CSV),
    the CSV's gpu column. None when nothing says."""
    name: object = None
    if env.get("measured") is False and isinstance(env.get("target_gpu"), dict):
        name = env["target_gpu"].get("name")
    elif "gpu" in env:
        name = env["gpu"].get("name") if isinstance(env["gpu"], dict) else env["gpu"]
    if name:
        return str(name)
    if "gpu" in frame.columns:
        names = sorted({g for g in frame["gpu"].astype(str) if g and g != "nan"})
        if names:
            return " + ".join(names)
    return None


def load_run(path: Path, label: str) -> Run:
    """Read one side (CSV file or run folder) with its env.json; CompareError when unreadable."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{label}: {path} does not exist")
    try:
        frame = read_rows(path)
        env = read_json(run_dir(path) / ENV_NAME)
    except ResultsError as exc:
        raise CompareError(f"{label}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompareError(f"{label}: {run_dir(path) / ENV_NAME} is not valid JSON ({exc})") from exc
    if not isinstance(env, dict):
        raise CompareError(f"{label}: {run_dir(path) / ENV_NAME} is not a JSON object")
    return Run(label, path, frame, env, _gpu_name(env, frame))


def _key_text(value: object) -> str:
    """Key cells as text, so 512, 512.0 and "512" from two CSVs match."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number


def _row_noise(record: dict, metric: Metric) -> float:
    if not metric.measured:
        return 0.0
    return relative_noise(*(_number(record.get(c)) for c in ("ms_median", "ms_p10", "ms_p90", "samples")))


@dataclass(frozen=True)
class _Eligible:
    values: dict[Key, tuple[float, float]]  # key -> (metric value, relative noise)
    skipped: dict[str, int]


def _eligible(run: Run, options: Options) -> _Eligible:
    """The run's rows that carry the metric, keyed; why the others are skipped."""
    metric = METRICS[options.metric]
    frame = run.frame
    if metric.column not in frame.columns or metric.column in absent_columns(frame):
        raise CompareError(f"{run.label}: {run.path} has no {metric.column!r} column (schema mismatch)")
    records = frame.to_dict("records")
    keys = [tuple(_key_text(r[c]) for c in KEY_FIELDS) for r in records]
    ok_noise = {k: _row_noise(r, METRICS["ms"]) for k, r in zip(keys, records) if r.get("status") == STATUS_OK}
    values: dict[Key, tuple[float, float]] = {}
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for key, record in zip(keys, records):
        status = str(record.get("status", STATUS_OK))
        stage = key[KEY_FIELDS.index("stage")]
        value = _number(record.get(metric.column))
        if status not in metric.statuses:
            skip(f"status {status}")
        elif stage != STAGE_TOTAL and not options.all_stages:
            skip("breakdown stage")
        elif metric.name == "speedup" and str(record.get("baseline", "")) == key[KEY_FIELDS.index("backend")]:
            skip("the speedup baseline itself")
        elif not (math.isfinite(value) and value > 0):
            skip(f"no {metric.column}")
        else:
            noise = _row_noise(record, metric)
            if metric.name == "speedup":
                noise = math.hypot(noise, _baseline_noise(key, str(record.get("baseline", "")), ok_noise))
            if key in values:
                skip("duplicate key (last row kept)")
            values[key] = (value, noise)
    return _Eligible(values, skipped)


def _baseline_noise(key: Key, baseline: str, ok_noise: dict[Key, float]) -> float:
    """Noise of the baseline backend's row that the speedup was computed against (same point)."""
    if not baseline:
        return math.nan
    backend, stage = KEY_FIELDS.index("backend"), KEY_FIELDS.index("stage")
    same_stage = key[:backend] + (baseline,) + key[backend + 1:]
    total = same_stage[:stage] + (STAGE_TOTAL,) + same_stage[stage + 1:]
    for candidate in (same_stage, total):
        if candidate in ok_noise:
            return ok_noise[candidate]
    return math.nan


def _flatten(payload: object, prefix: str = "") -> dict[str, str]:
    if isinstance(payload, dict):
        out: dict[str, str] = {}
        for name, value in payload.items():
            out.update(_flatten(value, f"{prefix}{name}."))
        return out
    return {prefix.rstrip("."): json.dumps(payload) if not isinstance(payload, str) else payload}


def env_differences(baseline: dict, current: dict) -> list[tuple[str, str, str]]:
    """(field, baseline value, current value) for every env.json field that differs."""
    flat_base, flat_cur = _flatten(baseline), _flatten(current)
    missing = "(absent)"
    return [(name, flat_base.get(name, missing), flat_cur.get(name, missing))
            for name in sorted(set(flat_base) | set(flat_cur))
            if flat_base.get(name, missing) != flat_cur.get(name, missing)]


# --- comparing ---------------------------------------------------------------------------------

def compare_runs(baseline: Run, current: Run, options: Options, notes: Sequence[str] = ()) -> Comparison:
    """Label every point the two runs share; CompareError when nothing can be compared."""
    base, cur = _eligible(baseline, options), _eligible(current, options)  # schema problems first
    if baseline.gpu != current.gpu and not options.allow_different_gpu:
        unknown = [run for run in (baseline, current) if run.gpu is None]
        if unknown:
            raise CompareError(
                f"cannot tell the GPU of the {unknown[0].label} run ({unknown[0].path}: no env.json naming it and "
                f"no gpu column); the {(current if unknown[0] is baseline else baseline).label} ran on "
                f"{(current if unknown[0] is baseline else baseline).gpu} (pass --allow-different-gpu to compare anyway)")
        raise CompareError(
            f"different GPUs: baseline {baseline.gpu} vs current {current.gpu} "
            "(pass --allow-different-gpu to compare anyway)")
    metric = METRICS[options.metric]
    common = [k for k in base.values if k in cur.values]
    if not common:
        hint = ""
        if metric.measured and not base.values and not cur.values:
            hint = " (predicted CPU runs have no measured rows: use --metric predicted_ms)"
        raise CompareError(
            f"no rows in common with a {metric.column} value: baseline has {len(base.values)}, "
            f"current has {len(cur.values)}{hint}")
    points = []
    for key in common:
        (b_value, b_noise), (c_value, c_noise) = base.values[key], cur.values[key]
        status = classify(b_value, c_value, math.hypot(b_noise, c_noise), options.threshold,
                          options.sigmas, metric.higher_is_better)
        points.append(PointResult(key, b_value, c_value, b_noise, c_noise, status))
    return Comparison(
        options=options, baseline=baseline, current=current, points=tuple(points),
        only_baseline=tuple(k for k in base.values if k not in cur.values),
        only_current=tuple(k for k in cur.values if k not in base.values),
        skipped_baseline=base.skipped, skipped_current=cur.skipped,
        env_differences=tuple(env_differences(baseline.env, current.env)), notes=tuple(notes))


def compare_paths(baseline: Path, current: Path, options: Options) -> Comparison:
    return compare_runs(load_run(baseline, "baseline"), load_run(current, "current"), options)


# --- re-measuring suspects ---------------------------------------------------------------------

def suspects(comparison: Comparison) -> list[PointResult]:
    """Points whose label could still change the verdict: SLOWER and AMBIGUOUS."""
    return [p for p in comparison.points if p.status in (SLOWER, AMBIGUOUS)]


def decide_again(comparison: Comparison, fresh: pd.DataFrame, note: str) -> Comparison:
    """The comparison decided anew with `fresh` rows in place of the current run's rows of the same keys (a
    re-measurement of the suspects, nsa_bench.remeasure); the points whose rows were replaced say so."""
    missing = [c for c in KEY_FIELDS if c not in fresh.columns]
    if missing:
        raise CompareError(f"--rerun: re-measured rows lack columns {', '.join(missing)}")
    frame = _replace_rows(comparison.current.frame, fresh)
    current = Run(comparison.current.label, comparison.current.path, frame, comparison.current.env,
                  comparison.current.gpu)
    redone = compare_runs(comparison.baseline, current, comparison.options, (*comparison.notes, note))
    todo_keys = {p.key for p in suspects(comparison)}
    points = tuple(PointResult(p.key, p.baseline, p.current, p.noise_baseline, p.noise_current, p.status,
                               p.key in todo_keys) for p in redone.points)
    return dataclasses.replace(redone, points=points)


def _replace_rows(frame: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    def keys(table: pd.DataFrame) -> list[Key]:
        return [tuple(_key_text(v) for v in rec) for rec in table[list(KEY_FIELDS)].itertuples(index=False)]

    fresh_keys = set(keys(fresh))
    kept = frame[[k not in fresh_keys for k in keys(frame)]]
    return pd.concat([kept, fresh], ignore_index=True)


def with_note(comparison: Comparison, note: str) -> Comparison:
    return dataclasses.replace(comparison, notes=(*comparison.notes, note))


# --- output ------------------------------------------------------------------------------------

def _pct(fraction: float, signed: bool = True) -> str:
    if not math.isfinite(fraction):
        return "?"
    return f"{fraction * 100:+.1f}%" if signed else f"{fraction * 100:.1f}%"


def _value(value: float) -> str:
    return f"{value:.4g}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"


def to_markdown(comparison: Comparison, worst: int = 5) -> str:
    """The summary for humans and CI logs: verdict, counts, geomean, worst regressions, environment."""
    opts, metric = comparison.options, comparison.metric
    counts = comparison.counts()
    shown = comparison.varying_fields()
    direction = "higher is better" if metric.higher_is_better else "lower is better"
    verdict = ("FAIL: confirmed regression" if comparison.exit_code == EXIT_REGRESSION
               else "PASS: no confirmed regression")
    lines = [
        f"# nsa-bench compare: {verdict}", "",
        f"- baseline: `{comparison.baseline.path}` (GPU: {comparison.baseline.gpu or 'none/unknown'})",
        f"- current: `{comparison.current.path}` (GPU: {comparison.current.gpu or 'none/unknown'})",
        f"- metric: `{metric.column}` ({direction}); threshold {_pct(opts.threshold, False)}; "
        f"clearly outside noise = beyond {opts.sigmas:g} x combined noise",
        f"- common configuration: {comparison.common_configuration() or '(none)'}",
        f"- points compared: {len(comparison.points)}; "
        + ", ".join(f"{label} {counts[label]}" for label in LABELS),
        f"- geomean current/baseline: {comparison.geomean_ratio():.4f} "
        f"({_pct(comparison.geomean_ratio() - 1)})",
        f"- unmatched: {len(comparison.only_baseline)} only in baseline, "
        f"{len(comparison.only_current)} only in current",
        f"- skipped rows: baseline {_skipped_text(comparison.skipped_baseline)}; "
        f"current {_skipped_text(comparison.skipped_current)}",
    ]
    lines += [f"- {note}" for note in comparison.notes]
    regressions = comparison.regressions()[:worst]
    lines += ["", "## Worst regressions", ""]
    if regressions:
        lines += _md_table(("point", "baseline", "current", "change", f"{opts.sigmas:g} x combined noise", "status"),
                           [(p.label(shown), _value(p.baseline), _value(p.current), _pct(p.change),
                             "±" + _pct(opts.sigmas * p.noise, False), p.status) for p in regressions])
    else:
        lines.append("none: no point got worse")
    lines += ["", "## Environment differences (env.json)", ""]
    if comparison.env_differences:
        lines += _md_table(("field", "baseline", "current"), comparison.env_differences)
    else:
        lines.append("none")
    order = {label: i for i, label in enumerate(LABELS)}
    rows = sorted(comparison.points, key=lambda p: (order[p.status], -abs(p.change)))
    lines += ["", "## All points", ""]
    lines += _md_table(
        ("point", "baseline", "current", "change", "noise baseline", "noise current", "status"),
        [(p.label(shown), _value(p.baseline), _value(p.current), _pct(p.change), _pct(p.noise_baseline, False),
          _pct(p.noise_current, False), p.status + (" (re-measured)" if p.remeasured else ""))
         for p in rows])
    return "\n".join(lines) + "\n"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def to_json(comparison: Comparison) -> dict:
    """Machine-readable result for dashboards; NaN noise becomes null."""
    opts = comparison.options
    return {
        "verdict": "fail" if comparison.exit_code == EXIT_REGRESSION else "pass",
        "exit_code": comparison.exit_code,
        "metric": comparison.metric.column,
        "higher_is_better": comparison.metric.higher_is_better,
        "threshold": opts.threshold,
        "sigmas": opts.sigmas,
        "baseline": {"path": str(comparison.baseline.path), "gpu": comparison.baseline.gpu,
                     "skipped": comparison.skipped_baseline},
        "current": {"path": str(comparison.current.path), "gpu": comparison.current.gpu,
                    "skipped": comparison.skipped_current},
        "counts": comparison.counts(),
        "geomean_ratio": comparison.geomean_ratio(),
        "only_in_baseline": [dict(zip(KEY_FIELDS, k)) for k in comparison.only_baseline],
        "only_in_current": [dict(zip(KEY_FIELDS, k)) for k in comparison.only_current],
        "env_differences": [{"field": f, "baseline": b, "current": c} for f, b, c in comparison.env_differences],
        "notes": list(comparison.notes),
        "points": [{**p.key_dict(), "baseline_value": p.baseline, "current_value": p.current,
                    "change": p.change, "noise_baseline": _finite(p.noise_baseline),
                    "noise_current": _finite(p.noise_current), "status": p.status,
                    "remeasured": p.remeasured} for p in comparison.points],
    }


def run_compare(baseline: Path, current: Path, options: Options, *, md_path: Path | None = None,
                json_path: Path | None = None,
                revise: Callable[[Comparison], Comparison] | None = None) -> tuple[Comparison, str]:
    """The whole `nsa-bench compare`: refuse outputs that would land on an input or a run's file, compare,
    let `revise` decide again (--rerun's re-measurement), write the files; (result, markdown)."""
    outputs = (("--md", md_path), ("--json", json_path))
    try:
        check_outputs((Path(baseline), Path(current)), outputs)
    except OutputError as exc:
        raise CompareError(str(exc)) from None
    comparison = compare_paths(baseline, current, options)
    if revise is not None:
        comparison = revise(comparison)
    markdown = to_markdown(comparison)
    texts = {"--md": markdown, "--json": json.dumps(to_json(comparison), indent=2) + "\n"}
    try:
        for flag, path in outputs:
            if path is not None:
                write_output(flag, Path(path), texts[flag])
    except OutputError as exc:
        raise CompareError(str(exc)) from None
    return comparison, markdown
