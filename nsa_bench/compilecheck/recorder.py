"""Record the kernel launches host code makes, without making them, and expand each into its GPU configs.

`record_launches` runs host code (a public entry point on `meta` tensors: shapes and dtypes, no memory) with
every kernel of the given modules replaced by a recorder, so each `kernel[grid](...)` becomes a `Launch`.
Nothing runs, so values are garbage; shapes are right. `expand` turns a launch into every config the GPU
autotuner would try. Both run in a TRITON_INTERPRET=0 process (service.py) or, for tests, in-process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction, KernelInterface

from nsa_bench.compilecheck.results import Tuning

_TILE_SIZES = ("POSITIONS",)  # autotuned sizes not named BLOCK_* (selected.py's v2 tiles)


@dataclass(frozen=True)
class Launch:
    """One `kernel[grid](*args, **kwargs)` the host code made (nothing ran)."""

    kernel: Any = field(repr=False)
    grid: Any = field(repr=False)
    args: tuple = field(repr=False)
    kwargs: dict = field(repr=False)


class _Recorder:
    """Stands in for a kernel object: `rec[grid](...)` appends a Launch instead of launching."""

    def __init__(self, kernel: Any, sink: list[Launch]) -> None:
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink.append(Launch(self.kernel, grid, args, dict(kwargs)))

        return launch

    @property
    def fn(self) -> Any:  # wrappers such as _selected_tiles.launcher reach through to the JITFunction
        return _Recorder(self.kernel.fn, self.sink)


def record_launches(modules: list[ModuleType], host_code: Callable[[], Any]) -> list[Launch]:
    """Run `host_code` with every kernel global of `modules` recorded; return the launches in order.

    Kernels are put back afterwards: compiling needs them, jit helpers are resolved from the globals.
    """
    launches: list[Launch] = []
    swapped: list[tuple[ModuleType, str, Any]] = []
    try:
        for module in modules:
            for attr, value in list(vars(module).items()):
                if isinstance(value, KernelInterface):
                    swapped.append((module, attr, value))
                    setattr(module, attr, _Recorder(value, launches))
        host_code()
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)
    return launches


def config_label(kwargs: dict) -> str:
    """BLOCK_* sizes, warps, stages, and the boolean switches that are on (CAUSAL, HAS_WINDOW, ...)."""
    flags = sorted(k for k, v in kwargs.items() if k.isupper() and v is True)
    shown = {k: v for k, v in kwargs.items() if k.isupper() and (k.startswith("BLOCK") or k in _TILE_SIZES)}
    shown.update({k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs})
    return " ".join(flags + [f"{k}={v}" for k, v in sorted(shown.items())]) or "-"


def kernel_name(kernel: Any) -> str:
    """The name of the JITFunction under any autotuner / heuristics wrappers."""
    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return getattr(kernel, "__name__", repr(kernel))


def expand(launch: Launch) -> list[tuple[Any, dict]]:
    """(JITFunction, kwargs) for every config the GPU would compile for this launch.

    Autotuner: its configs after `prune_configs_by` (early pruning, perf model); Heuristics: their
    values. The grid is evaluated for every config too, so a host-side grid bug shows up here.
    """
    settings: list[dict] = [dict(launch.kwargs)]
    kernel = launch.kernel
    while not isinstance(kernel, JITFunction):
        if isinstance(kernel, Heuristics):
            for kw in settings:
                named = {**dict(zip(kernel.arg_names, launch.args)), **kw}
                kw.update({name: rule(named) for name, rule in kernel.values.items()})
        elif isinstance(kernel, Autotuner):
            expanded = []
            for kw in settings:
                kernel.nargs = dict(zip(kernel.arg_names, launch.args))
                try:
                    configs = kernel.prune_configs(kw)
                finally:
                    kernel.nargs = None
                for config in configs:
                    clash = set(kw) & set(config.all_kwargs())
                    if clash:
                        raise ValueError(f"launch passes {sorted(clash)}, which the autotuner sets")
                    expanded.append({**kw, **config.all_kwargs()})
            settings = expanded
        else:
            raise TypeError(f"unknown kernel wrapper {type(kernel).__name__} (an interpreter copy?)")
        kernel = kernel.fn
    if callable(launch.grid):
        for kw in settings:
            launch.grid({**dict(zip(kernel.arg_names, launch.args)), **kw})
    return [(kernel, kw) for kw in settings]


def launched_constexprs(jit: JITFunction, args: tuple, kwargs: dict) -> tuple[tuple[str, object], ...]:
    """Every constexpr of one expanded config (`expand`), bound by name, and its num_warps and num_stages
    (when given): plain values, as the launch plan keys them (nsa_bench/launchplan/keys.py)."""
    names = [p.name for p in jit.params]
    bound = {**dict(zip(names, args)), **kwargs}
    out = {p.name: bound.get(p.name) for p in jit.params if p.is_constexpr}
    out.update({k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs})
    return tuple((k, v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)) for k, v in out.items())


def tuning_of(launch: Launch, configs: int) -> Tuning | None:
    """The autotune lookup this launch makes, keyed as Autotuner.run keys it (key arguments, then the
    dtype of every tensor argument); None when no autotuner with several configs is involved."""
    tuner = launch.kernel
    while isinstance(tuner, Heuristics):
        tuner = tuner.fn
    if not isinstance(tuner, Autotuner) or len(tuner.configs) < 2:
        return None
    named = {**dict(zip(tuner.arg_names, launch.args)), **launch.kwargs}
    named = {k: v for k, v in named.items() if k in tuner.arg_names}
    key = [named[k] for k in tuner.keys if k in named] + [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return Tuning(kernel_name(tuner), repr(tuple(key)), configs)
