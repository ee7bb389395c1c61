"""nsa_bench.configcheck: before a point is timed on a GPU, every config its kernels' autotuners may pick there
runs pinned against the float64 reference; a wrong one is a check_failed row naming kernel and config.

Run here under the CPU interpreter, at a small point and a short check length (the GPU's are 1024..8192)."""
from __future__ import annotations

import dataclasses

import pytest

from nsa_bench import configcheck
from nsa_bench.backends import registry
from nsa_bench.configcheck import ConfigChecker, check_length
from nsa_bench.execute import Measure, Task, measured_rows
from nsa_bench.gpus import gpu_spec
from nsa_bench.launchplan import probes
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.timing import time_wallclock

pytestmark = [pytest.mark.interpreter, pytest.mark.subprocess]  # recording starts compile workers

POINT = Point("fwd", 100, 1, 1, 2, 32, 16, 32, 16, 64, 3, 40, "float32")


@pytest.fixture(scope="module")
def checker() -> ConfigChecker:
    return ConfigChecker("cpu", lengths=(64,))


def test_check_lengths_keep_the_points_length_modulo_16():
    assert check_length(POINT.with_seqlen(65536), 8192) == 8192
    assert check_length(POINT.with_seqlen(65540), 8192) == 8196
    assert check_length(POINT.with_seqlen(1000), 8192) == 1000  # a short point is checked at its own length
    assert configcheck.probes_of("nsa", "layer-bwd") == configcheck.probes_of("nsa", "bwd")
    assert configcheck.probes_of("dense", "decode") == ("dense_decode",) and not configcheck.probes_of("", "fwd")


def test_every_candidate_config_runs_pinned_once(checker: ConfigChecker):
    first = checker.check(POINT, "nsa")
    assert first.ok, first.failures
    assert first.configs > first.runs == first.new_runs > 1, first  # several configs a run: kernels side by side
    again = checker.check(POINT.with_seqlen(116), "nsa")  # same layout and length mod 16: nothing new to run
    assert again.ok and again.new_runs == 0 and (again.runs, again.configs) == (first.runs, first.configs)


def test_a_wrong_config_is_a_check_failed_row_naming_kernel_and_config(checker: ConfigChecker,
                                                                        monkeypatch: pytest.MonkeyPatch):
    """Any error counts as wrong (tolerance 0): the row is check_failed, not timed, and names what ran."""
    monkeypatch.setitem(probes.TOLERANCE, "float32", 0.0)
    fresh = dataclasses.replace(checker, _planned=checker._planned, _runs={})
    measure = Measure(device="cpu", timer=time_wallclock, config_checker=fresh)
    spec = SweepSpec(seqlens=(POINT.seqlen,), reps=1, warmup=0, check_seqlen=POINT.seqlen)
    rows = measured_rows(Task(POINT, registry()["nsa-triton"]), spec, gpu_spec("h100"), measure, None)
    assert [r.status for r in rows] == ["check_failed"]
    message = rows[0].message
    assert message.startswith("config check: ") and message.endswith("; not timed"), message
    assert "compressed._cmp_fwd_kernel [BLOCK_M=" in message and "num_warps=" in message, message
