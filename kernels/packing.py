"""A packed batch (docs/varlen.md) read once on the host, for every kernel of one NSA call.

Each kernel wrapper needs of cu_seqlens its values on the host (the grid spans the longest sequence)
and a copy on the kernels' device. Given a bare tensor, a wrapper reads and copies it itself: a device
to host read, or a host to device copy, each a synchronisation, once per kernel. NSA launches about ten
kernels a call, so it builds one `Packing` and hands it to all of them instead (a benchmark builds it
outside its timed loop). Every wrapper that takes `cu_seqlens` takes a `Packing` too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import varlen


def num_cmp(length: int, block_cmp: int, stride_cmp: int) -> int:
    """Tc of one sequence: compressed blocks of l tokens every d (none when it is shorter than l)."""
    return 0 if length < block_cmp else (length - block_cmp) // stride_cmp + 1


def refuse_v1(cu_seqlens: object, **variants: str) -> None:
    """Only the v2 kernels take packed batches: a ValueError naming the first argument set otherwise."""
    if cu_seqlens is None:
        return
    for name, value in variants.items():
        if value != "v2":
            raise ValueError(f"cu_seqlens: packed batches need the v2 kernels ({name}={value!r})")


@dataclass(frozen=True)
class Packing:
    """cu_seqlens on the kernels' device with the lengths it holds, and the per-sequence block offsets the
    compressed kernels (one (l, d)) and the selected kernels (one l') index by."""

    cu: torch.Tensor  # int32 [N+1] on the kernels' device
    lengths: tuple[int, ...]
    cmp_params: tuple[int, int] | None = None  # (block_cmp, stride_cmp) of cmp_cu
    cmp_cu: torch.Tensor | None = None  # int32 [N+1]: sequence s's compressed blocks start at cmp_cu[s]
    block_slc: int | None = None  # l' of slc_cu
    slc_cu: torch.Tensor | None = None  # int32 [N+1]: sequence s's selection blocks start at slc_cu[s]

    @classmethod
    def of(cls, cu_seqlens: torch.Tensor | Packing, total: int, batch: int, device: torch.device,
           block_cmp: int | None = None, stride_cmp: int | None = None, block_slc: int | None = None) -> Packing:
        """Validate cu_seqlens for tensors [batch, total, ...] (varlen.spans: a ValueError naming it) and
        move it to `device`, with the block offsets of the parameters given. A Packing is checked and
        returned as it is, or with the offsets it lacks."""
        if isinstance(cu_seqlens, Packing):
            cu_seqlens.check(total, batch, device)
            packing = cu_seqlens
        else:
            lengths = tuple(end - start for start, end in varlen.spans(cu_seqlens, total, batch))
            packing = cls(cu_seqlens.to(device=device, dtype=torch.int32), lengths)
        if block_cmp is not None and packing.cmp_params != (block_cmp, stride_cmp):
            packing = replace(packing, cmp_params=(block_cmp, stride_cmp),
                              cmp_cu=packing._offsets(packing.cmp_counts(block_cmp, stride_cmp)))
        if block_slc is not None and packing.block_slc != block_slc:
            packing = replace(packing, block_slc=block_slc, slc_cu=packing._offsets(packing.slc_counts(block_slc)))
        return packing

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

    def slc_counts(self, block_slc: int) -> list[int]:
        """ceil(L_s / l'): the selection blocks of every sequence."""
        return [-(-n // block_slc) for n in self.lengths]

    def cmp_offsets(self, block_cmp: int, stride_cmp: int) -> torch.Tensor:
        """cmp_cu_seqlens on the device: the one built with the packing when the parameters match."""
        if self.cmp_params == (block_cmp, stride_cmp) and self.cmp_cu is not None:
            return self.cmp_cu
        return self._offsets(self.cmp_counts(block_cmp, stride_cmp))

    def slc_offsets(self, block_slc: int) -> torch.Tensor:
        """Offsets of each sequence's selection blocks on the device (built with the packing when l' matches)."""
        if self.block_slc == block_slc and self.slc_cu is not None:
            return self.slc_cu
        return self._offsets(self.slc_counts(block_slc))

    def _offsets(self, counts: list[int]) -> torch.Tensor:
        return varlen.cu_seqlens_of(counts, self.cu.device)
