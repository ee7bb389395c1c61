"""Break-even lengths (nsa_bench.breakeven) on frames with known crossovers, and on a real predicted run."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nsa_bench import breakeven
from nsa_bench.breakeven import BreakEven, break_evens, crossing, format_table, to_frame, write_csv
from nsa_bench.results import append_rows, read_rows
from nsa_bench.schema import STATUS_OK, STATUS_OOM, STATUS_PREDICTED, Row

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (2048, 4096, 8192, 16384, 32768)


def _row(mode: str, backend: str, seqlen: int, ms: float, status: str = STATUS_PREDICTED, stage: str = "total",
         predicted_ms: float | None = None, group_size: int = 16) -> Row:
    measured = status == STATUS_OK
    return Row(mode=mode, backend=backend, impl=backend, stage=stage, seqlen=seqlen, batch=1, kv_heads=4,
               group_size=group_size, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16, block_slc=64,
               n_slc=16, window=512, dtype="bfloat16", ms_median=ms if measured else None,
               predicted_ms=predicted_ms if predicted_ms is not None else (None if measured else ms),
               baseline="fa2", status=status, gpu="NVIDIA H100 SXM5 80GB")


def _frame(tmp_path: Path, rows: list[Row]) -> pd.DataFrame:
    csv = tmp_path / "results.csv"
    append_rows(csv, rows)
    return read_rows(csv)


def _dense(seqlen: int) -> float:
    return 1e-8 * seqlen ** 2  # quadratic, like dense attention


def _series(mode: str, ratio, backend: str = "nsa-triton", base: str = "fa2", lengths=LENGTHS,
            status: str = STATUS_PREDICTED) -> list[Row]:
    """Baseline and NSA rows whose time ratio NSA / baseline at T is ratio(T)."""
    rows = []
    for t in lengths:
        rows.append(_row(mode, base, t, _dense(t), status))
        rows.append(_row(mode, backend, t, _dense(t) * ratio(t), status))
    return rows


def at_6000(t: int) -> float:
    return 6000 / t  # log(ratio) linear in log(T), 1 at exactly 6000 tokens


def test_crossover_interpolated_in_log_log(tmp_path):
    (record,) = break_evens(_frame(tmp_path, _series("fwd", at_6000)))
    assert record.where == breakeven.BETWEEN and record.kind == breakeven.PREDICTED
    assert record.seqlen == pytest.approx(6000, rel=1e-5)  # the CSV keeps 6 significant digits
    assert (record.lower, record.upper, record.crossings, record.lengths) == (4096, 8192, 1, len(LENGTHS))
    assert (record.mode, record.nsa, record.baseline, record.gpu) == ("fwd", "nsa-triton", "fa2", "NVIDIA H100 SXM5 80GB")
    assert dict(record.config)["group_size"] == 16 and "seqlen" not in dict(record.config)


def test_crossing_of_a_series_directly():
    assert crossing([4096, 8192], [6000 / 4096, 6000 / 8192])[1] == pytest.approx(6000)
    where, seqlen, lower, upper, _ = crossing([4096, 8192], [1.0, 0.5])  # equal at a swept length
    assert (where, lower, upper) == ("between", 4096, 8192) and seqlen == pytest.approx(4096)
    assert crossing([4096, 8192], [1.0, 1.0])[0] == "beyond"  # equal is not faster


def test_nsa_faster_everywhere_is_below_the_shortest(tmp_path):
    (record,) = break_evens(_frame(tmp_path, _series("fwd", lambda t: 0.5)))
    assert (record.where, record.seqlen, record.lower, record.upper, record.crossings) == ("below", None, None, 2048, 0)


def test_nsa_never_faster_is_beyond_the_longest(tmp_path):
    (record,) = break_evens(_frame(tmp_path, _series("fwd", lambda t: 2.0)))
    assert (record.where, record.seqlen, record.lower, record.upper, record.crossings) == ("beyond", None, 32768, None, 0)


def test_faster_only_at_short_lengths_is_beyond_with_its_crossing_counted(tmp_path):
    (record,) = break_evens(_frame(tmp_path, _series("fwd", lambda t: 0.5 if t < 8192 else 1.5)))
    assert (record.where, record.seqlen, record.crossings) == ("beyond", None, 1)


def test_several_crossings_report_the_last_one_from_slower_to_faster(tmp_path):
    ratios = dict(zip(LENGTHS, (1.5, 0.9, 1.1, 0.5, 0.4)))
    (record,) = break_evens(_frame(tmp_path, _series("fwd", ratios.__getitem__)))
    assert (record.where, record.lower, record.upper, record.crossings) == ("several", 8192, 16384, 3)
    expected = math.exp(math.log(8192) + math.log(1.1) * math.log(2) / (math.log(1.1) - math.log(0.5)))
    assert record.seqlen == pytest.approx(expected, rel=1e-5)


def test_decode_and_every_mode_get_their_own_record(tmp_path):
    rows = _series("fwd", at_6000) + _series("decode", lambda t: 3000 / t) + _series("layer-bwd", lambda t: 0.8)
    records = break_evens(_frame(tmp_path, rows))
    assert [r.mode for r in records] == ["fwd", "decode", "layer-bwd"]
    decode = records[1]
    assert decode.where == "between" and decode.seqlen == pytest.approx(3000, rel=1e-5)
    assert (decode.lower, decode.upper) == (2048, 4096)
    assert records[2].where == "below"


def test_a_crossing_below_the_shortest_length_is_below_not_extrapolated(tmp_path):
    (record,) = break_evens(_frame(tmp_path, _series("decode", lambda t: 1500 / t)))
    assert (record.where, record.seqlen, record.upper) == ("below", None, 2048)


def test_two_baselines_each_get_a_record_the_csv_baseline_first(tmp_path):
    rows = [_row("fwd", "fa3", t, _dense(t) / 2) for t in LENGTHS] + _series("fwd", at_6000)  # NSA / fa3 = 12000 / T
    records = break_evens(_frame(tmp_path, rows))
    assert [r.baseline for r in records] == ["fa2", "fa3"]  # the rows name fa2 as the CSV's baseline
    assert [round(r.seqlen) for r in records] == [6000, 12000]


def test_two_nsa_backends_and_families_from_the_registry(tmp_path):
    rows = _series("fwd", at_6000) + _series("fwd", lambda t: 12000 / t, backend="flex-nsa")
    rows += [_row("fwd", "mystery", t, 1.0) for t in LENGTHS]  # not in the registry, not a baseline: ignored
    records = break_evens(_frame(tmp_path, rows))
    assert [(r.nsa, r.baseline, round(r.seqlen)) for r in records] == [("nsa-triton", "fa2", 6000),
                                                                      ("flex-nsa", "fa2", 12000)]


def test_families_can_be_given(tmp_path):
    rows = _series("fwd", at_6000, backend="my-nsa", base="my-dense")
    families = {"my-nsa": "nsa", "my-dense": "dense"}
    (record,) = break_evens(_frame(tmp_path, rows), families=families)
    assert (record.nsa, record.baseline) == ("my-nsa", "my-dense")


def test_measured_times_are_the_median_and_say_measured(tmp_path):
    rows = _series("fwd", at_6000, status=STATUS_OK)
    rows = [r if r.backend != "fa2" else Row(**{**r.as_dict(), "predicted_ms": 1e-9}) for r in rows]  # ignored
    (record,) = break_evens(_frame(tmp_path, rows))
    assert record.kind == "measured" and record.seqlen == pytest.approx(6000, rel=1e-5)


def test_a_series_of_measured_and_predicted_times_is_mixed(tmp_path):
    rows = [r if r.backend == "fa2" else _row("fwd", r.backend, r.seqlen, r.predicted_ms, STATUS_OK)
            for r in _series("fwd", at_6000)]
    (record,) = break_evens(_frame(tmp_path, rows))
    assert record.kind == "mixed" and record.seqlen == pytest.approx(6000, rel=1e-5)


def test_a_measured_row_wins_over_a_predicted_one_of_the_same_point(tmp_path):
    measured = _series("fwd", at_6000, status=STATUS_OK)
    predicted = _series("fwd", lambda t: 2.0)
    (record,) = break_evens(_frame(tmp_path, predicted + measured))
    assert record.kind == "measured" and record.seqlen == pytest.approx(6000, rel=1e-5)


def test_missing_points_are_skipped_and_the_neighbours_widen(tmp_path):
    rows = [r for r in _series("fwd", at_6000) if not (r.backend == "fa2" and r.seqlen == 8192)]
    rows += [_row("fwd", "nsa-triton", 65536, 1.0)]  # NSA alone at 64k: no baseline there
    (record,) = break_evens(_frame(tmp_path, rows))
    assert (record.lower, record.upper, record.lengths) == (4096, 16384, len(LENGTHS) - 1)
    assert record.seqlen == pytest.approx(6000, rel=1e-5)  # the ratio is a power law, so still exact


def test_rows_of_other_statuses_and_stage_rows_give_no_time(tmp_path):
    rows = [r for r in _series("fwd", at_6000) if not (r.backend == "nsa-triton" and r.seqlen == 8192)]
    rows += [_row("fwd", "nsa-triton", 8192, 1e-9, STATUS_OOM, predicted_ms=1e-9),  # an oom row with a prediction
             _row("fwd", "nsa-triton", 2048, 1e-9, stage="cmp_attn")]  # a stage row is not the whole operation
    (record,) = break_evens(_frame(tmp_path, rows))
    assert (record.lower, record.upper, record.lengths) == (4096, 16384, len(LENGTHS) - 1)
    assert record.seqlen == pytest.approx(6000, rel=1e-5)


def test_configurations_are_kept_apart(tmp_path):
    rows = _series("fwd", at_6000) + [_row("fwd", r.backend, r.seqlen, r.predicted_ms * (2 if r.backend == "fa2" else 1),
                                           group_size=4) for r in _series("fwd", at_6000)]
    records = break_evens(_frame(tmp_path, rows))
    assert [(dict(r.config)["group_size"], round(r.seqlen)) for r in records] == [(16, 6000), (4, 3000)]
    text = format_table(records)
    assert "fwd group_size=16" in text and "fwd group_size=4 " in text and "2.9k tokens" in text


def test_csv_and_table(tmp_path):
    rows = _series("fwd", at_6000) + _series("bwd", lambda t: 2.0) + _series("decode", lambda t: 0.5)
    records = break_evens(_frame(tmp_path, rows))
    path = write_csv(records, tmp_path)
    assert path.name == "breakeven.csv"
    back = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert tuple(back.columns) == breakeven.COLUMNS
    assert back["where"].tolist() == ["between", "beyond", "below"]
    assert back["seqlen"].tolist()[1:] == ["", ""] and float(back["seqlen"][0]) == pytest.approx(6000, rel=1e-5)
    assert back["lower"].tolist() == ["4096", "32768", ""] and back["upper"].tolist() == ["8192", "", "2048"]
    assert to_frame(records).shape == (3, len(breakeven.COLUMNS))
    lines = format_table(records).splitlines()
    assert lines[1].split() == ["fwd", "nsa-triton", "vs", "fa2:", "5.9k", "tokens", "(predicted;", "between", "4k",
                                "and", "8k)"]
    assert "beyond 32k" in lines[2] and "below 2k" in lines[3]
    assert format_table([]).startswith("Break-even: no NSA backend")


def test_records_are_frozen(tmp_path):
    (record,) = break_evens(_frame(tmp_path, _series("fwd", at_6000)))
    assert isinstance(record, BreakEven)
    with pytest.raises(AttributeError):
        record.seqlen = 1.0  # type: ignore[misc]


@pytest.mark.subprocess
def test_every_mode_and_baseline_of_a_predicted_run_gets_a_record(tmp_path):
    run = tmp_path / "pred"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", "--seqlen", "2k..128k", "--mode",
                           "fwd,bwd,fwdbwd,decode", "--baseline", "fa2,cudnn", "--out", str(run), "--no-plots",
                           "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = read_rows(run)
    records = break_evens(frame)
    got = {(r.mode, r.baseline) for r in records}
    assert got == {(m, b) for m in ("fwd", "bwd", "fwdbwd", "decode") for b in ("fa2", "cudnn")}
    assert all(r.nsa == "nsa-triton" and r.kind == "predicted" and r.lengths == 7 for r in records)
    assert {r.where for r in records if r.mode != "decode"} == {"between"}  # dense is quadratic: NSA wins in the sweep
