"""The regression gate on synthetic runs: labels, exit codes, errors, outputs."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from nsa_bench import compare
from nsa_bench.compare import (AMBIGUOUS, FASTER, SAME, SLOWER, CompareError, Options, classify,
                               compare_paths, relative_noise, run_compare)
from nsa_bench.results import CSV_NAME, ENV_NAME, append_row, write_json
from nsa_bench.schema import FIELDS, STATUS_OK, STATUS_PREDICTED, Row

SEQLENS = (1000, 2048)  # 1000: not a multiple of any block
MODES = ("fwd", "bwd")
FA2_MS = {1000: 1.0, 2048: 3.0}
NSA_MS = {1000: 0.8, 2048: 1.2}


def _row(mode: str, backend: str, seqlen: int, ms: float, spread: float, samples: int,
         stage: str = "total", speedup: float | None = None, status: str = STATUS_OK,
         gpu: str = "NVIDIA H100 80GB HBM3", clock: float | None = None, throttled: bool = False) -> Row:
    """A measured row whose p10/p90 lie `spread` (relative) either side of the median."""
    measured = status == STATUS_OK
    return Row(
        mode=mode, backend=backend, impl=backend, stage=stage, seqlen=seqlen, batch=1, kv_heads=4,
        group_size=16, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16, block_slc=64,
        n_slc=16, window=512, dtype="bfloat16",
        ms_median=ms if measured else None, ms_p10=ms * (1 - spread) if measured else None,
        ms_p90=ms * (1 + spread) if measured else None, samples=samples if measured else None,
        predicted_ms=ms, speedup=speedup, baseline="fa2", status=status, gpu=gpu,
        sm_clock_mhz=clock if measured else None, throttled=throttled and measured,
        throttle_reasons="sw_thermal_slowdown" if throttled and measured else "")


def make_run(folder: Path, *, nsa_scale: dict[tuple[str, int], float] | None = None, spread: float = 0.02,
             samples: int = 50, gpu: str | None = "NVIDIA H100 80GB HBM3", status: str = STATUS_OK,
             extra_env: dict | None = None, time_scale: float = 1.0, clock: float | None = None,
             throttled: bool = False, stored_speedup: dict[tuple[str, int], float] | None = None) -> Path:
    """A run folder: fa2 and nsa-triton totals plus one NSA breakdown stage per point.

    nsa_scale multiplies the NSA time of chosen (mode, seqlen) points: 1.2 plants a 20% slowdown.
    time_scale multiplies every time (a slower clock); clock is every measured row's SM clock (MHz);
    stored_speedup writes another speedup than the times give at chosen points (a stale or edited column).
    """
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / CSV_NAME
    scale = nsa_scale or {}
    stored = stored_speedup or {}
    for mode in MODES:
        for seqlen in SEQLENS:
            fa2 = FA2_MS[seqlen] * (2 if mode == "bwd" else 1) * time_scale
            nsa = NSA_MS[seqlen] * (2 if mode == "bwd" else 1) * scale.get((mode, seqlen), 1.0) * time_scale
            speedup = stored.get((mode, seqlen), fa2 / nsa) if status == STATUS_OK else None
            common = {"status": status, "gpu": gpu or "", "clock": clock, "throttled": throttled}
            append_row(csv, _row(mode, "fa2", seqlen, fa2, spread, samples, speedup=1.0 if speedup else None,
                                 **common))
            append_row(csv, _row(mode, "nsa-triton", seqlen, nsa, spread, samples, speedup=speedup, **common))
            append_row(csv, _row(mode, "nsa-triton", seqlen, nsa / 2, spread, samples, stage="selected", **common))
    write_json(folder / ENV_NAME, {"gpu": gpu, "driver": "550.54", "git": {"commit": folder.name},
                                   **(extra_env or {})})
    return folder


def invoke(*args: str):
    from nsa_bench import cli

    return CliRunner().invoke(cli.cli, ["compare", *args])


# --- the noise rule and labels -----------------------------------------------------------------

def test_relative_noise_is_the_median_standard_error() -> None:
    # p10..p90 of a normal spans 2.563 sigma; se(median) = 1.2533 sigma / sqrt(n)
    sigma = 0.2 / 2.5631031
    assert relative_noise(1.0, 0.9, 1.1, 100) == pytest.approx(1.2533141 * sigma / 10, rel=1e-6)
    assert relative_noise(2.0, 1.8, 2.2, 100) == pytest.approx(relative_noise(1.0, 0.9, 1.1, 100))
    assert relative_noise(1.0, 0.9, 1.1, 400) == pytest.approx(relative_noise(1.0, 0.9, 1.1, 100) / 2)
    assert math.isnan(relative_noise(1.0, math.nan, 1.1, 10))
    assert math.isnan(relative_noise(1.0, 0.9, 1.1, 4))  # too few samples to know the spread
    assert relative_noise(1.0, 1.0, 1.0, 30) == 0.0  # a perfectly steady timer


@pytest.mark.parametrize(("base", "cur", "noise", "higher", "label"), [
    (1.0, 1.03, 0.001, False, SAME),        # inside the threshold
    (1.0, 1.20, 0.01, False, SLOWER),       # ms up 20%, far outside the noise
    (1.0, 0.80, 0.01, False, FASTER),
    (2.0, 1.60, 0.01, True, SLOWER),        # speedup down 20%
    (2.0, 2.40, 0.01, True, FASTER),
    (1.0, 1.08, 0.04, False, AMBIGUOUS),    # beyond the threshold, inside 3 x noise
    (1.0, 1.50, 0.06, False, SLOWER),       # the noise exceeds the threshold, the change is far outside it
    (1.0, 1.10, 0.06, False, AMBIGUOUS),    # the noise exceeds the threshold and hides the change
    (1.0, 1.20, math.nan, False, AMBIGUOUS),  # noise unknown
])
def test_classify(base: float, cur: float, noise: float, higher: bool, label: str) -> None:
    assert classify(base, cur, noise, 0.05, 3.0, higher) == label


def test_options_reject_bad_values() -> None:
    with pytest.raises(CompareError, match="metric='latency'"):
        Options(metric="latency")
    with pytest.raises(CompareError, match="--threshold -10: must be a positive percentage"):
        Options(threshold=-0.1)


# --- whole runs through the module -------------------------------------------------------------

def test_identical_runs_are_same(tmp_path: Path) -> None:
    base = make_run(tmp_path / "a")
    result = compare_paths(base, base, Options())
    assert len(result.points) == 4  # nsa totals; fa2 (the baseline itself) and stage rows skipped
    assert {p.status for p in result.points} == {SAME}
    assert result.exit_code == 0
    assert result.geomean_ratio() == pytest.approx(1.0)
    assert result.skipped_baseline == {"breakdown stage": 4, "the speedup baseline itself": 4}


def test_planted_slowdown_is_slower(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    result = compare_paths(base, cur, Options())
    slower = [p for p in result.points if p.status == SLOWER]
    assert [p.key_dict()["seqlen"] for p in slower] == ["2048"]
    assert slower[0].change == pytest.approx(1 / 1.2 - 1, rel=1e-4)
    assert result.exit_code == 1
    assert result.regressions()[0] is slower[0]


def test_ms_metric_and_all_stages(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("bwd", 1000): 1.2})
    result = compare_paths(base, cur, Options(metric="ms", all_stages=True))
    assert len(result.points) == 12  # fa2 + nsa totals + nsa stage rows
    slower = {(p.key_dict()["backend"], p.key_dict()["stage"]) for p in result.points if p.status == SLOWER}
    assert slower == {("nsa-triton", "total"), ("nsa-triton", "selected")}


def test_speedup_noise_includes_the_baseline_row(tmp_path: Path) -> None:
    run = make_run(tmp_path / "a", spread=0.1, samples=25)
    point = compare_paths(run, run, Options()).points[0]
    one = relative_noise(1.0, 0.9, 1.1, 25)
    assert point.noise_baseline == pytest.approx(math.sqrt(2) * one, rel=1e-4)
    ms_point = compare_paths(run, run, Options(metric="ms")).points[0]
    assert ms_point.noise_baseline == pytest.approx(one, rel=1e-4)


def test_unmatched_rows_are_counted(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    frame = pd.read_csv(cur / CSV_NAME)
    frame = frame[~((frame["mode"] == "bwd") & (frame["seqlen"] == 2048))]
    frame.to_csv(cur / CSV_NAME, index=False)
    result = compare_paths(base, cur, Options())
    assert len(result.points) == 3 and len(result.only_baseline) == 1 and not result.only_current
    assert "1 only in baseline" in compare.to_markdown(result)


def test_failed_rows_are_skipped_with_reason(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    append_row(cur / CSV_NAME, replace(_row("fwd", "nsa-triton", 4096, 1.0, 0.02, 50), status="oom",
                                       ms_median=None, speedup=None))
    result = compare_paths(base, cur, Options())
    assert result.skipped_current["status oom"] == 1


# --- the command line --------------------------------------------------------------------------

def test_cli_identical_runs_exit_0(tmp_path: Path) -> None:
    base = make_run(tmp_path / "a")
    out = invoke(str(base), str(base / CSV_NAME))  # a folder and a CSV file both work
    assert out.exit_code == 0, out.output
    assert "PASS" in out.output and "SAME 4" in out.output


def test_cli_drift_inside_noise_exit_0(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", spread=0.3, samples=10)
    # 8% slower at three points: beyond the 5% threshold, but the runs are noisy -> AMBIGUOUS, not SLOWER
    drift = {(m, s): 1.08 for m in MODES for s in SEQLENS} | {("bwd", 2048): 1.0}
    cur = make_run(tmp_path / "cur", spread=0.3, samples=10, nsa_scale=drift)
    out = invoke(str(base), str(cur))
    assert out.exit_code == 0, out.output
    assert "AMBIGUOUS 3" in out.output and "SLOWER 0" in out.output and "SAME 1" in out.output
    # small drift in a quiet run: SAME
    quiet = make_run(tmp_path / "quiet", nsa_scale={("fwd", 1000): 1.02, ("bwd", 2048): 0.98})
    out = invoke(str(make_run(tmp_path / "quiet_base")), str(quiet))
    assert out.exit_code == 0 and "SAME 4" in out.output, out.output


def test_cli_planted_slowdown_exit_1_and_named(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    md, js = tmp_path / "gate.md", tmp_path / "gate.json"
    out = invoke(str(base), str(cur), "--md", str(md), "--json", str(js))
    assert out.exit_code == 1, out.output
    assert "FAIL" in out.output and "SLOWER 1" in out.output
    worst = out.output.split("## Worst regressions")[1]
    assert "fwd nsa-triton T=2048" in worst.splitlines()[4] and "SLOWER" in worst.splitlines()[4]
    assert md.read_text().strip() in out.output
    payload = json.loads(js.read_text())
    assert payload["exit_code"] == 1 and payload["counts"][SLOWER] == 1
    (slow,) = [p for p in payload["points"] if p["status"] == SLOWER]
    assert slow["mode"] == "fwd" and slow["seqlen"] == "2048"


def test_cli_threshold_option(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    out = invoke(str(base), str(cur), "--threshold", "25")
    assert out.exit_code == 0 and "SAME 4" in out.output, out.output


def test_cli_faster_run_exit_0(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={(m, s): 0.7 for m in MODES for s in SEQLENS})
    out = invoke(str(base), str(cur), "--metric", "ms")
    assert out.exit_code == 0, out.output
    assert "FASTER 4" in out.output
    assert "none: no point got worse" in out.output


def _one_line_error(out) -> str:
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1, out.output
    return lines[0]


def test_cli_missing_file_exit_2(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    line = _one_line_error(invoke(str(base), str(tmp_path / "nope.csv")))
    assert "nope.csv" in line and "does not exist" in line
    (tmp_path / "empty").mkdir()
    line = _one_line_error(invoke(str(base), str(tmp_path / "empty")))
    assert "no results CSV" in line


def test_cli_schema_mismatch_exit_2(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    bad = tmp_path / "bad.csv"
    pd.read_csv(base / CSV_NAME).drop(columns=["seqlen"]).to_csv(bad, index=False)
    assert "missing columns seqlen" in _one_line_error(invoke(str(base), str(bad)))
    no_metric = tmp_path / "no_metric.csv"
    pd.read_csv(base / CSV_NAME).drop(columns=["ms_median"]).to_csv(no_metric, index=False)
    assert "'ms_median' column" in _one_line_error(invoke(str(base), str(no_metric)))
    # speedups are computed from the times: a CSV without a stored speedup column is gated all the same
    no_speedup = tmp_path / "no_speedup.csv"
    pd.read_csv(base / CSV_NAME).drop(columns=["speedup"]).to_csv(no_speedup, index=False)
    out = invoke(str(base), str(no_speedup))
    assert out.exit_code == 0 and "SAME 4" in out.output, out.output
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("just,some\ntext,here\n")
    assert "missing columns" in _one_line_error(invoke(str(garbage), str(base)))


def test_cli_different_gpus_exit_2_unless_allowed(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", gpu="NVIDIA A100-SXM4-80GB")
    line = _one_line_error(invoke(str(base), str(cur)))
    assert "different GPUs" in line and "A100" in line and "--allow-different-gpu" in line
    out = invoke(str(base), str(cur), "--allow-different-gpu")
    assert out.exit_code == 0, out.output
    assert "| gpu | NVIDIA H100 80GB HBM3 | NVIDIA A100-SXM4-80GB |" in out.output


def test_cli_no_common_rows_exit_2(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    frame = pd.read_csv(cur / CSV_NAME)
    frame["window"] = 256
    frame.to_csv(cur / CSV_NAME, index=False)
    assert "no rows in common" in _one_line_error(invoke(str(base), str(cur)))


def test_cli_predicted_runs_need_predicted_metric(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", gpu=None, status=STATUS_PREDICTED)
    cur = make_run(tmp_path / "cur", gpu=None, status=STATUS_PREDICTED, nsa_scale={("bwd", 1000): 1.3})
    line = _one_line_error(invoke(str(base), str(cur)))
    assert "--metric predicted_ms" in line
    out = invoke(str(base), str(cur), "--metric", "predicted_ms")
    assert out.exit_code == 1, out.output  # the cost model has no noise: a 30% change is SLOWER
    assert "SLOWER 1" in out.output


def test_run_compare_writes_outputs(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    md, js = tmp_path / "out.md", tmp_path / "out.json"
    result, text = run_compare(base, base, Options(metric="ms"), md_path=md, json_path=js)
    assert md.read_text() == text and "| point |" in text
    payload = json.loads(js.read_text())
    assert payload["metric"] == "ms_median" and len(payload["points"]) == len(result.points) == 8
    assert set(payload["points"][0]) >= {"baseline_value", "current_value", "change", "noise_baseline", "status"}


def test_csv_columns_are_the_schema(tmp_path: Path) -> None:
    """The synthetic runs go through the real writer, so the tests see the real schema."""
    assert tuple(pd.read_csv(make_run(tmp_path / "a") / CSV_NAME).columns) == FIELDS


# --- any CSV of the documented schema -----------------------------------------------

def test_csv_without_a_stage_column_is_all_total_rows(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    frame = pd.read_csv(base / CSV_NAME)
    totals = tmp_path / "totals.csv"
    frame[frame["stage"] == "total"].drop(columns=["stage"]).to_csv(totals, index=False)
    out = invoke(str(base), str(totals))
    assert out.exit_code == 0, out.output
    assert "points compared: 4; SLOWER 0, AMBIGUOUS 0, FASTER 0, SAME 4" in out.output


def test_copied_csv_without_env_json_reads_the_gpu_from_its_rows(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    copy = tmp_path / "copy.csv"
    copy.write_bytes((base / CSV_NAME).read_bytes())
    out = invoke(str(base), str(copy))
    assert out.exit_code == 0, out.output
    assert "GPU: NVIDIA H100 80GB HBM3" in out.output.split("current:")[1].splitlines()[0]


def test_predicted_run_and_its_copied_csv_are_the_same_gpu(tmp_path: Path) -> None:
    run = tmp_path / "run"
    from nsa_bench import cli  # a real predicted sweep: env.json has gpu None, rows name the spec

    assert CliRunner().invoke(cli.cli, ["sweep", "--suite", "smoke", "--out", str(run), "--quiet", "--no-plots"]).exit_code == 0
    copy = tmp_path / "copy.csv"
    copy.write_bytes((run / CSV_NAME).read_bytes())
    out = invoke(str(run), str(copy), "--metric", "predicted_ms")
    assert out.exit_code == 0, out.output


def test_schema_mismatch_is_reported_before_the_gpu(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    bare = tmp_path / "bare.csv"
    pd.read_csv(base / CSV_NAME).drop(columns=["ms_median", "gpu"]).to_csv(bare, index=False)
    line = _one_line_error(invoke(str(base), str(bare)))
    assert "'ms_median' column" in line and "GPU" not in line
    unknown = tmp_path / "unknown.csv"
    pd.read_csv(base / CSV_NAME).drop(columns=["gpu"]).to_csv(unknown, index=False)
    line = _one_line_error(invoke(str(base), str(unknown)))
    assert "cannot tell the GPU of the current run" in line and "different GPUs" not in line


# --- speedups from the runs' own times -----------------------------------------------------------

def _cells(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype=str, keep_default_na=False)


def _edit(csv: Path, where, column: str, text: str) -> int:
    """Write `text` into `column` of the rows `where(cells)` selects, leaving every other cell's text as it was;
    the CSV line of the first one."""
    cells = _cells(csv)
    chosen = where(cells)
    cells.loc[chosen, column] = text
    cells.to_csv(csv, index=False)
    return int(chosen.to_numpy().nonzero()[0][0]) + 2


def _nsa_total(mode: str, seqlen: int):
    return lambda c: (c["mode"] == mode) & (c["seqlen"] == str(seqlen)) & (c["backend"] == "nsa-triton") & \
        (c["stage"] == "total")


def test_speedups_are_computed_from_the_times_and_a_disagreeing_column_is_reported(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    # the stored column claims a 3x speedup at two points whose times did not change: the times decide
    cur = make_run(tmp_path / "cur", stored_speedup={("fwd", 2048): 7.5, ("bwd", 1000): 0.5})
    out = invoke(str(base), str(cur))
    assert out.exit_code == 0 and "SAME 4" in out.output, out.output
    note = next(line for line in out.output.splitlines() if "disagree" in line)
    assert note.startswith("- current: 2 stored speedups disagree with the run's own times")
    assert "fwd nsa-triton T=2048: stored 7.5, times give 2.5" in note and "bwd nsa-triton T=1000" in note
    assert "baseline:" not in note and not compare_paths(base, base, Options()).baseline_rows.disagreements
    # and a stored column that hides a real slowdown does not hide it from the gate
    slow = make_run(tmp_path / "slow", nsa_scale={("fwd", 2048): 1.2}, stored_speedup={("fwd", 2048): 2.5})
    out = invoke(str(base), str(slow), "--json", str(tmp_path / "gate.json"))
    assert out.exit_code == 1 and "SLOWER 1" in out.output, out.output
    (disagreement,) = json.loads((tmp_path / "gate.json").read_text())["current"]["speedup_disagreements"]
    assert disagreement["stored"] == 2.5 and disagreement["computed"] == pytest.approx(2.5 / 1.2, rel=1e-5)


def test_six_significant_digits_are_not_a_disagreement(tmp_path: Path) -> None:
    odd = {(m, s): 1.0 + 1 / 3 for m in MODES for s in SEQLENS}  # times that round in the last digit
    run = make_run(tmp_path / "run", nsa_scale=odd)
    assert not compare_paths(run, run, Options()).current_rows.disagreements


def test_planted_slowdown_without_a_baseline_column_is_slower(tmp_path: Path) -> None:
    """Older and hand-made CSVs have no `baseline` column: speedups are against the default baseline (fa2),
    so their noise is known and a clear 20% slowdown fails the gate instead of passing as AMBIGUOUS."""
    for name, scale in (("base", None), ("cur", {("fwd", 2048): 1.2})):
        run = make_run(tmp_path / name, nsa_scale=scale)
        _cells(run / CSV_NAME).drop(columns=["baseline"]).to_csv(run / CSV_NAME, index=False)
    out = invoke(str(tmp_path / "base"), str(tmp_path / "cur"))
    assert out.exit_code == 1, out.output
    assert "SLOWER 1" in out.output and "AMBIGUOUS 0" in out.output
    assert "- current: the CSV has no baseline column: speedups are against fa2" in out.output
    result = compare_paths(tmp_path / "base", tmp_path / "cur", Options())
    assert {p.against for p in result.points} == {"fa2"} and all(math.isfinite(p.noise) for p in result.points)
    assert result.skipped_current["the speedup baseline itself"] == 4


def test_a_run_whose_baseline_failed_has_no_speedup_there(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    fa2 = lambda c: (c["mode"] == "bwd") & (c["seqlen"] == "2048") & (c["backend"] == "fa2")  # noqa: E731
    _edit(cur / CSV_NAME, fa2, "status", "oom")
    result = compare_paths(base, cur, Options())
    assert len(result.points) == 3 and result.skipped_current["the fa2 row has no time (status oom)"] == 1
    assert result.one_sided() == [(result.only_baseline[0], "only in baseline; current: the fa2 row has no time "
                                                            "(status oom)")]


# --- cells that cannot be compared -----------------------------------------------------------------

@pytest.mark.parametrize("text", ["inf", "0", "0.0", "Infinity"])
@pytest.mark.parametrize("metric,column", [("speedup", "ms_median"), ("ms", "ms_median"), ("speedup", "speedup")])
def test_non_finite_or_zero_metric_is_an_error_naming_file_line_column(tmp_path: Path, text: str, metric: str,
                                                                        column: str) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    line_no = _edit(cur / CSV_NAME, _nsa_total("bwd", 1000), column, text)
    line = _one_line_error(invoke(str(base), str(cur), "--metric", metric))
    assert f"current: {cur / CSV_NAME} line {line_no}: column {column}: '{text}' is not a finite positive number" \
        in line, line


def test_non_finite_prediction_is_an_error_where_the_status_carries_one(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", gpu=None, status=STATUS_PREDICTED)
    cur = make_run(tmp_path / "cur", gpu=None, status=STATUS_PREDICTED)
    line_no = _edit(cur / CSV_NAME, _nsa_total("fwd", 2048), "predicted_ms", "inf")
    line = _one_line_error(invoke(str(base), str(cur), "--metric", "predicted_ms"))
    assert f"line {line_no}: column predicted_ms: 'inf'" in line and str(cur / CSV_NAME) in line
    # a row whose status carries no time may hold anything there: an oom row's empty or odd median is not read
    other = make_run(tmp_path / "other")
    _edit(other / CSV_NAME, _nsa_total("fwd", 2048), "status", "oom")
    _edit(other / CSV_NAME, _nsa_total("fwd", 2048), "ms_median", "inf")
    assert invoke(str(make_run(tmp_path / "plain")), str(other)).exit_code == 0


# --- what could not be judged ------------------------------------------------------------------------

def test_the_verdict_counts_what_it_could_not_judge_and_fail_on_ambiguous_fails(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", spread=0.3, samples=10)
    cur = make_run(tmp_path / "cur", spread=0.3, samples=10, nsa_scale={("fwd", 1000): 1.08, ("bwd", 2048): 1.08})
    _edit(cur / CSV_NAME, _nsa_total("fwd", 2048), "status", "error")
    out = invoke(str(base), str(cur))
    assert out.exit_code == 0, out.output
    verdict = out.output.splitlines()[0]
    assert verdict.startswith("# nsa-bench compare: PASS: no confirmed regression; 3 of 4 points not judged")
    assert "2 AMBIGUOUS: inside the noise" in verdict and "1 only in baseline" in verdict
    assert "| fwd nsa-triton T=2048 | only in baseline; current: status error |" in out.output
    strict = invoke(str(base), str(cur), "--fail-on-ambiguous", "--json", str(tmp_path / "gate.json"))
    assert strict.exit_code == 1, strict.output
    assert strict.output.startswith("# nsa-bench compare: FAIL: not every point could be judged (--fail-on-ambiguous)")
    payload = json.loads((tmp_path / "gate.json").read_text())
    assert payload["verdict"] == "fail" and payload["not_judged"] == {"AMBIGUOUS: inside the noise": 2,
                                                                     "only in baseline": 1}
    # everything judged: --fail-on-ambiguous passes, and the verdict says so
    quiet = invoke(str(make_run(tmp_path / "a")), str(make_run(tmp_path / "b")), "--fail-on-ambiguous")
    assert quiet.exit_code == 0 and "PASS: no confirmed regression; all 4 points judged" in quiet.output


def test_unknown_noise_is_named(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", samples=3)  # too few samples to know the spread
    cur = make_run(tmp_path / "cur", samples=3, nsa_scale={("bwd", 1000): 1.2})
    result = compare_paths(base, cur, Options(fail_on_ambiguous=True))
    assert result.not_judged() == {"AMBIGUOUS: noise unknown": 1} and result.exit_code == 1


def test_only_changes_beyond_the_threshold_are_regressions(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", spread=0.3, samples=10)
    # a hair slower everywhere (SAME, -0.0%), one noisy point 8% slower (AMBIGUOUS), one 8% faster (AMBIGUOUS)
    scale = {(m, s): 1.0001 for m in MODES for s in SEQLENS} | {("fwd", 1000): 1.08, ("bwd", 1000): 1 / 1.08}
    cur = make_run(tmp_path / "cur", spread=0.3, samples=10, nsa_scale=scale)
    result = compare_paths(base, cur, Options())
    assert [p.key_dict()["seqlen"] + p.key_dict()["mode"] for p in result.regressions()] == ["1000fwd"]
    worst = compare.to_markdown(result).split("## Worst regressions")[1].split("\n## ")[0]
    assert "-0.0%" not in worst and "SAME" not in worst and "T=1000" in worst
    assert "AMBIGUOUS (inside the noise)" in worst.splitlines()[4]
    assert [line for line in worst.splitlines() if line.startswith("| ")][1:] == [worst.splitlines()[4]]
    same = compare_paths(make_run(tmp_path / "quiet"), make_run(tmp_path / "hair", nsa_scale=scale | {
        ("fwd", 1000): 1.0001, ("bwd", 1000): 1.0001}), Options())
    assert not same.regressions() and "none: no point got worse beyond the threshold" in compare.to_markdown(same)


# --- outputs never land on inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("target", ["results.csv", "env.json", "spec.json", "progress.jsonl"])
def test_md_or_json_over_a_run_file_is_refused_and_the_file_untouched(tmp_path: Path, target: str) -> None:
    run = make_run(tmp_path / "run")
    (run / "spec.json").write_text("{}\n")
    (run / "progress.jsonl").write_text("")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for flag in ("--md", "--json"):
        line = _one_line_error(invoke(str(run), str(run), flag, str(run / target)))
        assert f"{flag} '{run / target}'" in line and "nothing was written" in line
    other = make_run(tmp_path / "other")  # a run folder that is not an input is protected as well
    line = _one_line_error(invoke(str(run), str(run), "--md", str(other / target)))
    assert "run folder's" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_outputs_over_inputs_folders_or_each_other_are_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    copy = tmp_path / "copy.csv"
    copy.write_bytes((run / CSV_NAME).read_bytes())
    link = tmp_path / "link.md"
    link.symlink_to(run / CSV_NAME)
    csv_bytes = (run / CSV_NAME).read_bytes()
    cases = [
        ((str(run), str(copy), "--md", str(copy)), "is an input of this command"),
        ((str(run), str(copy), "--json", str(tmp_path / "." / "copy.csv")), "is an input of this command"),
        ((str(run), str(run), "--md", str(link)), "is an input of this command"),
        ((str(run), str(run), "--md", str(tmp_path)), "is a folder"),
        ((str(run), str(run), "--md", str(tmp_path / "x.md"), "--json", str(tmp_path / "x.md")),
         "is also the --md output"),
        ((str(run), str(run), "--md", str(tmp_path / "no" / "such" / "x.md")), "is not a folder"),
        ((str(run), str(run), "--md", str(copy / "x.md")), "is not a folder"),
    ]
    for args, why in cases:
        assert why in _one_line_error(invoke(*args)), args
    assert (run / CSV_NAME).read_bytes() == csv_bytes and copy.read_bytes() == csv_bytes
    assert not (tmp_path / "x.md").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_md_into_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = _one_line_error(invoke(str(run), str(run), "--md", str(locked / "gate.md")))
    finally:
        locked.chmod(0o700)
    assert f"--md '{locked / 'gate.md'}' cannot be written" in line


def test_an_unwritable_output_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the system refuses (a read-only folder, a full disk), checked before comparing and again on
    writing: one line naming the flag and the path, exit 2, no traceback (as root too)."""
    from nsa_bench import output_paths

    run = make_run(tmp_path / "run")
    target = tmp_path / "gate.json"
    monkeypatch.setattr(output_paths, "_writable", lambda path: False)
    line = _one_line_error(invoke(str(run), str(run), "--json", str(target)))
    assert line.endswith(f"--json '{target}' cannot be written (permission denied); nothing was written")
    monkeypatch.undo()

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    line = _one_line_error(invoke(str(run), str(run), "--json", str(target)))
    assert line.endswith(f"--json '{target}' cannot be written: Permission denied")


