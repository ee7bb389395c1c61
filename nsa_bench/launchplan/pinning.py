"""Run a probe with kernel configs pinned, and judge it: the helper the interpreter tests use, and a GPU-side
check can (a config the autotuner may pick, run at a chosen shape, against the float64 reference).

    run_pinned(shape, {"compressed._cmp_fwd_kernel": triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, 4, 2)})
    pinned_error(point, "compressed._cmp_fwd_kernel", config, device="cuda")   # the max relative error

Under the CPU interpreter the host takes the GPU's sizes (kernels/overrides.py `gpu_sizes`) and the
launches that ran are recorded; on a GPU it always does, and nothing is recorded.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Mapping

import torch
import triton

from nsa_bench.launchplan import executed
from nsa_bench.launchplan.keys import LaunchKey
from nsa_bench.launchplan.probes import PROBES, OutputCheck, ProbeInputs, ProbeShape, check
from nsa_bench.spec import Point
from nsa_kernels._common import interpreting
from nsa_kernels.overrides import overriding

# the probes that stand for each sweep mode (fa2-triton's are the dense ones)
NSA_MODE_PROBES = {
    "fwd": ("compress", "cmp_fwd", "select", "slc_fwd", "win_fwd", "gated_sum"),
    "bwd": ("compress", "cmp_fwd", "select", "slc_fwd", "win_fwd", "gated_sum", "cmp_bwd", "slc_bwd", "win_bwd"),
    "decode": ("compress", "decode"),
}


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


def probes_for(kernel: str, mode: str = "bwd") -> list[str]:
    """The probes of a sweep mode ("fwd", "bwd", "decode"; fwdbwd and layer modes as bwd, layer-fwd as fwd)
    that test `kernel`."""
    mode = {"fwdbwd": "bwd", "layer-bwd": "bwd", "layer-fwd": "fwd"}.get(mode, mode)
    names = [p for p in NSA_MODE_PROBES.get(mode, ()) if kernel in PROBES[p].kernels]
    return names or [p.name for p in PROBES.values() if kernel in p.kernels]


def shape_for(point: Point, probe: str, seqlen: int | None = None) -> ProbeShape:
    """A probe at a sweep point's layout: its G, KV heads, head dims, block config and packing, at `seqlen`
    (default: the point's). Packed points take the probe's own documents (probes.doc_lengths), one row."""
    batch = 1 if point.packed else point.batch
    return ProbeShape(probe, seqlen or point.seqlen, point.group_size, point.kv_heads, batch, point.head_dim_qk,
                      point.head_dim_v, point.cfg, point.packed and point.mode != "decode")


def pinned_error(at: Point | ProbeShape, kernel: str, config: triton.Config, dtype: str | None = None,
                 device: str | torch.device = "cpu", seqlen: int | None = None) -> float:
    """The max relative error vs the float64 reference over every output of every probe of `at`'s mode that
    tests `kernel`, with `config` pinned for it (a selection counts 0 if valid, inf if not)."""
    if isinstance(at, ProbeShape):
        shapes = [at if seqlen is None else dataclasses.replace(at, seqlen=seqlen)]
        dtype = dtype or "float32"
    else:
        shapes = [shape_for(at, probe, seqlen) for probe in probes_for(kernel, at.mode)]
        dtype = dtype or at.dtype
    return max(run_pinned(shape, {kernel: config}, dtype, device).max_error for shape in shapes)
