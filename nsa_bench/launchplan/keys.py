"""What one kernel launch is, for coverage: the kernel, its code path, its tile, its warps and stages.

The same function names a launch the GPU would make (recorded in a TRITON_INTERPRET=0 worker, every
config its autotuner may try) and a launch an interpreter test made, so the two can be compared. Each
constexpr a kernel takes is one of three kinds (a new one must be added to a table here, or planning
stops: a constexpr nobody classified could hide a code path):

- `SPEC`: the code path and layout: switches (GATED, VARLEN, PARTIAL, ...), the head group (G, G_PAD,
  ...) and the block parameters (l, d, l', w). A test must reach the same values.
- `TILE`: what a config or the host picks as tile sizes (BLOCK_M, POSITIONS, BLOCK_C, decode's RANGE,
  ...). A test runs the same values, pinned (kernels/overrides.py) or as the GPU's host sizes.
- `SHAPE`: sizes that follow the problem, not the path: head dims and their pads (tests run Dk=48,
  Dv=32, which split and pad as 192/128 do: Dk as two exact power-of-two chunks, Dv one exact tile),
  n (the selected blocks per query: loop bounds) and what follows T and B (decode's split counts, its
  padded block and partial counts). Left out of the key.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

Scalar = int | bool | float | str | None

SPEC = frozenset({
    "ACCUMULATE", "ADD_DQ", "ATOMIC", "CAUSAL", "GATED", "HAS_OLD", "HAS_WINDOW", "PARTIAL", "ROW64", "UPCAST",
    "VARLEN", "WITH_OUTPUT",  # switches
    "G", "G_PAD", "G_IN", "GROUP", "BLOCK_G",  # the head group
    "BLOCK_CMP", "STRIDE_CMP", "BLOCK_SLC", "PER_CMP", "PER_SLC", "WINDOW",  # the block parameters
})
TILE = frozenset({
    "BLOCK_C", "BLOCK_I", "BLOCK_J", "BLOCK_K", "BLOCK_M", "BLOCK_N", "BLOCK_R", "BLOCK_ROWS", "BLOCK_T",
    "POSITIONS", "RANGE", "KEY_CHUNK", "WIDTH", "CHUNKS",
})
SHAPE = frozenset({
    "D", "DK", "DV", "DK_A", "DK_B", "DK_PAD", "DV_PAD", "BLOCK_D", "BLOCK_DK", "BLOCK_DV",  # head dims
    "N_SLC", "N_SLOTS", "N_PAD",  # n
    "NSPLIT", "NSPLIT_PAD", "TILES_PER_SPLIT", "NSLC_PAD", "NSEL", "NUM_UNITS", "NWIN_PAD", "BLOCK_S",  # T and B
})
DEFAULT_WARPS, DEFAULT_STAGES = 4, 3  # what a launch without them compiles with (Triton's CUDA defaults)


class UnclassifiedConstexpr(ValueError):
    """A kernel takes a constexpr none of SPEC, TILE, SHAPE names."""


def _pairs(values: Mapping[str, Scalar]) -> tuple[tuple[str, Scalar], ...]:
    return tuple(sorted(values.items()))


@dataclass(frozen=True, order=True)
class LaunchKey:
    """One kernel x code path x tile x warps x stages."""

    kernel: str  # "module.function", e.g. "compressed._cmp_fwd_kernel"
    spec: tuple[tuple[str, Scalar], ...]
    tile: tuple[tuple[str, Scalar], ...]
    num_warps: int = DEFAULT_WARPS
    num_stages: int = DEFAULT_STAGES

    @property
    def binary(self) -> tuple:
        """The key without warps and stages: what the CPU interpreter can tell apart (it ignores both)."""
        return self.kernel, self.spec, self.tile

    @property
    def path(self) -> tuple:
        """Kernel and code path: what a test must reach for a pinned config to run there."""
        return self.kernel, self.spec

    def describe(self, with_kernel: bool = True) -> str:
        on = [k for k, v in self.spec if v is True]
        values = [f"{k}={v}" for k, v in self.spec if not isinstance(v, bool)]
        tile = " ".join(f"{k}={v}" for k, v in self.tile)
        text = f"[{' '.join(on + values)}] {tile} w{self.num_warps} s{self.num_stages}".replace("[] ", "")
        return f"{self.kernel} {text}" if with_kernel else text

    def as_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "spec": dict(self.spec), "tile": dict(self.tile), "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> LaunchKey:
        return LaunchKey(raw["kernel"], _pairs(raw["spec"]), _pairs(raw["tile"]), raw["num_warps"], raw["num_stages"])


def key_of(kernel: str, constexprs: Mapping[str, Any], num_warps: int | None = None,
           num_stages: int | None = None) -> LaunchKey:
    """The key of a launch of `kernel` with these bound constexpr values (SHAPE ones dropped)."""
    spec: dict[str, Scalar] = {}
    tile: dict[str, Scalar] = {}
    for name, value in constexprs.items():
        if name in SPEC:
            spec[name] = value
        elif name in TILE:
            tile[name] = value
        elif name not in SHAPE:
            raise UnclassifiedConstexpr(f"{kernel} takes constexpr {name}={value!r}, which nsa_bench/launchplan/keys.py "
                                        "does not classify (SPEC, TILE or SHAPE)")
    return LaunchKey(kernel, _pairs(spec), _pairs(tile), DEFAULT_WARPS if num_warps is None else int(num_warps),
                     DEFAULT_STAGES if num_stages is None else int(num_stages))


def constexpr_names(fn: Any) -> list[str]:
    """The constexpr parameters of a kernel's Python function, in order (annotations may be strings)."""
    names = []
    for param in inspect.signature(fn).parameters.values():
        annotation = param.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if text.rsplit(".", 1)[-1] == "constexpr":
            names.append(param.name)
    return names


def bound_constexprs(fn: Any, args: Iterable[Any], kwargs: Mapping[str, Any]) -> dict[str, Scalar]:
    """The constexpr values of one launch of `fn` (positional and keyword arguments bound by name)."""
    names = [p.name for p in inspect.signature(fn).parameters.values()]
    bound = {**dict(zip(names, args)), **kwargs}
    out: dict[str, Scalar] = {}
    for name in constexpr_names(fn):
        value = bound.get(name)
        out[name] = value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
    return out
