"""kernels/selected_small_g.py (the KV-block-outer selected path for G < 16) against the float64
reference (NSA_SPEC section 4), on the CPU interpreter. Shapes are small; T is a multiple of no block."""
from __future__ import annotations

import pytest
import torch

import nsa_kernels.selected as selected_module
import nsa_kernels.selected_small_g as small_g_module
from nsa_kernels.selected import selected_bwd, selected_fwd
from nsa_kernels.selected_small_g import invert_entries
from test_selected import (
    Case, _gates, _inputs, _real_selection, _random_selection, _reference_grads, _rel, check_packed, packed_case,
    packed_hand_selection, packing_of, LONG_LENS,
)

pytestmark = pytest.mark.interpreter

_TOL = {torch.float32: (1e-4, 1e-3), torch.float16: (1e-2, 1e-2)}  # (forward, gradients)


def _check_fwd_bwd(case: Case, dtype: torch.dtype, block_idx: torch.Tensor, seed: int, small_g: str = "small_g"):
    q, k, v = _inputs(case, dtype, seed)
    scale = case.dk**-0.5
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, small_g=small_g)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    ref_o, ref_dq, ref_dk, ref_dv = _reference_grads(case, q, k, v, block_idx, do, scale)
    fwd_tol, grad_tol = _TOL[dtype]
    assert o.dtype == dtype and lse.dtype == torch.float32 and tuple(lse.shape) == tuple(q.shape[:3])
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    assert _rel(o, ref_o) < fwd_tol
    dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale, small_g=small_g)
    assert dq.dtype == dk.dtype == dv.dtype == dtype
    assert _rel(dq, ref_dq) < grad_tol, "dq"
    assert _rel(dk, ref_dk) < grad_tol, "dk"
    assert _rel(dv, ref_dv) < grad_tol, "dv"
    return o, lse, ref_o, dq


