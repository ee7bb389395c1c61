"""`--program-order=index|reverse|footprint`: does a kernel's result depend on the order its programs run?

Triton's CPU interpreter runs the programs of a launch one after another in index order; a GPU runs them at
once, in no order. A kernel whose programs talk through memory (one reads what another writes, or two
write one place) can pass every interpreter test and fail on a GPU. Both modes wrap each launch's
per-program function (the way conftest's `run_only` does), so they work on any kernel:

- `reverse`: each launch runs its programs last first. A result that then changes is caught by the tests'
  own comparisons (against the reference, or a kernel's bit-reproducibility checks).
- `footprint`: each launch runs in index order while every program's loads and stores are recorded as
  byte addresses (masked-off lanes excluded). Afterwards bytes that two programs store, and bytes one
  program loads that another stores (before or after it: a GPU may run either first), fail the test,
  naming the kernel, the programs and the bytes. Atomics are neither loads nor stores here, so they are
  exempt; a program reading back what it stored itself is fine.

`index` (the default) changes nothing.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import triton.runtime.interpreter as interpreter

MODES = ("index", "reverse", "footprint")
_FINDINGS: list[str] = []  # what footprint found during the current test


def addoption(parser: pytest.Parser) -> None:
    parser.addoption("--program-order", choices=MODES, default="index",
                     help="run each interpreter launch's programs in reverse, or record their memory footprints "
                          "and fail on bytes two programs share (tests/program_order.py)")


def configure(config: pytest.Config) -> None:
    mode = config.getoption("--program-order")
    if mode != "index":
        config.add_cleanup(install(mode))


def install(mode: str) -> Callable[[], None]:
    """From now on every interpreter launch runs in `mode` ("reverse" or "footprint"); returns the undo."""
    if mode not in MODES[1:]:
        raise ValueError(f"program order {mode!r} (one of {', '.join(MODES[1:])})")
    original = interpreter.GridExecutor.__init__

    def init(self, fn, *args, **kwargs):
        original(self, fn, *args, **kwargs)
        self.fn = _with_signature(self.fn, _reversed(self.fn) if mode == "reverse" else _footprint(self.fn))

    interpreter.GridExecutor.__init__ = init
    return lambda: setattr(interpreter.GridExecutor, "__init__", original)


def findings() -> list[str]:
    """What footprint found since the last call (and forget it): for tests of this plugin."""
    found = list(dict.fromkeys(_FINDINGS))
    _FINDINGS.clear()
    return found


@pytest.hookimpl(wrapper=True)
def runtest_call(item: pytest.Item):
    _FINDINGS.clear()
    result = yield
    if _FINDINGS:
        found = "\n".join(dict.fromkeys(_FINDINGS))
        _FINDINGS.clear()
        raise AssertionError(f"programs of one launch share memory (a GPU runs them in any order):\n{found}")
    return result


def _with_signature(inner: Callable, program: Callable) -> Callable:
    """`program` as the executor needs its function: the kernel's globals (the interpreter patches
    triton.language in them) and its signature (it binds arguments by it)."""
    wrapped = types.FunctionType(program.__code__, inner.__globals__, inner.__name__, None, program.__closure__)
    wrapped.__signature__ = inspect.signature(inner)
    return wrapped


def _last(dims: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(d - 1 for d in dims)


# The program functions below run with the kernel module's globals (`_with_signature`): everything they use
# is a closure variable of the function that makes them.
def _reversed(inner: Callable) -> Callable:
    """Defers each program until the launch's last (in index order) arrives, then runs them all last first."""
    builder, pending, last = interpreter.interpreter_builder, [], _last

    def program(*args, **kwargs):
        here = builder.grid_idx
        pending.append(here)
        if here != last(builder.grid_dim):
            return None
        try:
            for idx in reversed(pending):
                builder.set_grid_idx(*idx)
                inner(*args, **kwargs)
        finally:
            pending.clear()
            builder.set_grid_idx(*here)
        return None

    return program


