"""The time budget on a fake clock: what does not fit becomes `skipped` rows, pairs stay complete."""
from __future__ import annotations

from dataclasses import replace

import pytest

from nsa_bench import results
from nsa_bench.backends import get_backend, registry
from nsa_bench.budget import Budget, Calibration, Estimator, bench_seconds, parse_duration
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool, Measure
from nsa_bench.runner import run_sweep
from nsa_bench.spec import SweepSpec
from nsa_bench.timing import time_wallclock

H100 = gpu_spec("h100")
TINY = SweepSpec(seqlens=(24, 32, 40), kv_heads=(1,), group_sizes=(2,), head_dims=((16, 8),), block_cmp=(8,),
                 stride_cmp=(4,), block_slc=(8,), n_slc=(3,), window=(8,), dtypes=("float32",), reps=1, warmup=0,
                 check_seqlen=24, modes=("fwd",), backends=("fa2", "nsa-ref"), baseline="fa2")
# estimates the test can reason about: the NSA task is the expensive one
CAL = Calibration(check_s={"nsa": 30.0, "dense": 1.0}, task_s=0.0, finish_s=2.0)


@pytest.mark.parametrize("text,seconds", [("300", 300), ("300s", 300), ("5m", 300), ("4m30s", 270), ("1h", 3600),
                                          ("2.5m", 150)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "0", "-5m", "m"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_autotune_bench_cost_follows_triton_do_bench():
    assert 0.1 < bench_seconds(0.01) < 0.2  # tiny kernels: ~25 ms of warm-up and ~100 ms of reps
    assert bench_seconds(500.0) == pytest.approx(8 * 500.08e-3, rel=0.01)  # 1 + 5 + 1 rep + 1 warm-up call


@pytest.fixture
def cpu_backends(monkeypatch):
    backends = dict(registry())
    for name in ("fa2", "nsa-ref"):
        backends[name] = replace(backends[name], availability=lambda: None)
    monkeypatch.setattr("nsa_bench.execute.registry", lambda: backends)
    monkeypatch.setattr("nsa_bench.budget.refusal", lambda *args, **kwargs: None)
    return backends


def test_budget_skips_points_that_do_not_fit(tmp_path, cpu_backends):
    clock = [0.0]

    def timer(fn, reps, warmup, before_each=None, cuda_graph=False):
        clock[0] += 20.0  # every task's timing costs 20 fake seconds
        return time_wallclock(fn, reps, warmup, before_each, cuda_graph)

    estimator = Estimator(TINY, H100, calibration=CAL)
    budget = Budget(100.0, estimator, reserve_s=CAL.finish_s, clock=lambda: clock[0])
    outcome = run_sweep(TINY, tmp_path, H100, InProcessPool(TINY, H100, Measure("cpu", timer)), resume=False,
                        budget=budget)
    assert not outcome.interrupted
    frame = results.read_rows(tmp_path)
    totals = frame[frame["stage"] == "total"]
    # longest first, baseline and NSA back to back
    assert list(zip(totals["seqlen"], totals["backend"])) == [(40, "fa2"), (40, "nsa-ref"), (32, "fa2"),
                                                              (32, "nsa-ref"), (24, "fa2"), (24, "nsa-ref")]
    assert list(totals["status"]) == ["ok", "ok", "ok", "ok", "skipped", "skipped"]
    skipped = totals[totals["status"] == "skipped"].set_index("backend")["message"]
    assert skipped["fa2"].startswith("time budget: needs ~") and "with the rest of its point (nsa-ref)" in skipped["fa2"]
    assert skipped["nsa-ref"] == "time budget: this point's baseline was skipped"
    assert estimator.efficiency(cpu_backends["fa2"], "fwd")[1]  # efficiency measured in this run now
    # --resume measures what the budget skipped, replacing its `skipped` rows
    resumed = run_sweep(TINY, tmp_path, H100, InProcessPool(TINY, H100, Measure("cpu", time_wallclock)), resume=True)
    assert resumed.skipped == 4
    frame = results.read_rows(tmp_path)
    again = frame[(frame["stage"] == "total") & (frame["seqlen"] == 24)]
    assert list(again["status"]) == ["ok", "ok"] and "skipped" not in set(frame["status"])


def test_budget_admits_a_cheap_task_after_skipping_an_expensive_one(cpu_backends):
    clock = [0.0]
    estimator = Estimator(TINY, H100, calibration=CAL)
    budget = Budget(20.0, estimator, reserve_s=2.0, clock=lambda: clock[0])
    point = TINY.points()[0][0]
    fa2, ref = cpu_backends["fa2"], cpu_backends["nsa-ref"]
    assert budget.skip_reason(point, ref) is not None  # 30 s of check > 18 s left
    assert budget.skip_reason(point, fa2) is None
    clock[0] = 19.0
    assert "0 s of 20 s left" in budget.skip_reason(point, fa2)


def test_estimates_learn_the_measured_efficiency(cpu_backends):
    estimator = Estimator(TINY, H100, calibration=CAL)
    point = TINY.points()[0][0]
    fa2 = cpu_backends["fa2"]
    before = estimator.estimate(point, fa2)
    assert not before.measured_efficiency and before.efficiency == 0.25
    from nsa_bench.execute import base_row

    row = replace(base_row(point, fa2, ms_median=before.floor_ms * 20, predicted_ms=before.floor_ms), status="ok")
    estimator.observe(fa2, [row])
    after = estimator.estimate(point, fa2)
    assert after.measured_efficiency and after.efficiency == pytest.approx(0.05)
    assert after.per_call_ms == pytest.approx(before.floor_ms * 20 + CAL.call_overhead_ms)


def test_unplanned_triton_tasks_carry_a_tuning_estimate():
    point = TINY.points()[0][0]
    estimator = Estimator(replace(TINY, backends=("fa2-triton",)), H100, plans=None, calibration=CAL)
    assert estimator.estimate(point, get_backend("fa2-triton")).tune_s == CAL.unplanned_tune_s
    assert estimator.estimate(point, get_backend("fa2")).tune_s == 0.0


def test_the_config_check_is_paid_once_per_layout_by_backends_that_probe():
    """nsa-triton and fa2-triton check every autotune candidate before timing (configcheck.py): the first
    task of a layout pays recording, check shapes and the candidates; a longer point of it pays nothing
    new (its check lengths are the same), another mode does; fa2 (PyTorch's kernel) never pays."""
    spec = replace(TINY, seqlens=(8192, 16384), modes=("fwd", "bwd"), backends=("fa2", "nsa-triton"))
    estimator = Estimator(spec, H100, plans=None, calibration=CAL)
    nsa, fa2 = get_backend("nsa-triton"), get_backend("fa2")
    points = {(p.mode, p.seqlen): p for p in spec.points()[0]}
    first = estimator.estimate(points["fwd", 8192], nsa, commit=True)
    # 6 fwd probes at the shortest length and 2 more lengths (4160, 8192) for the probes that need them
    assert first.config_check_s == CAL.config_record_s + 8 * CAL.config_shape_s
    assert first.total_s >= first.config_check_s
    assert estimator.estimate(points["fwd", 16384], nsa).config_check_s == 0.0
    assert estimator.estimate(points["bwd", 16384], nsa).config_check_s > 0.0
    assert estimator.estimate(points["fwd", 8192], fa2).config_check_s == 0.0
