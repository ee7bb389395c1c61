"""The re-run command of a suspect (nsa_bench.repro): every axis of its point and the run's settings, in the
sweep's own flags, so that running the printed line gives back the very row."""
from __future__ import annotations

import shlex
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from nsa_bench import cli, remeasure, repro
from nsa_bench.results import CSV_NAME, read_rows
from nsa_bench.schema import KEY_FIELDS
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.suites import build_spec

POINTS = [
    Point("fwd", 1000, 2, 2, 4, 64, 32, 32, 16, 64, 4, 128, "float16", 0, "lognormal:1k@3"),
    Point("layer-bwd", 8192, 1, 4, 16, 192, 128, 32, 16, 64, 16, 512, "bfloat16", 1024, "none"),
    Point("decode", 1 << 20, 16, 8, 2, 128, 128, 64, 32, 128, 8, 256, "float32", 0, "fixed:2k"),
]
SETTINGS = SweepSpec(reps=7, warmup=0, seed=11, check_seqlen=512, cuda_graph=False, gpu="h200", baseline="cudnn")


def _flags(command: str) -> tuple[dict[str, str], bool | None]:
    """The --flag value pairs of a printed command (as the sweep's option names), and its CUDA-graph switch."""
    words = shlex.split(command)
    assert words[:2] == ["nsa-bench", "sweep"]
    graph = True if "--cuda-graph" in words else False if "--no-cuda-graph" in words else None
    words = [w for w in words[2:] if w not in ("--cuda-graph", "--no-cuda-graph")]
    pairs = dict(zip(words[::2], words[1::2]))
    assert all(flag.startswith("--") for flag in pairs) and len(pairs) * 2 == len(words)
    return {flag[2:]: value for flag, value in pairs.items()}, graph


def test_every_point_field_has_a_flag() -> None:
    assert set(repro.FLAG_OF_FIELD) == {f.name for f in fields(Point)}


@pytest.mark.parametrize("point", POINTS, ids=[p.mode for p in POINTS])
def test_the_command_is_a_sweep_of_exactly_the_point(point: Point) -> None:
    command = repro.sweep_command(point, ("nsa-triton",), SETTINGS)
    flags, graph = _flags(command)
    spec = replace(build_spec(None, flags), cuda_graph=graph)
    assert spec.all_points() == [(point, None)]
    assert spec.run_backends == ("nsa-triton", "cudnn")
    assert (spec.reps, spec.warmup, spec.seed, spec.check_seqlen, spec.cuda_graph, spec.gpu) == (7, 0, 11, 512, False,
                                                                                                 "h200")
    # the same sweep --rerun would run for the suspect
    rerun = remeasure.spec_for_key({k: str(v) for k, v in point.as_dict().items()} | {"backend": "nsa-triton"},
                                   SETTINGS.to_dict())
    assert spec.all_points() == rerun.all_points() and set(spec.run_backends) == set(rerun.run_backends)
    assert {f.name: getattr(spec, f.name) for f in fields(SweepSpec) if f.name not in ("backends", "d_models")} == \
        {f.name: getattr(rerun, f.name) for f in fields(SweepSpec) if f.name not in ("backends", "d_models")}


def test_default_settings_are_spelled_out_and_quoted() -> None:
    command = repro.sweep_command(replace(POINTS[0], doc_lens="uniform:4k"), ("fa2",), SweepSpec())
    assert "--reps 30 --warmup 5 --seed 0 --check-seqlen 1k --cuda-graph" in command
    assert "--gpu" not in command  # no GPU spec in the run's settings: the sweep takes the GPU present, as the run did
    assert "--backend fa2 --baseline fa2" in command
    assert shlex.split(repro.sweep_command(POINTS[0], ("nsa-triton",), replace(SweepSpec(), gpu="my gpu")))[-1] == "my gpu"


def test_run_settings_say_why_they_are_the_defaults(tmp_path: Path) -> None:
    assert repro.run_settings(tmp_path) == (SweepSpec(), f"no spec.json in {tmp_path}")
    (tmp_path / "spec.json").write_text('{"reps": "many"}')
    settings, note = repro.run_settings(tmp_path)
    assert settings == SweepSpec() and note.startswith(f"{tmp_path / 'spec.json'} is not a sweep's spec")
    (tmp_path / "spec.json").write_text("[1]")
    assert repro.run_settings(tmp_path)[1] == f"{tmp_path / 'spec.json'} holds list, not a JSON object"
    (tmp_path / "spec.json").write_text('{"reps": 9, "more_baselines": ["cudnn"]}')
    assert repro.run_settings(tmp_path) == (replace(SweepSpec(), reps=9), "")


def _sweep(*args: str) -> None:
    result = CliRunner().invoke(cli.cli, ["sweep", *args, "--no-plots", "--quiet"])
    assert result.exit_code == 0, result.output


def test_a_printed_command_gives_back_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A predicted run with settings off every default, a planted slowdown in a copy of it, compare's markdown,
    and each printed command run as a user would paste it: the same rows, to the last predicted digit."""
    from nsa_bench import environment

    monkeypatch.setattr(environment, "git_commit", lambda: {"commit": None, "dirty": None})
    original = tmp_path / "original"
    _sweep("--seqlen", "2k", "--mode", "fwd,layer-fwd", "--d-model", "1024", "--doc-lens", "fixed:512", "--kv-heads",
           "2", "--group-size", "4", "--head-dim", "64-32", "--n-slc", "4", "--window", "128", "--dtype", "float16",
           "--reps", "7", "--warmup", "2", "--seed", "3", "--no-cuda-graph", "--gpu", "h200", "--check-seqlen", "512",
           "--out", str(original))
    current = tmp_path / "current"
    current.mkdir()
    for name in ("env.json", "spec.json"):
        (current / name).write_bytes((original / name).read_bytes())
    cells = pd.read_csv(original / CSV_NAME, dtype=str, keep_default_na=False)
    slow = (cells["backend"] == "nsa-triton") & (cells["stage"] == "total")
    cells.loc[slow, "predicted_ms"] = [f"{float(v) * 1.3:.6g}" for v in cells.loc[slow, "predicted_ms"]]
    cells.to_csv(current / CSV_NAME, index=False)

    out = CliRunner().invoke(cli.cli, ["compare", str(original), str(current), "--metric", "predicted_ms"])
    assert out.exit_code == 1 and "SLOWER 2" in out.output, out.output
    commands = [line for line in out.output.splitlines() if line.startswith("nsa-bench sweep ")]
    assert len(commands) == 2

    before = read_rows(original)
    modes = set()
    for index, command in enumerate(commands):
        again = tmp_path / f"again{index}"
        _sweep(*shlex.split(command)[2:], "--out", str(again))
        after = read_rows(again)
        assert len(after) and after["mode"].nunique() == 1
        modes |= set(after["mode"])
        merged = after.merge(before, on=list(KEY_FIELDS), how="left", suffixes=("", "_original"), indicator=True)
        assert (merged["_merge"] == "both").all(), merged[list(KEY_FIELDS)]
        assert (merged["predicted_ms"] == merged["predicted_ms_original"]).all()
        assert set(after["backend"]) == {"fa2", "nsa-triton"}
    assert modes == {"fwd", "layer-fwd"}
