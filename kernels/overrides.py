"""What a caller may change about how the wrappers launch their kernels, read at call time.

Off by default: a GPU run never sets anything here. Three switches, for tests and checks:

- `pins`: kernel name -> `triton.Config`. A launch of that kernel runs that config as given, not
  autotuned (on a GPU too): how a test or a check runs one of the configs the autotuner may pick.
- `gpu_sizes`: under the CPU interpreter, host code picks the GPU's tile sizes and chunk lengths
  (compress_fwd's BLOCK_C, the compressed dK/dV chunk, decode's ranking range, ...) instead of the
  interpreter's small ones, which exist so that ordinary tests cross tiles and chunks at small shapes.
  Without it the GPU's values would never run anywhere before a GPU times them.
- `tune`: under the CPU interpreter, autotuners keep every GPU config and tune (the caller stubs
  Triton's benchmark), so prune hooks, `restore_value` and `reset_to_zero` run on the CPU too.

Kernels are named "module.function" (`kernel_name`), e.g. "compressed._cmp_fwd_kernel": the name a pin
takes and the one the suite's launch plan records.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import triton

__all__ = ["LaunchOverrides", "current", "overriding", "kernel_name", "pinned_config"]


@dataclass(frozen=True)
class LaunchOverrides:
    """The switches in force (module doc); the default changes nothing."""

    gpu_sizes: bool = False
    tune: bool = False
    pins: Mapping[str, triton.Config] = field(default_factory=lambda: MappingProxyType({}))


_STACK: list[LaunchOverrides] = [LaunchOverrides()]


def current() -> LaunchOverrides:
    return _STACK[-1]


@contextlib.contextmanager
def overriding(*, gpu_sizes: bool | None = None, tune: bool | None = None,
               pins: Mapping[str, triton.Config] | None = None) -> Iterator[LaunchOverrides]:
    """Within the block, launches follow these switches (those not given keep their current values;
    `pins` adds to the pins in force)."""
    now = current()
    changes: dict[str, Any] = {}
    if gpu_sizes is not None:
        changes["gpu_sizes"] = bool(gpu_sizes)
    if tune is not None:
        changes["tune"] = bool(tune)
    if pins:
        for name, config in pins.items():
            if not isinstance(config, triton.Config):
                raise ValueError(f"pin for {name!r} must be a triton.Config, got {type(config).__name__}")
        changes["pins"] = MappingProxyType({**now.pins, **pins})
    _STACK.append(replace(now, **changes))
    try:
        yield _STACK[-1]
    finally:
        _STACK.pop()


def _python_function(kernel: Any) -> Any:
    """The Python function under any autotuner, JITFunction or InterpretedFunction."""
    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn
    return fn


def kernel_name(kernel: Any) -> str:
    """"module.function" of a kernel object or its Python function, e.g. "flash._fwd_kernel"."""
    fn = _python_function(kernel)
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def pinned_config(kernel: Any) -> triton.Config | None:
    """The config a caller pinned for this kernel, if any."""
    pins = current().pins
    return pins.get(kernel_name(kernel)) if pins else None
