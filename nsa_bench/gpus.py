"""Datasheet figures of the GPUs the cost model knows: what a roofline floor is computed against.

Peak FLOP/s is the dense bf16 tensor-core figure (no 2:4 sparsity), bandwidth the HBM figure, both
from NVIDIA's datasheets. A measured run only knows `torch.cuda.get_device_name()`, so each entry
also lists the name fragments that identify it; `gpu_spec` accepts either a key or such a name.
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Mapping

_MIB = 1 << 20
_GIB = 1 << 30


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model's peak compute, memory bandwidth and L2 size."""

    key: str
    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    hbm_bytes_per_s: float
    l2_bytes: int
    match: tuple[str, ...]  # lower-case fragments of torch.cuda.get_device_name()
    memory_bytes: int = 80 * _GIB  # device memory torch reports as total (a little under the datasheet's)

    @property
    def ridge_intensity(self) -> float:
        """FLOPs per byte above which a kernel is compute-bound on this GPU."""
        return self.peak_flops / self.hbm_bytes_per_s


def _spec_table() -> Mapping[str, GPUSpec]:
    specs = (
        GPUSpec("h100", "NVIDIA H100 SXM5 80GB", 989.4e12, 3.35e12, 50 * _MIB,
                ("h100", "h100 sxm", "h100 sxm5", "h100 80gb hbm3"), int(79.1 * _GIB)),
        GPUSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", 756e12, 2.0e12, 50 * _MIB, ("h100 pcie",), int(79.1 * _GIB)),
        GPUSpec("h200", "NVIDIA H200 SXM 141GB", 989.4e12, 4.8e12, 50 * _MIB, ("h200", "h200 sxm"), int(139.8 * _GIB)),
        GPUSpec("a100", "NVIDIA A100 SXM4 80GB", 312e12, 2.039e12, 40 * _MIB,
                ("a100", "a100 sxm4", "a100 sxm4 80gb", "a100 80gb"), int(79.2 * _GIB)),
        GPUSpec("a100-40gb", "NVIDIA A100 SXM4 40GB", 312e12, 1.555e12, 40 * _MIB,
                ("a100 40gb", "a100 sxm4 40gb", "a100 pcie 40gb"), int(39.4 * _GIB)),
    )
    return types.MappingProxyType({spec.key: spec for spec in specs})


GPUS: Mapping[str, GPUSpec] = _spec_table()
DEFAULT_GPU = "h100"


def _words(text: str) -> str:
    """Lower-case, punctuation to single spaces, padded: so fragments match whole words only
    ("h200" must not match "GH200", "A100-SXM4-40GB" must match "a100 sxm4 40gb")."""
    return " " + " ".join(re.split(r"[^a-z0-9]+", text.lower())).strip() + " "


def gpu_spec(name: str) -> GPUSpec:
    """The spec for a key ("h100") or a device name ("NVIDIA H100 80GB HBM3").

    A device name picks the entry with the longest matching fragment, so the most specific entry
    wins ("NVIDIA H100 PCIe" -> h100-pcie, not h100).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"gpu name must be a non-empty string, got {name!r}; known keys: {sorted(GPUS)}")
    key = name.strip().lower()
    if key in GPUS:
        return GPUS[key]
    words = _words(name)
    best: tuple[int, GPUSpec] | None = None
    for spec in GPUS.values():
        for fragment in spec.match:
            if _words(fragment) in words and (best is None or len(fragment) > best[0]):
                best = (len(fragment), spec)
    if best is None:
        raise ValueError(f"unknown gpu {name!r}: use one of the keys {sorted(GPUS)} or a matching device name")
    return best[1]
