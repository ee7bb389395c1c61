"""What the autotuners chose: every tuned kernel, its tuning key and the config it runs with.

A run records this (the sweep writes it to its run folder), so a measurement says which tile
shapes it measured. Autotuners key on the size buckets of `_common.TUNING_ARGS`, so a 64k point
and the 1k correctness check each carry their own choice.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Iterator

from triton.runtime.autotuner import Autotuner

from ._common import TUNING_ARGS

KERNEL_MODULES = ("compressed", "decode", "flash", "gated_sum", "selected", "selected_small_g")


@dataclass(frozen=True)
class Choice:
    """One autotuner's choice for one key: `key` maps key argument -> value (plus the tensor dtypes)."""

    kernel: str  # module.attribute, e.g. "flash._fwd_tuned"
    key: dict[str, object]
    config: str  # e.g. "BLOCK_M: 128, BLOCK_N: 64, num_warps: 8, num_ctas: 1, num_stages: 3, ..."

    def as_dict(self) -> dict[str, object]:
        return {"kernel": self.kernel, "key": self.key, "config": self.config}


def autotuners() -> Iterator[tuple[str, Autotuner]]:
    """(module.attribute, autotuner) of every module-level autotuned kernel of nsa_kernels."""
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, Autotuner):
                yield f"{name}.{attr}", value


def _key_dict(tuner: Autotuner, key: tuple) -> dict[str, object]:
    named = dict(zip(tuner.keys, key))
    dtypes = [str(v) for v in key[len(tuner.keys):]]
    return {**named, "dtypes": dtypes} if dtypes else named


def chosen_configs() -> list[Choice]:
    """Every config chosen so far in this process (tuned here or read from Triton's disk cache)."""
    return [Choice(name, _key_dict(tuner, key), str(config))
            for name, tuner in autotuners() for key, config in tuner.cache.items()]


def keys_hold_size_buckets() -> list[str]:
    """Autotuned kernels whose key lacks a size bucket (empty when every one has them)."""
    return [name for name, tuner in autotuners() if not set(TUNING_ARGS) <= set(tuner.keys)]
