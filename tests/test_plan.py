"""The dry run's plan: run order, each task's predicted time, overheads, the total, the budget's skips."""
from __future__ import annotations

from dataclasses import replace

import pytest

from cli_runner import run_cli
from nsa_bench import plan, suites
from nsa_bench.budget import CALIBRATION
from nsa_bench.compilecheck.results import CasePlan, Tuning, Variant
from nsa_bench.gpus import gpu_spec
from nsa_bench.precompile import case_for, check_point

H200 = gpu_spec("h200")
PAPER = suites.build_spec("paper", {"backend": "fa2,nsa-triton"})


def _fake_plans(spec):
    """One tuned launch and one compile per case; every check case of a mode shares its key."""
    plans = {}
    for point in spec.points()[0]:
        for role, at in (("timed", point), ("check", check_point(point, spec.check_seqlen))):
            case = case_for(at, "nsa-triton", role)
            key = f"({at.mode}, {at.seqlen})"
            plans[case] = CasePlan(case, 1, (Variant(0, 0, "k", "-", f"{key}-{role}"),), (Tuning("k", key, 4),))
    return plans


def test_plan_runs_headline_pairs_first_and_adds_up():
    built = plan.build(PAPER, H200, workers=14, plots=False, plans=_fake_plans(PAPER))
    order = [(t.estimate.point.seqlen, t.estimate.point.mode, t.estimate.backend) for t in built.tasks]
    assert order[:6] == [(65536, m, b) for m in ("fwd", "bwd", "decode") for b in ("fa2", "nsa-triton")]
    assert all(t.estimate.runs and t.skipped is None for t in built.tasks)
    parts = sum(t.estimate.total_s for t in built.tasks)
    assert built.total_s == pytest.approx(built.startup_s + built.precompile_s + parts + built.finish_s)
    starts = [t.start_s for t in built.tasks]
    assert starts == sorted(starts) and starts[0] == pytest.approx(built.startup_s + built.precompile_s)
    assert built.configs == built.cases == 12 + 3  # one fake compile per case: 12 timed, one check per mode


def test_tuning_is_paid_once_per_key():
    built = plan.build(PAPER, H200, workers=14, plots=False, plans=_fake_plans(PAPER))
    nsa = [t.estimate for t in built.tasks if t.estimate.backend == "nsa-triton"]
    # the first task of each mode tunes its length and the shared check key; later ones only their length
    first = {}
    for e in nsa:
        first.setdefault(e.point.mode, e)
    assert all(first[e.point.mode].tune_configs == 8 for e in nsa)
    assert [e.tune_configs for e in nsa if e is not first[e.point.mode]] == [4] * 9
    assert all(t.estimate.tune_s == 0 for t in built.tasks if t.estimate.backend == "fa2")


def test_time_budget_skips_show_in_the_plan():
    free = plan.build(PAPER, H200, workers=14, plots=False, plans=_fake_plans(PAPER))
    budget = free.total_s * 0.5
    tight = plan.build(PAPER, H200, workers=14, budget_s=budget, plots=False, plans=_fake_plans(PAPER))
    skipped = [t for t in tight.tasks if t.skipped]
    assert skipped and tight.total_s <= budget + tight.startup_s
    assert all(t.skipped.startswith("time budget") for t in skipped)
    by_point: dict = {}
    for t in tight.tasks:
        by_point.setdefault(t.estimate.point, []).append(t.skipped is None)
    assert all(len(set(flags)) == 1 for flags in by_point.values())  # pairs complete or skipped together
    text = plan.render(tight)
    assert "SKIP: time budget" in text and f"(time budget {budget:.0f} s)" in text
    assert f"{len(skipped)} tasks skipped by the time budget" in text


def test_render_names_every_part():
    built = plan.build(replace(PAPER, seqlens=(8192,)), H200, workers=14, plots=True, plans=_fake_plans(PAPER))
    text = plan.render(built)
    for part in ("start-up", "precompile", "autotune", "checks", "inputs", "finish", "Estimated total wall time",
                 "nsa-triton bwd T=8192", "floors for NVIDIA H200"):
        assert part in text, part
    assert f"finish {CALIBRATION.finish_s + CALIBRATION.plots_s:.0f} s (plots included)" in text


def test_without_precompile_compiles_are_serial():
    on = plan.build(PAPER, H200, workers=14, plots=False, plans=_fake_plans(PAPER))
    off = plan.build(PAPER, H200, workers=14, plots=False, precompile=False, plans=_fake_plans(PAPER))
    assert off.precompile_s == 0 and off.jit_compile_s == pytest.approx(
        on.configs * CALIBRATION.compile_cpu_s * CALIBRATION.cpu_factor)


def test_dry_run_on_the_command_line_runs_nothing(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "1k,2k", "--mode", "fwd", "--kv-heads", "1",
                           "--group-size", "2", "--head-dim", "64", "--backend", "fa2,nsa-triton", "--gpu", "h200",
                           "--workers", "14", "--time-budget", "5m", "--out", str(out_dir), "--dry-run")
    assert code == 0
    assert "Dry run (nothing compiled or run): 2 points" in out and "= 4 tasks" in out
    assert "nsa-triton fwd T=2048" in out and "Estimated total wall time" in out and "(time budget 300 s)" in out
    assert "distinct configs" in out and "on 14 workers" in out
    assert not out_dir.exists()


def test_the_dry_run_decides_oom_and_unsupported_as_the_sweep_does(monkeypatch, capsys, tmp_path):
    """--seqlen 16m: both tasks are `oom` rows in the sweep and in its plan (no 839,020 s of fa2 planned);
    an invalid NSA configuration is unsupported for NSA only: the dense backend's task is planned."""
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "16m", "--mode", "fwd", "--dry-run")
    assert code == 0 and out.count("not run: an `oom` row") == 2 and "Timed calls: 0 s" in out
    code, _, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "16m", "--mode", "fwd", "--out",
                         str(tmp_path / "r"), "--quiet", "--no-plots")
    rows = (tmp_path / "r" / "results.csv").read_text().splitlines()[1:]
    assert code == 1 and len(rows) == 2 and all(",oom," in row for row in rows)  # no usable row: exit 1
    built = plan.build(replace(PAPER, n_slc=(2,), modes=("fwd",), seqlens=(8192,)), H200, workers=1)
    by_backend = {t.estimate.backend: t.estimate for t in built.tasks}
    assert by_backend["fa2"].runs and not by_backend["nsa-triton"].runs
    assert by_backend["nsa-triton"].refused.message.startswith("invalid configuration: n_slc")


def test_a_resumed_dry_run_plans_only_what_is_left(monkeypatch, capsys, tmp_path):
    args = ("sweep", "--seqlen", "1k,2k", "--mode", "fwd,bwd", "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    progress = tmp_path / "r" / "progress.jsonl"
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:6]))  # 6 of 8 tasks complete (the last point's two tasks are not)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    code, out, _ = run_cli(monkeypatch, capsys, *args, "--resume", "--dry-run")
    assert code == 0 and "6 tasks already complete" in out and "= 2 tasks" in out
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()} == before  # read only
