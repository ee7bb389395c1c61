"""--rerun (nsa_bench.remeasure): suspects measured afresh, each from its own point, then decided again."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nsa_bench import remeasure
from nsa_bench.compare import SAME, Options, compare_paths
from nsa_bench.remeasure import rerun_suspects
from nsa_bench.results import CSV_NAME
from test_compare import invoke, make_run


def test_cli_rerun_without_gpu_decides_on_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remeasure, "local_gpu", lambda: None)
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    out = invoke(str(base), str(cur), "--rerun")
    assert out.exit_code == 1, out.output
    assert "no GPU here, cannot re-measure 1 suspect point(s)" in out.output


# --- --rerun with an injected re-measurement ---------------------------------------------------

def test_rerun_replaces_suspects_and_decides_again(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    fresh_run = make_run(tmp_path / "fresh")  # the re-measurement finds no slowdown: it was a fluke
    asked: list[dict[str, str]] = []

    def remeasure(keys):
        asked.extend(keys)
        fresh = pd.read_csv(fresh_run / CSV_NAME)
        return fresh[(fresh["mode"] == "fwd") & (fresh["seqlen"] == 2048)]

    first = compare_paths(base, cur, Options())
    assert first.exit_code == 1
    second = rerun_suspects(first, remeasure)
    assert [(k["mode"], k["seqlen"], k["backend"]) for k in asked] == [("fwd", "2048", "nsa-triton")]
    assert second.exit_code == 0 and {p.status for p in second.points} == {SAME}
    assert [p.remeasured for p in second.points].count(True) == 1
    assert any("re-measured 1 suspect" in note for note in second.notes)


def test_rerun_confirms_a_real_regression(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    first = compare_paths(base, cur, Options())
    second = rerun_suspects(first, lambda keys: pd.read_csv(cur / CSV_NAME))
    assert second.exit_code == 1


def test_rerun_on_another_gpu_decides_on_data(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", nsa_scale={("fwd", 2048): 1.2})
    result = rerun_suspects(compare_paths(base, cur, Options()), gpu_here=lambda: "NVIDIA A100-SXM4-80GB")
    assert result.exit_code == 1 and "is not the current run's" in result.notes[-1]


def test_spec_for_key_is_one_point_with_its_baseline() -> None:
    key = {"mode": "bwd", "backend": "nsa-triton", "stage": "total", "seqlen": "1000", "batch": "2",
           "kv_heads": "4", "group_size": "16", "head_dim_qk": "192", "head_dim_v": "128", "block_cmp": "32",
           "stride_cmp": "16", "block_slc": "64", "n_slc": "16", "window": "512", "dtype": "float16"}
    spec = remeasure.spec_for_key(key, {"reps": 7, "warmup": 2, "baseline": "fa2", "gpu": "h100"})
    points, invalid = spec.points()
    assert not invalid and len(points) == 1
    assert (points[0].mode, points[0].seqlen, points[0].batch, points[0].dtype) == ("bwd", 1000, 2, "float16")
    assert spec.backends == ("fa2", "nsa-triton") and (spec.reps, spec.warmup) == (7, 2)
    layer = remeasure.spec_for_key(key | {"mode": "layer-bwd", "d_model": "1024"}, {"baseline": "fa2"})
    assert [(p.mode, p.d_model) for p in layer.points()[0]] == [("layer-bwd", 1024)]


def test_sweep_remeasure_returns_the_suspect_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real sweep runner (on a CPU it writes predictions, which is enough to check the plumbing)."""
    from nsa_bench import environment

    monkeypatch.setattr(environment, "git_commit", lambda: {"commit": None, "dirty": None})
    base = make_run(tmp_path / "base")
    result = compare_paths(base, base, Options())
    keys = [result.points[0].key_dict()]
    fresh = remeasure.sweep_remeasure(keys, {"gpu": "h100"})
    totals = fresh[fresh["stage"] == "total"]
    assert sorted(totals["backend"]) == ["fa2", "nsa-triton"]
    assert set(totals["seqlen"].astype(str)) == {keys[0]["seqlen"]} and set(totals["mode"]) == {keys[0]["mode"]}


def test_a_packed_suspect_is_remeasured_as_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every axis of the suspect's row reaches its sweep: a packed point is re-measured packed, not as its
    dense twin; a layer point keeps its width."""
    from nsa_bench import environment
    from nsa_bench.spec import POINT_AXES, Point

    assert set(POINT_AXES) == set(Point.__dataclass_fields__)  # a new key column must name its axis
    monkeypatch.setattr(environment, "git_commit", lambda: {"commit": None, "dirty": None})
    key = {"mode": "fwd", "backend": "nsa-triton", "stage": "total", "seqlen": "4096", "batch": "2",
           "kv_heads": "2", "group_size": "4", "head_dim_qk": "64", "head_dim_v": "32", "block_cmp": "32",
           "stride_cmp": "16", "block_slc": "64", "n_slc": "4", "window": "128", "dtype": "float16",
           "d_model": "0", "doc_lens": "lognormal:1k@3"}
    spec = remeasure.spec_for_key(key, {"gpu": "h100", "reps": 3, "more_baselines": ["cudnn"]})
    assert [p for p, _ in spec.all_points()] == [Point.from_record(key)] and spec.doc_lens == ("lognormal:1k@3",)
    fresh = remeasure.sweep_remeasure([key], {"gpu": "h100"})
    totals = fresh[fresh["stage"] == "total"]
    assert sorted(totals["backend"]) == ["fa2", "nsa-triton"] and set(totals["doc_lens"]) == {"lognormal:1k@3"}
    assert set(totals["batch"]) == {2} and set(totals["group_size"]) == {4}


def test_a_remeasured_ambiguous_point_is_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--fail-on-ambiguous with --rerun: a point too noisy to judge is measured again; judged SAME on the
    fresh rows, it no longer fails the gate. Without a GPU to re-measure on, it still does."""
    base = make_run(tmp_path / "base")
    cur = make_run(tmp_path / "cur", spread=0.3, samples=10, nsa_scale={("fwd", 2048): 1.2})
    first = compare_paths(base, cur, Options(fail_on_ambiguous=True))
    assert first.not_judged() == {"AMBIGUOUS: inside the noise": 1} and first.exit_code == 1
    fresh_run = make_run(tmp_path / "fresh")
    fresh = pd.read_csv(fresh_run / CSV_NAME)
    second = rerun_suspects(first, lambda keys: fresh[(fresh["mode"] == "fwd") & (fresh["seqlen"] == 2048)])
    assert second.not_judged() == {} and second.exit_code == 0
    assert "all 4 points judged" in second.verdict()
    monkeypatch.setattr(remeasure, "local_gpu", lambda: None)
    out = invoke(str(base), str(cur), "--rerun", "--fail-on-ambiguous")
    assert out.exit_code == 1 and "no GPU here, cannot re-measure 1 suspect point(s)" in out.output, out.output
