"""The launches the CPU interpreter actually runs, keyed as the launch plan keys the GPU's (keys.py).

`recording()` wraps Triton's InterpretedFunction.run for the length of a block: every launch of a kernel of
the kernel package is noted with its bound constexprs, warps and stages (what a pinned config or the host
code chose), whatever path led to it (an autotuner, a pinned config, a bare launch).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from triton.runtime.interpreter import InterpretedFunction

from nsa_bench.launchplan.keys import LaunchKey, bound_constexprs, key_of
from nsa_kernels.overrides import kernel_name

KERNEL_PACKAGE = "nsa_kernels."


@contextlib.contextmanager
def recording(sink: list[LaunchKey] | None = None) -> Iterator[list[LaunchKey]]:
    """Within the block, each interpreter launch of an nsa_kernels kernel is appended to `sink` (returned)."""
    launches: list[LaunchKey] = [] if sink is None else sink
    original = InterpretedFunction.run

    def run(self: InterpretedFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        if not warmup and self.fn.__module__.startswith(KERNEL_PACKAGE):
            launches.append(key_of(kernel_name(self.fn), bound_constexprs(self.fn, args, kwargs),
                                   kwargs.get("num_warps"), kwargs.get("num_stages")))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original
