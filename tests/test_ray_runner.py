"""--ray on a local Ray cluster declaring two GPUs (num_cpus=2, num_gpus=2): predicted rows come back to the
driver, which alone writes them; they equal an in-process run's; --resume runs only what is missing; a task
whose worker dies is retried by Ray, then becomes `error` rows while the sweep goes on."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nsa-bench[ray]')")

from cli_runner import run_main  # noqa: E402
from nsa_bench import backends, results  # noqa: E402
from nsa_bench.gpus import gpu_spec  # noqa: E402
from nsa_bench.ray_runner import RayPool, RayUnavailable  # noqa: E402
from nsa_bench.execute import InProcessPool  # noqa: E402
from nsa_bench.runner import run_sweep  # noqa: E402
from nsa_bench.spec import SweepSpec  # noqa: E402
from nsa_bench.workers import WorkerSetup  # noqa: E402

pytestmark = pytest.mark.subprocess

H100 = gpu_spec("h100")
TESTS = Path(__file__).parent
SPEC = SweepSpec(seqlens=(1024, 2048), modes=("fwd", "decode"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # the fault backends must be importable in Ray's worker processes, which inherit this environment
    saved = {k: os.environ.get(k) for k in ("NSA_BENCH_BACKEND_MODULES", "PYTHONPATH", "FAULT_ONCE_MARKER")}
    os.environ["NSA_BENCH_BACKEND_MODULES"] = "fault_backends"
    os.environ["PYTHONPATH"] = f"{TESTS}:{saved['PYTHONPATH'] or ''}"
    os.environ["FAULT_ONCE_MARKER"] = str(tmp_path_factory.mktemp("ray") / "fault-once-marker")
    backends.registry.cache_clear()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    backends.registry.cache_clear()


def _same(a, b):
    key = ["mode", "seqlen", "backend", "stage"]
    tidy = lambda frame: frame.drop(columns="device").sort_values(key).reset_index(drop=True)
    return tidy(a).equals(tidy(b))


def test_bad_address_is_one_line():
    with pytest.raises(RayUnavailable, match="HOST:PORT"):
        RayPool(WorkerSetup(SPEC, H100, None, ""), "not an address!", measuring=False)


def test_ray_rows_equal_an_in_process_run_and_resume_adds_only_what_is_missing(cluster, tmp_path: Path):
    for name in ("ray", "one"):
        (tmp_path / name).mkdir()
    run_sweep(SPEC, tmp_path / "one", H100, InProcessPool(SPEC, H100, None), resume=False)
    first = SweepSpec(seqlens=(2048,), modes=("fwd", "decode"))
    pool = RayPool(WorkerSetup(first, H100, None, ""), None, measuring=False)
    run_sweep(first, tmp_path / "ray", H100, pool, resume=False)
    pool = RayPool(WorkerSetup(SPEC, H100, None, ""), None, measuring=False)
    outcome = run_sweep(SPEC, tmp_path / "ray", H100, pool, resume=True)
    assert outcome.skipped == 4  # the 2048 points' tasks were done
    got, one = results.read_rows(tmp_path / "ray"), results.read_rows(tmp_path / "one")
    assert _same(got, one)
    assert set(got["device"]) <= {"ray-gpu0", "ray-gpu1"} and set(got["host"]) == {__import__("socket").gethostname()}


def test_cli_ray_and_a_crashing_task(cluster, tmp_path: Path, monkeypatch):
    """fault-exit crashes its Ray worker every time: retried, then split, then its row alone is an error;
    fault-once crashes once (a lost worker): Ray runs it again and its row is ok."""
    monkeypatch.setenv("NSA_BENCH_CPU_MEASURE", "1")
    marker = Path(os.environ["FAULT_ONCE_MARKER"])  # set before ray.init: Ray's workers inherit it
    marker.unlink(missing_ok=True)
    monkeypatch.setattr("nsa_bench.ray_runner.DEFAULT_RETRIES", 1)
    code, out, err = run_main("sweep", "--quiet", "--no-plots", "--out", str(tmp_path / "run"), "--ray",
                              "--seqlen", "40,48", "--kv-heads", "1", "--group-size", "2", "--head-dim", "16-8",
                              "--block-cmp", "8", "--stride-cmp", "4", "--block-slc", "8", "--n-slc", "3", "--window",
                              "8", "--dtype", "float32", "--reps", "2", "--warmup", "0", "--check-seqlen", "32",
                              "--mode", "fwd", "--backend", "nsa-ref,fault-exit,fault-once", "--baseline", "nsa-ref")
    assert code == 0, err
    assert marker.exists()
    marker.unlink()
    frame = results.read_rows(tmp_path / "run")
    totals = frame[frame["stage"] == "total"].set_index(["backend", "seqlen"])
    assert len(totals) == 6 and totals.loc[("nsa-ref", 40), "status"] == "ok"
    assert totals.loc[("fault-once", 48), "status"] == "ok"  # queued again after its worker was lost
    assert totals.loc[("fault-exit", 40), "status"] == "unsupported"
    # the crash failed the point's Ray task; split per backend, the baseline ran again and only fault-exit errs
    assert totals.loc[("nsa-ref", 48), "status"] == "ok"
    assert totals.loc[("fault-exit", 48), "status"] == "error"
    assert "Ray task failed" in totals.loc[("fault-exit", 48), "message"]
    env = __import__("json").loads((tmp_path / "run" / "env.json").read_text())
    assert env["workers"]["kind"] == "ray"
