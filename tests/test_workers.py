"""Worker processes: --devices parsing, CPU "devices" giving the rows of an in-process run, and fault isolation
(a worker that segfaults, exits or hangs mid-point costs one `error` row; the sweep ends with every other row)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from cli_runner import run_main
from nsa_bench import backends, results
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool
from nsa_bench.runner import run_sweep
from nsa_bench.spec import SweepSpec
from nsa_bench.workers import DevicesError, LocalPool, WorkerSetup, fault_text, parse_devices, task_timeout_s

pytestmark = pytest.mark.subprocess

H100 = gpu_spec("h100")
TESTS = Path(__file__).parent
TINY = SweepSpec(seqlens=(40, 48), kv_heads=(1,), group_sizes=(2,), head_dims=((16, 8),), block_cmp=(8,),
                 stride_cmp=(4,), block_slc=(8,), n_slc=(3,), window=(8,), dtypes=("float32",), reps=2, warmup=0,
                 check_seqlen=32, modes=("fwd",), backends=("nsa-ref", "fault-segv", "fault-exit", "fault-hang"),
                 baseline="nsa-ref")


@pytest.fixture
def fault_backends(monkeypatch):
    """The faulting backends in this process's registry and every worker's (they inherit the environment)."""
    monkeypatch.setenv("NSA_BENCH_BACKEND_MODULES", "fault_backends")
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("NSA_BENCH_CPU_MEASURE", "1")
    backends.registry.cache_clear()
    yield
    monkeypatch.delenv("NSA_BENCH_BACKEND_MODULES")
    backends.registry.cache_clear()


def test_parse_devices():
    assert parse_devices("all", 2) == ("cuda:0", "cuda:1")
    assert parse_devices("1,0", 2) == ("cuda:1", "cuda:0") and parse_devices("cpu0,cpu1", 0) == ("cpu0", "cpu1")
    for text, count in (("all", 0), ("2", 2), ("0,0", 1), ("", 1), ("0,,1", 2), ("gpu1", 2), ("0,cpu1", 1)):
        with pytest.raises(DevicesError):
            parse_devices(text, count)


def test_fault_text_names_the_fault():
    assert "segmentation fault (SIGSEGV)" == fault_text(-11) and fault_text(7) == "exited with code 7"


def test_cpu_devices_give_the_rows_of_one_in_process_run(tmp_path: Path):
    spec = SweepSpec(seqlens=(1024, 2048, 4096), modes=("fwd", "bwd", "decode"))
    pool = LocalPool(WorkerSetup(spec, H100, None, ""), ("cpu0", "cpu1"), task_timeout_s(spec, H100, None))
    (tmp_path / "w").mkdir()
    (tmp_path / "one").mkdir()
    outcome = run_sweep(spec, tmp_path / "w", H100, pool, resume=False)
    run_sweep(spec, tmp_path / "one", H100, InProcessPool(spec, H100, None), resume=False)
    workers, one = results.read_rows(tmp_path / "w"), results.read_rows(tmp_path / "one")
    assert outcome.rows_written == len(one) and set(workers["device"]) <= {"cpu0", "cpu1"}
    key = ["mode", "seqlen", "backend", "stage"]
    same = lambda frame: frame.drop(columns="device").sort_values(key).reset_index(drop=True)
    assert same(workers).equals(same(one))  # rows arrive in finishing order; their content is identical


def test_a_faulting_worker_costs_one_error_row_and_the_sweep_goes_on(tmp_path: Path, fault_backends):
    started = time.monotonic()
    code, out, err = run_main("sweep", "--quiet", "--no-plots", "--out", str(tmp_path / "run"), "--devices", "cpu0,cpu1",
                              "--point-timeout", "3s", "--seqlen", "40,48", "--kv-heads", "1", "--group-size", "2",
                              "--head-dim", "16-8", "--block-cmp", "8", "--stride-cmp", "4", "--block-slc", "8",
                              "--n-slc", "3", "--window", "8", "--dtype", "float32", "--reps", "2", "--warmup", "0",
                              "--check-seqlen", "32", "--mode", "fwd", "--backend",
                              "nsa-ref,fault-segv,fault-exit,fault-hang", "--baseline", "nsa-ref")
    assert code == 0, err
    assert "worker(s) replaced" in err
    frame = results.read_rows(tmp_path / "run")
    totals = frame[frame["stage"] == "total"].set_index(["backend", "seqlen"])
    assert len(totals) == 8  # every task of both points has its row
    assert (totals.loc[("nsa-ref", 40), "status"], totals.loc[("nsa-ref", 48), "status"]) == ("ok", "ok")
    assert all(totals.loc[(f"fault-{k}", 40), "status"] == "unsupported" for k in ("segv", "exit", "hang"))
    messages = {k: totals.loc[(f"fault-{k}", 48), "message"] for k in ("segv", "exit", "hang")}
    assert all(totals.loc[(f"fault-{k}", 48), "status"] == "error" for k in messages)
    assert "segmentation fault (SIGSEGV)" in messages["segv"] and "exited with code 7" in messages["exit"]
    assert "hang: no result within 3 s" in messages["hang"]
    assert all("worker was replaced" in m for m in messages.values())
    # --resume trusts what was written: nothing is run again
    code, out, err = run_main("sweep", "--quiet", "--no-plots", "--out", str(tmp_path / "run"), "--resume",
                              "--devices", "cpu0", "--point-timeout", "3s", "--seqlen", "40,48", "--kv-heads", "1",
                              "--group-size", "2", "--head-dim", "16-8", "--block-cmp", "8", "--stride-cmp", "4",
                              "--block-slc", "8", "--n-slc", "3", "--window", "8", "--dtype", "float32", "--reps", "2",
                              "--warmup", "0", "--check-seqlen", "32", "--mode", "fwd", "--backend",
                              "nsa-ref,fault-segv,fault-exit,fault-hang", "--baseline", "nsa-ref")
    assert code == 0, err
    assert "0 rows, 8 already done" in out
    print(f"fault test took {time.monotonic() - started:.1f} s")


def test_ctrl_c_stops_the_workers_and_resume_finishes(tmp_path: Path, fault_backends):
    """SIGINT while a worker hangs: exit 130, the finished rows kept, no worker left; --resume runs the rest."""
    import os
    import signal
    import subprocess
    import sys

    args = ["--quiet", "--no-plots", "--out", str(tmp_path / "run"), "--devices", "cpu0", "--seqlen", "40,48",
            "--kv-heads", "1", "--group-size", "2", "--head-dim", "16-8", "--block-cmp", "8", "--stride-cmp", "4",
            "--block-slc", "8", "--n-slc", "3", "--window", "8", "--dtype", "float32", "--reps", "2", "--warmup", "0",
            "--check-seqlen", "32", "--mode", "fwd", "--backend", "nsa-ref,fault-hang", "--baseline", "nsa-ref"]
    proc = subprocess.Popen([sys.executable, "-m", "nsa_bench.cli", "sweep", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=dict(os.environ))
    csv = tmp_path / "run" / "results.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (csv.exists() and "nsa-ref" in csv.read_text()):
        time.sleep(0.2)
    time.sleep(1.0)  # fault-hang is now asleep in the worker
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted (SIGINT)" in err and "rows kept" in err
    kept = results.read_rows(tmp_path / "run")
    assert list(kept[kept["stage"] == "total"]["backend"]) == ["nsa-ref"]
    code, out, err = run_main("sweep", *args, "--resume", "--point-timeout", "2s")
    assert code == 0, err
    totals = results.read_rows(tmp_path / "run")
    totals = totals[totals["stage"] == "total"].set_index(["backend", "seqlen"])["status"].to_dict()
    assert totals == {("nsa-ref", 48): "ok", ("fault-hang", 48): "error", ("nsa-ref", 40): "ok",
                      ("fault-hang", 40): "unsupported"}


# ------------------------------------------------------------ one device, fed task by task (the GPU default)
def test_a_measured_sweep_isolates_its_points_by_default(monkeypatch):
    """On a GPU: one worker on GPU 0, sequential (budget and tuning.json as in-process); --in-process opts out."""
    from nsa_bench import sweep

    monkeypatch.setattr(sweep.torch.cuda, "device_count", lambda: 2)
    pool = sweep.choose_pool(TINY, H100, True, None, None, None, budget_s=300.0)
    assert isinstance(pool, LocalPool) and pool.devices == ("cuda:0",) and pool.sequential
    assert pool.setup.measure == "cuda"
    assert isinstance(sweep.choose_pool(TINY, H100, True, None, None, None, 300.0, in_process=True), InProcessPool)
    predicting = sweep.choose_pool(TINY, H100, False, None, None, None, None)  # predictions: nothing to fault
    assert isinstance(predicting, InProcessPool) and predicting.measure is None
    assert sweep.choose_pool(TINY, H100, True, "1", None, None, 300.0).sequential  # one GPU keeps the budget
    for devices, ray, in_process, flag in (("0,1", None, False, "time-budget"), (None, "local", False, "time-budget"),
                                           ("0", None, True, "in-process")):
        with pytest.raises(sweep.SweepError) as caught:
            sweep.choose_pool(TINY, H100, True, devices, ray, None, 300.0, in_process)
        assert caught.value.flag == flag


def test_one_worker_fed_task_by_task_keeps_the_budget_and_isolates_faults(tmp_path: Path, fault_backends):
    from nsa_bench.budget import Budget, Estimator
    from nsa_bench.workers import CPU_MEASURE_ENV

    assert __import__("os").environ[CPU_MEASURE_ENV] == "1"
    pool = LocalPool(WorkerSetup(TINY, H100, "cpu", ""), ("cpu0",), task_timeout_s(TINY, H100, 3.0))
    with pool.session():
        outcome = run_sweep(TINY, tmp_path, H100, pool, resume=False)
        assert pool._open is not None  # the same worker served every task; a faulting one was replaced
    assert pool._open is None and pool.replaced == 3 and outcome.rows_written >= 8
    totals = results.read_rows(tmp_path)
    totals = totals[totals["stage"] == "total"].set_index(["backend", "seqlen"])
    assert totals.loc[("nsa-ref", 48), "status"] == "ok" and totals.loc[("nsa-ref", 48), "device"] == "cpu0"
    assert {totals.loc[(f"fault-{k}", 48), "status"] for k in ("segv", "exit", "hang")} == {"error"}
    assert "hang: no result within 3 s" in totals.loc[("fault-hang", 48), "message"]
    # a budget too small for anything: every task a `skipped` row, no worker ever asked
    budget = Budget(1e-3, Estimator(TINY, H100), reserve_s=0.0)
    pool = LocalPool(WorkerSetup(TINY, H100, "cpu", ""), ("cpu0",), task_timeout_s(TINY, H100, 3.0))
    (tmp_path / "b").mkdir()
    with pool.session():
        run_sweep(TINY, tmp_path / "b", H100, pool, resume=False, budget=budget)
    skipped = results.read_rows(tmp_path / "b")
    skipped = skipped[skipped["stage"] == "total"]
    assert set(skipped["status"]) <= {"skipped", "unsupported"} and "skipped" in set(skipped["status"])


def test_tuning_choices_reported_by_workers_land_in_tuning_json(tmp_path: Path):
    import json

    from nsa_bench.tuning_log import TuningLog

    pool = LocalPool(WorkerSetup(TINY, H100, None, ""), ("cpu0", "cpu1"), task_timeout_s(TINY, H100, None))
    choice = {"kernel": "flash._fwd_tuned", "key": {"SEQ_BUCKET": 17}, "config": "BLOCK_M: 128, num_warps: 8"}
    pool.note_tuning([choice])  # one worker's report, then (say, after it was replaced) another's
    pool.note_tuning([{**choice, "config": "BLOCK_M: 64, num_warps: 4"}, {**choice, "key": {"SEQ_BUCKET": 16}}])
    assert len(pool.tuning_choices()) == 2 and pool.tuning_choices()[0]["config"].startswith("BLOCK_M: 64")
    assert TuningLog(tmp_path).update("nsa-triton fwd T=64k", pool.tuning_choices()) == 2
    entries = json.loads((tmp_path / "tuning.json").read_text())["configs"]
    assert {e["first_tuned_in"] for e in entries} == {"nsa-triton fwd T=64k"}
