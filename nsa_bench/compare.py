"""The regression gate: compare two runs point by point, against the noise of both runs.

Each matched point gets an nvbench-style label. A gate that cries wolf on noise gets switched off,
so SLOWER needs two things at once: a change beyond the threshold (default 5%) that is also clearly
outside the measurement noise (however the noise compares with the threshold: a tiny threshold must not
turn a clear regression into noise). Changes beyond the threshold but inside the noise are AMBIGUOUS and
never fail the gate by default; but a gate must never pass quietly what it could not judge, so the
verdict counts every such point (AMBIGUOUS, or found in one run only), `fail_on_ambiguous` fails on
them, and a comparison that judged no point at all fails. The rules are spelled out in docs/regression-gate.md; what a run offers per row (speedups from its
own times, noise, clocks) is nsa_bench.gate_values.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nsa_bench import reading
from nsa_bench.gate_values import METRICS, Key, Metric, RunValues, frame_keys, run_values
from nsa_bench.gate_values import relative_noise  # noqa: F401 - the noise rule, read with the gate
from nsa_bench.output_paths import OutputError, check_outputs, write_output
from nsa_bench.repro import run_settings, sweep_command
from nsa_bench.results import ENV_NAME, ResultsError, absent_columns, csv_path, read_json, read_rows, run_dir
from nsa_bench.schema import KEY_FIELDS, STAGE_TOTAL
from nsa_bench.spec import Point, SweepSpec

SAME, FASTER, SLOWER, AMBIGUOUS = "SAME", "FASTER", "SLOWER", "AMBIGUOUS"
LABELS = (SLOWER, AMBIGUOUS, FASTER, SAME)  # report order: what needs attention first

MD_TITLE = "# nsa-bench compare: "  # the first line of compare's markdown starts so
JSON_MARKER = ("written_by", "nsa-bench compare")  # the key and value that mark compare's JSON
MAX_OWN_JSON_BYTES = 256 * 2**20  # a larger file is no gate.json compare wrote

DEFAULT_THRESHOLD = 0.05
DEFAULT_SIGMAS = 3.0
SHOWN_DISAGREEMENTS = 3  # stored speedups that disagree with the times: how many to name

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


class CompareError(ValueError):
    """Inputs that cannot be compared (missing file, schema mismatch, no common rows): exit code 2."""


@dataclass(frozen=True)
class Options:
    metric: str = "speedup"
    threshold: float = DEFAULT_THRESHOLD  # a fraction: 0.05 = 5%
    sigmas: float = DEFAULT_SIGMAS  # how far outside the combined noise counts as "clearly"
    all_stages: bool = False  # also gate the per-branch breakdown rows, not only stage == total
    allow_different_gpu: bool = False
    fail_on_ambiguous: bool = False  # exit 1 when any point could not be judged
    normalize_clocks: bool = False  # judge ms x SM clock (cycles) where both runs read the clock

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise CompareError(f"metric={self.metric!r} unknown (choose from {', '.join(METRICS)})")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise CompareError(f"--threshold {self.threshold * 100:g}: must be a positive percentage")
        if self.threshold >= 1.0:
            raise CompareError(f"--threshold {self.threshold * 100:g}: must be below 100 (a speedup cannot fall by "
                               "100% or more, so such a gate could never fail)")
        if not (math.isfinite(self.sigmas) and self.sigmas > 0):
            raise CompareError(f"--sigmas {self.sigmas:g}: must be positive")


@dataclass(frozen=True)
class Run:
    """One side of the comparison: its rows, where and with what it ran, and how it was measured."""

    label: str
    path: Path
    frame: pd.DataFrame
    env: dict
    gpu: str | None  # None: unknown or no GPU (a CPU run)
    settings: SweepSpec = field(default_factory=SweepSpec)  # spec.json's measurement settings
    settings_note: str = ""  # why the settings are the sweep's defaults ("" when spec.json was read)


@dataclass(frozen=True)
class PointResult:
    key: Key
    baseline: float
    current: float
    noise_baseline: float  # relative noise of the baseline run's value (NaN: unknown)
    noise_current: float
    status: str
    remeasured: bool = False
    clock_ratio: float = math.nan  # SM clock of the current row / of the baseline row (NaN: not both read)
    normalized: bool = False  # baseline and current are ms x SM MHz (cycles), not ms
    against: str = ""  # the backend a speedup is against

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
        return key_label(self.key, shown)


SHORT_NAMES = {"batch": "B", "kv_heads": "Hkv", "group_size": "G", "head_dim_qk": "Dqk", "head_dim_v": "Dv",
               "block_cmp": "l", "stride_cmp": "d", "block_slc": "l'", "n_slc": "n", "window": "w"}


def key_label(key: Key, shown: Sequence[str] = KEY_FIELDS) -> str:
    k = dict(zip(KEY_FIELDS, key))
    extra = " ".join(f"{SHORT_NAMES.get(name, name)}={k[name]}" for name in shown
                     if name not in ("mode", "backend", "seqlen", "stage"))
    stage = "" if k["stage"] == STAGE_TOTAL else f" [{k['stage']}]"
    return f"{k['mode']} {k['backend']} T={k['seqlen']}{stage}" + (f" {extra}" if extra else "")


def why_ambiguous(point: PointResult) -> str:
    """What kept an AMBIGUOUS point from a verdict."""
    return "noise unknown" if not math.isfinite(point.noise) else "inside the noise"


@dataclass(frozen=True)
class Comparison:
    options: Options
    baseline: Run
    current: Run
    points: tuple[PointResult, ...]
    only_baseline: tuple[Key, ...]
    only_current: tuple[Key, ...]
    baseline_rows: RunValues
    current_rows: RunValues
    env_differences: tuple[tuple[str, str, str], ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def metric(self) -> Metric:
        return METRICS[self.options.metric]

    @property
    def skipped_baseline(self) -> dict[str, int]:
        return self.baseline_rows.skipped

    @property
    def skipped_current(self) -> dict[str, int]:
        return self.current_rows.skipped

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
        """Points worse beyond the threshold, worst first: SLOWER, and AMBIGUOUS ones that got worse (a SAME
        point is inside the threshold, whatever its sign)."""
        sign = -1.0 if self.metric.higher_is_better else 1.0
        worse = [p for p in self.points if p.status in (SLOWER, AMBIGUOUS) and sign * p.change > 0]
        return sorted(worse, key=lambda p: sign * p.change, reverse=True)

    def not_judged(self) -> dict[str, int]:
        """Points the gate could not judge, by why: AMBIGUOUS ones (by what kept them from a verdict) and
        points with a value in one run only."""
        counts: dict[str, int] = {}
        for point in self.points:
            if point.status == AMBIGUOUS:
                why = f"AMBIGUOUS: {why_ambiguous(point)}"
                counts[why] = counts.get(why, 0) + 1
        for why, keys in (("only in baseline", self.only_baseline), ("only in current", self.only_current)):
            if keys:
                counts[why] = len(keys)
        return counts

    def one_sided(self) -> list[tuple[Key, str]]:
        """Each point with a value in one run only, and why the other run has none."""
        return ([(k, f"only in baseline; current: {self.current_rows.why_not.get(k, 'no row')}")
                 for k in self.only_baseline]
                + [(k, f"only in current; baseline: {self.baseline_rows.why_not.get(k, 'no row')}")
                   for k in self.only_current])

    def throttled_runs(self) -> list[str]:
        """'current (3 rows: sw_thermal_slowdown)' for each run with rows the GPU flagged as throttled."""
        out = []
        for run, rows in ((self.baseline, self.baseline_rows), (self.current, self.current_rows)):
            if rows.throttling.rows:
                reasons = f": {', '.join(rows.throttling.reasons)}" if rows.throttling.reasons else ""
                out.append(f"{run.label} ({rows.throttling.rows} rows{reasons})")
        return out

    def judged_none(self) -> bool:
        """Whether no point got a verdict (all AMBIGUOUS): a gate that judged nothing must not pass."""
        return not any(p.status != AMBIGUOUS for p in self.points)

    @property
    def exit_code(self) -> int:
        if any(p.status == SLOWER for p in self.points) or self.judged_none():
            return EXIT_REGRESSION
        if self.options.fail_on_ambiguous and self.not_judged():
            return EXIT_REGRESSION
        return EXIT_OK

    def verdict(self) -> str:
        """One line: pass or fail and why, how many points were not judged, which runs were throttled."""
        unjudged = sum(self.not_judged().values())
        total = len(self.points) + len(self.only_baseline) + len(self.only_current)
        why = ", ".join(f"{n} {reason}" for reason, n in self.not_judged().items())
        slower = any(p.status == SLOWER for p in self.points)
        if not slower and self.judged_none():
            text = f"FAIL: no point could be judged ({why})"
        else:
            if slower:
                text = "FAIL: confirmed regression"
            elif self.exit_code == EXIT_REGRESSION:
                text = "FAIL: not every point could be judged (--fail-on-ambiguous)"
            else:
                text = "PASS: no confirmed regression"
            text += f"; {unjudged} of {total} points not judged ({why})" if unjudged else f"; all {total} points judged"
        throttled = self.throttled_runs()
        return text + (f"; throttled: {'; '.join(throttled)}" if throttled else "")

    def rerun_command(self, point: PointResult) -> str:
        """The `nsa-bench sweep` that re-measures this point as the current run measured it."""
        settings = self.current.settings
        if point.against:
            settings = dataclasses.replace(settings, baseline=point.against)
        backend = point.key_dict()["backend"]
        return sweep_command(Point.from_record(point.key_dict()), (backend,), settings)

    def clock_notes(self) -> list[str]:
        """What the gate did about SM clocks, never silently."""
        read = [p for p in self.points if math.isfinite(p.clock_ratio)]
        notes = []
        if read:
            ratios = [p.clock_ratio for p in read]
            notes.append(f"SM clock current/baseline: read in both runs at {len(read)} of {len(self.points)} "
                         f"points; median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
                         f"max {max(ratios):.3f})")
        if not self.options.normalize_clocks:
            return notes
        if self.metric.name == "speedup":
            notes.append("--normalize-clocks: a speedup is the ratio of two times of one run at one clock, so the "
                         "clock cancels: speedups are judged as they are (already normalized)")
        elif self.metric.name == "predicted_ms":
            notes.append("--normalize-clocks: could not normalize: predicted_ms comes from the cost model, "
                         "which has no clock; judged as it is")
        else:
            raw = len(self.points) - sum(p.normalized for p in self.points)
            done = f"judged {len(self.points) - raw} points as ms x SM MHz (cycles)"
            notes.append(f"--normalize-clocks: {done}" + (
                f"; could not normalize {raw} points (no SM clock reading in both runs): judged on raw times"
                if raw else ""))
        return notes


# --- labels ------------------------------------------------------------------------------------

def classify(baseline: float, current: float, noise: float, threshold: float, sigmas: float,
             higher_is_better: bool) -> str:
    """SAME inside the threshold; beyond it FASTER/SLOWER when clearly outside the noise (whether or not the
    noise itself exceeds the threshold), AMBIGUOUS when inside it or the noise is unknown."""
    change = current / baseline - 1.0
    if abs(change) <= threshold:
        return SAME
    if not math.isfinite(noise) or abs(math.log(current / baseline)) <= sigmas * noise:
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


def _refuse_duplicates(frame: pd.DataFrame, file: Path, label: str) -> None:
    """CompareError naming the first two rows of one key: which is the run's, the gate cannot tell, and taking
    either would make the verdict depend on the order of the rows."""
    found = reading.duplicate_rows(frame)
    if found:
        first = found[0]
        more = f"; {len(found)} rows repeat an earlier row's key in all" if len(found) > 1 else ""
        raise CompareError(f"{label}: {file} lines {first.first_line} and {first.line} hold the same key "
                           f"({reading.point_text(first.key)}){more}: a run has one row per key; remove the row "
                           "that is not the run's")


def load_run(path: Path, label: str) -> Run:
    """Read one side (CSV file or run folder) with its env.json and spec.json; CompareError when unreadable
    (a cell that holds inf, 0 or a negative number where the row's status says it has a time, named by file,
    line and column, as every reader refuses it), or when two rows share a key."""
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
    _refuse_duplicates(frame, csv_path(path), label)
    settings, note = run_settings(run_dir(path))
    return Run(label, path, frame, env, _gpu_name(env, frame), settings, note)


def _values(run: Run, options: Options) -> RunValues:
    """The run's comparable rows; CompareError when it lacks the column the metric is read from."""
    metric = METRICS[options.metric]
    if metric.source not in run.frame.columns or metric.source in absent_columns(run.frame):
        computed = " (speedups are computed from the run's times)" if metric.name == "speedup" else ""
        raise CompareError(f"{run.label}: {run.path} has no {metric.source!r} column (schema mismatch){computed}")
    return run_values(run.frame, metric, options.all_stages, run.settings.baseline)


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

