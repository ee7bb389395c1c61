"""What a sweep prints when it ends: the run's one summary (nsa_bench.reading), then NSA against each dense
baseline (nsa_bench.baselines)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from nsa_bench import baselines, reading, results


def summary_text(csv_file: Path, baseline: str | None = None) -> str:
    """The summary a sweep prints: speedup and time per mode x seqlen (rows) and backend (columns), then
    NSA against each dense baseline (nsa_bench.baselines)."""
    if not csv_file.exists():
        return "(no rows)"
    frame = results.read_rows(csv_file)
    found = reading.summary(frame, baseline)
    if found is None:
        return "(no measured or predicted rows)"
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        speedups = "" if found.note else (f"Speedup vs baseline ({found.kind}):\n"
                                          f"{found.speedups.to_string(float_format=lambda x: f'{x:.2f}')}\n\n")
        note = f"{found.note}\n\n" if found.note else ""
        text = (f"{note}{speedups}Time per call, ms ({found.kind}):\n"
                f"{found.times.to_string(float_format=lambda x: f'{x:.4g}')}")
    extra = baselines.summary_text(frame)
    return f"{text}\n\n{extra}" if extra else text
