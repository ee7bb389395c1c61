"""A packed batch (docs/varlen.md) read once on the host: the one form in which every kernel wrapper takes it.

A wrapper needs of cu_seqlens its values on the host (its grid spans the longest sequence, or the most blocks
of one) and a copy on the kernels' device. Reading a GPU tensor back is a synchronisation, and so is copying a
CPU one over; NSA launches about ten kernels a call. So only the public entry points (`nsa_attention`,
`compress_kv`, `select_blocks`, the stage callables, `flash_attention`) turn a raw cu_seqlens into a `Packing`
(`Packing.of`), and every kernel wrapper takes a `Packing` or None (a dense batch). A caller timing many calls
(the benchmark) builds the Packing once, outside its timed loop, and passes it as cu_seqlens.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import varlen

# CUDA's limit on grid axes 1 and 2, where packed launches put their sequences (times heads, for some kernels).
MAX_GRID_AXIS = 65535


def num_cmp(length: int, block_cmp: int, stride_cmp: int) -> int:
    """Tc of one sequence: compressed blocks of l tokens every d (none when it is shorter than l)."""
    return 0 if length < block_cmp else (length - block_cmp) // stride_cmp + 1


def refuse_v1(packing: Packing | None, **variants: str) -> None:
    """Only the v2 kernels take packed batches: a ValueError naming cu_seqlens and the first v1 variant."""
    if packing is None:
        return
    for name, value in variants.items():
        if value != "v2":
            raise ValueError(f"cu_seqlens: packed batches need the v2 kernels ({name}={value!r})")


@dataclass(frozen=True)
class Packing:
    """cu_seqlens on the kernels' device with what the grids need on the host (sequence count, longest length,
    the lengths themselves), and the per-sequence block offsets the compressed kernels (one (l, d)) and the
    selected kernels (one l') index by, built once when their parameters are given to `of`."""

    cu: torch.Tensor  # int32 [N+1] on the kernels' device
    num_seqs: int
    max_len: int  # the longest sequence: the tile axis of the grids
    lengths: tuple[int, ...] | None  # None only when flash_attention trusted a max_seqlen hint (nothing read)
    cmp_params: tuple[int, int] | None = None  # (block_cmp, stride_cmp) of cmp_cu
    cmp_cu: torch.Tensor | None = None  # int32 [N+1]: sequence s's compressed blocks start at cmp_cu[s]
    block_slc: int | None = None  # l' of slc_cu and block_seq
    slc_cu: torch.Tensor | None = None  # int32 [N+1]: sequence s's selection blocks start at slc_cu[s]
    block_seq: torch.Tensor | None = None  # int32 [sum_s ceil(L_s / l')]: the sequence of each selection block

    @classmethod
    def of(cls, cu_seqlens: torch.Tensor | Packing, total: int, batch: int, device: torch.device,
           block_cmp: int | None = None, stride_cmp: int | None = None, block_slc: int | None = None, *,
           max_seqlen: int | None = None) -> Packing:
        """cu_seqlens validated for tensors [batch, total, ...] (varlen.spans: a ValueError naming it), moved to
        `device`, with the block offsets of the parameters given. A Packing is checked and returned as it is,
        or with the offsets it lacks.

        max_seqlen (flash_attention's hint, as flash-attn's): with a cu_seqlens already on a GPU it is trusted
        and nothing is read back, so a timed loop has no device->host read; otherwise it is checked."""
        if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                       or max_seqlen < 0):
            raise ValueError(f"max_seqlen={max_seqlen!r} must be an int >= 0 or None")
        if isinstance(cu_seqlens, Packing):
            cu_seqlens.check(total, batch, device)
            packing = cu_seqlens
        elif max_seqlen is not None and isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device.type != "cpu":
            packing = cls._trusted(cu_seqlens, total, batch, device, max_seqlen)
        else:
            lengths = tuple(end - start for start, end in varlen.spans(cu_seqlens, total, batch))
            packing = cls(cu_seqlens.to(device=device, dtype=torch.int32), len(lengths), max(lengths, default=0),
                          lengths)
        if max_seqlen is not None and max_seqlen < packing.max_len and packing.lengths is not None:
            raise ValueError(f"max_seqlen={max_seqlen} is below the longest sequence of cu_seqlens ({packing.max_len})")
        if block_cmp is not None and packing.cmp_params != (block_cmp, stride_cmp):
            packing = replace(packing, cmp_params=(block_cmp, stride_cmp),
                              cmp_cu=packing._offsets(packing.cmp_counts(block_cmp, stride_cmp)))
        if block_slc is not None and packing.block_slc != block_slc:
            slc_cu = packing._offsets(packing.slc_counts(block_slc))
            packing = replace(packing, block_slc=block_slc, slc_cu=slc_cu,
                              block_seq=packing._block_seq(slc_cu, block_slc))
        return packing

    @classmethod
    def _trusted(cls, cu_seqlens: torch.Tensor, total: int, batch: int, device: torch.device,
                 max_seqlen: int) -> Packing:
        """A GPU cu_seqlens with a max_seqlen hint: its shape and dtype checked, its values not read."""
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype != torch.int32:
            raise ValueError(f"cu_seqlens must be a 1-D int32 tensor [N+1], got {cu_seqlens.dtype} "
                             f"{tuple(cu_seqlens.shape)}")
        if batch != 1:
            raise ValueError(f"a packed batch (cu_seqlens given) must have batch size 1, got {batch}")
        return cls(cu_seqlens.to(device=device), cu_seqlens.numel() - 1, min(max_seqlen, total), None)

    def check(self, total: int, batch: int, device: torch.device) -> None:
        """That this packing describes tensors [batch, total, ...] on `device` (every wrapper checks it)."""
        if batch != 1:
            raise ValueError(f"a packed batch (cu_seqlens given) must have batch size 1, got {batch}")
        if self.lengths is not None and sum(self.lengths) != total:
            raise ValueError(f"cu_seqlens ends at {sum(self.lengths)} but the packed tensors hold {total} tokens")
        if self.cu.device != torch.device(device):
            raise ValueError(f"cu_seqlens (a Packing) is on {self.cu.device}, the tensors on {device}")

    def check_grid(self, kernels: str, heads: int = 1) -> None:
        """CUDA's grid limit, the one check of it: `kernels` put the sequences on one grid axis, times `heads`
        (the compressed kernels run sequences x heads on axis 1; flash and selected sequences alone on axis 2).
        Past it, a ValueError naming cu_seqlens instead of a launch failure on the GPU."""
        if self.num_seqs * heads > MAX_GRID_AXIS:
            rows = f"sequences x {heads} heads" if heads > 1 else "sequences"
            raise ValueError(f"cu_seqlens holds {self.num_seqs} sequences: the {kernels} kernels run {rows} on one "
                             f"grid axis of at most {MAX_GRID_AXIS}, so pack at most {MAX_GRID_AXIS // heads} "
                             f"sequences per call")

    def cmp_counts(self, block_cmp: int, stride_cmp: int) -> list[int]:
        """Tc_s of every sequence."""
        return [num_cmp(n, block_cmp, stride_cmp) for n in self._known_lengths()]

    def slc_counts(self, block_slc: int) -> list[int]:
        """ceil(L_s / l'): the selection blocks of every sequence."""
        return [-(-n // block_slc) for n in self._known_lengths()]

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

    def slc_block_seq(self, block_slc: int) -> torch.Tensor:
        """The sequence of each (sequence, local selection block) pair, numbered globally as slc_cu[s] + j: the
        selected kernels' block-outer programs run one per pair (built with the packing when l' matches)."""
        if self.block_slc == block_slc and self.block_seq is not None:
            return self.block_seq
        return self._block_seq(self.slc_offsets(block_slc), block_slc)

    def num_cmp_blocks(self, block_cmp: int, stride_cmp: int) -> int:
        """sum_s Tc_s: the length of a packed k_cmp / v_cmp."""
        return sum(self.cmp_counts(block_cmp, stride_cmp))

    def max_cmp_blocks(self, block_cmp: int, stride_cmp: int) -> int:
        """The most compressed blocks of one sequence: the tile axis of the compressed kernels' grids."""
        return max(self.cmp_counts(block_cmp, stride_cmp), default=0)

    def num_slc_blocks(self, block_slc: int) -> int:
        """sum_s ceil(L_s / l'): the selection blocks of the whole batch."""
        return sum(self.slc_counts(block_slc))

    def _known_lengths(self) -> tuple[int, ...]:
        if self.lengths is None:
            raise ValueError("cu_seqlens: this Packing trusted a max_seqlen hint and holds no lengths; build it "
                             "without the hint for kernels that need them")
        return self.lengths

    def _offsets(self, counts: list[int]) -> torch.Tensor:
        return varlen.cu_seqlens_of(counts, self.cu.device)

    def _block_seq(self, slc_cu: torch.Tensor, block_slc: int) -> torch.Tensor:
        """On the device from slc_cu (N+1 values cross over, not the block table)."""
        seqs = torch.arange(self.num_seqs, dtype=torch.int32, device=self.cu.device)
        table = torch.repeat_interleave(seqs, slc_cu[1:] - slc_cu[:-1], output_size=self.num_slc_blocks(block_slc))
        return table.to(torch.int32)
