"""Two rows of one key in a run: compare refuses it (tests/test_compare.py); report warns in one line rather
than show one of two different speedups for the point without a word."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from cli_runner import run_main
from nsa_bench import reading, results


def _run_with_a_twin(tmp_path: Path) -> tuple[Path, int, int]:
    run = tmp_path / "run"
    code, _, err = run_main("sweep", "--seqlen", "1k", "--mode", "fwd", "--out", str(run), "--quiet", "--no-plots")
    assert code == 0, err
    cells = pd.read_csv(run / results.CSV_NAME, dtype=str, keep_default_na=False)
    twin = cells.iloc[[1]].assign(predicted_ms="9", speedup="0.01")
    pd.concat([cells, twin], ignore_index=True).to_csv(run / results.CSV_NAME, index=False)
    return run, 3, len(cells) + 2


def test_duplicate_rows_are_found_with_their_lines(tmp_path: Path) -> None:
    run, first, last = _run_with_a_twin(tmp_path)
    frame = results.read_rows(run)
    (found,) = reading.duplicate_rows(frame)
    assert (found.first_line, found.line) == (first, last)
    assert found.key["backend"] == frame["backend"].iloc[1] and found.key["seqlen"] == "1024"
    assert reading.duplicate_rows(frame.iloc[:-1]) == []


def test_report_of_a_run_with_duplicate_rows_warns_in_one_line(tmp_path: Path) -> None:
    run, first, last = _run_with_a_twin(tmp_path)
    code, out, err = run_main("report", str(run))
    assert code == 0, err
    (line,) = err.strip().splitlines()
    assert line.startswith("warning: ") and f"lines {first} and {last}" in line and "same key" in line, line
