"""CSV I/O for runs: rows are appended as each point finishes, so a crash or Ctrl-C loses one point.

A run folder holds `results.csv`, `env.json` (where and with what it ran), `spec.json` (the sweep's axes)
and `plots/`. Everything after measuring reads these files, never live objects.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
import pandas as pd

from nsa_bench.schema import FIELDS, KEY_FIELDS, STATUS_OK, STATUS_SKIPPED, Row

CSV_NAME = "results.csv"
ENV_NAME = "env.json"
SPEC_NAME = "spec.json"
PLOTS_DIR = "plots"
_TEXT_COLUMNS = ("impl", "message", "baseline", "gpu", "throttle_reasons", "stage", "backend", "mode", "dtype",
                 "doc_lens")


class ResultsError(ValueError):
    """A results file or folder that cannot be read as a run."""


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def append_row(path: Path, row: Row) -> None:
    """Append one row (writing the header first if the file is new), flushed to disk at once."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: _cell(v) for k, v in row.as_dict().items()})
        handle.flush()
        os.fsync(handle.fileno())


def csv_path(path: Path) -> Path:
    """The results CSV of a run folder, or the path itself when it is a CSV file."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    if not path.is_file():
        raise ResultsError(f"no results CSV at {path}")
    return path


def read_rows(path: Path) -> pd.DataFrame:
    """Read a run's CSV (file or folder) into a DataFrame; checks the key columns are present."""
    file = csv_path(path)
    try:
        frame = pd.read_csv(file, dtype={c: str for c in _TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{file}: not a results CSV ({exc})") from exc
    if "d_model" not in frame.columns:  # runs made before layer modes existed: attention-only rows
        frame["d_model"] = 0
    if "doc_lens" not in frame.columns:  # runs made before packed batches: one dense sequence per row
        frame["doc_lens"] = "none"
    missing = [c for c in KEY_FIELDS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{file}: not a results CSV, missing columns {', '.join(missing)}")
    for column in _TEXT_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].fillna("").astype(str)
    return frame


def done_rows(path: Path) -> dict[tuple, float | None]:
    """Key tuple -> time (measured median, else prediction) of every row already in a CSV: what
    --resume skips, read once, with the baseline times resumed points need for their speedup."""
    if not path.exists() or path.stat().st_size == 0:
        return {}
    frame = read_rows(path)
    frame = frame[frame["status"] != STATUS_SKIPPED]  # skipped for time: a resumed run measures them
    times = frame["ms_median"].where(frame["status"] == STATUS_OK, frame["predicted_ms"])
    keys = frame[list(KEY_FIELDS)].astype(str).itertuples(index=False, name=None)
    return {key: (None if value != value else float(value)) for key, value in zip(keys, times)}


def row_key(row: Row) -> tuple:
    """The key tuple of a row, as strings (comparable with `done_rows`)."""
    data = row.as_dict()
    return tuple(str(data[k]) for k in KEY_FIELDS)


def write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    """Read a JSON file of a run; an empty dict when it is absent."""
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def run_dir(path: Path) -> Path:
    """The run folder for a CSV file or folder argument."""
    path = Path(path)
    return path if path.is_dir() else path.parent