# --- a re-run command per suspect -----------------------------------------------------------------------

def test_each_suspect_comes_with_its_rerun_command(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    write_json(cur / "spec.json", {"reps": 7, "warmup": 2, "seed": 3, "check_seqlen": 512, "cuda_graph": False,
                                   "gpu": "h100", "baseline": "fa2", "more_baselines": ["cudnn"]})
    out = invoke(str(base), str(cur), "--json", str(tmp_path / "gate.json"))
    assert out.exit_code == 1, out.output
    section = out.output.split("## Re-run the suspects")[1].split("\n## ")[0]
    command = ("nsa-bench sweep --mode fwd --dtype bfloat16 --seqlen 2k --batch 1 --kv-heads 4 --group-size 16 "
               "--block-cmp 32 --stride-cmp 16 --block-slc 64 --n-slc 16 --window 512 --head-dim 192-128 "
               "--doc-lens none --backend nsa-triton --baseline fa2 --reps 7 --warmup 2 --seed 3 --check-seqlen 512 "
               "--no-cuda-graph --gpu h100")
    assert "# fwd nsa-triton T=2048: SLOWER -16.7%" in section and command in section.splitlines()
    payload = json.loads((tmp_path / "gate.json").read_text())
    assert [p["rerun"] for p in payload["points"] if p["status"] == SLOWER] == [command]
    assert all(p["rerun"] is None for p in payload["points"] if p["status"] == SAME)
    # without spec.json the commands use the defaults, and say so
    plain = invoke(str(base), str(make_run(tmp_path / "plain", nsa_scale={("fwd", 2048): 1.2})))
    assert f"with the sweep's default settings (no spec.json in {tmp_path / 'plain'}):" in plain.output
    assert "## Re-run the suspects" not in invoke(str(base), str(base)).output


# --- clocks ---------------------------------------------------------------------------------------------

def test_clock_ratio_and_normalized_judgement(tmp_path: Path) -> None:
    """The current run ran at 0.9x the SM clock and every time is 1/0.9 as long: slower in ms, the same in
    cycles; its speedups, ratios of two times at one clock, did not change at all."""
    base = make_run(tmp_path / "base", clock=1980.0)
    cur = make_run(tmp_path / "cur", clock=1782.0, time_scale=1 / 0.9)
    raw = invoke(str(base), str(cur), "--metric", "ms")
    assert raw.exit_code == 1 and "SLOWER 8" in raw.output, raw.output
    assert "| 0.900 | SLOWER |" in raw.output
    assert "SM clock current/baseline: read in both runs at 8 of 8 points; median 0.900" in raw.output
    normalized = invoke(str(base), str(cur), "--metric", "ms", "--normalize-clocks", "--json", str(tmp_path / "g.json"))
    assert normalized.exit_code == 0 and "SAME 8" in normalized.output, normalized.output
    assert "--normalize-clocks: judged 8 points as ms x SM MHz (cycles)" in normalized.output
    assert "| 0.900 * | SAME |" in normalized.output and "\\* judged clock-normalized" in normalized.output
    point = json.loads((tmp_path / "g.json").read_text())["points"][0]
    assert point["clock_ratio"] == pytest.approx(0.9) and point["clock_normalized"] is True
    speedup = invoke(str(base), str(cur), "--normalize-clocks")
    assert speedup.exit_code == 0 and "SAME 4" in speedup.output
    assert "the clock cancels: speedups are judged as they are (already normalized)" in speedup.output


def test_normalize_clocks_without_readings_says_so(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", clock=1782.0, time_scale=1 / 0.9)  # only one run read its clock
    out = invoke(str(base), str(cur), "--metric", "ms", "--normalize-clocks")
    assert out.exit_code == 1, out.output
    assert ("--normalize-clocks: judged 0 points as ms x SM MHz (cycles); could not normalize 8 points (no SM "
            "clock reading in both runs): judged on raw times") in out.output
    assert "SM clock current/baseline" not in out.output
    predicted = make_run(tmp_path / "p", gpu=None, status=STATUS_PREDICTED)
    out = invoke(str(predicted), str(predicted), "--metric", "predicted_ms", "--normalize-clocks")
    assert out.exit_code == 0 and "could not normalize: predicted_ms comes from the cost model" in out.output


def test_a_throttled_run_is_named_in_the_verdict(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", throttled=True)
    out = invoke(str(base), str(cur))
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].endswith("; throttled: current (12 rows: sw_thermal_slowdown)")
    assert "throttled" not in invoke(str(base), str(base)).output.splitlines()[0]


def test_an_unreadable_spec_json_leaves_the_gate_working(tmp_path: Path) -> None:
    """spec.json only feeds the re-run commands: a damaged one costs their settings (said), not the verdict."""
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    (cur / "spec.json").write_text("[1]")
    out = invoke(str(base), str(cur))
    assert out.exit_code == 1, out.output
    assert f"with the sweep's default settings ({cur / 'spec.json'} holds list, not a JSON object):" in out.output


@pytest.mark.parametrize("args,needle", [(["--threshold", "５"], "--threshold"), (["--threshold", "inf"], "--threshold"),
                                         (["--sigmas", "٣"], "--sigmas"), (["--sigmas", "nan"], "--sigmas")])
def test_compare_numbers_are_ascii_and_finite(tmp_path: Path, args, needle) -> None:
    from bad_inputs import count_bad_input

    from cli_runner import assert_clean_exit, run_main

    count_bad_input("compare flags")
    base = make_run(tmp_path / "base")
    code, out, err = run_main("compare", str(base), str(base), *args)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert needle in err, err


def test_an_empty_run_path_is_refused(tmp_path: Path) -> None:
    out = invoke("", str(make_run(tmp_path / "base")))
    assert out.exit_code == 2 and "an empty path" in out.output


# --- a clear change is judged whatever the threshold; a gate that judged nothing fails ----------------------

def test_a_change_far_outside_the_noise_is_slower_under_a_tiny_threshold(tmp_path: Path) -> None:
    """-33% with about 1% of combined noise, at a 0.2% threshold: the noise is above the threshold, but the
    change is far outside it, so the point is SLOWER (once it passed as AMBIGUOUS, 'noise above the threshold')."""
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.5})
    out = invoke(str(base), str(cur), "--threshold", "0.2")
    assert out.exit_code == 1, out.output
    assert out.output.startswith("# nsa-bench compare: FAIL: confirmed regression")
    assert "SLOWER 1" in out.output and "noise above the threshold" not in out.output
    assert classify(1.0, 1.5, 0.06, 0.05, 3.0, False) == SLOWER  # noise 6% > 5% threshold, change 50% >> 3 x 6%


