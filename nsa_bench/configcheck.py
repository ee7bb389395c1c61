"""On a GPU, before a point is timed: every config its kernels' autotuners may pick there, run against the
float64 reference with that config pinned.

The 1k correctness check runs whatever config the autotuner picks at 1k; the timed call runs what it picks
at the point's length, and a config that loses the tuning race at 1k but wins at 64k would otherwise be
timed without ever being compared with the reference. So for each probe of the point's mode
(nsa_bench.launchplan: the least host code reaching each kernel, as the workloads call them):

1. the probe is recorded at the point's own shape (meta tensors, compile workers: nothing runs) and every
   config its autotuners may try there, after pruning, is a launch to check;
2. the probe is recorded at check lengths long enough to reach the same code paths (the selected
   backward's multi-segment lists, several decode ranking units) and each launch goes to the shortest
   that makes the same kernel, code path and host-chosen sizes; lengths keep the point's length modulo
   16, so the kernels are the binaries the timed call loads (Triton specialises on divisibility by 16);
3. per check shape, run i pins the i-th candidate config (tile, warps, stages) of every kernel
   (planner.runs_of, split_warps) and compares every output with the reference (pinning.run_pinned). A
   wrong output names the kernel and config.

Runs are remembered for the life of the checker (one sweep worker), so a layout's configs are checked
once, not at every length. Backends opt in with `Backend.launch_probes` ("nsa" or "dense").

The module itself is plain: the time budget reads its tables and lengths in a dry run without importing
Triton; the probes, the planner and the kernels are imported by the checker when it runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from nsa_bench.spec import Point

if TYPE_CHECKING:
    from nsa_bench.launchplan.planner import Planned
    from nsa_bench.launchplan.probes import ProbeShape

# Probe lengths before the modulo-16 alignment: 1024 reaches every path of the compressed, window, dense
# and gated-sum kernels (the compressed dK/dV runs several 256-position chunks there, as at 64k); 4160
# gives decode 65+ selection blocks at l' = 64 (several ranking units of 64); 8192 splits block 0's query
# list into two 4096-query segments at the paper's n = 16, l' = 64 (the selected dK/dV reduce).
CHECK_LENGTHS = (1024, 4160, 8192)
# which probes stand for a backend's kernels in each mode (fwdbwd and the layer modes as their attention)
MODE_PROBES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "nsa": {
        "fwd": ("compress", "cmp_fwd", "select", "slc_fwd", "win_fwd", "gated_sum"),
        "bwd": ("compress", "cmp_fwd", "select", "slc_fwd", "win_fwd", "gated_sum", "cmp_bwd", "slc_bwd", "win_bwd"),
        "decode": ("compress", "decode"),
    },
    "dense": {"fwd": ("dense_fwd",), "bwd": ("dense_fwd", "dense_bwd"), "decode": ("dense_decode",)},
}
_AS_MODE = {"fwdbwd": "bwd", "layer-fwd": "fwd", "layer-bwd": "bwd"}


def probes_of(family: str, mode: str) -> tuple[str, ...]:
    """The probes whose kernels a backend of this probe family (`Backend.launch_probes`) runs in `mode`."""
    return MODE_PROBES.get(family, {}).get(_AS_MODE.get(mode, mode), ())


def check_length(point: Point, base: int) -> int:
    """`base` moved to the point's length modulo 16 (the same kernel binaries), at most the point's length."""
    aligned = base - base % 16 + point.seqlen % 16
    return min(point.seqlen, aligned)


def _shape(point: Point, probe: str, seqlen: int) -> ProbeShape:
    """The probe at the point's layout (G, KV heads, head dims, blocks, packing, dtype's kernels), `seqlen`
    tokens; decode keeps the point's batch up to 2 (its split plan depends on it)."""
    from nsa_bench.launchplan.probes import ProbeShape

    batch = min(point.batch, 2) if probe in ("decode", "dense_decode") else 1
    return ProbeShape(probe, seqlen, point.group_size, point.kv_heads, batch, point.head_dim_qk, point.head_dim_v,
                      point.cfg, point.packed and point.mode != "decode")


