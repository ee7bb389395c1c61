"""What a sweep prints when it ends: the run's one summary (nsa_bench.reading), then NSA against each dense
baseline (nsa_bench.baselines)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from nsa_bench import baselines, breakeven, reading, results


def summary_text(csv_file: Path, baseline: str | None = None) -> str:
    """The summary a sweep prints: speedup and time per mode x seqlen (rows) and backend (columns), a failed
    point's status in its cell; the rows without a time counted by status with their reasons; then NSA
    against each dense baseline (nsa_bench.baselines)."""
    frame = results.read_rows(csv_file) if csv_file.exists() else None
    if frame is None or frame.empty:
        return "No rows: this sweep (or this shard of it) holds no point to run."
    found = reading.summary(frame)
    parts = []
    if found is None:
        parts.append(f"No measured or predicted row: every one of the {len(frame)} rows failed (below).")
    else:
        found = reading.summary(frame, baseline)
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            if found.note:
                parts.append(found.note)
            else:
                parts.append(f"Speedup vs baseline ({found.kind}):\n{_table(found.shown(found.speedups, 'no baseline'), '.2f')}")
            parts.append(f"Time per call, ms ({found.kind}):\n{_table(found.shown(found.times), '.4g')}")
    failed = failures_text(frame)
    if failed:
        parts.append(failed)
    if found is not None:
        parts.append(breakeven.format_table(breakeven.break_evens(frame)))
    extra = baselines.summary_text(frame)
    if extra:
        parts.append(extra)
    return "\n\n".join(parts)


def only_failed_rows(csv_file: Path) -> bool:
    """Whether the run wrote rows and none of them was measured or predicted (a sweep that failed at
    everything; a shard with no points wrote nothing and did not fail)."""
    frame = results.read_rows(csv_file) if csv_file.exists() else None
    return frame is not None and not frame.empty and reading.usable(frame).empty


def _table(table: pd.DataFrame, fmt: str) -> str:
    return table.to_string(formatters={c: (lambda v, f=fmt: format(v, f) if isinstance(v, float) else str(v))
                                       for c in table.columns})


FAILED_SHOWN = 4  # rows listed per status; the rest are counted


def failures_text(frame: pd.DataFrame) -> str:
    """Every row without a time, counted by status, with the reasons (the first few rows of each status)."""
    groups = reading.failures(frame)
    if not groups:
        return ""
    total = sum(len(part) for part in groups.values())
    lines = [f"Rows without a time: {total} of {len(frame)} ("
             + ", ".join(f"{status} {len(part)}" for status, part in groups.items()) + ")"]
    varying = [c for c in reading.CONFIG_COLUMNS if c in frame.columns and frame[c].nunique() > 1]
    for status, part in groups.items():
        for _, row in part.head(FAILED_SHOWN).iterrows():
            where = " ".join([f"{row['backend']} {row['mode']} T={row['seqlen']}",
                              *(f"{c}={row[c]}" for c in varying)]) + (
                f" [{row['stage']}]" if row["stage"] != "total" else "")
            lines.append(f"  {status}: {where}: {_short(str(row['message']))}")
        if len(part) > FAILED_SHOWN:
            lines.append(f"  {status}: ... and {len(part) - FAILED_SHOWN} more {status} rows (see results.csv)")
    return "\n".join(lines)


def _short(text: str, width: int = 140) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
