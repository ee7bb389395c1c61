"""CSV I/O for runs: each task's rows are appended in one write as it finishes, so a crash or Ctrl-C
loses at most the point in flight.

A run folder holds `results.csv`, `env.json` (where and with what it ran), `spec.json` (the sweep's axes),
`progress.jsonl` (which points are complete, for --resume) and `plots/`. Everything after measuring reads
these files, never live objects. Reading is strict about content and lenient about absence: a cell that is
not what its column holds is an error naming the file, line and column; a column the CSV lacks takes its
documented default (no `stage` column: every row is a `total` row). A time a row's status says it has
(`ms_median` of an `ok` row, `predicted_ms` of an `ok` or `predicted` row, and the `speedup` derived from
them) is an error unless finite and positive when the cell is not empty: 0 or inf would otherwise be an
infinite speedup in one reader and a silently skipped point in another; here every reader refuses it alike.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from nsa_bench import limits
from nsa_bench.messages import show
from nsa_bench.schema import FIELDS, KEY_FIELDS, STAGE_TOTAL, STATUS_OK, STATUS_PREDICTED, STATUSES, Row
from nsa_bench.spec import MODES

CSV_NAME = "results.csv"
ENV_NAME = "env.json"
SPEC_NAME = "spec.json"
PLOTS_DIR = "plots"
_TEXT_COLUMNS = ("impl", "message", "baseline", "gpu", "throttle_reasons", "stage", "backend", "mode", "dtype",
                 "doc_lens", "host", "device")
NUMBER_COLUMNS = ("ms_median", "ms_p10", "ms_p90", "samples", "tflops", "gbps", "flops", "bytes", "intensity",
                  "predicted_ms", "speedup", "max_rel_err", "sm_clock_mhz", "mem_clock_mhz", "temp_c", "power_w",
                  "mem_bytes")
# key columns holding sizes, and the SweepSpec field whose bounds they obey
INT_KEY_COLUMNS = {"seqlen": "seqlens", "batch": "batches", "kv_heads": "kv_heads", "group_size": "group_sizes",
                   "head_dim_qk": "head_dims", "head_dim_v": "head_dims", "block_cmp": "block_cmp",
                   "stride_cmp": "stride_cmp", "block_slc": "block_slc", "n_slc": "n_slc", "window": "window"}
_SIGNED = ("temp_c",)  # the one number column that may be negative
# the cells a row's status says hold a figure (when not empty): finite and positive, or the CSV is refused
CARRIED = {"ms_median": (STATUS_OK,), "predicted_ms": (STATUS_OK, STATUS_PREDICTED),
           "speedup": (STATUS_OK, STATUS_PREDICTED)}
# key columns added after the first schema: a CSV without them reads with their default (attention-only
# modes; one dense sequence per batch row), so runs made before them still plot, report and compare
LATER_KEY_DEFAULTS = {"d_model": "0", "doc_lens": "none"}
REQUIRED_COLUMNS = tuple(c for c in KEY_FIELDS if c != "stage" and c not in LATER_KEY_DEFAULTS)


class ResultsError(ValueError):
    """A results file or folder that cannot be read as a run (the message names the file and what is wrong)."""


def cell(value: object) -> object:
    """A value as the CSV writes it (floats to 6 significant digits; None and non-finite as empty)."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def rows_text(rows: Iterable[Row], header: bool) -> str:
    """CSV text of rows ('\\n' line ends), with the header line first when `header`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(v) for k, v in row.as_dict().items()})
    return buffer.getvalue()


def append_text(path: Path, text: str) -> None:
    """Append text in one write, flushed to disk before returning (the one place run files grow)."""
    with path.open("a", newline="", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def append_rows(path: Path, rows: Iterable[Row]) -> None:
    """Append rows (the header first if the file is new or empty) in a single write."""
    new = not path.exists() or path.stat().st_size == 0
    append_text(path, rows_text(rows, header=new))


def append_row(path: Path, row: Row) -> None:
    append_rows(path, [row])


def csv_path(path: Path) -> Path:
    """The results CSV of a run folder, or the path itself when it is a CSV file."""
    path = Path(path)
    try:
        if path.is_dir():
            path = path / CSV_NAME
        found = path.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        raise ResultsError(f"no results CSV at {show(str(path), 200)}")
    return path


def _derived_status(texts: dict[str, pd.Series]) -> pd.Series:
    """Status of rows whose CSV has none: measured where a median is written, predicted where a prediction
    (read from the cells' text: an `inf` median is a measured row with a bad time, not a row without one)."""
    status = pd.Series("", index=texts["ms_median"].index, dtype=object)
    status[texts["predicted_ms"] != ""] = STATUS_PREDICTED
    status[texts["ms_median"] != ""] = STATUS_OK
    return status


def _check_carried(file: Path, texts: dict[str, pd.Series], status: pd.Series) -> None:
    """ResultsError naming the first cell a row's status says holds a figure that is not empty and not a finite
    positive number (CARRIED)."""
    for column, statuses in CARRIED.items():
        text = texts[column]
        number = pd.to_numeric(text.where(text != ""), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        good = (number > 0) & (number < math.inf)  # NaN fails both
        bad = status.isin(statuses).to_numpy() & (text != "").to_numpy() & ~good
        if bad.any():
            index = int(bad.nonzero()[0][0])
            raise _bad_cell(file, index, column, text.iloc[index],
                            f"is not a finite positive number (a row with status {status.iloc[index]} carries one)")


def _bad_cell(file: Path, index: int, column: str, value: str, why: str) -> ResultsError:
    return ResultsError(f"{file} line {index + 2}: column {column}: {show(value)} {why}")


def _numbers(file: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    text = frame[column].astype(str).str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        index = int(bad.to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, column, text.iloc[index], "is not a number")
    values = values.astype(float)
    if column not in _SIGNED and (values < 0).any():
        index = int((values < 0).to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, column, text.iloc[index], "must not be negative")
    return values.where(values.map(math.isfinite), math.nan)


def _key_ints(file: Path, frame: pd.DataFrame, column: str) -> pd.Series:
    text = frame[column].astype(str).str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    numbers = values.to_numpy(dtype=float, na_value=np.nan)
    whole = pd.Series(np.isfinite(numbers) & (numbers == np.floor(numbers)), index=frame.index)
    if not whole.all():
        index = int((~whole).to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, column, text.iloc[index], "is not a whole number (key columns are required)")
    lo, hi = limits.BOUNDS[INT_KEY_COLUMNS[column]]
    outside = (values < lo) | (values > hi)
    if outside.any():
        index = int(outside.to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, column, text.iloc[index], f"is out of range ({limits.bounds_text(INT_KEY_COLUMNS[column])})")
    return values.astype("int64")


def _d_models(file: Path, frame: pd.DataFrame) -> pd.Series:
    """The d_model column as ints: 0 on attention-only rows, a layer's width (bounded like --d-model)."""
    text = frame["d_model"].astype(str).str.strip().replace("", "0")
    values = pd.to_numeric(text, errors="coerce")
    lo, hi = limits.BOUNDS["d_models"]
    bad = values.isna() | (values != values.round()) | ((values != 0) & ((values < lo) | (values > hi)))
    if bad.any():
        index = int(bad.to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, "d_model", text.iloc[index], f"is not 0 or a model width ({limits.bounds_text('d_models')})")
    return values.astype("int64")


def validate(frame: pd.DataFrame, file: Path) -> pd.DataFrame:
    """A frame of raw CSV text cells as typed columns; ResultsError naming the first bad cell."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{file}: not a results CSV, missing columns {', '.join(missing)}")
    frame = frame.copy()
    absent = tuple(c for c in FIELDS if c not in frame.columns)
    for column in absent:
        frame[column] = LATER_KEY_DEFAULTS.get(column, "")
    texts = {column: frame[column].fillna("").astype(str).str.strip() for column in CARRIED}  # before typing
    for column in INT_KEY_COLUMNS:
        frame[column] = _key_ints(file, frame, column)
    frame["d_model"] = _d_models(file, frame)
    for column in NUMBER_COLUMNS:
        frame[column] = _numbers(file, frame, column)
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    frame["stage"] = frame["stage"].str.strip().replace("", STAGE_TOTAL)
    for column in ("mode", "backend", "dtype"):
        empty = frame[column].str.strip() == ""
        if empty.any():
            raise _bad_cell(file, int(empty.to_numpy().nonzero()[0][0]), column, "", "is empty (key columns are required)")
    unknown_mode = ~frame["mode"].isin(MODES)
    if unknown_mode.any():
        index = int(unknown_mode.to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, "mode", frame["mode"].iloc[index], f"is not a mode ({', '.join(MODES)})")
    status = frame["status"].fillna("").astype(str).str.strip()
    frame["status"] = status.where(status != "", _derived_status(texts))
    unknown = ~frame["status"].isin((*STATUSES, ""))
    if unknown.any():
        index = int(unknown.to_numpy().nonzero()[0][0])
        raise _bad_cell(file, index, "status", frame["status"].iloc[index], f"is not a status ({', '.join(STATUSES)})")
    _check_carried(file, texts, frame["status"])
    frame.attrs["absent"] = absent  # the columns filled with their defaults: a gate on one of them must say so
    return frame


def absent_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """The columns the CSV did not have (read_rows filled them with their defaults)."""
    return tuple(frame.attrs.get("absent", ()))


def read_rows(path: Path) -> pd.DataFrame:
    """Read a run's CSV (file or folder) into a typed DataFrame; ResultsError for anything unreadable."""
    file = csv_path(path)
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise ResultsError(f"{file} is empty: not a results CSV") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{file} is not a text CSV (not UTF-8)") from None
    except OSError as exc:
        raise ResultsError(f"cannot read {file}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of a user's file is that file's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"{file}: not a results CSV ({show(first, 120)})") from None
    return validate(frame, file)


def read_rows_nonempty(path: Path) -> pd.DataFrame:
    """read_rows, refusing a CSV with a header and no rows (nothing to plot or report)."""
    frame = read_rows(path)
    if frame.empty:
        raise ResultsError(f"{csv_path(path)} has a header but no rows")
    return frame


def row_key(row: Row) -> tuple:
    """The key tuple of a row, as strings (what a CSV's key cells read back as)."""
    data = row.as_dict()
    return tuple(str(data[k]) for k in KEY_FIELDS)


def replace_text(path: Path, text: str) -> None:
    """Write a run file atomically (a temporary file renamed over it): an interruption leaves the old file
    or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, payload: object) -> None:
    replace_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    """Read a JSON object of a run (env.json, spec.json); {} when absent, ResultsError when not an object."""
    try:
        if not path.is_file():
            if path.exists():
                raise ResultsError(f"{path} is not a file")
            return {}
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not a text file (not UTF-8)") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ResultsError(f"{path} is not valid JSON ({show(str(exc), 80)})") from None
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(payload, dict):
        raise ResultsError(f"{path} holds {type(payload).__name__ if payload is not None else 'null'}, not a JSON object")
    return payload


def run_dir(path: Path) -> Path:
    """The run folder for a CSV file or folder argument."""
    path = Path(path)
    return path if path.is_dir() else path.parent
