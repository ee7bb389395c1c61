"""NSAConfig: the one definition of NSA's block parameters (NSA_SPEC.md, "Configuration").

It lives in the kernel package, which stands alone, and is plain Python: the suite (the reference, the cost
model, the CLI) imports it without importing Triton, and `from nsa_kernels import NSAConfig` holds as the spec says.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NSAConfig:
    """NSA block parameters: l = block_cmp, d = stride_cmp, l' = block_slc, n = n_slc, w = window."""

    block_cmp: int = 32
    stride_cmp: int = 16
    block_slc: int = 64
    n_slc: int = 16
    window: int = 512

    def __post_init__(self) -> None:
        for name in ("block_cmp", "stride_cmp", "block_slc", "n_slc", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"NSAConfig.{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"NSAConfig.{name} must be >= 1, got {value}")
        if self.block_cmp % self.stride_cmp:
            raise ValueError(
                f"NSAConfig.stride_cmp={self.stride_cmp} must divide block_cmp={self.block_cmp}"
            )
        if self.block_slc % self.stride_cmp:
            raise ValueError(
                f"NSAConfig.stride_cmp={self.stride_cmp} must divide block_slc={self.block_slc}"
            )
        if self.n_slc < 3:
            raise ValueError(f"NSAConfig.n_slc must be >= 3 (block 0 and two local blocks), got {self.n_slc}")

    def num_cmp_blocks(self, seqlen: int) -> int:
        """Tc: compressed blocks over `seqlen` tokens (block i covers [i*d, i*d + l))."""
        if seqlen < self.block_cmp:
            return 0
        return (seqlen - self.block_cmp) // self.stride_cmp + 1

    def num_slc_blocks(self, seqlen: int) -> int:
        """Selection blocks over `seqlen` tokens: ceil(seqlen / l')."""
        return -(-seqlen // self.block_slc)
