"""NVTX ranges around each timed operation and stage, so Nsight Systems/Compute can find them by name."""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Callable

from nsa_bench.backends import Workload


def nvtx_range(name: str) -> contextlib.AbstractContextManager[Any]:
    """An NVTX push/pop range when CUDA is available, else nothing (so CPU runs pay nothing)."""
    import torch

    return torch.cuda.nvtx.range(name) if torch.cuda.is_available() else contextlib.nullcontext()


def _in_range(fn: Callable[[], Any], name: str) -> Callable[[], Any]:
    def call() -> Any:
        with nvtx_range(name):
            return fn()
    return call


def annotate(workload: Workload, label: str) -> Workload:
    """The workload with its operation in NVTX range `label` and each stage in `label:<stage>`.

    Only when CUDA is available: on the CPU the workload is returned unchanged.
    """
    import torch

    if not torch.cuda.is_available():
        return workload
    stages = {name: _in_range(fn, f"{label}:{name}") for name, fn in workload.stages.items()}
    return replace(workload, run=_in_range(workload.run, label), stages=stages)
