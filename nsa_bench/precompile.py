"""Compile, before any timing, every kernel variant and autotune config a sweep will launch.

Without this, a GPU run compiles ~100 kernels one after another at their first calls. Here each
Triton backend's own workload (build, the timed call, every stage, the correctness check and the
selection check) runs on `meta` tensors at each point's real shape and at its check shape, inside
`nsa_bench.compilecheck`'s worker processes, with every kernel launch recorded instead of made.
Every config the autotuners would try is then compiled once, in parallel, by the machinery of the
sm_90 compile check, into Triton's on-disk cache, under the key JITFunction.run computes for the same
launch: the sweep's first calls load binaries instead of compiling them.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

from nsa_bench.backends import Backend, registry
from nsa_bench.check import check_point
from nsa_bench.compilecheck.case import DEFAULT_CAPABILITY, Case
from nsa_bench.compilecheck.pool import precompile_cases
from nsa_bench.doclens import NONE
from nsa_bench.inputs import empty_inputs
from nsa_bench.spec import Point, SweepSpec

# Backends whose workloads launch this project's Triton kernels (nsa_kernels). Others are not
# precompiled: fa2 and nsa-ref run PyTorch's own kernels, flex-nsa compiles through torch.compile and
# fla-nsa launches fla's kernels, all at their first call.
PRECOMPILED_BACKENDS = ("nsa-triton", "fa2-triton")
ROLES = ("timed", "check")
_ENTRY_PREFIX = f"{__name__}:"


def default_workers(cpus: int | None = None) -> int:
    """CPU cores minus 2 (the sweep's own process and the system), at least 1."""
    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) - 2)


