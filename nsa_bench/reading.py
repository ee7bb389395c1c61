"""One reading of a finished run: the values the summary, report, plots, merge and compare take from a CSV.

A row's time is its measured median where it was measured (status `ok`) and the cost model's floor where
it was predicted (status `predicted`); any other row has no time. Every reader of a run uses `time_ms`
for that rule, and the one summary table (`summary`) for speedup and time per point, so the sweep's
printout and the report can never disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import pandas as pd

from nsa_bench.schema import KEY_FIELDS, STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED
from nsa_bench.spec import LAYER_MODES

USABLE = (STATUS_OK, STATUS_PREDICTED)
T = TypeVar("T", float, str)
CONFIG_COLUMNS = ("batch", "kv_heads", "group_size", "head_dim_qk", "head_dim_v", "block_cmp", "stride_cmp",
                  "block_slc", "n_slc", "window", "dtype", "doc_lens")


def time_ms(frame: pd.DataFrame) -> pd.Series:
    """ms per row: the measured median of an `ok` row, the prediction of a `predicted` row, else NaN."""
    status = frame["status"].astype(str)
    measured = pd.to_numeric(frame["ms_median"], errors="coerce")
    predicted = pd.to_numeric(frame["predicted_ms"], errors="coerce")
    return measured.where(status == STATUS_OK, predicted.where(status == STATUS_PREDICTED))


def row_time(status: str, ms_median: T | None, predicted_ms: T | None) -> T | None:
    """`time_ms` for one row's values (what merge and --resume read of a task's total)."""
    if status == STATUS_OK:
        return ms_median
    return predicted_ms if status == STATUS_PREDICTED else None


def text_time(status: str, ms_median: str, predicted_ms: str) -> float | None:
    """`row_time` of a row as the CSV's text cells hold it: None without a finite, positive time."""
    chosen = row_time(status, ms_median, predicted_ms)
    try:
        value = float(chosen) if chosen is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def usable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a positive time, with it in column `ms`."""
    rows = frame[frame["status"].astype(str).isin(USABLE)].copy()
    rows["ms"] = time_ms(rows)
    return rows[rows["ms"] > 0]


def totals(frame: pd.DataFrame) -> pd.DataFrame:
    """usable() rows of whole operations (stage `total`)."""
    rows = usable(frame)
    return rows[rows["stage"].astype(str) == STAGE_TOTAL]


def kind(frame: pd.DataFrame) -> str:
    """"measured" when any row was measured, else "predicted"."""
    return "measured" if (frame["status"].astype(str) == STATUS_OK).any() else "predicted"


def row_speedups(frame: pd.DataFrame) -> pd.Series:
    """Speedup per row: the CSV's `speedup`, else the time of the row's `baseline` backend at the same point
    over the row's time (a CSV written without speedups still reads with them)."""
    given = pd.to_numeric(frame["speedup"], errors="coerce") if "speedup" in frame.columns else \
        pd.Series(math.nan, index=frame.index)
    if "baseline" not in frame.columns:
        return given
    timing = time_ms(frame)
    other = [c for c in KEY_FIELDS if c != "backend"]
    lookup = {(tuple(str(v) for v in rec[:-1]), str(rec[-1])): t
              for rec, t in zip(frame[other + ["backend"]].itertuples(index=False), timing)}
    fallback = []
    for rec, base, t in zip(frame[other].itertuples(index=False), frame["baseline"], timing):
        base_time = lookup.get((tuple(str(v) for v in rec), str(base)), math.nan) if base else math.nan
        fallback.append(base_time / t if t and math.isfinite(t) and t > 0 else math.nan)
    return given.where(given.notna(), pd.Series(fallback, index=frame.index))


def summary_axes(frame: pd.DataFrame) -> list[str]:
    """What labels a summary row: mode, the configuration columns that vary (and d_model when layer points
    of several widths ran), then seqlen."""
    config = [c for c in CONFIG_COLUMNS if c in frame.columns and frame[c].nunique() > 1]
    layer = frame[frame["mode"].isin(LAYER_MODES)]
    width = ["d_model"] if not layer.empty and layer["d_model"].nunique() > 1 else []
    return ["mode", *config, *width, "seqlen"]


@dataclass(frozen=True)
class Summary:
    """Speedup and time per point (rows: summary_axes, shortest first within each mode in run order; columns:
    backends). A point whose total has no time (oom, error, ...) is still a row: `statuses` holds its status
    where `times` has none, so no row of the run drops out of the summary. `note` says why there are no
    speedups, when there are none."""

    speedups: pd.DataFrame
    times: pd.DataFrame
    statuses: pd.DataFrame
    kind: str
    note: str = ""

    def shown(self, table: pd.DataFrame, unexplained: str = "") -> pd.DataFrame:
        """`table` (times or speedups) with each missing value replaced by the status that explains it;
        `unexplained`: what a cell of a usable row says when it still has no value (a speedup whose baseline
        failed at that point)."""
        filled = table.astype(object).copy()
        status = self.statuses.reindex(index=table.index, columns=table.columns)
        status = status.where(status != "", unexplained)  # "" marks a usable row; NaN, no row at all
        return filled.where(table.notna(), status.fillna(""))