GROUP_CASES = [  # G = 1, 2, 3, 4, 8; T = 100 (l' = 32: three full blocks and a partial one), Dk 48 = 32 + 16
    Case(batch=1, seqlen=100, kv_heads=2, group=1, dk=48, dv=32, block_slc=32, n_slc=3),
    Case(batch=2, seqlen=100, kv_heads=1, group=2, dk=48, dv=32, block_slc=32, n_slc=3),
    Case(batch=1, seqlen=100, kv_heads=1, group=3, dk=48, dv=32, block_slc=32, n_slc=3),
    Case(batch=1, seqlen=100, kv_heads=2, group=4, dk=48, dv=32, block_slc=32, n_slc=3),
    Case(batch=1, seqlen=100, kv_heads=1, group=8, dk=48, dv=32, block_slc=32, n_slc=3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", GROUP_CASES, ids=lambda c: f"G{c.group}")
def test_small_groups_match_the_reference(case: Case, dtype: torch.dtype) -> None:
    """Random slots (-1 anywhere, future blocks, rows with no usable key): o = 0, lse = -inf, dq = 0 there."""
    block_idx = _random_selection(case, seed=case.group, empty_rows=True)
    o, lse, ref_o, dq = _check_fwd_bwd(case, dtype, block_idx, seed=10 * case.group)
    empty = ref_o.abs().amax(dim=-1) == 0
    assert empty.any(), "the selection should leave some rows without keys"
    assert (o[empty] == 0).all() and (lse[empty] == -float("inf")).all() and (dq[empty] == 0).all()


@pytest.mark.parametrize("case", [
    # NSA's own selection (block 0, the local blocks), l' = 64 with T = 100: partial last block
    Case(batch=1, seqlen=100, kv_heads=1, group=4, dk=32, dv=16, block_slc=64, n_slc=3),
    # l' = 128: two 64-key chunks per block (two partials per slot), G = 2
    Case(batch=1, seqlen=150, kv_heads=1, group=2, dk=16, dv=32, block_slc=128, n_slc=3),
    # the paper's heads (Dk = 192 = 128 + 64, Dv = 128) at G = 8
    Case(batch=1, seqlen=40, kv_heads=1, group=8, dk=192, dv=128, block_slc=32, n_slc=3),
], ids=["real-selection-l64", "l128-two-chunks", "paper-heads-G8"])
def test_nsa_selection_and_block_shapes(case: Case) -> None:
    q, k, v = _inputs(case, torch.float32, seed=case.seqlen)
    _check_fwd_bwd(case, torch.float32, _real_selection(case, q, k, v), seed=case.seqlen)


def test_auto_takes_the_small_group_path_below_16(monkeypatch: pytest.MonkeyPatch) -> None:
    """small_g="auto" (the default) runs the block-outer kernels at G < 16 and the padded ones at G = 16."""
    calls: list[str] = []
    for name in ("small_g_fwd", "small_g_bwd"):
        real = getattr(small_g_module, name)
        monkeypatch.setattr(small_g_module, name, lambda *a, _real=real, _name=name, **kw: (calls.append(_name),
                                                                                              _real(*a, **kw))[1])
    for group, expected in ((4, ["small_g_fwd", "small_g_bwd"]), (16, [])):
        case = Case(batch=1, seqlen=20, kv_heads=1, group=group, dk=16, dv=16, block_slc=32, n_slc=1)
        q, k, v = _inputs(case, torch.float32, seed=group)
        block_idx = torch.zeros(1, 20, 1, 1, dtype=torch.int32)
        o, lse = selected_fwd(q, k, v, block_idx, 32, 0.25)
        selected_bwd(q, k, v, o, lse, torch.ones_like(o), block_idx, 32, 0.25)
        assert calls == expected, group
        calls.clear()
    with pytest.raises(ValueError, match="small_g='v2'"):
        selected_fwd(q, k, v, block_idx, 32, 0.25, small_g="v2")


def test_matches_the_padded_path() -> None:
    """Both paths give the same o and lse (fp32): the block-outer merge only reorders the softmax."""
    case = Case(batch=1, seqlen=50, kv_heads=1, group=4, dk=32, dv=16, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=3)
    block_idx = _random_selection(case, seed=4)
    o_small, lse_small = selected_fwd(q, k, v, block_idx, 32, 0.2, small_g="small_g")
    o_pad, lse_pad = selected_fwd(q, k, v, block_idx, 32, 0.2, small_g="padded")
    torch.testing.assert_close(o_small, o_pad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse_small, lse_pad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "accumulate"])
def test_gated_epilogue_in_the_merge(accumulate: bool) -> None:
    """out = (out if accumulate else 0) + gates[..., i] * o, o from the unfused small-G path; lse unchanged."""
    case = Case(batch=2, seqlen=37, kv_heads=1, group=3, dk=16, dv=48, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=81)
    block_idx = _random_selection(case, seed=82, empty_rows=True)
    o, lse = selected_fwd(q, k, v, block_idx, 32, 0.25, small_g="small_g")
    gates = _gates(case, torch.float32, seed=83)
    start = torch.randn(o.shape, generator=torch.Generator().manual_seed(84))
    out = start.clone() if accumulate else torch.full_like(o, float("nan"))
    got, got_lse = selected_fwd(q, k, v, block_idx, 32, 0.25, out=out, gates=gates, gate_index=1,
                                accumulate=accumulate, small_g="small_g")
    assert got is out
    assert _rel(got, gates[..., 1:2] * o + (start if accumulate else 0)) < 1e-5
    torch.testing.assert_close(got_lse, lse, rtol=0, atol=0)


def test_dq_chain_and_determinism() -> None:
    """dq_out = this branch's dq + dq_add (also in place); the default backward is bit-reproducible."""
    case = Case(batch=1, seqlen=70, kv_heads=1, group=2, dk=48, dv=16, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=101)
    block_idx = _random_selection(case, seed=102)
    o, lse = selected_fwd(q, k, v, block_idx, 32, 0.2, small_g="small_g")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(103))
    plain = selected_bwd(q, k, v, o, lse, do, block_idx, 32, 0.2, small_g="small_g")
    again = selected_bwd(q, k, v, o, lse, do, block_idx, 32, 0.2, small_g="small_g")
    assert all(torch.equal(a, b) for a, b in zip(plain, again))
    acc = torch.randn(q.shape, generator=torch.Generator().manual_seed(104))
    want = plain[0] + acc
    into = torch.empty(q.shape, dtype=torch.float16)
    got = selected_bwd(q, k, v, o, lse, do, block_idx, 32, 0.2, dq_out=into, dq_add=acc, small_g="small_g")
    assert got[0] is into and _rel(into, want) < 1e-3
    assert torch.equal(got[1], plain[1]) and torch.equal(got[2], plain[2])
    selected_bwd(q, k, v, o, lse, do, block_idx, 32, 0.2, dq_out=acc, dq_add=acc, small_g="small_g")
    assert _rel(acc, want) < 1e-6


