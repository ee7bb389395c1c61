"""The launch plan of a set of sweeps as data: built by the planner, written to and read from JSON.

The shipped suites' plan is committed as tests/launch_plan.json: the interpreter tests are parametrized
from it (one test per pinned run) and a test checks it equals a fresh plan, so it cannot go stale.
Regenerate it with `python -m nsa_bench.launchplan write`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import triton

from nsa_bench.launchplan.keys import LaunchKey
from nsa_bench.launchplan.planner import (
    SHIPPED, PinnedRun, Planned, Sweep, assign, cost, planned_of, probe_candidates, reaches, record, runs_of,
    sweep_cases,
)
from nsa_bench.launchplan.probes import ProbeShape

PLAN_FILE = Path(__file__).resolve().parents[2] / "tests" / "launch_plan.json"
REGENERATE = "python -m nsa_bench.launchplan write"


@dataclass(frozen=True)
class LaunchPlan:
    """Each sweep's planned launches, the pinned probe runs that execute them, and those none reaches."""

    sweeps: Mapping[str, tuple[str, tuple[LaunchKey, ...]]]  # name -> (its flags, its launches)
    launches: Mapping[LaunchKey, Planned]
    runs: tuple[PinnedRun, ...]
    uncovered: tuple[LaunchKey, ...]

    def covered_by_runs(self) -> set[LaunchKey]:
        return {key for run in self.runs for key in run.covers}


def build(sweeps: Iterable[Sweep] = SHIPPED, workers: int = 2) -> LaunchPlan:
    """Record the sweeps and the probe shapes that may reach them; assign every launch to a run."""
    sweeps = list(sweeps)
    cases = {s.name: sweep_cases(s) for s in sweeps}
    plans = record([c for cs in cases.values() for c in cs], workers)
    per_sweep: dict[str, tuple[str, tuple[LaunchKey, ...]]] = {}
    launches: dict[LaunchKey, Planned] = {}
    for sweep in sweeps:
        keys = set()
        for case in cases[sweep.name]:
            for planned in planned_of(plans[case]):
                launches[planned.key] = planned
                keys.add(planned.key)
        per_sweep[sweep.name] = (sweep.command, tuple(sorted(keys)))
    shapes = probe_candidates([c for cs in cases.values() for c in cs])
    reached = reaches(record([s.case() for s in shapes], workers))
    assigned, missing = assign(launches.values(), reached)
    return LaunchPlan(per_sweep, launches, tuple(runs_of(assigned)), tuple(sorted(p.key for p in missing)))


def sweep_runs(plan: LaunchPlan, sweep: str) -> list[PinnedRun]:
    """The pinned runs that execute some launch of `sweep` (a name in plan.sweeps)."""
    keys = set(plan.sweeps[sweep][1])
    return [run for run in plan.runs if keys & set(run.covers)]


def first_runs(runs: list[PinnedRun]) -> dict[ProbeShape, PinnedRun]:
    """Each probe shape's first run (the one that also runs its fixed, host-chosen launches)."""
    return {run.shape: run for run in reversed(runs)}


def cheapest_shapes(runs: list[PinnedRun], large_groups: bool = True) -> set[ProbeShape]:
    """The cheapest shape of each probe, dense and packed; with `large_groups` also the cheapest at G >= 16
    (the paper's rows per program): every kernel's code paths in a few minutes of the interpreter."""
    shapes = set(first_runs(runs))
    picked = set()
    for wide in (False, True) if large_groups else (False,):
        kinds: dict[tuple, list[ProbeShape]] = {}
        for shape in shapes:
            if not wide or shape.group >= 16:
                kinds.setdefault((shape.probe, shape.packed), []).append(shape)
        picked |= {min(group, key=cost) for group in kinds.values()}
    return picked


def quick_runs(runs: list[PinnedRun]) -> list[PinnedRun]:
    """The first run of each of `cheapest_shapes`: a fast subset reaching every kernel the runs reach."""
    first = first_runs(runs)
    return [first[shape] for shape in sorted(cheapest_shapes(runs), key=cost)]


# ------------------------------------------------------------------ JSON
def to_json(plan: LaunchPlan) -> dict[str, Any]:
    keys = sorted(plan.launches)
    index = {key: i for i, key in enumerate(keys)}
    return {
        "about": "Every kernel launch the shipped suites may make on a GPU, and the pinned interpreter run "
                 f"(tests/test_launch_configs.py) that executes each first. Regenerate: {REGENERATE}",
        "triton": triton.__version__,
        "sweeps": [{"name": name, "command": command, "launches": [index[k] for k in ks]}
                   for name, (command, ks) in plan.sweeps.items()],
        "launches": [{**key.as_dict(), "tuned": list(plan.launches[key].tuned)} for key in keys],
        "runs": [{"probe": run.shape.as_dict(),
                  "pins": [{"kernel": k, "config": dict(tile), "num_warps": w, "num_stages": s}
                           for k, tile, w, s in run.pins],
                  "covers": [index[k] for k in run.covers]} for run in plan.runs],
        "uncovered": [index[k] for k in plan.uncovered],
    }


def from_json(raw: Mapping[str, Any]) -> LaunchPlan:
    keys = [LaunchKey.from_dict(item) for item in raw["launches"]]
    launches = {key: Planned(key, tuple(item["tuned"])) for key, item in zip(keys, raw["launches"])}
    sweeps = {s["name"]: (s["command"], tuple(keys[i] for i in s["launches"])) for s in raw["sweeps"]}
    runs = tuple(PinnedRun(ProbeShape.from_dict(r["probe"]),
                           tuple((p["kernel"], tuple(sorted(p["config"].items())), p["num_warps"], p["num_stages"])
                                 for p in r["pins"]),
                           tuple(keys[i] for i in r["covers"])) for r in raw["runs"])
    return LaunchPlan(sweeps, launches, runs, tuple(keys[i] for i in raw["uncovered"]))


def dumps(plan: LaunchPlan) -> str:
    """JSON with one launch, sweep or run a line: readable, and a change shows as the lines it touches."""
    data = to_json(plan)
    lines = ["{"]
    for i, (name, value) in enumerate(data.items()):
        end = "," if i < len(data) - 1 else ""
        if isinstance(value, list):
            items = [f"  {json.dumps(item, sort_keys=True)}" for item in value]
            body = ",\n".join(items)
            lines.append(f'"{name}": [\n{body}\n]{end}' if items else f'"{name}": []{end}')
        else:
            lines.append(f'"{name}": {json.dumps(value)}{end}')
    return "\n".join(lines) + "\n}\n"


def write(plan: LaunchPlan, path: Path = PLAN_FILE) -> None:
    path.write_text(dumps(plan))


def read(path: Path = PLAN_FILE) -> LaunchPlan:
    return from_json(json.loads(path.read_text()))