@pytest.mark.parametrize("value", ["100", "150"])
def test_a_threshold_that_can_never_fail_is_refused(tmp_path: Path, value: str) -> None:
    base = make_run(tmp_path / "base")
    line = _one_line_error(invoke(str(base), str(base), "--threshold", value))
    assert f"--threshold {value}" in line and "never fail" in line, line


def test_a_gate_that_judged_no_point_fails(tmp_path: Path) -> None:
    """Runs with fewer than 5 samples per row: the noise is unknown, every change beyond the threshold is
    AMBIGUOUS; with no point judged the gate must not say PASS."""
    base = make_run(tmp_path / "base", samples=3)
    cur = make_run(tmp_path / "cur", samples=3, nsa_scale={(m, s): 1.3 for m in MODES for s in SEQLENS})
    out = invoke(str(base), str(cur), "--json", str(tmp_path / "gate.json"))
    assert out.exit_code == 1, out.output
    assert out.output.splitlines()[0] == "# nsa-bench compare: FAIL: no point could be judged (4 AMBIGUOUS: noise unknown)"
    payload = json.loads((tmp_path / "gate.json").read_text())
    assert payload["verdict"] == "fail" and payload["exit_code"] == 1
    # one point judged (SAME: inside the threshold needs no noise) is enough to pass, saying what was not judged
    some = make_run(tmp_path / "some", samples=3, nsa_scale={("fwd", 1000): 1.3})
    out = invoke(str(base), str(some))
    assert out.exit_code == 0 and "PASS: no confirmed regression; 1 of 4 points not judged" in out.output, out.output


