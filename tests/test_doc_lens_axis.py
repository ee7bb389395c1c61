"""The --doc-lens and --q-heads axes: flags and suite keys into a SweepSpec, points that carry them, the
shorter check's scaled documents, the gqa suite's model shape, and one-line CLI errors."""
from __future__ import annotations

import pandas as pd
import pytest

from cli_runner import run_cli
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.suites import OptionError, build_spec


def test_doc_lens_axis_is_part_of_the_product():
    spec = build_spec(None, {"doc-lens": "none,uniform:4K,lognormal:8k", "seqlen": "8k,16k", "mode": "fwd"})
    assert spec.doc_lens == ("none", "uniform:4k", "lognormal:8k")
    points, invalid = spec.points()
    assert not invalid and len(points) == 6
    assert [p.doc_lens for p in points[:2]] == ["none", "none"]  # seqlen innermost
    assert points[2].packed and "docs=uniform:4k" in points[2].label() and "docs" not in points[0].label()
    assert SweepSpec().doc_lens == ("none",) and not SweepSpec().points()[0][0].packed


def test_check_length_scales_the_documents():
    pt = Point("fwd", 65536, 1, 4, 16, 192, 128, 32, 16, 64, 16, 512, "bfloat16", 0, "lognormal:8k@2")
    short = pt.with_seqlen(1024, batch=1)
    assert short.doc_lens == "lognormal:128@2" and sum(short.documents()) == 1024
    assert pt.with_seqlen(65536) == pt


def test_q_heads_fix_the_model_width():
    spec = build_spec(None, {"q-heads": "64", "group-size": "1,16", "seqlen": "8k", "mode": "fwd"})
    points, invalid = spec.points()
    assert [(p.kv_heads, p.group_size, p.q_heads) for p in points] == [(64, 1, 64), (4, 16, 64)]
    assert not invalid


def test_q_heads_a_group_size_does_not_divide_is_a_flag_error():
    with pytest.raises(OptionError, match="group-size.*3 does not divide q_heads 64"):
        build_spec(None, {"q-heads": "64", "group-size": "1,3,16", "seqlen": "8k", "mode": "fwd"})


def test_gqa_suite_holds_hq_at_64():
    spec = build_spec("gqa", {})
    points, invalid = spec.points()
    assert not invalid and len(points) == 6 * 4 * 2
    assert {p.group_size for p in points} == {1, 2, 4, 8, 16, 32} and {p.q_heads for p in points} == {64}
    assert {p.seqlen for p in points} == {8192, 16384, 32768, 65536} and {p.mode for p in points} == {"fwd", "bwd"}
    assert {(p.block_cmp, p.stride_cmp, p.block_slc, p.n_slc, p.window) for p in points} == {(32, 16, 64, 16, 512)}


def test_a_later_layer_chooses_between_kv_heads_and_q_heads():
    assert build_spec("gqa", {"kv-heads": "4"}).q_heads == ()  # the flag wins over the suite's q-heads
    assert build_spec("paper", {"q-heads": "32"}).q_heads == (32,)
    with pytest.raises(OptionError, match="leave --kv-heads out") as info:
        build_spec(None, {"q-heads": "64", "kv-heads": "4"})
    assert info.value.flag == "q-heads"


@pytest.mark.parametrize("args,flag,value", [
    (["--doc-lens", "zipf:4k"], "--doc-lens", "zipf:4k"),
    (["--doc-lens", "uniform:4k:2"], "--doc-lens", "uniform:4k:2"),
    (["--q-heads", "0"], "--q-heads", "0"),
    (["--q-heads", "64", "--kv-heads", "4"], "--q-heads", "64"),
])
def test_bad_values_are_one_line_exit_2(monkeypatch, capsys, tmp_path, args, flag, value):
    code, out, err = run_cli(monkeypatch, capsys, "sweep", "--out", str(tmp_path / "run"), "--quiet", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert flag in err and value in err and "Traceback" not in err + out


def test_predicted_doc_lens_sweep(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "16k,64k", "--mode", "fwd,bwd", "--doc-lens",
                           "none,fixed:4k,lognormal:8k", "--backend", "fa2,nsa-ref,nsa-triton", "--out", str(out_dir),
                           "--quiet", "--no-plots")
    assert code == 0 and "doc_lens" in out
    frame = pd.read_csv(out_dir / "results.csv")
    totals = frame[frame["stage"] == "total"].set_index(["mode", "seqlen", "doc_lens", "backend"])
    fa2_dense, fa2_packed = totals.loc[("fwd", 65536, "none", "fa2")], totals.loc[("fwd", 65536, "fixed:4k", "fa2")]
    assert fa2_dense["flops"] / fa2_packed["flops"] == pytest.approx(16, rel=1e-3)  # 16 causal triangles of 4k
    assert totals.loc[("fwd", 65536, "fixed:4k", "nsa-ref"), "status"] == "predicted"
    triton = totals.loc[("fwd", 65536, "fixed:4k", "nsa-triton")]
    assert triton["status"] == "predicted"  # packed points run on our kernels now
    assert triton["flops"] == totals.loc[("fwd", 65536, "fixed:4k", "nsa-ref"), "flops"]
    assert totals.loc[("fwd", 65536, "none", "nsa-triton"), "status"] == "predicted"