def summary(frame: pd.DataFrame, baseline: str | None = None) -> Summary | None:
    """The one summary of a run's totals (None: no measured or predicted row). The baseline's own column
    (1.0 everywhere) is left out when other backends ran; `baseline`: the run's, to say when it has no row."""
    everything = frame[frame["stage"] == STAGE_TOTAL].copy()
    rows = everything[everything["status"].isin(USABLE)]
    if rows.empty:
        return None
    note = ""
    if baseline is not None and baseline not in set(rows["backend"]):
        ran = ", ".join(sorted(set(frame["backend"])))
        why = "was not among the backends run" if baseline not in set(frame["backend"]) else "has no usable row"
        note = (f"No speedups: the baseline {baseline!r} {why} ({ran}); add it to --backend or pass "
                f"--baseline {sorted(set(rows['backend']))[0]}.")
    everything["speedup_shown"] = math.nan if note else row_speedups(everything)
    everything["speedup_shown"] = everything["speedup_shown"].where(everything["status"].isin(USABLE))
    everything["ms"] = time_ms(everything)
    everything["status_shown"] = everything["status"].where(~everything["status"].isin(USABLE), "")
    axes = summary_axes(everything)

    def pivot(table: pd.DataFrame, values: str) -> pd.DataFrame:
        """values by point (the combinations the run holds, not their product) and backend."""
        grouped = table.groupby([*axes, "backend"], sort=False, dropna=False)[values].first()
        return grouped.unstack("backend").reindex(columns=list(dict.fromkeys(table["backend"])))

    times = pivot(everything, "ms")
    modes = list(dict.fromkeys(everything["mode"]))  # rows run longest first; the table reads shortest first
    order = sorted(times.index, key=lambda key: (modes.index(key[0]), *key[1:]))
    times = times.reindex(order)
    statuses = pivot(everything, "status_shown").reindex(order)
    baselines = set(rows["baseline"].astype(str)) if "baseline" in rows.columns else set()
    shown = everything[~everything["backend"].isin(baselines)] if everything["backend"].nunique() > 1 else everything
    speedups = pivot(shown, "speedup_shown").reindex(index=times.index)
    return Summary(speedups, times, statuses, kind(rows), note)


def failures(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows without a time (any stage), by status: what a summary must account for beside its tables."""
    failed = frame[~frame["status"].astype(str).isin(USABLE)]
    return {status: part for status, part in failed.groupby("status", sort=False)}


@dataclass(frozen=True)
class Duplicate:
    """A row whose key columns repeat an earlier row's: which of the two is the run's, no reader can tell."""

    first_line: int  # CSV line of the earlier row (the header is line 1)
    line: int  # CSV line of the repeat
    key: dict[str, str]


def _key_cell(value: object) -> str:
    """A key cell as text, a whole number spelled as an integer (32768.0 is 32768)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def duplicate_rows(frame: pd.DataFrame) -> list[Duplicate]:
    """Every row (of a frame as results.read_rows reads it, in file order) whose key columns equal an earlier
    row's: a run holds one row per key, so readers must refuse or warn rather than pick one silently."""
    columns = [c for c in KEY_FIELDS if c in frame.columns]
    first: dict[tuple[str, ...], int] = {}
    found = []
    for position, record in enumerate(frame[columns].itertuples(index=False)):
        key = tuple(_key_cell(v) for v in record)
        if key in first:
            found.append(Duplicate(first[key] + 2, position + 2, dict(zip(columns, key))))
        else:
            first[key] = position
    return found


def point_text(key: dict[str, str]) -> str:
    """A key as one short line: `fwd nsa-triton T=8192 [stage] B=1 Hkv=4 G=16 D=192-128 ... bfloat16`."""
    k = {name: key.get(name, "") for name in KEY_FIELDS}
    stage = "" if k["stage"] in ("", STAGE_TOTAL) else f" [{k['stage']}]"
    return (f"{k['mode']} {k['backend']} T={k['seqlen']}{stage} B={k['batch']} Hkv={k['kv_heads']} "
            f"G={k['group_size']} D={k['head_dim_qk']}-{k['head_dim_v']} l={k['block_cmp']} d={k['stride_cmp']} "
            f"l'={k['block_slc']} n={k['n_slc']} w={k['window']} {k['dtype']} d_model={k['d_model']} "
            f"doc_lens={k['doc_lens']}")


def duplicates_warning(frame: pd.DataFrame, file: object) -> str:
    """One line saying that `file` holds rows of one key twice ("" when it does not): the tables show one of
    them, and which one is the run's is unknown."""
    found = duplicate_rows(frame)
    if not found:
        return ""
    first = found[0]
    more = f" ({len(found)} rows repeat an earlier row's key in all)" if len(found) > 1 else ""
    return (f"{file} lines {first.first_line} and {first.line} hold the same key ({point_text(first.key)}){more}: "
            "a run has one row per key, the tables show only one of them; remove the row that is not the run's")


def with_default_baseline(frame: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """`frame` with `baseline` in every baseline cell when its CSV had no baseline column (older and hand-made
    CSVs), so their speedups derive from their times (row_speedups) as compare derives them; a CSV with the
    column is returned as it is (an empty cell there means the row has no baseline to be divided by)."""
    if "baseline" not in frame.attrs.get("absent", ()) and "baseline" in frame.columns:
        return frame
    return frame.assign(baseline=baseline)
