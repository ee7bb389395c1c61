"""Every kernel launch the shipped suites may make on a GPU runs here first (DESIGN.md, "Test what the GPU will
run"): one test per pinned run of tests/launch_plan.json (nsa_bench.launchplan). A run is a probe (the
least host code reaching a kernel, as the benchmark calls it) at a small shape with the GPU's host sizes,
one autotune config pinned per kernel it tests; every output is compared with the float64 reference in
fp32 (< 1e-4), and the launches that ran must include every planned launch the run stands for (configs
that differ only in warps or stages share a run: the interpreter ignores both).

The first run of each probe shape also runs in fp16 (< 1e-2), and once per probe in bf16 (loaded and
upcast, as the interpreter needs). `fast_kernels` marks the fp32 runs of each probe's cheapest shapes (every
kernel, dense and packed, and at G >= 16): CI reruns those with --program-order=reverse and
--program-order=footprint (tests/program_order.py).
"""
from __future__ import annotations

import pytest

from nsa_bench.launchplan import planfile
from nsa_bench.launchplan.pinning import run_pinned
from nsa_bench.launchplan.planner import PinnedRun
from nsa_bench.launchplan.probes import ProbeInputs, make_inputs

pytestmark = pytest.mark.interpreter

PLAN = planfile.read()
_FIRST = planfile.first_runs(list(PLAN.runs))
# bf16 (the interpreter's upcast path, which no GPU runs) once per probe and packing, at its cheapest shape;
# the fast subset: those, and each probe's cheapest shape at G >= 16 (the paper's rows per program), packed too
_BF16 = planfile.cheapest_shapes(list(PLAN.runs), large_groups=False)
_FAST = set(planfile.quick_runs(list(PLAN.runs)))
_INPUTS: dict[tuple, ProbeInputs] = {}


def _inputs(run: PinnedRun, dtype: str) -> ProbeInputs:
    """One probe shape's inputs (and what they cache: the reference, an unpinned forward) for all its runs."""
    key = (run.shape, dtype)
    if key not in _INPUTS:
        _INPUTS.clear()  # runs of one shape are adjacent: keep one shape's inputs alive at a time
        _INPUTS[key] = make_inputs(run.shape, dtype)
    return _INPUTS[key]


def _id(run: PinnedRun) -> str:
    pins = "+".join(f"{kernel.split('.', 1)[1]}({','.join(str(v) for _, v in tile)},w{w}s{s})"
                    for kernel, tile, w, s in run.pins)
    return f"{run.shape.label.replace(' ', '-')}:{pins or 'host-sizes'}"


def _params() -> list:
    return [pytest.param(run, id=_id(run), marks=[pytest.mark.fast_kernels] if run in _FAST else [])
            for run in PLAN.runs]


@pytest.mark.parametrize("run", _params())
def test_pinned_run_matches_reference(run: PinnedRun):
    result = run_pinned(run.shape, run.configs(), "float32", inputs=_inputs(run, "float32"))
    assert result.ok, "\n".join(result.failures())
    ran = {key.binary for key in result.executed}
    missing = [key.describe() for key in run.covers if key.binary not in ran]
    assert not missing, f"{run.label}: planned launches that did not run:\n" + "\n".join(missing)


@pytest.mark.parametrize("run, dtype", [pytest.param(run, dtype, id=f"{dtype}-{_id(run)}") for run in _FIRST.values()
                                        for dtype in ("float16", "bfloat16") if dtype == "float16" or run.shape in _BF16])
def test_pinned_run_in_half_precision(run: PinnedRun, dtype: str):
    """fp16 inputs (< 1e-2) at each probe shape; bf16 (loaded, upcast right after: the interpreter's bf16
    arithmetic is wrong) once per probe."""
    result = run_pinned(run.shape, run.configs(), dtype, inputs=_inputs(run, dtype))
    assert result.ok, "\n".join(result.failures())
