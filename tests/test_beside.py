"""A run beside the published figures of its configuration (nsa_bench.beside)."""
from __future__ import annotations

import pytest

from cli_runner import run_cli
from nsa_bench import beside, results


def test_a_predicted_a100_run_sits_beside_the_papers_figure_6_and_table_4(monkeypatch, capsys, tmp_path):
    code, _, _ = run_cli(monkeypatch, capsys, "sweep", "--gpu", "a100", "--backend", "fa2-triton,nsa-triton",
                         "--baseline", "fa2-triton", "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    frame = results.read_rows(tmp_path / "r")
    table = beside.beside_published(frame)
    fig6 = table[table["source"] == "arXiv 2502.11089 Figure 6"]
    assert len(fig6) == 8 and set(fig6["match"]) == {"exact"}  # A100, the paper's shape, against Triton FA2
    at_64k = fig6[(fig6["mode"] == "fwd") & (fig6["seqlen"] == 65536)].iloc[0]
    nsa = frame[(frame["mode"] == "fwd") & (frame["seqlen"] == 65536) & (frame["stage"] == "total")]
    ours = float(nsa[nsa["backend"] == "nsa-triton"]["speedup"].iloc[0])
    assert at_64k["published"] == "9 x" and at_64k["this run"] == f"{ours:.3g} x"
    table4 = table[table["source"] == "arXiv 2502.11089 Table 4"]
    assert len(table4) == 4 and all(m.startswith("partial: gpu not stated") for m in table4["match"])
    assert not table["this run against"].str.contains("not the published baseline").any() or \
        set(table[table["this run against"].str.contains("not the published")]["against"]) == {"fa2"}
    code, _, _ = run_cli(monkeypatch, capsys, "report", str(tmp_path / "r"))
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert code == 0 and "## Beside published figures" in markdown and "## Break-even" in markdown


def test_a_run_without_nsa_has_nothing_beside():
    import pandas as pd

    assert beside.beside_published(pd.DataFrame({"backend": ["fa2"], "mode": ["fwd"]})).empty


@pytest.mark.parametrize("unit,value,shown", [("speedup", 6.4712, "6.47 x"), ("break-even tokens", 6144, "6k tokens")])
def test_values_read_as_written(unit, value, shown):
    assert beside._shown(value, unit) == shown
