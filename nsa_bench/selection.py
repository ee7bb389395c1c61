"""NSA_SPEC.md section 3's validity rule for a selection, judged against the reference's block scores.

Near-equal block scores can legitimately select different blocks in low precision, so a selection is
not compared with the reference's block by block. It is valid when, for every query t and KV group g:
it holds min(n, t // l' + 1) distinct blocks and -1 in the other slots; every block is a candidate
(0 <= j <= t // l'); the forced blocks (0, t // l' and t // l' - 1, where they exist) are in it; and
every selected non-forced block's score S is at least every unselected candidate's S minus a
tolerance, relative to the row's largest score.
"""
from __future__ import annotations

import torch

from nsa_kernels.config import NSAConfig

# Score tolerance relative to the largest score of the row: the kernels score bf16/fp16 inputs in fp32
# from a compression rounded to the input dtype (2^-8 relative in bf16), the reference in float64.
SCORE_TOLERANCE = {"float32": 2e-3, "float16": 1e-2, "bfloat16": 1e-2}


def _where(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(b, t, g, rows) of the first True in a [B, T, Hkv] mask and how many rows are True."""
    hits = mask.nonzero()
    b, t, g = (int(x) for x in hits[0].tolist())
    return b, t, g, int(hits.shape[0])


def _positions(t: int, cu_seqlens: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Each row's position in its own sequence: the row itself, or row - its sequence's start (packed)."""
    rows = torch.arange(t, device=device)
    if cu_seqlens is None:
        return rows
    starts = cu_seqlens.to(device=device, dtype=torch.int64)
    return rows - starts[torch.searchsorted(starts, rows, right=True) - 1]


def violation(block_idx: torch.Tensor, scores: torch.Tensor, cfg: NSAConfig, tolerance: float,
              cu_seqlens: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> str | None:
    """None when `block_idx` [B, T, Hkv, n] is a valid selection for group scores `scores`
    [B, T, Hkv, ceil(T / l')]; else the first violation found, in words (which row, what is wrong).

    Packed (cu_seqlens, docs/varlen.md): block numbers are local to each row's sequence (`t` in the
    messages is the packed row); `scores` is reference.block_scores' packed layout (-inf past a sequence's blocks).
    `positions` [T]: each row's position where the rows are not positions 0..T-1 (a decode row, t = L - 1)."""
    b, t, hkv, num_slc = scores.shape
    if tuple(block_idx.shape) != (b, t, hkv, cfg.n_slc):
        return f"block_idx has shape {tuple(block_idx.shape)}, expected {(b, t, hkv, cfg.n_slc)}"
    idx = block_idx.to(device=scores.device, dtype=torch.int64)
    rows = _positions(t, cu_seqlens, scores.device) if positions is None else positions.to(scores.device)
    current = (rows // cfg.block_slc)[None, :, None]  # [1, T, 1]
    picked = idx != -1
    late = picked & ((idx < 0) | (idx > current[..., None]))
    if late.any():
        rows = late.any(dim=-1)
        bi, ti, gi, count = _where(rows)
        bad = idx[bi, ti, gi][late[bi, ti, gi]].tolist()
        return (f"query t={ti} (b={bi}, group {gi}) selects block(s) {bad}, not candidates 0..{int(current[0, ti, 0])} "
                f"({count} rows)")
    want = torch.clamp(current + 1, max=cfg.n_slc)
    wrong_count = picked.sum(dim=-1) != want
    if wrong_count.any():
        bi, ti, gi, count = _where(wrong_count)
        return (f"query t={ti} (b={bi}, group {gi}) selects {int(picked[bi, ti, gi].sum())} blocks, expected "
                f"{int(want[0, ti, 0])} ({count} rows)")
    ordered = torch.sort(torch.where(picked, idx, -1 - torch.arange(cfg.n_slc, device=idx.device)), dim=-1).values
    repeated = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)
    if repeated.any():
        bi, ti, gi, count = _where(repeated)
        return f"query t={ti} (b={bi}, group {gi}) selects a block twice: {idx[bi, ti, gi].tolist()} ({count} rows)"
    chosen = torch.zeros(b, t, hkv, num_slc + 1, dtype=torch.bool, device=idx.device)
    chosen.scatter_(-1, torch.where(picked, idx, num_slc), True)
    chosen = chosen[..., :num_slc]
    j = torch.arange(num_slc, device=idx.device)[None, None, None, :]
    candidate = j <= current[..., None]
    forced = candidate & ((j == 0) | (j == current[..., None]) | (j == current[..., None] - 1))
    missing = (forced & ~chosen).any(dim=-1)
    if missing.any():
        bi, ti, gi, count = _where(missing)
        absent = j[0, 0, 0][(forced & ~chosen)[bi, ti, gi]].tolist()
        return f"query t={ti} (b={bi}, group {gi}) misses forced block(s) {absent} ({count} rows)"
    s = scores.to(torch.float64)
    inf = torch.tensor(float("inf"), dtype=s.dtype, device=s.device)
    lowest_kept = torch.where(chosen & ~forced, s, inf).amin(dim=-1)
    highest_left = torch.where(candidate & ~chosen, s, -inf).amax(dim=-1)
    slack = tolerance * s.abs().amax(dim=-1)
    out_of_order = lowest_kept < highest_left - slack
    if out_of_order.any():
        bi, ti, gi, count = _where(out_of_order)
        row, kept, left = s[bi, ti, gi], (chosen & ~forced)[bi, ti, gi], (candidate & ~chosen)[bi, ti, gi]
        worst_kept = int(torch.where(kept, row, inf).argmin())
        best_left = int(torch.where(left, row, -inf).argmax())
        return (f"query t={ti} (b={bi}, group {gi}) selects block {worst_kept} (S={float(row[worst_kept]):.4g}) over "
                f"block {best_left} (S={float(row[best_left]):.4g}), beyond the tolerance {float(slack[bi, ti, gi]):.2g} "
                f"({count} rows)")
    return None
