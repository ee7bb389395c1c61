"""NSA_SPEC's selection validity rule: the reference's own selection passes, each planted fault is named."""
from __future__ import annotations

import pytest
import torch

from nsa_bench import reference
from nsa_bench.selection import violation
from nsa_kernels.config import NSAConfig

CFG = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=4, window=8)
T = 72  # 9 selection blocks: rows with fewer candidates than n, and rows with more


@pytest.fixture(scope="module")
def scored() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, T, 4, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(2, T, 2, 16, generator=gen, dtype=torch.float64)
    k_cmp, _ = reference.compress_kv(k, k, CFG)
    scores = reference.block_scores(q, k_cmp, CFG)
    return reference.select_from_scores(scores, CFG), scores


def test_reference_selection_is_valid(scored):
    block_idx, scores = scored
    assert violation(block_idx, scores, CFG, 1e-9) is None
    shuffled = block_idx[..., torch.randperm(CFG.n_slc, generator=torch.Generator().manual_seed(0))]
    assert violation(shuffled, scores, CFG, 1e-9) is None  # a set: order does not matter


def _free_swap(block_idx: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Replace one row's lowest selected non-forced block by its best unselected candidate's worst rival."""
    t = 70  # current block 8: candidates 0..8, forced {0, 7, 8}, one free slot among 1..6
    row = block_idx[1, t, 1].tolist()
    free = [j for j in row if j not in (0, 7, 8)]
    left = [j for j in range(9) if j not in row]
    worst = min(left, key=lambda j: float(scores[1, t, 1, j]))
    planted = block_idx.clone()
    planted[1, t, 1, row.index(free[0])] = worst
    return planted, (1, t, 1)


def test_a_low_scoring_block_is_caught(scored):
    block_idx, scores = scored
    planted, (b, t, g) = _free_swap(block_idx, scores)
    reason = violation(planted, scores, CFG, 1e-6)
    assert reason is not None and f"query t={t} (b={b}, group {g}) selects block" in reason and "tolerance" in reason


@pytest.mark.parametrize(
    "plant,expected",
    [
        (lambda idx: idx.__setitem__((0, 5, 0, 1), 3), "not candidates"),  # t=5 sees block 0 only
        (lambda idx: idx.__setitem__((0, 40, 1, 3), -1), "selects 3 blocks, expected 4"),
        (lambda idx: idx.__setitem__((1, 20, 0), torch.tensor([0, 2, 2, -1], dtype=torch.int32)), "twice"),
        (lambda idx: idx.__setitem__((0, 64, 0), torch.tensor([0, 1, 2, 8], dtype=torch.int32)), "forced block(s) [7]"),
        (lambda idx: idx.__setitem__((0, 9, 0, 0), 7), "not candidates"),
    ],
    ids=["future-block", "too-few", "duplicate", "missing-forced", "after-query"],
)
def test_each_rule_is_checked(scored, plant, expected):
    block_idx, scores = scored
    planted = block_idx.clone()
    plant(planted)
    reason = violation(planted, scores, CFG, 1e-6)
    assert reason is not None and expected in reason, reason


def test_near_ties_pass_within_the_tolerance(scored):
    block_idx, scores = scored
    planted, (b, t, g) = _free_swap(block_idx, scores)
    spread = float(scores[b, t, g].abs().max())
    assert violation(planted, scores, CFG, 1e-6) is not None
    assert violation(planted, scores, CFG, 1.0 + 1e-9) is None  # a tolerance of the whole score range
    assert spread > 0


def test_wrong_shape_is_named(scored):
    block_idx, scores = scored
    assert "shape" in violation(block_idx[..., :3], scores, CFG, 0.0)


def test_packed_selection_is_judged_per_document():
    """Packed rows (cu_seqlens): candidates and forced blocks count from each document's own start."""
    from nsa_kernels import varlen

    cu = varlen.cu_seqlens_of((5, 0, 37, 50))
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 92, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 92, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 92, 2, 8, generator=gen, dtype=torch.float64)
    k_cmp, _ = reference.compress_kv(k, v, CFG, cu)
    scores = reference.block_scores(q, k_cmp, CFG, cu_seqlens=cu)
    idx = reference.select_blocks(q, k_cmp, CFG, cu_seqlens=cu)
    assert violation(idx, scores, CFG, 1e-9, cu) is None
    assert violation(idx, scores, CFG, 1e-9) is not None  # judged as one sequence, later documents break it
    shifted = idx.clone()
    row = 42 + 40  # position 40 of the last document: blocks 0, 5, 4 forced, one of 1..3 by score
    slots = shifted[0, row, 0].tolist()
    spare = next(j for j in (1, 2, 3) if j not in slots)
    shifted[0, row, 0, slots.index(0)] = spare
    assert "misses forced block(s) [0]" in (violation(shifted, scores, CFG, 1e-9, cu) or "")
