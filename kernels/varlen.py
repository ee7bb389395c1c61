"""Packed variable-length batches (flash-attn's varlen convention): the rules the kernels, the reference and the
benchmark share. Plain PyTorch, no Triton, so the reference imports it without the kernels' dependencies.

A packed batch holds N sequences back to back in tensors [1, total_T, H, D]; `cu_seqlens` (int32,
[N+1]) gives their offsets: sequence i is tokens cu_seqlens[i] .. cu_seqlens[i+1]-1. NSA applies to
each sequence alone (docs/varlen.md), so every per-sequence tensor of the dense API has a packed
form: the per-sequence tensors concatenated along dim 1, e.g. k_cmp [1, sum_i Tc(L_i), Hkv, Dk]
with offsets `cmp_cu_seqlens`, and block_idx [1, total_T, Hkv, n] holding block numbers local to
each sequence. Decode takes no cu_seqlens: N packed sequences decode as a batch of N whose caches are
the sequences padded to the longest (`pad_packed`) and cache_seqlens = their lengths.
"""
from __future__ import annotations

import torch

from .config import NSAConfig

Span = tuple[int, int]


def spans(cu_seqlens: torch.Tensor, total: int, batch: int = 1) -> list[Span]:
    """Validated (start, end) of every sequence; `total` is the packed length (dim 1), `batch` dim 0.

    cu_seqlens must be a 1-D integer tensor starting at 0, non-decreasing, ending at total;
    empty sequences (repeated offsets) are allowed and contribute nothing.
    """
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        shape = tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor [N+1], got {shape}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be an integer tensor (int32), got {cu_seqlens.dtype}")
    if batch != 1:
        raise ValueError(f"a packed batch (cu_seqlens given) must have batch size 1, got {batch}")
    offsets = [int(x) for x in cu_seqlens.tolist()]
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[0]}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {offsets}")
    if offsets[-1] != total:
        raise ValueError(f"cu_seqlens ends at {offsets[-1]} but the packed tensors hold {total} tokens")
    return list(zip(offsets, offsets[1:]))


def cu_seqlens_of(lengths: list[int] | tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """int32 offsets [N+1] of sequences of these lengths."""
    out = [0]
    for length in lengths:
        if length < 0:
            raise ValueError(f"sequence lengths must be >= 0, got {length}")
        out.append(out[-1] + int(length))
    return torch.tensor(out, dtype=torch.int32, device=device)


def seqlens(cu_seqlens: torch.Tensor) -> list[int]:
    """Lengths of the sequences of `cu_seqlens`."""
    offsets = [int(x) for x in cu_seqlens.tolist()]
    return [b - a for a, b in zip(offsets, offsets[1:])]


def cmp_cu_seqlens(cu_seqlens: torch.Tensor, cfg: NSAConfig) -> torch.Tensor:
    """Offsets (int32 [N+1]) of each sequence's compressed blocks in a packed k_cmp / v_cmp."""
    return cu_seqlens_of([cfg.num_cmp_blocks(length) for length in seqlens(cu_seqlens)], cu_seqlens.device)


def cmp_spans(cu_seqlens: torch.Tensor, cfg: NSAConfig, total_cmp: int, name: str = "k_cmp") -> list[Span]:
    """(start, end) of each sequence's compressed blocks; checks the packed compressed length."""
    offsets = [int(x) for x in cmp_cu_seqlens(cu_seqlens, cfg).tolist()]
    if offsets[-1] != total_cmp:
        raise ValueError(f"{name} holds {total_cmp} compressed blocks but cu_seqlens' sequences have "
                         f"{offsets[-1]} (sum of Tc per sequence)")
    return list(zip(offsets, offsets[1:]))


def pad_packed(x: torch.Tensor, cu_seqlens: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """[1, total, ...] -> [N, max(L_i) (or `length`), ...], sequence i in row i, zeros after it (decode caches)."""
    parts = spans(cu_seqlens, x.shape[1], x.shape[0])
    width = max((e - s for s, e in parts), default=0) if length is None else length
    out = x.new_zeros(len(parts), width, *x.shape[2:])
    for i, (s, e) in enumerate(parts):
        out[i, : e - s] = x[0, s:e]
    return out


def last_rows(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[1, total, ...] -> [N, ...]: each sequence's last token (what a decode step of it computes)."""
    parts = spans(cu_seqlens, x.shape[1], x.shape[0])
    if any(e == s for s, e in parts):
        raise ValueError("last_rows needs every sequence to hold at least one token")
    return torch.stack([x[0, e - 1] for _, e in parts]) if parts else x.new_zeros(0, *x.shape[2:])