def _check_gpus(baseline: Run, current: Run, options: Options) -> None:
    if baseline.gpu == current.gpu or options.allow_different_gpu:
        return
    unknown = [run for run in (baseline, current) if run.gpu is None]
    if unknown:
        other = current if unknown[0] is baseline else baseline
        raise CompareError(
            f"cannot tell the GPU of the {unknown[0].label} run ({unknown[0].path}: no env.json naming it and "
            f"no gpu column); the {other.label} ran on {other.gpu} (pass --allow-different-gpu to compare anyway)")
    raise CompareError(f"different GPUs: baseline {baseline.gpu} vs current {current.gpu} "
                       "(pass --allow-different-gpu to compare anyway)")


def _point(key: Key, base: RunValues, cur: RunValues, options: Options) -> PointResult:
    """One matched point, labelled; judged in cycles (ms x SM MHz) when asked to and both clocks were read."""
    b, c = base.values[key], cur.values[key]
    ratio = c.clock_mhz / b.clock_mhz if math.isfinite(b.clock_mhz) and math.isfinite(c.clock_mhz) else math.nan
    normalized = options.normalize_clocks and options.metric == "ms" and math.isfinite(ratio)
    b_value, c_value = (b.value * b.clock_mhz, c.value * c.clock_mhz) if normalized else (b.value, c.value)
    metric = METRICS[options.metric]
    status = classify(b_value, c_value, math.hypot(b.noise, c.noise), options.threshold, options.sigmas,
                      metric.higher_is_better)
    return PointResult(key, b_value, c_value, b.noise, c.noise, status, clock_ratio=ratio, normalized=normalized,
                       against=c.against or b.against)


