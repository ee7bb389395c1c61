"""What one run offers the regression gate, row by row: the compared value, its noise and its SM clock.

Speedups are computed from the run's own times (`reading.time_ms` of the row and of its baseline backend's
row at the same point and stage), never taken from the stored `speedup` column: a stale or hand-edited
column cannot decide the gate, and a CSV without it, or without a `baseline` column (older runs, hand-made
CSVs: the run's baseline from spec.json, else the sweep's default, is taken), is gated all the same. Where
the stored column disagrees with the times beyond the CSV's rounding, the gate says so.

A cell that the row's status says carries the compared figure but holds inf, 0 or a negative number is an
error naming its file, line and column, raised where every reader reads a run (`results.read_rows`):
skipping it would let the gate pass a point it never judged.

Noise rule (per run, per row): the p10..p90 range of a normal distribution is 2 x 1.2816 standard
deviations, so sigma ~= (p90 - p10) / 2.563 is a robust per-sample spread. The uncertainty of the median
of `samples` timings is then sqrt(pi/2) * sigma / sqrt(samples); divided by the median it is the row's
relative noise (unknown below MIN_SAMPLES samples). A speedup is a ratio of two timings of one run: the
noises of the row and of its baseline row add in quadrature. Predicted figures come from a cost model:
noise 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from nsa_bench import reading
from nsa_bench.results import absent_columns
from nsa_bench.schema import KEY_FIELDS, STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED

Key = tuple[str, ...]

P10_P90_WIDTH_SIGMAS = 2 * 1.2815515655446004  # width of a normal's p10..p90 range in sigmas
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # se(median) = this * sigma / sqrt(n) for a normal
MIN_SAMPLES = 5  # below this, p10/p90 say nothing about the spread: the noise is unknown
# The CSV writes 6 significant digits, so a stored speedup and one recomputed from two stored times agree
# to about 1.5e-5; anything past this is a different number, not rounding.
STORED_TOLERANCE = 1e-4
_BACKEND, _STAGE = KEY_FIELDS.index("backend"), KEY_FIELDS.index("stage")


@dataclass(frozen=True)
class Metric:
    """What is gated: its name, the column it is named by in the output, the column its values are read (for
    speedup: computed) from, which direction is better, and which rows carry it."""

    name: str
    column: str
    source: str
    higher_is_better: bool
    statuses: tuple[str, ...]
    measured: bool  # has sampling noise (p10/p90); predicted figures do not


METRICS: dict[str, Metric] = {
    "speedup": Metric("speedup", "speedup", "ms_median", True, (STATUS_OK,), True),
    "ms": Metric("ms", "ms_median", "ms_median", False, (STATUS_OK,), True),
    "predicted_ms": Metric("predicted_ms", "predicted_ms", "predicted_ms", False, (STATUS_OK, STATUS_PREDICTED),
                           False),
}


def relative_noise(median: float, p10: float, p90: float, samples: float) -> float:
    """Relative standard error of a run's median (see the module docstring); NaN when unknown."""
    values = (median, p10, p90, samples)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return math.nan
    if median <= 0 or samples < MIN_SAMPLES or p90 < p10:
        return math.nan
    sigma = (p90 - p10) / P10_P90_WIDTH_SIGMAS
    return MEDIAN_SE_FACTOR * sigma / math.sqrt(samples) / median


@dataclass(frozen=True)
class RowValue:
    """One row as the gate compares it."""

    value: float
    noise: float  # relative noise (NaN: unknown)
    clock_mhz: float  # the SM clock NVML read at the row (NaN: none)
    against: str = ""  # the baseline backend a speedup is against


@dataclass(frozen=True)
class Disagreement:
    """A stored speedup that is not the ratio of the run's own times."""

    key: Key
    stored: float
    computed: float


@dataclass(frozen=True)
class Throttling:
    """Measured rows the GPU flagged as throttled, and the reasons it gave."""

    rows: int = 0
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunValues:
    """A run's comparable rows, keyed, and what the gate has to say about the others."""

    values: dict[Key, RowValue]
    skipped: dict[str, int]  # reason -> rows not eligible for the metric
    why_not: dict[Key, str]  # keyed rows that could have been points but carry no value: why
    disagreements: tuple[Disagreement, ...] = ()
    assumed_baseline: str = ""  # the baseline taken for speedups because the CSV has no `baseline` column
    throttling: Throttling = Throttling()


# --- the rows ----------------------------------------------------------------------------------

