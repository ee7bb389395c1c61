"""--ray when a node goes away mid-sweep: its running point is queued again by Ray and finishes on another node,
and the run ends with every row (a two-node local cluster from ray.cluster_utils; GPUs only on the worker nodes).
Skipped without Ray (an optional extra), like tests/test_ray_runner.py."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nsa-bench[ray]')")

from nsa_bench import backends, results  # noqa: E402
from nsa_bench.gpus import gpu_spec  # noqa: E402
from nsa_bench.ray_runner import RayPool  # noqa: E402
from nsa_bench.runner import run_sweep  # noqa: E402
from nsa_bench.spec import SweepSpec  # noqa: E402
from nsa_bench.workers import WorkerSetup  # noqa: E402

pytestmark = pytest.mark.subprocess

H100 = gpu_spec("h100")
TESTS = Path(__file__).parent
SPEC = SweepSpec(seqlens=(40, 48), kv_heads=(1,), group_sizes=(2,), head_dims=((16, 8),), block_cmp=(8,),
                 stride_cmp=(4,), block_slc=(8,), n_slc=(3,), window=(8,), dtypes=("float32",), reps=2, warmup=0,
                 check_seqlen=32, modes=("fwd",), backends=("nsa-ref", "fault-slow-once"), baseline="nsa-ref")
SMALL_NODE = {"num_cpus": 1, "object_store_memory": 80 << 20}


def test_the_point_of_a_lost_node_runs_again_elsewhere(tmp_path: Path, monkeypatch):
    from ray.cluster_utils import Cluster

    marker = tmp_path / "slow-once-marker"
    for key, value in {"NSA_BENCH_BACKEND_MODULES": "fault_backends", "FAULT_SLOW_MARKER": str(marker),
                       "PYTHONPATH": f"{TESTS}:{os.environ.get('PYTHONPATH', '')}"}.items():
        monkeypatch.setenv(key, value)  # before the nodes start: their workers inherit the environment
    backends.registry.cache_clear()
    cluster = Cluster(initialize_head=True, head_node_args={**SMALL_NODE, "num_gpus": 0})
    try:
        doomed = cluster.add_node(**SMALL_NODE, num_gpus=1)  # the only GPU: every point runs there
        pool = RayPool(WorkerSetup(SPEC, H100, "cpu", ""), cluster.address, measuring=False, point_timeout=600)
        (tmp_path / "run").mkdir()
        outcome: list = []
        sweep = threading.Thread(target=lambda: outcome.append(
            run_sweep(SPEC, tmp_path / "run", H100, pool, resume=False)), daemon=True)
        sweep.start()
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the slow point never started on the doomed node"
        cluster.remove_node(doomed)  # the node goes away with the point asleep on it
        cluster.add_node(**SMALL_NODE, num_gpus=1)
        sweep.join(timeout=300)
        assert not sweep.is_alive() and outcome and not outcome[0].interrupted
    finally:
        ray.shutdown()
        cluster.shutdown()
        backends.registry.cache_clear()
    frame = results.read_rows(tmp_path / "run")
    totals = frame[frame["stage"] == "total"].set_index(["backend", "seqlen"])
    assert len(totals) == 4 and totals.loc[("nsa-ref", 40), "status"] == "ok"
    assert totals.loc[("fault-slow-once", 48), "status"] == "ok"  # queued again after its node was lost
    assert totals.loc[("nsa-ref", 48), "status"] == "ok" and totals.loc[("fault-slow-once", 40), "status"] == "unsupported"
    assert set(totals["device"].dropna()) <= {"ray-gpu0"} and totals["host"].notna().all()
