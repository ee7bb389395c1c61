"""A sweep's GPU launches, and the pinned probe runs that reach each of them at a small shape.

1. Every task of the sweep (its timed shape and its check shape, as `nsa-bench precompile` plans them) is
   recorded in the compile check's TRITON_INTERPRET=0 workers: each launch expanded into every config its
   autotuner may try after pruning, each keyed (keys.py) with whether an autotuner chose its tile.
2. Candidate probe shapes (probes.py) are made from the sweep's layouts (its G, block config, packing;
   small T, test head dims or the sweep's own where a host tile follows them) and recorded the same way.
3. Each planned launch goes to the cheapest probe shape that reaches it: an autotuned launch where the
   probe makes the same kernel and code path with the same host-chosen sizes (its autotuned tile is then
   pinned), a fixed launch where the probe makes exactly it.
4. Runs: per probe shape, the distinct autotuned tiles of each kernel are pinned one per run, kernels side
   by side (a run pins one tile of every kernel of the probe that has one left). Configs that differ only
   in warps or stages share a run: the interpreter ignores both.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

import triton

from nsa_bench.compilecheck.case import Case
from nsa_bench.compilecheck.pool import precompile_cases
from nsa_bench.compilecheck.results import CasePlan, Variant
from nsa_bench.launchplan.keys import LaunchKey, key_of
from nsa_bench.launchplan.probes import PROBES, TEST_DK, TEST_DV, TEST_N, ProbeShape
from nsa_bench.spec import SweepSpec

# Sequence lengths a probe is tried at (none a multiple of a 16-, 32- or 64-token block), cheapest first.
# T=100 runs every tile of the selected and window kernels over several tiles; 300 passes one 256-position
# chunk of the compressed dK/dV (PARTIAL) and gives the top-n a choice beyond the forced blocks (n=4 of 5
# blocks); 801 splits block 0's query list into two 768-query segments at n=3 (the selected dK/dV reduce);
# decode's lengths give 16, 32, 64 and 128 padded selection blocks (a scoring tile and ranking range each).
# The compressed kernels loop over key tiles of BLOCK_N compressed blocks, unmasked once a tile's first
# position sees them all: at small G (rows are positions there) T reaches that for every BLOCK_N (64 needs
# a tile starting past 1040), at G >= 16 a few hundred positions cost what 1300 do at G = 1.
COMPRESSED_SEQLENS = {1: (1300,), 2: (300,), 4: (600,), 8: (300,)}
PROBE_SEQLENS = {
    "select": (300,),
    "slc_bwd": (100, 300, 801),
    "decode": (999, 2001, 4001, 4201),
    "dense_decode": (999, 4201),
}
DEFAULT_SEQLENS = (100, 300)
PACKED_SEQLENS = (300, 701)  # longest document 109 and 310 tokens (probes.doc_lengths)
PACKED_SLC_SEQLENS = (230,)  # documents of 1, 31, 63, 74 and 61 tokens: one spans two selection blocks
PACKED_SLC_BWD_SEQLENS = (230, 1701)  # 1701: a 768-query segment split inside one document
SEGMENT_N = 3  # the n at which slc_bwd's longest probe splits lists (segments of max(256, 4 n l') queries)
WINDOW = 40  # the window of the flash probes (a runtime argument there): its edge bites at T=100
FREE_GROUP = 2  # the G at which kernels without a G constexpr are probed (GQA indexing, h // G, runs)
NSA_PROBES = ("compress", "cmp_fwd", "select", "cmp_bwd", "slc_fwd", "slc_bwd", "win_fwd", "win_bwd", "gated_sum")
BACKEND_PROBES = {
    ("nsa-triton", False): NSA_PROBES,
    ("nsa-triton", True): ("compress", "decode"),
    ("fa2-triton", False): ("dense_fwd", "dense_bwd"),
    ("fa2-triton", True): ("dense_decode",),
}


@dataclass(frozen=True)
class Sweep:
    """A named sweep: a suite and flags as `nsa-bench sweep` takes them."""

    name: str
    suite: str | None = None
    flags: tuple[tuple[str, str], ...] = ()

    def spec(self) -> SweepSpec:
        from nsa_bench.suites import build_spec

        return build_spec(self.suite, dict(self.flags))

    @property
    def command(self) -> str:
        parts = ([f"--suite {self.suite}"] if self.suite else []) + [f"--{k} {v}" for k, v in self.flags]
        return " ".join(parts)


# The shipped suites (suites/*.toml) and packed documents at the paper shape. `long` (128k..1M) is left out:
# its extra launches are int64-offset builds (ROW64, T x stride >= 2^31) that no small shape reaches.
SHIPPED = (
    Sweep("paper", "paper"), Sweep("decode", "decode"), Sweep("gqa", "gqa"), Sweep("smoke", "smoke"),
    Sweep("paper-packed", "paper", (("doc-lens", "fixed:4k,lognormal:8k"),)),
)


@dataclass(frozen=True)
class Planned:
    """One planned launch: its key and the constexprs its autotuner chose (empty for a fixed launch)."""

    key: LaunchKey
    tuned: tuple[str, ...] = ()

    @property
    def reach(self) -> tuple:
        """What a probe must make for this launch to run there: kernel, code path and the host-chosen tile
        (autotuned), or all of it (fixed)."""
        if not self.tuned:
            return ("fixed", self.key.binary)
        return ("tuned", self.key.kernel, self.key.spec, tuple(kv for kv in self.key.tile if kv[0] not in self.tuned))

    @property
    def pin(self) -> tuple:
        """What a pinned run sets: kernel, the autotuned tile values (warps and stages aside)."""
        return self.key.kernel, tuple(kv for kv in self.key.tile if kv[0] in self.tuned)


def planned_variant(variant: Variant) -> Planned:
    """One recorded config as a planned launch: its key and the constexprs its autotuner set."""
    values = dict(variant.constexprs)
    warps, stages = values.pop("num_warps", None), values.pop("num_stages", None)
    kernel = f"{variant.module.rsplit('.', 1)[-1]}.{variant.name}"
    tuned = tuple(n for n in variant.tuned if n not in ("num_warps", "num_stages", "num_ctas", "maxnreg"))
    return Planned(key_of(kernel, values, warps, stages), tuned)


def planned_of(plan: CasePlan) -> list[Planned]:
    """The keyed launches of one recorded case."""
    for variant in plan.variants:
        if variant.error:
            raise RuntimeError(f"{plan.case.label}: {variant.name} [{variant.config}]: {variant.error}")
    return [planned_variant(variant) for variant in plan.variants]


def record(cases: Iterable[Case], workers: int) -> dict[Case, CasePlan]:
    """Every case recorded in TRITON_INTERPRET=0 workers (nothing compiled); a host error stops it."""
    cases = list(dict.fromkeys(cases))
    if not cases:
        return {}
    plans = precompile_cases(cases, workers, compile=False).plans
    for case, plan in plans.items():
        if plan.host_error:
            raise RuntimeError(f"recording {case.label} failed:\n{plan.host_error}")
    return plans


def sweep_cases(sweep: Sweep) -> list[Case]:
    from nsa_bench.precompile import sweep_case_list

    return sweep_case_list(sweep.spec())


# ------------------------------------------------------------------ probe shapes
def _layout(case: Case) -> tuple[str, bool, bool]:
    """(backend, decode?, packed?) of a precompile case ("nsa_bench.precompile:BACKEND/MODE/ROLE[/DOCS]")."""
    backend, mode, _role, *docs = case.entry.split(":", 1)[1].split("/", 3)
    return backend, mode == "decode", bool(docs) and mode != "decode"


def seqlens_for(probe: str, group: int, packed: bool) -> tuple[int, ...]:
    """The sequence lengths a probe is tried at, for its G and packing (see PROBE_SEQLENS)."""
    if packed:
        return {"slc_fwd": PACKED_SLC_SEQLENS, "slc_bwd": PACKED_SLC_BWD_SEQLENS}.get(probe, PACKED_SEQLENS)
    if probe in ("cmp_fwd", "select", "cmp_bwd") and group in COMPRESSED_SEQLENS:
        return COMPRESSED_SEQLENS[group]
    return PROBE_SEQLENS.get(probe, DEFAULT_SEQLENS)


def probe_candidates(cases: Iterable[Case]) -> list[ProbeShape]:
    """Every probe shape that may reach a launch of these cases, cheapest first."""
    shapes: set[ProbeShape] = set()
    for case in cases:
        backend, is_decode, packed = _layout(case)
        for probe in BACKEND_PROBES.get((backend, is_decode), ()):
            for group in {case.group, FREE_GROUP}:
                seqlens = seqlens_for(probe, group, packed)
                for dk, dv in {(TEST_DK, TEST_DV), (case.dk, case.dv)}:
                    for seqlen in seqlens:
                        n = SEGMENT_N if probe == "slc_bwd" and seqlen == seqlens[-1] and seqlen > 300 else TEST_N
                        cfg = dataclasses.replace(case.cfg, n_slc=min(n, case.cfg.n_slc))
                        if probe in ("win_fwd", "win_bwd"):
                            cfg = dataclasses.replace(cfg, window=WINDOW)
                        shapes.add(ProbeShape(probe, seqlen, group, 1, 2 if is_decode else 1, dk, dv, cfg, packed))
    return sorted(shapes, key=cost)


def cost(shape: ProbeShape) -> tuple:
    """A probe shape's rough interpreter cost (rows x head widths x n), then a fixed order."""
    rows = shape.seqlen * shape.batch * shape.kv_heads * max(shape.group, FREE_GROUP)
    return rows * (shape.dk + shape.dv) * shape.cfg.n_slc, -shape.group, shape.label  # G=2 before G=1: h // G runs


