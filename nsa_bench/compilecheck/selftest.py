"""Kernels with known sm_90 outcomes, so the compile check checks itself: what the CPU interpreter accepts but
the GPU compiler rejects (a dot tile under 16) or spills must be caught, and what is fine must pass."""
from __future__ import annotations

import sys
from typing import Any

import triton
import triton.language as tl

from nsa_bench.compilecheck.case import Case


@triton.jit
def _selftest_dot_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, tl.dot(x, x))


@triton.jit
def _selftest_spill_kernel(x_ptr, out_ptr, steps, ROWS: tl.constexpr, COLS: tl.constexpr):
    offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
    for i in range(steps):  # acc stays live across the loop: ROWS*COLS/threads registers
        acc = acc * 0.5 + tl.load(x_ptr + i * ROWS * COLS + offs)
    tl.store(out_ptr + offs, acc)


def _selftest_prune(configs: list, named_args: dict, **kwargs: Any) -> list:
    return [c for c in configs if c.kwargs["BLOCK"] <= 32]


_selftest_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK": b}, num_warps=4) for b in (16, 32, 64)], key=[],
    prune_configs_by={"early_config_prune": _selftest_prune},
)(_selftest_dot_kernel)


def run(case: Case) -> None:
    """Launches with known outcomes: dot 8 fails, dot 16 compiles, 512 live fp32 per thread spill, and an
    autotuned launch whose early pruning drops BLOCK=64. Kernels are looked up in this module's globals,
    where the recorder stands in for them."""
    import torch

    this = sys.modules[__name__]
    x = torch.empty(4096, device="meta", dtype=torch.float16)
    y = torch.empty(4096, device="meta", dtype=torch.float32)
    this._selftest_dot_kernel[(1,)](x, y, BLOCK=8)
    this._selftest_dot_kernel[(1,)](x, y, BLOCK=16)
    this._selftest_spill_kernel[(1,)](y, y, 7, ROWS=128, COLS=128, num_warps=1)
    this._selftest_spill_kernel[(1,)](y, y, 7, ROWS=32, COLS=32, num_warps=4)
    this._selftest_tuned[lambda meta: (meta["BLOCK"],)](x, y)
