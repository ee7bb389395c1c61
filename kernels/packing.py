"""A packed batch (docs/varlen.md) read once on the host, for every kernel of one NSA call.

Each kernel wrapper needs of cu_seqlens its values on the host (the grid spans the longest sequence)
and a copy on the kernels' device. Given a bare tensor, a wrapper reads and copies it itself: a device
to host read, or a host to device copy, each a synchronisation, once per kernel. NSA launches about ten
kernels a call, so it builds one `Packing` and hands it to all of them instead (a benchmark builds it
outside its timed loop). Every wrapper that takes `cu_seqlens` takes a `Packing` too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nsa_bench import varlen


def num_cmp(length: int, block_cmp: int, stride_cmp: int) -> int:
    """Tc of one sequence: compressed blocks of l tokens every d (none when it is shorter than l)."""
    return 0 if length < block_cmp else (length - block_cmp) // stride_cmp + 1


@dataclass(frozen=True)
class Packing:
    """cu_seqlens on the kernels' device with the lengths it holds, and (for the compressed kernels) the
    compressed-block offsets of one (block_cmp, stride_cmp)."""

    cu: torch.Tensor  # int32 [N+1] on the kernels' device
    lengths: tuple[int, ...]
    cmp_params: tuple[int, int] | None = None  # (block_cmp, stride_cmp) of cmp_cu
    cmp_cu: torch.Tensor | None = None  # int32 [N+1] compressed-block offsets on the kernels' device

    @classmethod
    def of(cls, cu_seqlens: "torch.Tensor | Packing", total: int, batch: int, device: torch.device,
           block_cmp: int | None = None, stride_cmp: int | None = None) -> "Packing":
        """Validate cu_seqlens for tensors [batch, total, ...] (varlen.spans: a ValueError naming it) and
        move it to `device`; with the compression parameters, their block offsets too. A Packing is checked
        and returned as it is (its compressed offsets made if it lacks them)."""
        if isinstance(cu_seqlens, Packing):
            cu_seqlens.check(total, batch, device)
            if block_cmp is None or cu_seqlens.cmp_params == (block_cmp, stride_cmp):
                return cu_seqlens
            return cls(cu_seqlens.cu, cu_seqlens.lengths, (block_cmp, stride_cmp),
                       cu_seqlens.cmp_offsets(block_cmp, stride_cmp))
        lengths = tuple(end - start for start, end in varlen.spans(cu_seqlens, total, batch))
        cu = cu_seqlens.to(device=device, dtype=torch.int32)
        if block_cmp is None:
            return cls(cu, lengths)
        counts = [num_cmp(n, block_cmp, stride_cmp) for n in lengths]
        return cls(cu, lengths, (block_cmp, stride_cmp), varlen.cu_seqlens_of(counts, device))

    def check(self, total: int, batch: int, device: torch.device) -> None:
        """That this packing describes tensors [batch, total, ...] on `device`."""
        if batch != 1:
            raise ValueError(f"a packed batch (cu_seqlens given) must have batch size 1, got {batch}")
        if sum(self.lengths) != total:
            raise ValueError(f"cu_seqlens ends at {sum(self.lengths)} but the packed tensors hold {total} tokens")
        if self.cu.device != torch.device(device):
            raise ValueError(f"cu_seqlens (a Packing) is on {self.cu.device}, the tensors on {device}")

    @property
    def num_seqs(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)

    def cmp_counts(self, block_cmp: int, stride_cmp: int) -> list[int]:
        """Tc_s of every sequence."""
        return [num_cmp(n, block_cmp, stride_cmp) for n in self.lengths]

    def cmp_offsets(self, block_cmp: int, stride_cmp: int) -> torch.Tensor:
        """cmp_cu_seqlens on the device: the one built with the packing when the parameters match."""
        if self.cmp_params == (block_cmp, stride_cmp) and self.cmp_cu is not None:
            return self.cmp_cu
        return varlen.cu_seqlens_of(self.cmp_counts(block_cmp, stride_cmp), self.cu.device)