@dataclass(frozen=True)
class ConfigCheck:
    """The outcome at one point: configs (planned launches) checked, the pinned runs that check them (runs an
    earlier point made are remembered, not repeated), what failed, what no check shape reached (not checked)."""

    configs: int
    runs: int
    new_runs: int = 0  # of `runs`, those made for this point (the rest were remembered)
    failures: tuple[str, ...] = ()
    unreached: tuple[str, ...] = ()
    seconds: float = 0.0
    skipped: str = ""  # why nothing was checked, when that is so

    @property
    def ok(self) -> bool:
        return not self.failures

    def message(self) -> str:
        """What a check_failed row says: the first failures, each naming kernel and config."""
        more = len(self.failures) - 3
        shown = "; ".join(self.failures[:3]) + (f"; and {more} more" if more > 0 else "")
        return (f"config check: {len(self.failures)} wrong outputs over {self.runs} pinned runs of {self.configs} "
                f"configs: {shown}; not timed")

    def note(self) -> str:
        """What an ok row notes when some launch could not be checked ("" when all were)."""
        if self.skipped:
            return f"config check skipped: {self.skipped}"
        if not self.unreached:
            return ""
        return (f"config check: {len(self.unreached)} of {self.configs} configs not reached at a check length "
                f"(not checked), e.g. {self.unreached[0]}")


@dataclass
class ConfigChecker:
    """Checks points' configs on one device, remembering what it recorded and ran (one per sweep worker)."""

    device: str
    lengths: tuple[int, ...] = CHECK_LENGTHS
    workers: int = 2
    recorder: Callable[[Iterable, int], Mapping] | None = None  # default: planner.record (compile workers)
    _planned: dict[tuple[ProbeShape, str], list[Planned]] = field(default_factory=dict)
    _runs: dict[tuple, tuple[str, ...]] = field(default_factory=dict)

    def _record(self, shapes: Iterable[ProbeShape], dtype: str) -> None:
        """Record every shape not yet recorded in `dtype`, in one call (one set of compile workers); keep the
        launches of the kernels each shape's probe tests."""
        from nsa_bench.launchplan.planner import planned_of, record
        from nsa_bench.launchplan.probes import PROBES, ProbeShape

        new = [s for s in dict.fromkeys(shapes) if (s, dtype) not in self._planned]
        if not new:
            return
        plans = (self.recorder or record)([s.case(dtype) for s in new], self.workers)
        for case, plan in plans.items():
            shape = ProbeShape.of_case(case)
            tested = set(PROBES[shape.probe].kernels)
            self._planned[shape, dtype] = [p for p in planned_of(plan) if p.key.kernel in tested]

    def check(self, point: Point, family: str) -> ConfigCheck:
        """Check every config the autotuners of `family`'s kernels may pick at `point` (module doc)."""
        from nsa_bench.launchplan.pinning import run_pinned
        from nsa_bench.launchplan.planner import assign, runs_of, split_warps
        from nsa_bench.launchplan.probes import make_inputs
        from nsa_kernels.variants import KernelVariants

        start = time.perf_counter()
        probes = probes_of(family, point.mode)
        if not probes:
            return ConfigCheck(0, 0)
        if KernelVariants.from_env() != KernelVariants():
            return ConfigCheck(0, 0, skipped="the probes run the default kernels, NSA_KERNEL_VARIANT chose others")
        timed = [_shape(point, p, point.seqlen) for p in probes]
        lengths = sorted({check_length(point, base) for base in self.lengths})
        checks = [_shape(point, p, n) for p in probes for n in lengths]
        self._record(timed + checks, point.dtype)
        planned = list({p.key: p for shape in timed for p in self._planned[shape, point.dtype] if p.tuned}.values())
        assigned, missing = assign(planned, {s: {p.reach for p in self._planned[s, point.dtype]} for s in checks})
        failures: list[str] = []
        made = total = 0
        for shape, runs in _by_shape(split_warps(runs_of(assigned))).items():
            inputs = None
            for run in runs:
                total += 1
                key = (shape, point.dtype, run.pins)
                if key not in self._runs:
                    if inputs is None:
                        inputs = make_inputs(shape, point.dtype, self.device)
                    try:
                        self._runs[key] = tuple(run_pinned(shape, run.configs(), point.dtype, self.device,
                                                           inputs=inputs).failures())
                    except Exception as exc:  # a config that faults is as wrong as one that computes wrong
                        self._runs[key] = (f"{run.label} {point.dtype}: {type(exc).__name__}: {exc}",)
                    made += 1
                failures.extend(self._runs[key])
        return ConfigCheck(len(planned), total, made, tuple(failures), tuple(p.key.describe() for p in missing),
                           time.perf_counter() - start)


def _by_shape(runs: Iterable) -> dict[ProbeShape, list]:
    out: dict[ProbeShape, list] = {}
    for run in runs:
        out.setdefault(run.shape, []).append(run)
    return out
