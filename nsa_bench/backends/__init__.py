"""Backends registry: each module in this package defines one `BACKEND`; adding a backend is one file.

A backend says which algorithm it implements (`family`: "nsa" or "dense", which picks the cost model
and the reference it is checked against), which modes it runs, whether it can run here, and how to
build a ready-to-time `Workload` for a point.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point

FAMILIES = ("nsa", "dense")


class Unsupported(Exception):
    """Raised by a backend's build for a point it cannot run (becomes an `unsupported` row)."""


@dataclass(frozen=True)
class Workload:
    """What the runner times for one point on one backend.

    `run` is the timed operation; `before_each` runs untimed before every rep (e.g. clearing grads);
    `result` returns the tensors checked against the reference (fwd: (o,), bwd: grads of q, k, v, gates,
    decode: (o,)); `stages` are self-contained callables timed one by one for the per-branch breakdown,
    each mapped to the cost-model stages it covers by `stage_costs`. `selection`, for NSA backends that
    choose their own blocks, returns the block_idx [B, T, Hkv, n] their selection computes from the
    inputs (checked against the reference's block scores by NSA_SPEC's validity rule).
    """

    run: Callable[[], Any]
    impl: str
    result: Callable[[], tuple[Any, ...]]
    before_each: Callable[[], None] | None = None
    stages: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    stage_costs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    note: str = ""
    selection: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    family: str
    modes: tuple[str, ...]
    description: str
    availability: Callable[[], str | None]  # None when usable here, else why not
    build: Callable[[Point, Inputs], Workload]
    impl_hint: Callable[[], str] = lambda: ""  # what would run here (for `nsa-bench env`)
    supports: Callable[[Point], str | None] = lambda point: None  # None when the point is in its scope, else why not
    pads: Callable[[Point], str] = lambda point: ""  # the padding it runs the point with ("": the true shapes)
    staged_modes: tuple[str, ...] = ()  # modes whose workloads time per-stage rows too (what a run's estimate needs)
    varlen: bool = False  # whether it runs packed points (--doc-lens: Inputs.cu_seqlens, docs/varlen.md)
    no_varlen: str = ""  # why not, when it does not ("": a generic reason)
    # which probes of nsa_bench.launchplan reach its kernels ("nsa", "dense"): on a GPU every autotune
    # candidate of a point is checked before it is timed (nsa_bench/configcheck.py); "": not checked
    launch_probes: str = ""

    def out_of_scope(self, point: Point) -> str | None:
        """Why this backend does not run `point` at all (None: in scope): its own limits, then packing."""
        return self.supports(point) or self.varlen_refusal(point)

    def varlen_refusal(self, point: Point) -> str | None:
        """Why this backend cannot run `point` as a packed batch (None: it can, or the point is dense).

        A backend that ignored cu_seqlens would attend across documents, so it must say so instead.
        """
        if not point.packed or self.varlen:
            return None
        return self.no_varlen or f"{self.name} has no packed-batch (cu_seqlens) path: --doc-lens {point.doc_lens} unsupported"


@functools.cache
def registry() -> Mapping[str, Backend]:
    """All backends, by name, discovered from this package's modules (read-only)."""
    found: dict[str, Backend] = {}
    modules = [f"{__name__}.{info.name}" for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)]
    for name in modules + extra_modules():
        module = importlib.import_module(name)
        for backend in (getattr(module, "BACKEND", None), *getattr(module, "BACKENDS", ())):
            if isinstance(backend, Backend):
                found[backend.name] = backend
    return MappingProxyType(found)


EXTRA_ENV = "NSA_BENCH_BACKEND_MODULES"


def extra_modules() -> list[str]:
    """Modules named in NSA_BENCH_BACKEND_MODULES (comma list; each defines BACKEND or BACKENDS): backends
    kept outside the package, such as the tests' faulting backends. Worker processes inherit the variable."""
    import os

    return [name.strip() for name in os.environ.get(EXTRA_ENV, "").split(",") if name.strip()]


def get_backend(name: str) -> Backend:
    backends = registry()
    if name not in backends:
        raise KeyError(f"unknown backend {name!r} (choose from {', '.join(backends)})")
    return backends[name]


def cuda_required() -> str | None:
    """Availability check shared by GPU-only backends."""
    import torch

    return None if torch.cuda.is_available() else "needs a CUDA GPU"
