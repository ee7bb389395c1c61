"""SweepSpec and Point: one point's sweep (for_point), a point read back from its printed label, spec.json."""
from __future__ import annotations

import json
from dataclasses import fields

import pandas as pd
import pytest

from cli_runner import run_cli
from nsa_bench.spec import POINT_AXES, Point, SweepSpec

VARIED = SweepSpec(seqlens=(1000, 4096), batches=(1, 2), group_sizes=(1, 16), head_dims=((192, 128), (64, 64)),
                   modes=("fwd", "decode", "layer-bwd"), doc_lens=("none", "lognormal:1k:1.5@3"), d_models=(1024,),
                   n_slc=(2, 16))


def test_every_point_field_names_its_axis():
    assert set(POINT_AXES) == {f.name for f in fields(Point)}


def test_a_point_is_its_own_sweep_and_its_label_reads_back():
    for point, why in VARIED.all_points():
        one = SweepSpec.for_point(point, ("fa2", "nsa-triton"), VARIED)
        assert one.all_points() == [(point, why)]
        assert (one.reps, one.seed, one.baseline) == (VARIED.reps, VARIED.seed, VARIED.baseline)
        assert Point.from_label(point.label()) == point


@pytest.mark.parametrize("label,needle", [
    ("", "does not start with a mode"), ("fwd T=1k B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16",
                                         "seqlen='1k' is not a whole number"),
    ("fwd T=1024", "lacks B"), ("fwd T=1 T=2", "repeated"), ("fwd X=1", "unknown field"),
    ("fwd T=1024 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 int8", "expected NAME=VALUE or one dtype"),
    ("layer-fwd T=1024 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16", "d_model"),
    ("fwd T=1024 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16 d_model=64", "layer modes only"),
    ("fwd T=１０２４ B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16", "not a whole number"),
])
def test_a_bad_label_is_named(label, needle):
    with pytest.raises(ValueError, match=needle):
        Point.from_label(label)


def test_spec_json_reads_back():
    assert SweepSpec.from_dict(json.loads(json.dumps(VARIED.to_dict()))) == VARIED


def test_a_printed_point_reruns_as_the_same_row(monkeypatch, capsys, tmp_path):
    """`sweep --point "<label>"` with the run's backends gives the row the run wrote for that point."""
    args = ("--seqlen", "2k,4k", "--mode", "fwd,bwd", "--doc-lens", "none,fixed:1k", "--quiet", "--no-plots")
    assert run_cli(monkeypatch, capsys, "sweep", *args, "--out", str(tmp_path / "all"))[0] == 0
    frame = pd.read_csv(tmp_path / "all" / "results.csv", keep_default_na=False)
    row = frame[(frame["backend"] == "nsa-triton") & (frame["stage"] == "total") & (frame["doc_lens"] == "fixed:1k")
                & (frame["mode"] == "bwd")].iloc[0]
    label = Point.from_record(row.to_dict()).label()
    code, _, _ = run_cli(monkeypatch, capsys, "sweep", "--point", label, "--out", str(tmp_path / "one"), "--quiet",
                         "--no-plots")
    again = pd.read_csv(tmp_path / "one" / "results.csv", keep_default_na=False)
    assert code == 0 and len(again) == len(frame[(frame["mode"] == "bwd") & (frame["doc_lens"] == "fixed:1k")
                                                 & (frame["seqlen"] == row["seqlen"])])
    mine = again[(again["backend"] == "nsa-triton") & (again["stage"] == "total")].iloc[0]
    assert mine.drop(["host"]).equals(row.drop(["host"]))
