"""Run a probe with kernel configs pinned, and judge it: what the interpreter tests, the config check before
timing (nsa_bench/configcheck.py) and the self-test run (a config the autotuner may pick, at a chosen shape,
against the float64 reference).

    run_pinned(shape, {"compressed._cmp_fwd_kernel": triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 2)})

Under the CPU interpreter the host takes the GPU's sizes (kernels/overrides.py `gpu_sizes`) and the
launches that ran are recorded; on a GPU it always does, and nothing is recorded.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Mapping

import torch
import triton

from nsa_bench.launchplan import executed
from nsa_bench.launchplan.keys import LaunchKey
from nsa_bench.launchplan.probes import OutputCheck, ProbeInputs, ProbeShape, check
from nsa_kernels._common import interpreting
from nsa_kernels.overrides import overriding

@dataclass(frozen=True)
class RunResult:
    """Every output's check, and (under the interpreter) the launches that ran, keyed as the plan keys them."""

    shape: ProbeShape
    dtype: str
    pins: Mapping[str, triton.Config]
    checks: tuple[OutputCheck, ...]
    executed: tuple[LaunchKey, ...]

    @property
    def max_error(self) -> float:
        return max((c.error for c in self.checks), default=0.0)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        """One line per failing output: what is wrong and the kernels that made it, with their pinned configs."""
        lines = []
        for c in self.checks:
            if c.ok:
                continue
            makers = ", ".join(f"{k} [{_describe(self.pins[k])}]" if k in self.pins else f"{k} (host sizes)"
                               for k in c.made_by)
            lines.append(f"{self.shape.label} {self.dtype}: {c.output}: {c.problem}; made by {makers}")
        return lines


def _describe(config: triton.Config) -> str:
    return " ".join([*(f"{k}={v}" for k, v in config.kwargs.items()), f"num_warps={config.num_warps}",
                     f"num_stages={config.num_stages}"])


def run_pinned(shape: ProbeShape, pins: Mapping[str, triton.Config], dtype: str = "float32",
               device: str | torch.device = "cpu", seed: int = 0, inputs: ProbeInputs | None = None) -> RunResult:
    """Run `shape`'s probe with `pins` (kernel name -> config) and the GPU's host sizes; check every output."""
    record = executed.recording() if interpreting() else contextlib.nullcontext([])
    with record as launches, overriding(gpu_sizes=True, pins=dict(pins)):
        checks = check(shape, dtype, device, seed, inputs)
    return RunResult(shape, dtype, dict(pins), tuple(checks), tuple(launches))