@dataclass
class _Footprint:
    """The byte addresses each program of one launch loaded and stored."""

    loads: list[np.ndarray] = field(default_factory=list)
    stores: list[np.ndarray] = field(default_factory=list)
    programs: list[tuple[int, int, int]] = field(default_factory=list)


def _bytes(ptrs: Any, mask: Any) -> np.ndarray:
    """Every byte address the unmasked lanes of `ptrs` touch."""
    size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
    on = np.broadcast_to(np.asarray(mask.data).astype(bool), ptrs.data.shape)  # an int1 mask may hold 0/1 ints
    addresses = ptrs.data[on].astype(np.uint64).ravel()
    return (addresses[:, None] + np.arange(size, dtype=np.uint64)[None, :]).ravel()


def _footprint(inner: Callable) -> Callable:
    """Runs each program with its loads and stores recorded; after the last, checks the launch."""
    builder, launch, last, touched, check, found = interpreter.interpreter_builder, _Footprint(), _last, _bytes, \
        shared_bytes, _FINDINGS
    name = f"{inner.__module__.rsplit('.', 1)[-1]}.{inner.__name__}"
    cls, unique, concatenate, empty = interpreter.InterpreterBuilder, np.unique, np.concatenate, np.zeros(0, np.uint64)

    def program(*args, **kwargs):
        here = builder.grid_idx
        loads, stores = [], []

        def load(ptrs, mask, other, cache_modifier, eviction_policy, is_volatile):
            loads.append(touched(ptrs, mask))
            return cls.create_masked_load(builder, ptrs, mask, other, cache_modifier, eviction_policy, is_volatile)

        def store(ptrs, value, mask, cache_modifier, eviction_policy):
            stores.append(touched(ptrs, mask))
            return cls.create_masked_store(builder, ptrs, value, mask, cache_modifier, eviction_policy)

        builder.create_masked_load, builder.create_masked_store = load, store
        try:
            inner(*args, **kwargs)
        finally:
            del builder.create_masked_load, builder.create_masked_store
        launch.loads.append(unique(concatenate(loads)) if loads else empty)
        launch.stores.append(unique(concatenate(stores)) if stores else empty)
        launch.programs.append(here)
        if here == last(builder.grid_dim):
            try:
                found.extend(check(name, builder.grid_dim, launch))
            finally:
                launch.loads.clear(), launch.stores.clear(), launch.programs.clear()
        return None

    return program


def shared_bytes(name: str, grid: tuple[int, int, int], launch: _Footprint) -> list[str]:
    """What programs of one launch share: bytes two store, bytes one loads and another stores."""
    if len(launch.programs) < 2:
        return []
    owners = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(launch.stores)])
    stored = np.concatenate(launch.stores)
    order = np.argsort(stored, kind="stable")
    stored, owners = stored[order], owners[order]
    findings = []
    twice = np.nonzero(stored[1:] == stored[:-1])[0]  # each program's stores are distinct: two programs
    if len(twice):
        i = twice[0]
        a, b = launch.programs[owners[i]], launch.programs[owners[i + 1]]
        findings.append(f"{name} grid {grid}: {len(np.unique(stored[twice]))} bytes stored by two programs, e.g. "
                        f"programs {a} and {b}")
    if len(stored) == 0:
        return findings
    several = np.unique(stored[twice])  # a byte several programs store is another program's for every reader
    read_bytes, read_pairs = 0, None
    for p, loaded in enumerate(launch.loads):
        if not len(loaded):
            continue
        at = np.clip(np.searchsorted(stored, loaded), 0, len(stored) - 1)
        hit = stored[at] == loaded
        foreign = hit & ((owners[at] != p) | np.isin(loaded, several))
        if foreign.any():
            read_bytes += int(foreign.sum())
            if read_pairs is None:
                first = int(np.nonzero(foreign)[0][0])
                read_pairs = (launch.programs[p], launch.programs[int(owners[at[first]])])
    if read_bytes:
        findings.append(f"{name} grid {grid}: {read_bytes} bytes loaded by one program and stored by another, e.g. "
                        f"program {read_pairs[0]} loads what program {read_pairs[1]} stores")
    return findings