# ------------------------------------------------------------------ assignment and runs
@dataclass(frozen=True)
class PinnedRun:
    """One probe run: a shape, the configs pinned (kernel -> (autotuned tile, warps, stages)), and the
    planned launches it executes (modulo warps and stages)."""

    shape: ProbeShape
    pins: tuple[tuple[str, tuple[tuple[str, object], ...], int, int], ...]
    covers: tuple[LaunchKey, ...]

    def configs(self) -> dict[str, triton.Config]:
        """kernel -> the triton.Config the run pins (kernels/overrides.py `pins`)."""
        return {kernel: triton.Config(dict(tile), num_warps=w, num_stages=st) for kernel, tile, w, st in self.pins}

    @property
    def label(self) -> str:
        pinned = "; ".join(f"{k} {' '.join(f'{n}={v}' for n, v in tile)} w{w} s{s}" for k, tile, w, s in self.pins)
        return f"{self.shape.label}: {pinned or 'GPU sizes, nothing autotuned'}"


def reaches(plans: Mapping[Case, CasePlan]) -> dict[ProbeShape, set[tuple]]:
    """What each recorded probe shape makes, as `Planned.reach` values of the kernels its probe tests."""
    out: dict[ProbeShape, set[tuple]] = {}
    for case, plan in plans.items():
        shape = ProbeShape.of_case(case)
        tested = set(PROBES[shape.probe].kernels)
        out[shape] = {p.reach for p in planned_of(plan) if p.key.kernel in tested}
    return out


