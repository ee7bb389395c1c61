"""The sm_90 compile check: every kernel launch of the public entry points compiles for an H100 without spilling.

The CPU interpreter accepts code the GPU compiler rejects and hides register pressure; these tests compile, for
sm_90, every config the GPU autotuner would try for the launches the host wrappers make at the case table's
shapes (nsa_bench/compilecheck/table.py), and read the cubin's resource usage. BUILD_CASES (each kernel of the
window and selected branches, more shapes and dtypes) only have to compile, at their first config of each launch.
See nsa_bench.compilecheck for how (TRITON_INTERPRET=0 workers, meta tensors, recorded launches).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import triton

from nsa_bench.compilecheck.case import Case
from nsa_bench.compilecheck.pool import WorkerPool, compile_cases
from nsa_bench.compilecheck.results import CasePlan, CaseReport, CompileResult
from nsa_bench.compilecheck.table import BUILD_CASES, CASES, SELFTEST
from nsa_kernels.variants import runs_small_g

pytestmark = pytest.mark.sm90

# Known problems, reported to the lead (case label -> reason). The marks are strict: once fixed,
# the test XPASSes and fails, so the entry must be removed. None are open: the spills and
# shared-memory overflows once listed here (compressed `_cmp_fwd_kernel` 32x16 w4, selected
# fwd/dq/dkdv configs at the paper shape and at l'=256) are pruned by the kernels'
# `prune_configs_by` hooks (`_prune_fwd_rows`, `_prune_dq_rows`, `_prune_fwd`, `_prune_dq`, `_prune_block_n`).
KNOWN_SPILLS: dict[str, str] = {}
# Configs that compile but cannot launch on an H100 (shared memory over 227 KiB, register file).
KNOWN_OVERSIZE: dict[str, str] = {}

# Modules whose kernels each entry point must reach (a launch path silently skipped is a bug here). NSA's
# selected branch: the kernels both paths share (_selected_tiles), and those of the path its G takes.
NSA_MODULES = {"nsa_kernels.compressed", "nsa_kernels._selected_tiles", "nsa_kernels.flash", "nsa_kernels.gated_sum"}
EXPECTED_MODULES = {
    "nsa_attention": NSA_MODULES,
    "nsa_attention_v1": NSA_MODULES,
    "nsa_attention_varlen": NSA_MODULES,
    "flash_attention_varlen": {"nsa_kernels.flash"},
    "select_blocks": {"nsa_kernels.compressed"},
    "selected_bwd_atomic": {"nsa_kernels.selected"},
    # the small-group kernels, and the delta and dk/dv-reduce kernels they share with selected.py
    "selected_small_g": {"nsa_kernels.selected_small_g", "nsa_kernels._selected_tiles"},
    "flash_attention": {"nsa_kernels.flash"},
    "flash_attention_decode": {"nsa_kernels.flash"},
    "nsa_decode": {"nsa_kernels.decode"},
    "nsa_decode_v1": {"nsa_kernels.decode"},
    "nsa_decode_cmp_cache": {"nsa_kernels.decode"},
}


def expected_modules(case: Case) -> set[str]:
    """EXPECTED_MODULES of the case's entry; NSA entries also reach selected.py (the group padded to 16 rows)
    or selected_small_g.py (G < 16, which the default takes), as the variant and G decide."""
    expected = set(EXPECTED_MODULES[case.entry])
    if expected >= NSA_MODULES:
        small_g = runs_small_g("padded" if case.entry.endswith("_v1") else "auto", case.group)
        expected.add("nsa_kernels.selected_small_g" if small_g else "nsa_kernels.selected")
    return expected


@dataclass(frozen=True)
class Compiled:
    """Reports by case; a short repr keeps pytest's failure output readable."""

    by_case: dict[Case, CaseReport] = field(repr=False)

    def __getitem__(self, case: Case) -> CaseReport:
        return self.by_case[case]


@dataclass(frozen=True)
class Built:
    """BUILD_CASES: each case's plan and the results of the configs chosen to compile."""

    plans: dict[Case, CasePlan] = field(repr=False)
    results: dict[Case, list[CompileResult]] = field(repr=False)


@pytest.fixture(scope="session")
def reports() -> Compiled:
    """All cases compiled once per session, on two worker processes."""
    return Compiled(compile_cases((SELFTEST, *CASES)))


def _chosen(plan: CasePlan) -> list[tuple[int, int]]:
    """(launch, index) of the configs a build case compiles: each launch's first, and its last at T = 64k."""
    by_launch: dict[int, list[int]] = {}
    for variant in plan.variants:
        by_launch.setdefault(variant.launch, []).append(variant.index)
    keep_last = plan.case.seqlen == 65536
    return sorted({(launch, i) for launch, indices in by_launch.items()
                   for i in (indices[:1] + (indices[-1:] if keep_last else []))})


