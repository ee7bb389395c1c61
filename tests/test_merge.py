"""Shard 1/2 + shard 2/2 + merge is the unsharded run, and merge refuses what is not one sweep."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bad_inputs import count_bad_input
from cli_runner import assert_clean_exit, run_main
from nsa_bench import results

SWEEP = ("sweep", "--seqlen", "1k..8k", "--mode", "fwd,bwd,decode", "--group-size", "4,16", "--quiet", "--no-plots")


def _sweep(out: Path, *extra: str) -> None:
    code, _, err = run_main(*SWEEP, "--out", str(out), *extra)
    assert code == 0, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _sweep(root / "one")
    _sweep(root / "s1", "--shard", "1/2")
    _sweep(root / "s2", "--shard", "2/2")
    _sweep(root / "t1", "--shard", "1/3")
    return root


def test_shards_plus_merge_equal_one_run(runs: Path):
    """Equality here is exact: predicted rows are deterministic, so the merged CSV is the unsharded CSV byte for
    byte (same rows, same order, same speedup cells)."""
    code, out, err = run_main("merge", str(runs / "s2"), str(runs / "s1"), "--out", str(runs / "m"))
    assert code == 0, err
    assert "rows from 2 runs" in out and "baseline: 0 cells changed" in out
    assert (runs / "m" / "results.csv").read_bytes() == (runs / "one" / "results.csv").read_bytes()
    one, s1, s2 = (results.read_rows(runs / n) for n in ("one", "s1", "s2"))
    assert len(s1) + len(s2) == len(one) and len(s1) and len(s2)
    assert json.loads((runs / "m" / "envs" / "s1.json").read_text())["shard"] == "1/2"
    env = json.loads((runs / "m" / "env.json").read_text())
    assert [m["shard"] for m in env["merged_from"]] == ["1/2", "2/2"]
    points = lambda frame: set(map(tuple, frame[["mode", "seqlen", "group_size"]].drop_duplicates().to_numpy()))
    assert not points(s1) & points(s2)  # a point's backends stay in one shard
    assert set(s1["backend"]) == set(s2["backend"]) == {"fa2", "nsa-triton"}


def test_merge_recomputes_a_speedup_whose_baseline_is_elsewhere(runs: Path, tmp_path: Path):
    """A run whose baseline rows were lost, merged with a run that has them: speedups come back."""
    import shutil

    for name in ("s1", "s2"):
        shutil.copytree(runs / name, tmp_path / name)
    csv = tmp_path / "s1" / "results.csv"
    lines = csv.read_text().splitlines(keepends=True)
    header = lines[0].split(",")
    speed = header.index("speedup")
    blanked = [lines[0]] + [",".join(c if i != speed else "" for i, c in enumerate(l.split(","))) for l in lines[1:]]
    csv.write_text("".join(blanked))
    code, out, err = run_main("merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "m"))
    assert code == 0, err
    merged, one = results.read_rows(tmp_path / "m"), results.read_rows(runs / "one")
    # recomputed from the CSV's six-digit times, a speedup may differ from the run's in its last digit
    assert merged["speedup"].fillna(-1).to_numpy() == pytest.approx(one["speedup"].fillna(-1).to_numpy(), rel=2e-5)
    assert merged.drop(columns="speedup").equals(one.drop(columns="speedup"))
    assert "baseline: 0 cells changed" not in out and "cells changed" in out


@pytest.mark.parametrize("case,needle", [
    ("mixed-sweeps", "another sweep"), ("twice", "named twice"), ("missing", "no such run"),
    ("out-is-run", "already holds a run"), ("split", "different splits"), ("dup-shard", "given twice"),
])
def test_merge_refuses(runs: Path, tmp_path: Path, case: str, needle: str):
    count_bad_input("merge arguments")
    other = tmp_path / "other"
    if case == "mixed-sweeps":
        _sweep(other, "--seed", "3")
        args = [runs / "s1", other]
    elif case == "dup-shard":
        import shutil

        shutil.copytree(runs / "s1", other)
        args = [runs / "s1", other]
    else:
        args = {"twice": [runs / "s1", runs / "s1"], "missing": [runs / "s1", tmp_path / "nope"],
                "out-is-run": [runs / "s1", runs / "s2"], "split": [runs / "s1", runs / "t1"]}[case]
    out = runs / "one" if case == "out-is-run" else tmp_path / "m"
    code, stdout, err = run_main("merge", *map(str, args), "--out", str(out))
    assert_clean_exit(code, stdout, err, allowed=(2,))
    assert needle in err, err
    assert not (tmp_path / "m").exists()


def test_partial_shards_say_what_is_missing(runs: Path, tmp_path: Path):
    code, out, err = run_main("merge", str(runs / "t1"), "--out", str(tmp_path / "m"))
    assert code == 0, err
    assert "shards missing: 2/3, 3/3" in out


# ---- key cells written as floats, runs without rows, bad headers, interruptions, folders that are not runs
def _copy(runs: Path, tmp_path: Path, *names: str) -> list[Path]:
    import shutil

    for name in names:
        shutil.copytree(runs / name, tmp_path / name)
    return [tmp_path / name for name in names]


def test_whole_number_key_cells_written_as_floats_are_the_same_point(runs: Path, tmp_path: Path):
    """`8192.0` for 8192 (a CSV saved by a spreadsheet or pandas): the same point, so the merge is the unsharded
    run byte for byte (not a second point with a blank speedup), and compare matches it too."""
    import pandas as pd

    s1, s2 = _copy(runs, tmp_path, "s1", "s2")
    cells = pd.read_csv(s1 / "results.csv", dtype=str, keep_default_na=False)
    nsa = cells["backend"] != "fa2"
    for column in ("seqlen", "window", "d_model"):
        cells.loc[nsa, column] = cells.loc[nsa, column] + ".0"
    cells.to_csv(s1 / "results.csv", index=False)
    code, out, err = run_main("merge", str(s1), str(s2), "--out", str(tmp_path / "m"))
    assert code == 0, err
    assert (tmp_path / "m" / "results.csv").read_bytes() == (runs / "one" / "results.csv").read_bytes()
    code, out, err = run_main("compare", str(runs / "s1"), str(s1), "--metric", "predicted_ms")
    assert code == 0 and "unmatched: 0 only in baseline, 0 only in current" in out, out + err


@pytest.mark.parametrize("case", ["no csv", "empty csv", "header only"])
def test_a_run_without_rows_is_refused(runs: Path, tmp_path: Path, case: str):
    count_bad_input("merge arguments")
    s1, s2 = _copy(runs, tmp_path, "s1", "s2")
    csv = s2 / "results.csv"
    if case == "no csv":
        csv.unlink()
    else:
        csv.write_text("" if case == "empty csv" else ",".join(results.FIELDS) + "\n")
    code, out, err = run_main("merge", str(s1), str(s2), "--out", str(tmp_path / "m"))
    assert_clean_exit(code, out, err, allowed=(2,))
    assert f"RUN '{s2}'" in err and "results.csv" in err and "no rows" in err, err
    assert not (tmp_path / "m").exists()


def test_a_header_of_another_version_says_what_merge_needs(runs: Path, tmp_path: Path):
    count_bad_input("merge arguments")
    s1, s2 = _copy(runs, tmp_path, "s1", "s2")
    csv = s2 / "results.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text(lines[0].replace(",host,device", "") + "".join(l.rsplit(",", 2)[0] + "\n" for l in lines[1:]))
    code, out, err = run_main("merge", str(s1), str(s2), "--out", str(tmp_path / "m"))
    assert_clean_exit(code, out, err, allowed=(2,))
    assert f"RUN '{s2}'" in err and "header" in err and "merge" in err, err
    assert "resume" not in err and "choose another --out" not in err, err


@pytest.mark.parametrize("signum", [2, 15])
def test_an_interrupted_merge_leaves_nothing_in_the_way_of_a_retry(runs: Path, tmp_path: Path, monkeypatch, capsys,
                                                                   signum: int):
    from cli_runner import run_cli
    from nsa_bench import breakeven, interrupts

    def interrupted(*args, **kwargs):
        raise interrupts.Interrupted(signum)

    monkeypatch.setattr(breakeven, "write_csv", interrupted)  # the last file merge writes
    out_dir = tmp_path / "m"
    code, out, err = run_cli(monkeypatch, capsys, "merge", str(runs / "s1"), str(runs / "s2"), "--out", str(out_dir))
    assert code == 128 + signum and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "nothing was written" in err and str(out_dir) in err, err
    assert list(tmp_path.iterdir()) == []  # no half-written --out, no staging folder
    monkeypatch.undo()
    code, out, err = run_cli(monkeypatch, capsys, "merge", str(runs / "s1"), str(runs / "s2"), "--out", str(out_dir))
    assert code == 0 and (out_dir / "results.csv").read_bytes() == (runs / "one" / "results.csv").read_bytes(), err


@pytest.mark.parametrize("name", ["env.json", "spec.json", "breakeven.csv", "envs/s1.json", "results.csv"])
def test_out_folder_holding_a_file_merge_would_write_is_refused_untouched(runs: Path, tmp_path: Path, name: str):
    count_bad_input("merge arguments")
    out_dir = tmp_path / "m"
    (out_dir / name).parent.mkdir(parents=True)
    (out_dir / name).write_text("")  # empty: not a run (an empty results.csv is no run either)
    (out_dir / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out_dir) for p in out_dir.rglob("*"))
    code, out, err = run_main("merge", str(runs / "s1"), str(runs / "s2"), "--out", str(out_dir))
    assert_clean_exit(code, out, err, allowed=(2,))
    assert str(out_dir / name) in err, err
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*")) == before and (out_dir / name).read_text() == ""


def test_out_folder_with_other_files_takes_the_merge(runs: Path, tmp_path: Path):
    out_dir = tmp_path / "m"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    code, out, err = run_main("merge", str(runs / "s1"), str(runs / "s2"), "--out", str(out_dir))
    assert code == 0, err
    assert (out_dir / "notes.txt").read_text() == "mine" and (out_dir / "results.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
