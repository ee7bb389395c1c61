"""Triton NSA and FlashAttention-2 kernels: the public API of NSA_SPEC.md plus the dense baseline.

Names resolve lazily (PEP 562) so `import nsa_kernels` stays cheap and does not pull in Triton until a
kernel is used; set TRITON_INTERPRET=1 before the first use to run on the CPU interpreter.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import NSAConfig

_EXPORTS = {
    "compress_kv": "nsa_kernels.nsa",
    "select_blocks": "nsa_kernels.nsa",
    "nsa_attention": "nsa_kernels.nsa",
    "nsa_decode": "nsa_kernels.decode",
    "flash_attention": "nsa_kernels.flash",
    "flash_attention_decode": "nsa_kernels.flash",
}

__all__ = ["NSAConfig", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nsa_kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