def key_text(value: object) -> str:
    """Key cells as text, so 512, 512.0 and "512" from two CSVs match."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def frame_keys(frame: pd.DataFrame) -> list[Key]:
    return [tuple(key_text(v) for v in rec) for rec in frame[list(KEY_FIELDS)].itertuples(index=False)]


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def throttling(frame: pd.DataFrame) -> Throttling:
    """The measured rows flagged `throttled`, with the reasons NVML named."""
    if "throttled" not in frame.columns:
        return Throttling()
    records = frame.to_dict("records")
    flagged = [r for r in records if str(r.get("status")) == STATUS_OK and _truthy(r.get("throttled"))]
    reasons = ",".join(str(r.get("throttle_reasons", "")) for r in flagged)
    return Throttling(len(flagged), tuple(dict.fromkeys(r.strip() for r in reasons.split(",") if r.strip())))


@dataclass(frozen=True)
class _Row:
    """What the gate reads of one row before choosing: status, time, noise of the time, clock, cells."""

    status: str
    time: float
    noise: float
    clock: float
    record: dict


def _rows(frame: pd.DataFrame) -> list[_Row]:
    times = reading.time_ms(frame).tolist()
    out = []
    for record, time in zip(frame.to_dict("records"), times):
        noise = relative_noise(*(_number(record.get(c)) for c in ("ms_median", "ms_p10", "ms_p90", "samples")))
        clock = _number(record.get("sm_clock_mhz"))
        out.append(_Row(str(record.get("status", STATUS_OK)), _number(time), noise,
                        clock if _positive(clock) else math.nan, record))
    return out


def _with_backend(key: Key, backend: str) -> Key:
    return key[:_BACKEND] + (backend,) + key[_BACKEND + 1:]


def run_values(frame: pd.DataFrame, metric: Metric, all_stages: bool, default_baseline: str) -> RunValues:
    """The run's rows that carry the metric, keyed; why the others are skipped. `default_baseline`: the
    backend a row's speedup is against when its `baseline` cell is empty or the CSV has no such column."""
    keys = frame_keys(frame)
    rows = _rows(frame)
    index = {key: i for i, key in enumerate(keys)}
    values: dict[Key, RowValue] = {}
    skipped: dict[str, int] = {}
    why_not: dict[Key, str] = {}
    disagreements: list[Disagreement] = []

    def skip(key: Key, reason: str, point: bool = True) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        if point:
            why_not[key] = reason

    for key, row in zip(keys, rows):
        against = str(row.record.get("baseline", "") or "").strip() or default_baseline
        if row.status not in metric.statuses:
            skip(key, f"status {row.status}")
        elif key[_STAGE] != STAGE_TOTAL and not all_stages:
            skip(key, "breakdown stage", point=False)
        elif metric.name == "speedup" and against == key[_BACKEND]:
            skip(key, "the speedup baseline itself", point=False)
        else:
            found = _value(key, row, metric, against, index, rows)
            if isinstance(found, str):
                skip(key, found)
                continue
            if key in values:
                skip(key, "duplicate key (last row kept)", point=False)
            values[key] = found
            stored = _number(row.record.get("speedup"))
            if metric.name == "speedup" and _positive(stored) and \
                    abs(stored / found.value - 1.0) > STORED_TOLERANCE:
                disagreements.append(Disagreement(key, stored, found.value))
    assumed = default_baseline if metric.name == "speedup" and "baseline" in absent_columns(frame) else ""
    return RunValues(values, skipped, why_not, tuple(disagreements), assumed, throttling(frame))


def _value(key: Key, row: _Row, metric: Metric, against: str, index: dict[Key, int],
           rows: list[_Row]) -> RowValue | str:
    """The row's value for the metric, or why it has none."""
    if metric.name == "predicted_ms":
        value = _number(row.record.get("predicted_ms"))
        return RowValue(value, 0.0, row.clock) if _positive(value) else "no predicted_ms"
    if not _positive(row.time):
        return "no ms_median"
    if metric.name == "ms":
        return RowValue(row.time, row.noise, row.clock)
    position = index.get(_with_backend(key, against))
    if position is None:
        return f"no {against} row at this point and stage"
    base = rows[position]
    if base.status != STATUS_OK or not _positive(base.time):
        return f"the {against} row has no time (status {base.status})"
    return RowValue(base.time / row.time, math.hypot(row.noise, base.noise), row.clock, against)
