"""Precompile: the sweep's own workloads recorded at their shapes, compiled once per distinct config by
the interpreter-free compile path, into the on-disk cache the sweep's JIT launches read."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import run_cli
from jit_cache_probe import probe_spec
from nsa_bench import precompile
from nsa_bench.child_env import child_environment
from nsa_bench.compilecheck.results import distinct_variants
from nsa_kernels._common import size_bucket

pytestmark = pytest.mark.subprocess

PROBE = Path(__file__).with_name("jit_cache_probe.py")
# the probe's point as `nsa-bench precompile` flags
PROBE_FLAGS = ["--seqlen", "256", "--kv-heads", "1", "--group-size", "2", "--head-dim", "16", "--dtype", "float16",
               "--block-slc", "32", "--n-slc", "3", "--window", "32", "--check-seqlen", "256"]


def test_default_workers_leave_two_cores():
    assert [precompile.default_workers(n) for n in (16, 3, 2, 1)] == [14, 1, 1, 1]


def test_precompiled_kernels_are_what_the_jit_loads(monkeypatch, capsys, tmp_path):
    """`nsa-bench precompile` compiles in TRITON_INTERPRET=0 workers into Triton's cache; a process
    standing in for the sweep (no interpreter, an sm_90 driver) then finds every config it would
    compile there, through JITFunction.run's own cache key."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    code, out, _ = run_cli(monkeypatch, capsys, "precompile", "--backend", "fa2-triton", "--mode", "decode",
                           "--workers", "2", "--quiet", *PROBE_FLAGS)
    assert code == 0, out
    assert "Precompiled 5 distinct configs of 2 kernels for sm_90" in out and "0 failed" in out
    assert any((tmp_path / "triton-cache").rglob("*.cubin"))
    # the probe runs this checkout's code (as the sweep's workers do), whatever else is installed
    env = {k: v for k, v in child_environment().items() if k != "TRITON_INTERPRET"}
    probe = subprocess.run([sys.executable, str(PROBE), "fa2-triton", "decode", "256"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["misses"] == 0 and got["hits"] == 5, got  # 4 split-KV configs + the combine kernel


@pytest.fixture(scope="module")
def planned():
    """Plans (no compiling) of nsa-triton and fa2-triton in every mode at the probe's point."""
    spec = probe_spec("nsa-triton", "fwd", 256)
    from dataclasses import replace

    spec = replace(spec, backends=("nsa-triton", "fa2-triton"), baseline="fa2-triton", modes=("fwd", "bwd", "decode"),
                   seqlens=(256, 512))
    return spec, precompile.plan(spec, workers=1)


def _kernels(result, backend: str, mode: str, role: str, seqlen: int) -> set[str]:
    (plan,) = [p for c, p in result.plans.items() if c.entry.endswith(f"{backend}/{mode}/{role}") and c.seqlen == seqlen]
    assert plan.host_error is None, plan.host_error
    return {v.name for v in plan.variants}


def test_plan_records_each_backends_workload(planned):
    spec, result = planned
    assert len(result.plans) == 2 * 3 * 3  # backends x modes x (two timed lengths + the check at the short one)
    timed_fwd = _kernels(result, "nsa-triton", "fwd", "timed", 512)
    from nsa_kernels.variants import runs_small_g

    point = spec.points()[0][0]
    selected_fwd = ({"_block_outer_fwd_kernel", "_merge_kernel"} if runs_small_g("auto", point.group_size)
                    else {"_selected_fwd_tile_kernel"})  # the path "auto" takes at the probe's G
    assert {"_compress_fwd_kernel", "_cmp_fwd_kernel", "_select_kernel", *selected_fwd, "_fwd_kernel",
            "_gated_sum_fwd_kernel"} <= timed_fwd  # the inference forward and every stage
    assert "_select_kernel" in _kernels(result, "nsa-triton", "fwd", "check", 256)  # the selection check
    assert {"_gated_sum_bwd_kernel", "_compress_bwd_kernel"} <= _kernels(result, "nsa-triton", "bwd", "timed", 512)
    assert _kernels(result, "fa2-triton", "bwd", "timed", 512) >= {"_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"}
    assert _kernels(result, "nsa-triton", "decode", "timed", 512)


def test_plan_deduplicates_and_keys_tuning_on_the_length(planned):
    spec, result = planned
    jobs, broken = distinct_variants(list(result.plans.values()))
    assert not broken and 0 < len(jobs) < result.variants
    buckets: dict[int, set[str]] = {}
    for case, plan in result.plans.items():
        for tuning in plan.tunings:  # key: shape arguments, SEQ_BUCKET, ROWS_BUCKET, then the tensor dtypes
            seq_bucket = int(re.search(r"(\d+), \d+, 'torch", tuning.key).group(1))
            assert seq_bucket == size_bucket(case.seqlen), (case.label, tuning)
            buckets.setdefault(seq_bucket, set()).add(tuning.kernel)
    assert set(buckets) == {size_bucket(256), size_bucket(512)} and buckets[9] == buckets[10]


def test_precompile_refuses_an_unknown_backend(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "precompile", "--backend", "warp-drive")
    assert code == 2 and "--backend" in err and "warp-drive" in err and len(err.strip().splitlines()) == 1


def test_packed_points_precompile_their_varlen_builds():
    """A --doc-lens point's kernels are other builds (VARLEN): its cases carry the packing, and what they
    record is the packed launches, not the dense ones."""
    from nsa_bench.spec import SweepSpec

    spec = SweepSpec(seqlens=(16384,), modes=("fwd",), backends=("fa2-triton",), baseline="fa2-triton",
                     doc_lens=("none", "lognormal:8k"))
    planned = precompile.plan(spec, workers=1, capability=90).plans
    entries = {case.entry.split(":", 1)[1]: plan for case, plan in planned.items()}
    assert set(entries) == {"fa2-triton/fwd/timed", "fa2-triton/fwd/check", "fa2-triton/fwd/timed/lognormal:8k",
                            "fa2-triton/fwd/check/lognormal:512"}  # the check's packing scales with its length
    for entry, plan in entries.items():
        assert plan.host_error is None and plan.variants, entry
        assert all(("VARLEN" in v.config.split()) == ("lognormal" in entry) for v in plan.variants), entry