def test_invert_entries_names_every_usable_slot_once() -> None:
    case = Case(batch=2, seqlen=70, kv_heads=3, group=1, dk=16, dv=16, block_slc=32, n_slc=3)
    block_idx = _random_selection(case, seed=61)
    block_idx[0, 40, 1] = torch.tensor([1, 1, -1], dtype=torch.int32)  # a repeat counts once
    offsets, entries, sorted_idx = invert_entries(block_idx, case.block_slc, case.num_blocks)
    assert torch.equal(sorted_idx, torch.sort(block_idx, dim=-1).values)
    flat = sorted_idx.reshape(-1)
    for b in range(case.batch):
        for g in range(case.kv_heads):
            for j in range(case.num_blocks):
                bucket = (b * case.kv_heads + g) * case.num_blocks + j
                got = entries[offsets[bucket]: offsets[bucket + 1]].long()
                assert (flat[got] == j).all()
                got_t = ((got // (case.kv_heads * case.n_slc)) % case.seqlen).tolist()
                want = [t for t in range(case.seqlen)
                        if j in block_idx[b, t, g].tolist() and j * case.block_slc <= t]
                assert got_t == want, (b, g, j)


def test_module_shares_the_long_list_machinery_with_selected() -> None:
    """The long-list machinery (segment length, partial slots, reduce) has one definition, which both
    selected.py and this module take from _selected_tiles (selected.py imports this module, never the reverse)."""
    assert small_g_module.tiles is selected_module.tiles
    assert selected_module.selected_small_g is small_g_module
    assert not any(value is selected_module for value in vars(small_g_module).values())


# ---------------------------------------------------------------- packed batches (cu_seqlens, docs/varlen.md)
# the packing of test_selected.PACKED_LENS: lengths 1, 10 (< l), 0, 27 (< l'), 45 and 37, Dk 48 != Dv 32;
# test_selected's test_packed_backward_with_lists_split_into_segments[small_g] splits lists into segments
@pytest.mark.parametrize("group, kv_heads", [(1, 2), (2, 1), (3, 1), (4, 2), (8, 1)], ids=lambda x: str(x))
def test_packed_small_groups_match_the_reference(group: int, kv_heads: int) -> None:
    """NSA's own (local) selection of the packing, fp32, small_g="auto" (the block-outer path below 16)."""
    check_packed(packed_case(kv_heads, group), torch.float32, None, seed=300 + group, small_g="auto")


def test_packed_hand_selection_matches_each_sequence_alone() -> None:
    """-1 padding, a duplicate and future blocks; packed == each sequence through the dense block-outer
    path; the gated merge and the dq chain."""
    case = packed_case(1, 3, dk=32, dv=48, n_slc=4)
    check_packed(case, torch.float32, packed_hand_selection(case), seed=310, small_g="small_g", against_dense=True,
                 fused=True)


def test_packed_two_chunks_per_block() -> None:
    """l' = 128: two partials per (entry, block) in the merge and the dq reduce, whose rebase counts them."""
    case = packed_case(2, 4, dk=32, dv=16, n_slc=4, lens=LONG_LENS, block_slc=128)
    check_packed(case, torch.float32, packed_hand_selection(case, LONG_LENS), seed=315, small_g="small_g",
                 against_dense=True, fused=True, lens=LONG_LENS)


def test_packed_fp16() -> None:
    case = packed_case(2, 4, dk=32, dv=16, n_slc=4)
    check_packed(case, torch.float16, packed_hand_selection(case), seed=320, small_g="small_g")


def test_packed_backward_is_deterministic() -> None:
    case = packed_case(1, 2, dk=32, dv=16, n_slc=4)
    q, k, v = _inputs(case, torch.float32, seed=330)
    block_idx, kw = packed_hand_selection(case), dict(small_g="small_g", packing=packing_of())
    o, lse = selected_fwd(q, k, v, block_idx, 32, 0.2, **kw)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(333))
    plain = selected_bwd(q, k, v, o, lse, do, block_idx, 32, 0.2, **kw)
    again = selected_bwd(q, k, v, o, lse, do, block_idx, 32, 0.2, **kw)
    assert all(torch.equal(a, b) for a, b in zip(plain, again))
