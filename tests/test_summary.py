"""What a sweep prints when it ends accounts for every row it wrote (nsa_bench.summary)."""
from __future__ import annotations

import signal

import pandas as pd

from cli_runner import run_cli
from nsa_bench.summary import failures_text, summary_text


def test_a_failed_point_keeps_its_row_and_every_failed_row_is_counted_with_its_reason(monkeypatch, capsys, tmp_path):
    """The long suite on an H200: bwd at 1M is `oom` for both backends (and nsa-triton's at 512k, with the copy
    its autotuning makes of the fp32 dq sum). It stays in the tables (its status in the cell) and the rows
    without a time are counted and explained."""
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--suite", "long", "--gpu", "h200", "--mode", "bwd",
                           "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    assert code == 0
    text = summary_text(tmp_path / "r" / "results.csv", "fa2")
    line_1m = [line for line in text.splitlines() if "1048576" in line]
    assert line_1m and all("oom" in line for line in line_1m)  # speedup and time tables both say why
    assert "Rows without a time: 3 of" in text and "oom: fa2 bwd T=1048576: needs 150.6 GiB resident" in text
    assert "oom: nsa-triton bwd T=524288: needs 142.5 GiB resident" in text


def test_an_unsupported_backend_is_mentioned(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "1k", "--mode", "fwd", "--backend",
                           "fa2,fla-nsa", "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    assert code == 0 and "Rows without a time: 1 of" in out and "unsupported: fla-nsa fwd T=1024" in out


def test_many_failures_are_counted_not_all_listed():
    rows = [{"backend": "fa2", "mode": "fwd", "seqlen": 1024 * (i + 1), "stage": "total", "status": "error",
             "message": f"boom {i}"} for i in range(9)]
    text = failures_text(pd.DataFrame(rows))
    assert text.splitlines()[0] == "Rows without a time: 9 of 9 (error 9)"
    assert "boom 3" in text and "boom 4" not in text and "... and 5 more error rows" in text


def test_an_interrupt_while_plotting_says_how_many_rows_are_on_disk(monkeypatch, capsys, tmp_path):
    from nsa_bench import sweep
    from nsa_bench.interrupts import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(sweep, "plot_run", interrupted)
    code, out, err = run_cli(monkeypatch, capsys, "sweep", "--suite", "smoke", "--out", str(tmp_path / "r"), "--quiet")
    rows = len(pd.read_csv(tmp_path / "r" / "results.csv"))
    assert code == 130 and f"while plotting: all {rows} rows are in" in err and "nsa-bench plot" in err


def test_a_sweep_prints_and_writes_its_break_even_lengths(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "2k..128k", "--mode", "fwd,bwd,fwdbwd,decode",
                           "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    table = pd.read_csv(tmp_path / "r" / "breakeven.csv")
    assert code == 0 and sorted(table["mode"]) == ["bwd", "decode", "fwd", "fwdbwd"]
    assert "Break-even length, where NSA's time equals the baseline's" in out
    fwd = table[table["mode"] == "fwd"].iloc[0]
    assert fwd["where"] == "between" and fwd["lower"] < fwd["seqlen"] < fwd["upper"]
    assert "fwd     nsa-triton vs fa2:" in out
