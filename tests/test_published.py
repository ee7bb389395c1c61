"""Published NSA results (nsa_bench.published): the shipped file loads and holds PAPER.md's figures, a malformed
copy is a one-line error naming file, line and column, and matching sets the right rows beside a run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsa_bench import published
from nsa_bench.published import Match, Published, PublishedError, load, matching, same_gpu
from nsa_bench.results import read_rows
from nsa_bench.spec import Point

ROOT = Path(__file__).resolve().parents[1]
PAPER_POINT = dict(batch=1, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16,
                   block_slc=64, n_slc=16, window=512, dtype="bfloat16")


def _value(rows, source: str, mode: str, seqlen: int | None, unit: str = "speedup", baseline: str | None = None) -> float:
    (row,) = [r for r in rows if r.source == source and r.mode == mode and r.seqlen == seqlen and r.unit == unit
              and (baseline is None or r.baseline == baseline) and r.implementation != "full attention"]
    return row.value


def test_the_shipped_file_loads_and_every_row_has_a_source():
    rows = load()
    assert rows and all(isinstance(r, Published) for r in rows)
    assert all(r.source and r.implementation and r.covers and r.unit in published.UNITS for r in rows)
    assert all(r.baseline for r in rows if r.unit in ("speedup", "break-even tokens"))


def test_the_papers_64k_headlines():
    rows = load()
    assert _value(rows, "arXiv 2502.11089 Figure 6", "fwd", 65536) == 9.0
    assert _value(rows, "arXiv 2502.11089 Figure 6", "bwd", 65536) == 6.0
    assert _value(rows, "arXiv 2502.11089 Table 4", "decode", 65536) == 11.6
    assert _value(rows, "arXiv 2502.11089 Table 4", "decode", 65536, unit="tokens") == 5632
    figure6 = [r for r in rows if r.source == "arXiv 2502.11089 Figure 6"]
    assert {(r.gpu, r.baseline) for r in figure6} == {("A100", "fa2-triton")}
    assert sorted(r.value for r in figure6 if r.mode == "fwd") == [2.1, 3.8, 6.3, 9.0]
    assert sorted(r.value for r in figure6 if r.mode == "bwd") == [1.1, 2.0, 3.4, 6.0]


def test_peer_figures_say_their_gpu_and_what_they_cover():
    rows = load()
    mdy = "mdy666/Scalable-Flash-Native-Sparse-Attention"
    assert _value(rows, mdy, "fwd", 65536, baseline="fa3") == 3.09
    assert _value(rows, mdy, "bwd", 65536, baseline="fa2") == 7.11
    assert {r.value for r in rows if r.unit == "break-even tokens"} == {6144, 11264}
    assert {r.gpu for r in rows if r.source == mdy} == {"H800"}
    xunhao = [r for r in rows if r.source == "XunhaoLai/native-sparse-attention-triton"]
    assert {r.covers for r in xunhao} == {"selected branch only", "selected and compressed branches"}
    assert {r.gpu for r in xunhao} == {"H100"}
    assert all(r.group_size == 16 for r in rows if r.q_heads == 64 and r.kv_heads == 4)


@pytest.mark.parametrize("change, column, why", [
    (lambda cells: cells.__setitem__(15, "fast"), "value", "is not a number"),
    (lambda cells: cells.__setitem__(14, "8k"), "seqlen", "is not a positive whole number"),
    (lambda cells: cells.__setitem__(13, "forward"), "mode", "is not a mode"),
    (lambda cells: cells.__setitem__(16, "x"), "unit", "is not a unit"),
    (lambda cells: cells.__setitem__(0, ""), "source", "is empty"),
    (lambda cells: cells.__setitem__(17, ""), "baseline", "is empty"),
])
def test_a_malformed_copy_is_one_line_naming_file_line_and_column(tmp_path, change, column, why):
    lines = published.FILE.read_text(encoding="utf-8").splitlines()
    cells = lines[3].split(",")  # a Figure 6 row: no quoted cells before the note
    change(cells)
    lines[3] = ",".join(cells)
    bad = tmp_path / "published.csv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PublishedError) as info:
        load(bad)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{bad} line 4: column {column}: ") and why in message


def test_a_row_of_the_wrong_width_or_a_wrong_header_is_one_line(tmp_path):
    bad = tmp_path / "published.csv"
    text = published.FILE.read_text(encoding="utf-8")
    bad.write_text(text + "arXiv 2502.11089,too,short\n", encoding="utf-8")
    with pytest.raises(PublishedError, match=rf"line {text.count(chr(10)) + 1}: 3 columns, expected 20$"):
        load(bad)
    bad.write_text(text.replace("implementation", "impl", 1), encoding="utf-8")
    with pytest.raises(PublishedError, match="line 1: the header must be"):
        load(bad)
    with pytest.raises(PublishedError, match="cannot read"):
        load(tmp_path / "absent.csv")


def test_same_gpu_reads_the_name_as_far_as_the_source_gives_it():
    assert same_gpu("A100", "NVIDIA A100-SXM4-80GB") and same_gpu("H100", "NVIDIA H100 80GB HBM3")
    assert not same_gpu("H800", "NVIDIA H100 80GB HBM3") and not same_gpu("A100", "NVIDIA H100 SXM5 80GB")
    assert not same_gpu("H100", "")


def test_a_point_matches_on_what_the_source_states():
    point = Point(mode="fwd", seqlen=65536, **PAPER_POINT)
    matches = matching(point, gpu="NVIDIA A100-SXM4-80GB")
    figure6 = [m for m in matches if m.published.source == "arXiv 2502.11089 Figure 6"]
    assert [m.published.value for m in figure6] == [9.0]  # the 64k forward figure only
    assert figure6[0].exact and figure6[0].differences == ()  # same shape and GPU; the paper gives no batch
    peers = [m for m in matches if m.published.source.startswith("XunhaoLai")]
    assert peers and all(m.differences == ("gpu H100, this run NVIDIA A100-SXM4-80GB", "shape not stated")
                         for m in peers)
    on_h100 = [m for m in matching(point, gpu="NVIDIA H100 80GB HBM3") if m.published.source.startswith("XunhaoLai")]
    assert on_h100 and all(not m.exact and m.differences == ("shape not stated",) for m in on_h100)
    other_blocks = Point(mode="fwd", seqlen=65536, **{**PAPER_POINT, "block_slc": 32})
    assert not [m for m in matching(other_blocks) if m.published.source.startswith("arXiv")]


def test_break_even_rows_match_the_configuration_at_any_length():
    point = Point(mode="fwdbwd", seqlen=2048, **{**PAPER_POINT, "head_dim_qk": 128, "head_dim_v": 128})
    matches = matching(point, gpu="NVIDIA H800")
    assert {(m.published.baseline, m.published.value) for m in matches} == {("fa2", 6144), ("fa3", 11264)}
    assert all(m.differences == ("not stated: window",) for m in matches)


@pytest.mark.subprocess
def test_matching_a_predicted_paper_run_returns_figure_6(tmp_path):
    run = tmp_path / "paper"
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", "--out", str(run), "--no-plots", "--quiet"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    matches = matching(read_rows(run))
    assert all(isinstance(m, Match) for m in matches)
    figure6 = [m for m in matches if m.published.source == "arXiv 2502.11089 Figure 6"]
    assert sorted((m.mode, m.published.seqlen) for m in figure6) == sorted(
        (mode, t) for mode in ("fwd", "bwd") for t in (8192, 16384, 32768, 65536))
    assert all(not m.exact and m.differences[0].startswith("gpu A100, this run NVIDIA H100") for m in figure6)
    assert all(dict(m.config)["group_size"] == 16 for m in figure6)
    decode = {m.published.value for m in matches if m.mode == "decode" and m.published.unit == "speedup"}
    assert decode == {4.0, 6.4, 9.1, 11.6}  # Table 4
    assert not [m for m in matches if m.published.source.startswith("mdy666")]  # head dim 128, not 192-128
