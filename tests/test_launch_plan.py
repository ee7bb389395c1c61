"""nsa_bench.launchplan: the GPU launch plan of the shipped suites (tests/launch_plan.json) is what the kernels
plan today, and every launch in it has a pinned interpreter run (tests/test_launch_configs.py)."""
from __future__ import annotations

import pytest

from nsa_bench.launchplan import coverage, planfile
from nsa_bench.launchplan.keys import LaunchKey, UnclassifiedConstexpr, key_of
from nsa_bench.launchplan.planner import SHIPPED, Planned, assign, runs_of
from nsa_bench.launchplan.probes import ProbeShape

COMMITTED = planfile.read()


@pytest.mark.subprocess
def test_committed_plan_is_what_the_kernels_plan_today():
    """Records the shipped suites and the probes in TRITON_INTERPRET=0 workers (~40 s on 2 cores)."""
    fresh = planfile.dumps(planfile.build(workers=2))
    assert fresh == planfile.PLAN_FILE.read_text(), (
        f"tests/launch_plan.json is stale (a kernel, config list, prune hook, suite or probe changed): run "
        f"`{planfile.REGENERATE}` and commit it")


def test_every_shipped_launch_has_a_pinned_run():
    assert not COMMITTED.uncovered, "no probe reaches:\n" + "\n".join(k.describe() for k in COMMITTED.uncovered)
    assert {s.name for s in SHIPPED} == set(COMMITTED.sweeps)
    ran = COMMITTED.covered_by_runs()
    for name, (_, keys) in COMMITTED.sweeps.items():
        rows = coverage.coverage(keys, ran)
        assert all(r.configs_covered == r.configs for r in rows), coverage.table(rows, name)


def test_a_run_pins_only_what_its_autotuner_chooses():
    """A pin holds the autotuned constexprs alone (a host-chosen one passed twice would clash)."""
    for run in COMMITTED.runs:
        for kernel, tile, _, _ in run.pins:
            tuned = {n for key in run.covers if key.kernel == kernel for n in COMMITTED.launches[key].tuned}
            assert {n for n, _ in tile} <= tuned, (run.label, kernel)


def test_keys_refuse_a_constexpr_nobody_classified():
    assert key_of("k.f", {"BLOCK_M": 64, "GATED": True, "DK": 192}, 8, 2) == LaunchKey(
        "k.f", (("GATED", True),), (("BLOCK_M", 64),), 8, 2)
    with pytest.raises(UnclassifiedConstexpr, match="NEW_SWITCH"):
        key_of("k.f", {"NEW_SWITCH": True})


def test_assignment_takes_the_cheapest_probe_and_pins_tiles_side_by_side():
    def key(kernel: str, tile: int, warps: int = 4) -> LaunchKey:
        return LaunchKey(kernel, (("G", 16),), (("BLOCK_M", tile), ("BLOCK_N", 16)), warps, 2)

    a = [Planned(key("m.a", t, w), ("BLOCK_M",)) for t in (32, 64) for w in (4, 8)]
    b = [Planned(key("m.b", 32), ("BLOCK_M",))]
    fixed = Planned(LaunchKey("m.c", (), (("BLOCK_R", 16),)))
    small, big = ProbeShape("cmp_bwd", 100, 16), ProbeShape("cmp_bwd", 300, 16)
    reach = {p.reach for p in a + b + [fixed]}
    assigned, missing = assign(a + b + [fixed], {big: reach, small: reach})
    assert not missing and set(assigned) == {small}
    runs = runs_of(assigned)
    assert [len(r.pins) for r in runs] == [2, 1]  # tile i of every kernel side by side; warps share a run
    assert set(runs[0].covers) == {p.key for p in a if dict(p.key.tile)["BLOCK_M"] == 32} | {b[0].key, fixed.key}
    assert len(runs[1].covers) == 2