@pytest.fixture(scope="session")
def built() -> Built:
    """BUILD_CASES planned, then their chosen configs compiled, on two worker processes."""
    with WorkerPool(2) as pool:
        plans = dict(zip(BUILD_CASES, pool.map(lambda worker, case: worker.plan(case), list(BUILD_CASES))))
        jobs = [(case, launch, index) for case, plan in plans.items() for launch, index in _chosen(plan)]
        compiled = pool.map(lambda worker, job: worker.compile_variant(*job), jobs)
    results: dict[Case, list[CompileResult]] = {case: [] for case in BUILD_CASES}
    for (case, _, _), result in zip(jobs, compiled):
        results[case].append(result)
    return Built(plans, results)


def _params(cases: tuple[Case, ...], known: dict[str, str] | None = None) -> list:
    known = known or {}
    return [
        pytest.param(case, id=case.label,
                     marks=[pytest.mark.xfail(strict=True, reason=known[case.label])] if case.label in known else [])
        for case in cases
    ]


def _listing(results: list[CompileResult]) -> str:
    return "\n".join(r.describe() for r in results)


def test_selftest_catches_small_dot_and_spills(reports: Compiled) -> None:
    """The checker itself: what the interpreter accepts but sm_90 rejects or spills is caught."""
    report = reports[SELFTEST]
    assert report.host_error is None, report.host_error
    by_launch: dict[int, list[CompileResult]] = {}
    for r in report.results:
        by_launch.setdefault(r.launch, []).append(r)
    (dot8,), (dot16,), (spill,), (no_spill,), tuned = (by_launch[i] for i in range(5))
    assert not dot8.ok and "K >= 16" in (dot8.error or "")
    assert dot16.ok and dot16.registers and not dot16.spills and dot16.usable
    assert spill.ok and spill.spills and not spill.usable
    assert no_spill.ok and not no_spill.spills
    # autotuned launch: three configs, early pruning drops BLOCK=64
    assert sorted(r.config.split()[0] for r in tuned) == ["BLOCK=16", "BLOCK=32"]


def test_gpu_autotune_configs_are_the_ones_compiled(reports: Compiled) -> None:
    """The worker must see the GPU config lists, not the interpreter's single config."""
    report = reports[next(c for c in CASES if c.entry == "flash_attention")]
    per_launch: dict[int, int] = {}
    for r in report.results:
        per_launch[r.launch] = per_launch.get(r.launch, 0) + 1
    assert max(per_launch.values()) > 1
    assert not any("INTERP" in r.config.split() or "UPCAST" in r.config.split() for r in report.results)


@pytest.mark.parametrize("case", _params(CASES))
def test_entry_point_records_its_launches(reports: Compiled, case: Case) -> None:
    report = reports[case]
    assert report.host_error is None, f"host code crashed while recording:\n{report.host_error}"
    reached = {r.module for r in report.results}
    assert expected_modules(case) <= reached, f"launched kernels only from {sorted(reached)}"


@pytest.mark.parametrize("case", _params(CASES))
def test_every_config_compiles_for_sm90(reports: Compiled, case: Case) -> None:
    failed = [r for r in reports[case].results if not r.ok]
    assert not failed, "sm_90 compile failures:\n" + _listing(failed)


@pytest.mark.parametrize("case", _params(CASES, KNOWN_SPILLS))
def test_no_register_spills(reports: Compiled, case: Case) -> None:
    spilled = [r for r in reports[case].results if r.ok and r.spills]
    assert not spilled, "register spills (cuobjdump STACK/LOCAL > 0):\n" + _listing(spilled)


@pytest.mark.parametrize("case", _params(CASES, KNOWN_OVERSIZE))
def test_every_config_fits_an_h100(reports: Compiled, case: Case) -> None:
    """Shared memory within 227 KiB and registers x threads within the register file."""
    too_big = [r for r in reports[case].results if r.ok and not (r.fits_shared_memory and r.fits_register_file)]
    assert not too_big, "configs an H100 cannot launch (OutOfResources):\n" + _listing(too_big)


@pytest.mark.parametrize("case", _params(CASES))
def test_every_launch_has_a_usable_config(reports: Compiled, case: Case) -> None:
    """Whatever the autotuner keeps, each launch needs one config that compiles, fits and does not spill."""
    by_launch: dict[int, list[CompileResult]] = {}
    for r in reports[case].results:
        by_launch.setdefault(r.launch, []).append(r)
    hopeless = [configs for configs in by_launch.values() if not any(r.usable for r in configs)]
    assert not hopeless, "launches without a usable config:\n" + "\n\n".join(_listing(c) for c in hopeless)


@pytest.mark.skipif(not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
                    reason="Triton's bundled ptxas is missing")
@pytest.mark.parametrize("case", _params(BUILD_CASES))
def test_build_case_compiles_for_sm90(built: Built, case: Case) -> None:
    """The window and selected kernels one by one, at shapes and dtypes beyond the table: the host code runs
    on meta tensors (packed batches included) and the first config of every launch compiles."""
    plan = built.plans[case]
    assert plan.host_error is None, f"host code crashed while recording:\n{plan.host_error}"
    broken = [v for v in plan.variants if v.error]
    assert not broken, "\n".join(f"{v.name} [{v.config}]: {v.error}" for v in broken)
    assert {launch for launch, _ in _chosen(plan)} == set(range(plan.launches)) and plan.launches > 0
    failed = [r for r in built.results[case] if not r.ok]
    assert not failed, "sm_90 compile failures:\n" + _listing(failed)