def _values_text(values: set[str], limit: int = 3) -> str:
    shown = sorted(values, key=lambda v: (len(v), v))
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return "/".join(shown[:limit]) + more


def why_apart(base: Sequence[Key], cur: Sequence[Key]) -> str:
    """Why no key of one run is a key of the other: the key columns whose values the runs never share
    (dtype: baseline float64, current bfloat16), else that they combine shared values differently."""
    parts = []
    for i, name in enumerate(KEY_FIELDS):
        in_base, in_cur = {k[i] for k in base}, {k[i] for k in cur}
        if in_base.isdisjoint(in_cur):
            parts.append(f"{name}: baseline {_values_text(in_base)}, current {_values_text(in_cur)}")
    if parts:
        return "the key columns differ: " + "; ".join(parts)
    varying = [name for i, name in enumerate(KEY_FIELDS) if len({k[i] for k in (*base, *cur)}) > 1]
    return f"every key column shares values, but in other combinations (of {', '.join(varying)})"


def compare_runs(baseline: Run, current: Run, options: Options, notes: Sequence[str] = ()) -> Comparison:
    """Label every point the two runs share; CompareError when nothing can be compared."""
    base, cur = _values(baseline, options), _values(current, options)  # schema problems first
    _check_gpus(baseline, current, options)
    metric = METRICS[options.metric]
    common = [k for k in base.values if k in cur.values]
    if not common:
        hint = ""
        if metric.measured and not base.values and not cur.values:
            hint = " (predicted CPU runs have no measured rows: use --metric predicted_ms)"
        elif base.values and cur.values:
            hint = f"; {why_apart(list(base.values), list(cur.values))}"
        raise CompareError(
            f"no rows in common with a {metric.column} value: baseline has {len(base.values)}, "
            f"current has {len(cur.values)}{hint}")
    return Comparison(
        options=options, baseline=baseline, current=current,
        points=tuple(_point(key, base, cur, options) for key in common),
        only_baseline=tuple(k for k in base.values if k not in cur.values),
        only_current=tuple(k for k in cur.values if k not in base.values),
        baseline_rows=base, current_rows=cur,
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
    current = dataclasses.replace(comparison.current, frame=frame)
    redone = compare_runs(comparison.baseline, current, comparison.options, (*comparison.notes, note))
    todo_keys = {p.key for p in suspects(comparison)}
    points = tuple(dataclasses.replace(p, remeasured=p.key in todo_keys) for p in redone.points)
    return dataclasses.replace(redone, points=points)


def _replace_rows(frame: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    fresh_keys = set(frame_keys(fresh))
    kept = frame[[k not in fresh_keys for k in frame_keys(frame)]]
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


def _clock(point: PointResult) -> str:
    if not math.isfinite(point.clock_ratio):
        return "?"
    return f"{point.clock_ratio:.3f}" + (" *" if point.normalized else "")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"


def _status_text(point: PointResult) -> str:
    text = point.status
    if point.status == AMBIGUOUS:
        text += f" ({why_ambiguous(point)})"
    return text + (" (re-measured)" if point.remeasured else "")


def _run_notes(comparison: Comparison) -> list[str]:
    """What the gate noticed about each run's rows: an assumed baseline, stored speedups the times deny."""
    notes = []
    for run, rows in ((comparison.baseline, comparison.baseline_rows), (comparison.current, comparison.current_rows)):
        if rows.assumed_baseline:
            origin = "the sweep's default" if run.settings_note else "the run's baseline in spec.json"
            notes.append(f"{run.label}: the CSV has no baseline column: speedups are against "
                         f"{rows.assumed_baseline} ({origin})")
        if rows.disagreements:
            first = "; ".join(f"{key_label(d.key, ())}: stored {d.stored:.6g}, times give {d.computed:.6g}"
                              for d in rows.disagreements[:SHOWN_DISAGREEMENTS])
            more = f"; and {len(rows.disagreements) - SHOWN_DISAGREEMENTS} more" \
                if len(rows.disagreements) > SHOWN_DISAGREEMENTS else ""
            notes.append(f"{run.label}: {len(rows.disagreements)} stored speedups disagree with the run's own times "
                         f"(judged on the times): {first}{more}")
    return notes


def _header_lines(comparison: Comparison) -> list[str]:
    opts, metric = comparison.options, comparison.metric
    counts = comparison.counts()
    direction = "higher is better" if metric.higher_is_better else "lower is better"
    computed = " computed from each run's times" if metric.name == "speedup" else ""
    lines = [
        f"{MD_TITLE}{comparison.verdict()}", "",
        f"- baseline: `{comparison.baseline.path}` (GPU: {comparison.baseline.gpu or 'none/unknown'})",
        f"- current: `{comparison.current.path}` (GPU: {comparison.current.gpu or 'none/unknown'})",
        f"- metric: `{metric.column}`{computed} ({direction}); threshold {_pct(opts.threshold, False)}; "
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
    notes = [*comparison.clock_notes(), *_run_notes(comparison), *comparison.notes]
    return lines + [f"- {note}" for note in notes]


def _regression_lines(comparison: Comparison, shown: Sequence[str], worst: int) -> list[str]:
    opts = comparison.options
    regressions = comparison.regressions()[:worst]
    lines = ["", "## Worst regressions: SLOWER, and AMBIGUOUS points worse beyond the threshold", ""]
    if regressions:
        lines += _md_table(("point", "baseline", "current", "change", f"{opts.sigmas:g} x combined noise", "status"),
                           [(p.label(shown), _value(p.baseline), _value(p.current), _pct(p.change),
                             "±" + _pct(opts.sigmas * p.noise, False), _status_text(p))
                            for p in regressions])
    else:
        lines.append("none: no point got worse beyond the threshold")
    return lines


def _rerun_lines(comparison: Comparison, shown: Sequence[str]) -> list[str]:
    suspects_ = suspects(comparison)
    if not suspects_:
        return []
    note = comparison.current.settings_note
    settings = f"the sweep's default settings ({note})" if note else "the current run's settings (its spec.json)"
    lines = ["", "## Re-run the suspects", "",
             "Each command re-measures one SLOWER or AMBIGUOUS point (with the backend it is against), with "
             f"{settings}:", "", "```bash"]
    for p in suspects_:
        lines += [f"# {p.label(shown)}: {p.status} {_pct(p.change)}", comparison.rerun_command(p)]
    return lines + ["```"]


def _one_sided_lines(comparison: Comparison, shown: Sequence[str], limit: int = 20) -> list[str]:
    one_sided = comparison.one_sided()
    if not one_sided:
        return []
    lines = ["", "## Points in one run only (not judged)", ""]
    lines += _md_table(("point", "why"), [(key_label(k, shown), why) for k, why in one_sided[:limit]])
    if len(one_sided) > limit:
        lines.append(f"\n... and {len(one_sided) - limit} more")
    return lines


def to_markdown(comparison: Comparison, worst: int = 5) -> str:
    """The summary for humans and CI logs: verdict, counts, geomean, worst regressions, a re-run command per
    suspect, environment, every point with its clock ratio."""
    shown = comparison.varying_fields()
    lines = _header_lines(comparison) + _regression_lines(comparison, shown, worst)
    lines += _rerun_lines(comparison, shown) + _one_sided_lines(comparison, shown)
    lines += ["", "## Environment differences (env.json)", ""]
    if comparison.env_differences:
        lines += _md_table(("field", "baseline", "current"), comparison.env_differences)
    else:
        lines.append("none")
    order = {label: i for i, label in enumerate(LABELS)}
    rows = sorted(comparison.points, key=lambda p: (order[p.status], -abs(p.change)))
    lines += ["", "## All points", ""]
    lines += _md_table(
        ("point", "baseline", "current", "change", "noise baseline", "noise current", "SM clock cur/base", "status"),
        [(p.label(shown), _value(p.baseline), _value(p.current), _pct(p.change), _pct(p.noise_baseline, False),
          _pct(p.noise_current, False), _clock(p), _status_text(p)) for p in rows])
    if any(p.normalized for p in comparison.points):
        lines += ["", "\\* judged clock-normalized: baseline and current are ms x SM MHz (thousands of cycles)"]
    return "\n".join(lines) + "\n"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _point_json(comparison: Comparison, p: PointResult) -> dict:
    suspect = p.status in (SLOWER, AMBIGUOUS)
    return {**p.key_dict(), "baseline_value": p.baseline, "current_value": p.current, "change": p.change,
            "noise_baseline": _finite(p.noise_baseline), "noise_current": _finite(p.noise_current),
            "status": p.status, "ambiguous_because": why_ambiguous(p)
            if p.status == AMBIGUOUS else None, "remeasured": p.remeasured,
            "clock_ratio": _finite(p.clock_ratio), "clock_normalized": p.normalized, "against": p.against or None,
            "rerun": comparison.rerun_command(p) if suspect else None}


def _side_json(run: Run, rows: RunValues) -> dict:
    return {"path": str(run.path), "gpu": run.gpu, "skipped": rows.skipped,
            "assumed_baseline": rows.assumed_baseline or None,
            "throttled_rows": rows.throttling.rows, "throttle_reasons": list(rows.throttling.reasons),
            "speedup_disagreements": [{**dict(zip(KEY_FIELDS, d.key)), "stored": d.stored, "computed": d.computed}
                                      for d in rows.disagreements]}


def to_json(comparison: Comparison) -> dict:
    """Machine-readable result for dashboards; NaN noise becomes null."""
    opts = comparison.options
    return {
        JSON_MARKER[0]: JSON_MARKER[1],
        "verdict": "fail" if comparison.exit_code == EXIT_REGRESSION else "pass",
        "verdict_line": comparison.verdict(),
        "exit_code": comparison.exit_code,
        "metric": comparison.metric.column,
        "higher_is_better": comparison.metric.higher_is_better,
        "threshold": opts.threshold,
        "sigmas": opts.sigmas,
        "fail_on_ambiguous": opts.fail_on_ambiguous,
        "normalize_clocks": opts.normalize_clocks,
        "baseline": _side_json(comparison.baseline, comparison.baseline_rows),
        "current": _side_json(comparison.current, comparison.current_rows),
        "counts": comparison.counts(),
        "not_judged": comparison.not_judged(),
        "geomean_ratio": comparison.geomean_ratio(),
        "only_in_baseline": [dict(zip(KEY_FIELDS, k)) for k in comparison.only_baseline],
        "only_in_current": [dict(zip(KEY_FIELDS, k)) for k in comparison.only_current],
        "env_differences": [{"field": f, "baseline": b, "current": c} for f, b, c in comparison.env_differences],
        "notes": [*comparison.clock_notes(), *_run_notes(comparison), *comparison.notes],
        "points": [_point_json(comparison, p) for p in comparison.points],
    }


def _starts_with(path: Path, prefix: str) -> bool:
    try:
        with Path(path).open("rb") as handle:
            return handle.read(len(prefix.encode())) == prefix.encode()
    except OSError:
        return False


def _is_compare_json(path: Path) -> bool:
    try:
        if Path(path).stat().st_size > MAX_OWN_JSON_BYTES:
            return False
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and payload.get(JSON_MARKER[0]) == JSON_MARKER[1]


def is_own_output(flag: str, path: Path) -> bool:
    """Whether an existing file is one compare wrote for `flag` (its markdown title, its JSON marker): a retry
    may rewrite its own gate.md in a run folder, never another file of the run."""
    return _starts_with(path, MD_TITLE) if flag == "--md" else _is_compare_json(path)


def run_compare(baseline: Path, current: Path, options: Options, *, md_path: Path | None = None,
                json_path: Path | None = None,
                revise: Callable[[Comparison], Comparison] | None = None) -> tuple[Comparison, str]:
    """The whole `nsa-bench compare`: refuse outputs that would land on an input or a run's file, compare,
    let `revise` decide again (--rerun's re-measurement), write the files; (result, markdown)."""
    outputs = (("--md", md_path), ("--json", json_path))
    try:
        check_outputs((Path(baseline), Path(current)), outputs, is_own_output)
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