def assign(planned: Iterable[Planned], reached: Mapping[ProbeShape, set[tuple]]
           ) -> tuple[dict[ProbeShape, list[Planned]], list[Planned]]:
    """(probe shape -> the planned launches it runs, launches no probe reaches); cheapest shape first."""
    order = sorted(reached, key=cost)
    by_shape: dict[ProbeShape, list[Planned]] = defaultdict(list)
    missing = []
    for p in sorted(set(planned), key=lambda p: p.key):
        shape = next((s for s in order if p.reach in reached[s]), None)
        if shape is None:
            missing.append(p)
        else:
            by_shape[shape].append(p)
    return dict(by_shape), missing


def runs_of(assigned: Mapping[ProbeShape, list[Planned]]) -> list[PinnedRun]:
    """Pinned runs for each probe shape: run i pins the i-th distinct autotuned tile of every kernel."""
    runs = []
    for shape in sorted(assigned, key=cost):
        launches = assigned[shape]
        tiles: dict[str, dict[tuple, list[Planned]]] = defaultdict(lambda: defaultdict(list))
        for p in launches:
            if p.tuned:
                tiles[p.key.kernel][p.pin].append(p)
        fixed = tuple(p.key for p in launches if not p.tuned)  # run as the host picks them: in run 0
        count = max((len(t) for t in tiles.values()), default=1)
        for i in range(count):
            pins, covers = [], list(fixed if i == 0 else ())
            for kernel in sorted(tiles):
                units = sorted(tiles[kernel].items())
                if i < len(units):
                    (_, tile), members = units[i]
                    first = min(members, key=lambda p: p.key)
                    pins.append((kernel, tile, first.key.num_warps, first.key.num_stages))
                    covers.extend(p.key for p in members)
            runs.append(PinnedRun(shape, tuple(pins), tuple(sorted(set(covers)))))
    return runs


def split_warps(runs: Iterable[PinnedRun]) -> list[PinnedRun]:
    """The runs a GPU makes of `runs`: configs that differ in warps or stages (one interpreter run) are
    different binaries there, so run j pins the j-th (warps, stages) of each kernel's tile."""
    out = []
    for run in runs:
        choices = []
        for kernel, tile, _, _ in run.pins:
            names = {n for n, _ in tile}
            ws = sorted({(k.num_warps, k.num_stages) for k in run.covers
                         if k.kernel == kernel and tuple(kv for kv in k.tile if kv[0] in names) == tile})
            choices.append((kernel, tile, names, ws))
        for j in range(max((len(ws) for *_, ws in choices), default=1)):
            pins, covered = [], set()
            for kernel, tile, names, ws in choices:
                w, s = ws[min(j, len(ws) - 1)]  # a kernel with fewer variants repeats its last one
                pins.append((kernel, tile, w, s))
                covered |= {k for k in run.covers if k.kernel == kernel and (k.num_warps, k.num_stages) == (w, s)
                            and tuple(kv for kv in k.tile if kv[0] in names) == tile}
            pinned = {kernel for kernel, *_ in run.pins}
            fixed = {k for k in run.covers if k.kernel not in pinned} if j == 0 else set()
            out.append(PinnedRun(run.shape, tuple(pins), tuple(sorted(covered | fixed))))
    return out
