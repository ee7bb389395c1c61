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
         gpu: str = "NVIDIA H100 80GB HBM3") -> Row:
    """A measured row whose p10/p90 lie `spread` (relative) either side of the median."""
    measured = status == STATUS_OK
    return Row(
        mode=mode, backend=backend, impl=backend, stage=stage, seqlen=seqlen, batch=1, kv_heads=4,
        group_size=16, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16, block_slc=64,
        n_slc=16, window=512, dtype="bfloat16",
        ms_median=ms if measured else None, ms_p10=ms * (1 - spread) if measured else None,
        ms_p90=ms * (1 + spread) if measured else None, samples=samples if measured else None,
        predicted_ms=ms, speedup=speedup, baseline="fa2", status=status, gpu=gpu)


def make_run(folder: Path, *, nsa_scale: dict[tuple[str, int], float] | None = None, spread: float = 0.02,
             samples: int = 50, gpu: str | None = "NVIDIA H100 80GB HBM3", status: str = STATUS_OK,
             extra_env: dict | None = None) -> Path:
    """A run folder: fa2 and nsa-triton totals plus one NSA breakdown stage per point.

    nsa_scale multiplies the NSA time of chosen (mode, seqlen) points: 1.2 plants a 20% slowdown.
    """
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / CSV_NAME
    scale = nsa_scale or {}
    for mode in MODES:
        for seqlen in SEQLENS:
            fa2 = FA2_MS[seqlen] * (2 if mode == "bwd" else 1)
            nsa = NSA_MS[seqlen] * (2 if mode == "bwd" else 1) * scale.get((mode, seqlen), 1.0)
            speedup = fa2 / nsa if status == STATUS_OK else None
            append_row(csv, _row(mode, "fa2", seqlen, fa2, spread, samples, speedup=1.0 if speedup else None,
                                 status=status, gpu=gpu or ""))
            append_row(csv, _row(mode, "nsa-triton", seqlen, nsa, spread, samples, speedup=speedup,
                                 status=status, gpu=gpu or ""))
            append_row(csv, _row(mode, "nsa-triton", seqlen, nsa / 2, spread, samples, stage="selected",
                                 status=status, gpu=gpu or ""))
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
    (1.0, 1.50, 0.06, False, AMBIGUOUS),    # the noise itself exceeds the threshold
    (1.0, 1.20, math.nan, False, AMBIGUOUS),  # noise unknown
])
def test_classify(base: float, cur: float, noise: float, higher: bool, label: str) -> None:
    assert classify(base, cur, noise, 0.05, 3.0, higher) == label


def test_options_reject_bad_values() -> None:
    with pytest.raises(CompareError, match="metric='latency'"):
        Options(metric="latency")
    with pytest.raises(CompareError, match="threshold=-10%"):
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
    # 8% slower everywhere: beyond the 5% threshold, but the runs are noisy -> AMBIGUOUS, not SLOWER
    cur = make_run(tmp_path / "cur", spread=0.3, samples=10, nsa_scale={(m, s): 1.08 for m in MODES for s in SEQLENS})
    out = invoke(str(base), str(cur))
    assert out.exit_code == 0, out.output
    assert "AMBIGUOUS 4" in out.output and "SLOWER 0" in out.output
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
    pd.read_csv(base / CSV_NAME).drop(columns=["speedup"]).to_csv(no_metric, index=False)
    assert "'speedup' column" in _one_line_error(invoke(str(base), str(no_metric)))
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
    pd.read_csv(base / CSV_NAME).drop(columns=["speedup", "gpu"]).to_csv(bare, index=False)
    line = _one_line_error(invoke(str(base), str(bare)))
    assert "'speedup' column" in line and "GPU" not in line
    unknown = tmp_path / "unknown.csv"
    pd.read_csv(base / CSV_NAME).drop(columns=["gpu"]).to_csv(unknown, index=False)
    line = _one_line_error(invoke(str(base), str(unknown)))
    assert "cannot tell the GPU of the current run" in line and "different GPUs" not in line


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