def target_capability() -> int:
    """The CUDA capability to compile for: the GPU present, else sm_90 (H100, H200)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return major * 10 + minor
    return DEFAULT_CAPABILITY


def precompiled(backend: Backend, point: Point) -> bool:
    """Whether precompile covers this backend at this point (it runs our kernels and the point is in scope)."""
    return backend.name in PRECOMPILED_BACKENDS and point.mode in backend.modes and backend.out_of_scope(point) is None


# ------------------------------------------------------------------ cases (parent side)
def case_for(point: Point, backend: str, role: str) -> Case:
    """The compile case of one backend at one point, in one role (the timed call or the check)."""
    packing = f"/{point.doc_lens}" if point.packed else ""  # a Case has no doc_lens: the entry carries it
    return Case(f"{_ENTRY_PREFIX}{backend}/{point.mode}/{role}{packing}", point.batch, point.seqlen,
                point.kv_heads, point.group_size, point.head_dim_qk, point.head_dim_v, point.dtype, point.cfg)


@dataclass(frozen=True)
class TaskCases:
    """The two cases of one sweep task: its timed shape and its check shape."""

    point: Point
    backend: str
    timed: Case
    check: Case


# A layer mode's attention runs as the inference forward (layer-fwd, under no_grad) or as the training
# forward and its backward (layer-bwd): the kernels of these attention modes.
_LAYER_ATTENTION_MODE = {"layer-fwd": "fwd", "layer-bwd": "fwdbwd"}


def attention_point(point: Point) -> Point:
    """The attention-only point whose kernels a point launches (itself, unless a layer mode)."""
    mode = _LAYER_ATTENTION_MODE.get(point.mode)
    return point if mode is None else replace(point, mode=mode, d_model=0)


def sweep_cases(spec: SweepSpec) -> list[TaskCases]:
    """Every precompiled task of the sweep, with its cases (points invalid or out of scope are left out)."""
    backends = registry()
    out: list[TaskCases] = []
    for point in dict.fromkeys(attention_point(p) for p in spec.points()[0]):
        for name in spec.run_backends:
            backend = backends.get(name)
            if backend is None or not precompiled(backend, point):
                continue
            out.append(TaskCases(point, name, case_for(point, name, "timed"),
                                 case_for(check_point(point, spec.check_seqlen), name, "check")))
    return out


def sweep_case_list(spec: SweepSpec) -> list:
    """The distinct cases of the sweep, in run order."""
    return list(dict.fromkeys(c for task in sweep_cases(spec) for c in (task.timed, task.check)))


def not_precompiled(spec: SweepSpec) -> list[str]:
    """Backends of the sweep whose kernels compile at their first call."""
    return [name for name in spec.run_backends if name not in PRECOMPILED_BACKENDS]


# ------------------------------------------------------------------ entry points (worker side)
def _point_of(case, mode: str, doc_lens: str = NONE) -> Point:
    c = case.cfg
    return Point(mode, case.seqlen, case.batch, case.kv_heads, case.group, case.dk, case.dv, c.block_cmp,
                 c.stride_cmp, c.block_slc, c.n_slc, c.window, case.dtype, doc_lens=doc_lens)


def compile_entry(name: str) -> Callable[[object], None]:
    """The host code of "BACKEND/MODE/ROLE[/DOC_LENS]": what the runner does with that backend at a case's
    shape (DOC_LENS: a packed point's --doc-lens, whose VARLEN kernels are other builds).

    timed: build the workload, make the timed call and every stage call (a graph capture replays the
    same kernels); check: build it on inputs carrying a shared selection, as the check does, take its
    result and its own selection.
    """
    backend_name, mode, role, *packing = name.split("/", 3)
    backend = registry()[backend_name]
    if role not in ROLES:
        raise KeyError(f"unknown role {role!r} in compile entry {name!r}")

    def host(case) -> None:
        point = _point_of(case, mode, *packing)
        check = role == "check"
        workload = backend.build(point, empty_inputs(point, "meta", with_block_idx=check and backend.family == "nsa"))
        if check:
            workload.result()
            if workload.selection is not None:
                workload.selection()
            return
        workload.run()
        for stage in workload.stages.values():
            stage()

    return host


# ------------------------------------------------------------------ running it
def plan(spec: SweepSpec, workers: int = 1, capability: int | None = None):
    """Plan every case of the sweep without compiling (a dry run): a compilecheck Precompiled."""
    cases = sweep_case_list(spec)
    if not cases:
        return None
    return precompile_cases(cases, workers, capability or target_capability(), compile=False)


def run(spec: SweepSpec, workers: int, echo: Callable[[str], None], progress: bool = True,
        capability: int | None = None):
    """Compile everything the sweep will launch; prints what and how long; returns the Precompiled."""
    cap = capability or target_capability()
    cases = sweep_case_list(spec)
    others = not_precompiled(spec)
    if not cases:
        echo("Precompile: nothing to compile (no backend of this sweep runs nsa_kernels)")
        return None
    echo(f"Precompile: {len(cases)} cases for sm_{cap} on {workers} worker processes ...")
    start = time.perf_counter()
    show = progress and sys.stderr.isatty()  # a counter redrawn in place: terminals only, not logs
    result = precompile_cases(cases, workers, cap, progress=_progress_printer() if show else None)
    echo(summary(result, cap, time.perf_counter() - start))
    for case, error in list(result.host_errors.items())[:3]:
        echo(f"  host code failed for {case.label}: {error.strip().splitlines()[-1]}")
    for failure in result.failed[:5]:
        echo(f"  compile failed: {failure.name} [{failure.config}]: {(failure.error or '').splitlines()[0][:200]}")
    if others:
        echo(f"  not precompiled (compile at their first call): {', '.join(others)}")
    return result


def summary(result, capability: int, seconds: float) -> str:
    kernels = {r.name for r in result.results}
    return (f"Precompiled {len(result.results)} distinct configs of {len(kernels)} kernels for sm_{capability} "
            f"({result.variants} launches x configs over {len(result.plans)} cases, {len(result.failed)} failed) "
            f"in {seconds:.1f} s on {result.workers} workers (plan {result.plan_seconds:.1f} s, "
            f"compile {result.compile_seconds:.1f} s)")


def _progress_printer() -> Callable[[int, int], None]:
    """A one-line counter on stderr, redrawn at most every half second."""
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 0.5:
            last[0] = now
            sys.stderr.write(f"\r  compiled {done}/{total}" + ("\n" if done == total else ""))
            sys.stderr.flush()

    return show