# --- no existing file of a run folder is overwritten, except compare's own earlier output ------------------

@pytest.mark.parametrize("target", ["breakeven.csv", "plots/speedup.svg", "report.md", "tuning.json", "envs/a.json"])
@pytest.mark.parametrize("flag", ["--md", "--json"])
def test_an_existing_file_of_a_run_folder_is_never_overwritten(tmp_path: Path, target: str, flag: str) -> None:
    run = make_run(tmp_path / "run")
    path = run / target
    path.parent.mkdir(exist_ok=True)
    path.write_text("the run's own file\n")
    line = _one_line_error(invoke(str(run), str(run), flag, str(path)))
    assert f"{flag} '{path}'" in line and "a file of the run folder" in line and "nothing was written" in line, line
    assert path.read_text() == "the run's own file\n"
    # a folder of progress only (a run that has not written a row yet) is a run folder too
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "progress.jsonl").write_text("")
    (bare / "notes.md").write_text("mine\n")
    assert "a file of the run folder" in _one_line_error(invoke(str(run), str(run), flag, str(bare / "notes.md")))


def test_compare_may_write_a_new_file_into_a_run_and_rewrite_its_own(tmp_path: Path) -> None:
    """What .github/workflows/perf.yml does: --md RUN/gate.md --json RUN/gate.json, and again on a retry."""
    base = make_run(tmp_path / "base")
    run = make_run(tmp_path / "run", nsa_scale={("fwd", 2048): 1.2})
    args = (str(base), str(run), "--md", str(run / "gate.md"), "--json", str(run / "gate.json"))
    assert invoke(*args).exit_code == 1
    again = invoke(*args)
    assert again.exit_code == 1, again.output
    assert (run / "gate.md").read_text().startswith("# nsa-bench compare: FAIL")
    assert json.loads((run / "gate.json").read_text())["exit_code"] == 1
    # but not the other way round: compare's markdown is not JSON it wrote, and a hand-edited gate.md is not its own
    line = _one_line_error(invoke(str(base), str(run), "--json", str(run / "gate.md")))
    assert "a file of the run folder" in line
    (run / "gate.md").write_text("# my notes\n")
    assert "a file of the run folder" in _one_line_error(invoke(str(base), str(run), "--md", str(run / "gate.md")))
    assert (run / "gate.md").read_text() == "# my notes\n"


