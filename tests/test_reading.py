"""The one reading of a run (nsa_bench.reading): the time rule, speedups derived from times, the summary."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from nsa_bench import reading
from nsa_bench.schema import STATUS_CHECK_FAILED, STATUS_OK, STATUS_OOM, STATUS_PREDICTED, Row


def _row(backend: str, seqlen: int, ms: float | None, status: str, mode: str = "fwd", **extra: object) -> Row:
    return Row(mode=mode, backend=backend, impl=backend, stage="total", seqlen=seqlen, batch=1, kv_heads=2,
               group_size=1, head_dim_qk=64, head_dim_v=32, block_cmp=32, stride_cmp=16, block_slc=64, n_slc=4,
               window=128, dtype="float16", ms_median=ms if status == STATUS_OK else None,
               predicted_ms=ms if status == STATUS_PREDICTED else 9.0, status=status, **extra)


def _frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame([r.as_dict() for r in rows])


def test_time_is_the_median_when_measured_the_prediction_when_predicted_else_none():
    frame = _frame([_row("fa2", 1000, 2.0, STATUS_OK), _row("fa2", 2000, 3.0, STATUS_PREDICTED),
                    _row("fa2", 4000, None, STATUS_OOM), _row("fa2", 8000, None, STATUS_CHECK_FAILED)])
    times = list(reading.time_ms(frame))
    assert times[:2] == [2.0, 3.0] and all(math.isnan(t) for t in times[2:])  # a failed row's prediction is no time
    assert reading.row_time(STATUS_OK, 2.0, 9.0) == 2.0 and reading.row_time(STATUS_OOM, None, 9.0) is None
    assert reading.text_time(STATUS_PREDICTED, "", "3.5") == 3.5 and reading.text_time(STATUS_OK, "0", "1") is None
    assert list(reading.usable(frame)["seqlen"]) == [1000, 2000]


def test_predicted_speedup_fallback() -> None:
    """Predicted rows without a speedup still get one: baseline predicted_ms / predicted_ms of the point."""
    frame = _frame([_row("fa2", 1000, 3.0, STATUS_PREDICTED), _row("nsa-triton", 1000, 1.5, STATUS_PREDICTED)])
    frame["baseline"] = "fa2"
    assert list(reading.row_speedups(frame)) == pytest.approx([1.0, 2.0])


def test_one_summary_leaves_the_baselines_own_column_out_and_reads_shortest_first():
    rows = []
    for seqlen, fa2, nsa in ((4000, 8.0, 2.0), (1000, 1.0, 1.0)):  # as a sweep writes them: longest first
        rows += [_row("fa2", seqlen, fa2, STATUS_PREDICTED, speedup=1.0, baseline="fa2"),
                 _row("nsa-triton", seqlen, nsa, STATUS_PREDICTED, speedup=fa2 / nsa, baseline="fa2")]
    found = reading.summary(_frame(rows), "fa2")
    assert found is not None and found.kind == "predicted" and not found.note
    assert list(found.speedups.columns) == ["nsa-triton"] and list(found.times.columns) == ["fa2", "nsa-triton"]
    assert [key[-1] for key in found.times.index] == [1000, 4000]
    assert list(found.speedups["nsa-triton"]) == pytest.approx([1.0, 4.0])
    missing = reading.summary(_frame(rows), "cudnn")
    assert missing is not None and "baseline 'cudnn' was not among the backends run" in missing.note
    assert reading.summary(_frame([_row("fa2", 1000, None, STATUS_OOM)])) is None


def test_a_speedup_without_its_baseline_says_so():
    """The baseline failed at a point (oom): the others' times show, their speedup cells say "no baseline"."""
    frame = _frame([_row("fa2", 4000, None, STATUS_OOM), _row("nsa-triton", 4000, 2.0, STATUS_PREDICTED, baseline="fa2"),
                    _row("fa2", 1000, 1.0, STATUS_PREDICTED, speedup=1.0, baseline="fa2"),
                    _row("nsa-triton", 1000, 0.5, STATUS_PREDICTED, speedup=2.0, baseline="fa2")])
    found = reading.summary(frame, "fa2")
    speedups = found.shown(found.speedups, "no baseline")["nsa-triton"].tolist()
    times = found.shown(found.times)
    assert speedups == [2.0, "no baseline"] and times["fa2"].tolist() == [1.0, "oom"]