@pytest.mark.parametrize("flag", ["--md", "--json"])
def test_an_empty_output_path_is_named_as_such(tmp_path: Path, flag: str) -> None:
    from cli_runner import assert_clean_exit, run_main

    run = make_run(tmp_path / "run")
    code, out, err = run_main("compare", str(run), str(run), flag, "")
    assert_clean_exit(code, out, err, allowed=(2,))
    assert "an empty path" in err and flag in err and "'.'" not in err, err


# --- a run with two rows of one key is refused, whatever the argument order ---------------------------

def test_duplicate_key_rows_are_refused_naming_file_lines_and_key(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    cells = _cells(cur / CSV_NAME)
    first = int(_nsa_total("fwd", 2048)(cells).to_numpy().nonzero()[0][0])
    twin = cells.iloc[[first]].assign(ms_median="9.0")  # the same key, another time
    pd.concat([cells, twin], ignore_index=True).to_csv(cur / CSV_NAME, index=False)
    last = len(cells) + 2
    for args in ((base, cur), (cur, base)):
        line = _one_line_error(invoke(*map(str, args)))
        assert f"{cur / CSV_NAME} lines {first + 2} and {last}" in line, line
        assert "fwd nsa-triton T=2048" in line and "stored speedups" not in line, line


# --- no rows in common: which key column keeps them apart -------------------------------------------------

@pytest.mark.parametrize("column,old,new", [("dtype", "bfloat16", "float64"), ("backend", "nsa-triton", "nsa-v2"),
                                            ("window", "512", "256")])
def test_no_rows_in_common_says_which_key_column_differs(tmp_path: Path, column: str, old: str, new: str) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    cells = _cells(cur / CSV_NAME)
    cells[column] = cells[column].replace(old, new)
    cells.to_csv(cur / CSV_NAME, index=False)
    line = _one_line_error(invoke(str(base), str(cur)))
    assert "no rows in common" in line and f"{column}: baseline {old}, current {new}" in line, line


def test_no_rows_in_common_from_other_combinations_says_so(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur")
    for run, keep in ((base, "1000"), (cur, "2048")):  # fwd at one length, bwd at the other
        cells = _cells(run / CSV_NAME)
        keep_rows = ((cells["mode"] == "fwd") & (cells["seqlen"] == keep)) | \
            ((cells["mode"] == "bwd") & (cells["seqlen"] != keep))
        cells[keep_rows].to_csv(run / CSV_NAME, index=False)
    line = _one_line_error(invoke(str(base), str(cur)))
    assert "no rows in common" in line and "other combinations" in line and "mode" in line, line
