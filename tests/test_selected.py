"""kernels/selected.py against the float64 reference (NSA_SPEC section 4), on the CPU interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nsa_bench import reference
from nsa_kernels.config import NSAConfig
from nsa_kernels.packing import Packing
from nsa_kernels.selected import invert_selection, selected_bwd, selected_fwd

pytestmark = pytest.mark.interpreter


@dataclass(frozen=True)
class Case:
    """One shape: batch, seqlen, KV heads, group size, head dims, block_slc, n_slc."""

    batch: int
    seqlen: int
    kv_heads: int
    group: int
    dk: int
    dv: int
    block_slc: int
    n_slc: int

    @property
    def cfg(self) -> NSAConfig:
        return NSAConfig(block_cmp=32, stride_cmp=16, block_slc=self.block_slc, n_slc=self.n_slc)

    @property
    def num_blocks(self) -> int:
        return -(-self.seqlen // self.block_slc)


@pytest.fixture(params=["v1", "v2"])
def variant(request: pytest.FixtureRequest) -> str:
    """The forward and dq kernel variant (kernels/variants.py); dk/dv has one implementation. Tests
    taking it run the padded kernels (small_g="padded"); tests/test_selected_small_g.py checks the
    small-group path that "auto" takes at G < 16."""
    return request.param


def _inputs(case: Case, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hq = case.kv_heads * case.group
    q = torch.randn(case.batch, case.seqlen, hq, case.dk, generator=gen)
    k = torch.randn(case.batch, case.seqlen, case.kv_heads, case.dk, generator=gen)
    v = torch.randn(case.batch, case.seqlen, case.kv_heads, case.dv, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _real_selection(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """block_idx as NSA computes it (section 3), from float64 copies of the inputs."""
    k_cmp, _ = reference.compress_kv(k.double(), v.double(), case.cfg)
    return reference.select_blocks(q.double(), k_cmp, case.cfg)


def _random_selection(case: Case, seed: int, empty_rows: bool = False) -> torch.Tensor:
    """Duplicate-free random blocks (future ones included) in random slots, -1 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.seqlen, case.kv_heads)
    scores = torch.rand(*shape, case.num_blocks, generator=gen)
    picks = torch.argsort(scores, dim=-1)[..., : case.n_slc]  # distinct blocks, random order
    if picks.shape[-1] < case.n_slc:
        pad = torch.full((*shape, case.n_slc - picks.shape[-1]), -1, dtype=picks.dtype)
        picks = torch.cat([picks, pad], dim=-1)
    drop = torch.rand(*shape, case.n_slc, generator=gen) < 0.3
    picks = torch.where(drop, torch.full_like(picks, -1), picks)
    if empty_rows:  # some rows select nothing usable at all
        picks[:, ::5] = -1
    slot_order = torch.argsort(torch.rand(*shape, case.n_slc, generator=gen), dim=-1)
    return torch.gather(picks, -1, slot_order).to(torch.int32)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; the plain ||out|| where the exact answer is 0 (e.g. dq at T = 1)."""
    err = (out.double() - ref.double()).norm().item()
    size = ref.double().norm().item()
    return err / size if size > 0 else err


def _reference_grads(
    case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_idx: torch.Tensor,
    do: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, ...]:
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    out = reference.selected_attention(qd, kd, vd, block_idx, case.cfg, scale)
    out.backward(do.double())
    return out.detach(), qd.grad, kd.grad, vd.grad


FWD_BWD_CASES = [
    # T not a multiple of l', G not a power of two, Dk != Dv (48/32), n larger than the block count
    Case(batch=2, seqlen=77, kv_heads=1, group=3, dk=48, dv=32, block_slc=32, n_slc=4),
    # T = 257 with G = 16 (a full tl.dot tile of heads), l' = 64, Dk/Dv = 32/16
    Case(batch=1, seqlen=257, kv_heads=1, group=16, dk=32, dv=16, block_slc=64, n_slc=3),
    # G = 1, two KV heads, fewer blocks than n
    Case(batch=1, seqlen=40, kv_heads=2, group=1, dk=32, dv=16, block_slc=32, n_slc=3),
    # l' = 128: several key chunks per selected block in every kernel
    Case(batch=1, seqlen=130, kv_heads=1, group=2, dk=16, dv=32, block_slc=128, n_slc=3),
    # T = 1: a single query, a single (partial) block
    Case(batch=2, seqlen=1, kv_heads=2, group=2, dk=16, dv=32, block_slc=32, n_slc=3),
    # the paper's head layout (G = 16, Dk = 192 = 128 + 64, Dv = 128), T a multiple of no block size
    Case(batch=1, seqlen=45, kv_heads=1, group=16, dk=192, dv=128, block_slc=32, n_slc=3),
    # G = 64: one position per 64-row tile
    Case(batch=1, seqlen=35, kv_heads=1, group=64, dk=16, dv=16, block_slc=32, n_slc=3),
]


@pytest.mark.parametrize("case", FWD_BWD_CASES, ids=lambda c: f"T{c.seqlen}-G{c.group}-D{c.dk}x{c.dv}-l{c.block_slc}")
def test_fwd_bwd_real_selection_fp32(case: Case, variant: str) -> None:
    q, k, v = _inputs(case, torch.float32, seed=case.seqlen * 7 + case.group)
    if case.seqlen < case.cfg.block_cmp:
        # reference.select_blocks fails when T < block_cmp (no compressed block); the spec's
        # selection there is block 0 alone
        block_idx = torch.full((case.batch, case.seqlen, case.kv_heads, case.n_slc), -1, dtype=torch.int32)
        block_idx[..., 0] = 0
    else:
        block_idx = _real_selection(case, q, k, v)
        assert (block_idx == -1).any(), "the cases are meant to leave some slots empty"
    scale = case.dk**-0.5
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, variant=variant, small_g="padded")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(11))
    ref_o, ref_dq, ref_dk, ref_dv = _reference_grads(case, q, k, v, block_idx, do, scale)
    assert o.dtype == torch.float32 and lse.dtype == torch.float32
    assert tuple(lse.shape) == tuple(q.shape[:3])
    assert _rel(o, ref_o) < 1e-4
    dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale,
                              dq_variant=variant, small_g="padded")
    assert _rel(dq, ref_dq) < 1e-3
    assert _rel(dk, ref_dk) < 1e-3
    assert _rel(dv, ref_dv) < 1e-3


def test_lse_matches_logsumexp_of_selected_logits(variant: str) -> None:
    case = Case(batch=1, seqlen=70, kv_heads=1, group=2, dk=16, dv=16, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=5)
    block_idx = _random_selection(case, seed=6)
    scale = 0.3
    _, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, variant=variant, small_g="padded")
    logits = torch.einsum("bthd,bshd->bths", q.double(), k.double().expand(-1, -1, 2, -1)) * scale
    blocks = torch.arange(case.seqlen) // case.block_slc
    for t in range(case.seqlen):
        chosen = set(block_idx[0, t, 0].tolist())
        allowed = torch.tensor([int(blocks[p]) in chosen and p <= t for p in range(case.seqlen)])
        empty = torch.full((2,), -float("inf"), dtype=torch.float64)
        want = torch.logsumexp(logits[0, t][:, allowed], dim=-1) if allowed.any() else empty
        torch.testing.assert_close(lse[0, t].double(), want, rtol=1e-5, atol=1e-5)


def test_random_slots_with_empty_rows_fp32(variant: str) -> None:
    """-1 slots anywhere, future blocks, rows with no usable key: o = 0 there and nothing is NaN."""
    case = Case(batch=1, seqlen=70, kv_heads=2, group=2, dk=48, dv=32, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=21)
    block_idx = _random_selection(case, seed=22, empty_rows=True)
    scale = case.dk**-0.5
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, variant=variant, small_g="padded")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(23))
    ref_o, ref_dq, ref_dk, ref_dv = _reference_grads(case, q, k, v, block_idx, do, scale)
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    empty = ref_o.abs().amax(dim=-1) == 0
    assert empty.any(), "the selection should leave some rows without keys"
    assert (o[empty] == 0).all() and (lse[empty] == -float("inf")).all()
    assert _rel(o, ref_o) < 1e-4
    dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale,
                              dq_variant=variant, small_g="padded")
    for got in (dq, dk, dv):
        assert torch.isfinite(got).all()
    assert (dq[empty] == 0).all()
    assert _rel(dq, ref_dq) < 1e-3
    assert _rel(dk, ref_dk) < 1e-3
    assert _rel(dv, ref_dv) < 1e-3


def test_repeated_blocks_count_once(variant: str) -> None:
    """A block listed twice in a row is attended once, as in the reference's set semantics."""
    case = Case(batch=1, seqlen=64, kv_heads=1, group=1, dk=16, dv=16, block_slc=32, n_slc=4)
    q, k, v = _inputs(case, torch.float32, seed=31)
    t = torch.arange(case.seqlen)
    current = (t // case.block_slc).view(1, -1, 1, 1).expand(1, -1, 1, 4).clone()
    current[..., 2] = 0
    current[..., 3] = -1
    block_idx = current.to(torch.int32)  # slots: [cur, cur, 0, -1]
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, 0.25, variant=variant, small_g="padded")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(32))
    ref_o, ref_dq, ref_dk, ref_dv = _reference_grads(case, q, k, v, block_idx, do, 0.25)
    assert _rel(o, ref_o) < 1e-4
    dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, 0.25,
                              dq_variant=variant, small_g="padded")
    assert _rel(dq, ref_dq) < 1e-3 and _rel(dk, ref_dk) < 1e-3 and _rel(dv, ref_dv) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fwd_bwd_half_precision(dtype: torch.dtype, variant: str) -> None:
    case = Case(batch=1, seqlen=50, kv_heads=2, group=4, dk=32, dv=48, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, dtype, seed=41)
    block_idx = _random_selection(case, seed=42)
    scale = case.dk**-0.5
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, variant=variant, small_g="padded")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(43)).to(dtype)
    ref_o, ref_dq, ref_dk, ref_dv = _reference_grads(case, q, k, v, block_idx, do, scale)
    assert o.dtype == dtype
    assert _rel(o, ref_o) < 1e-2
    dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale,
                              dq_variant=variant, small_g="padded")
    assert dq.dtype == dk.dtype == dv.dtype == dtype
    assert _rel(dq, ref_dq) < 1e-2 and _rel(dk, ref_dk) < 1e-2 and _rel(dv, ref_dv) < 1e-2


def test_backward_is_deterministic(variant: str) -> None:
    case = Case(batch=1, seqlen=70, kv_heads=1, group=2, dk=16, dv=16, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=51)
    block_idx = _random_selection(case, seed=52)
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, 0.25, variant=variant, small_g="padded")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(53))
    first = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, 0.25, dq_variant=variant, small_g="padded")
    second = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, 0.25, dq_variant=variant, small_g="padded")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("small_g", ["padded", "small_g"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["partials", "atomics"])
def test_backward_with_lists_split_into_segments(monkeypatch: pytest.MonkeyPatch, deterministic: bool,
                                                 small_g: str) -> None:
    """16-query segments: block 0's 75-query list spans five, other lists one or two."""
    from nsa_kernels import _selected_tiles

    monkeypatch.setattr(_selected_tiles, "segment_len", lambda n_slc, block_slc: 16)
    case = Case(batch=1, seqlen=75, kv_heads=2, group=2, dk=48, dv=32, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=55)
    block_idx = _random_selection(case, seed=56)
    block_idx[..., 0] = 0  # every query selects block 0
    scale = case.dk**-0.5
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, small_g=small_g)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(57))
    ref_o, ref_dq, ref_dk, ref_dv = _reference_grads(case, q, k, v, block_idx, do, scale)
    assert _rel(o, ref_o) < 1e-4
    dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale, deterministic=deterministic,
                              small_g=small_g)
    assert dk.dtype == dv.dtype == torch.float32
    assert _rel(dq, ref_dq) < 1e-3 and _rel(dk, ref_dk) < 1e-3 and _rel(dv, ref_dv) < 1e-3
    if deterministic:
        again = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale, small_g=small_g)
        assert all(torch.equal(a, b) for a, b in zip((dq, dk, dv), again))


def test_invert_selection_lists_every_usable_slot_once() -> None:
    case = Case(batch=2, seqlen=70, kv_heads=3, group=1, dk=16, dv=16, block_slc=32, n_slc=3)
    block_idx = _random_selection(case, seed=61)
    block_idx[0, 40, 1] = torch.tensor([1, 1, -1], dtype=torch.int32)  # a repeat counts once
    offsets, queries = invert_selection(block_idx, case.block_slc, case.num_blocks)
    assert offsets.dtype == torch.int32 and queries.dtype == torch.int32
    for b in range(case.batch):
        for g in range(case.kv_heads):
            for j in range(case.num_blocks):
                bucket = (b * case.kv_heads + g) * case.num_blocks + j
                got = queries[offsets[bucket] : offsets[bucket + 1]].tolist()
                want = [
                    t for t in range(case.seqlen)
                    if j in block_idx[b, t, g].tolist() and j * case.block_slc <= t
                ]
                assert got == want, (b, g, j)


def _valid_args() -> tuple:
    case = Case(batch=1, seqlen=8, kv_heads=1, group=2, dk=16, dv=16, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=71)
    return q, k, v, torch.zeros(1, 8, 1, 3, dtype=torch.int32)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: {**a, "block_slc": 48}, "block_slc=48"),
        (lambda a: {**a, "block_slc": 16}, "block_slc=16"),
        (lambda a: {**a, "block_idx": torch.zeros(1, 8, 1, 65, dtype=torch.int32)}, "n_slc=65"),
        (lambda a: {**a, "block_idx": torch.zeros(1, 8, 1, 3)}, "block_idx.dtype"),
        (lambda a: {**a, "block_idx": torch.zeros(1, 7, 1, 3, dtype=torch.int32)}, "block_idx must be"),
        (lambda a: {**a, "k": a["k"].half()}, "share a dtype"),
        (lambda a: {**a, "q": a["q"][..., :8], "k": a["k"][..., :8]}, "Dk=8"),
        (lambda a: {**a, "q": a["q"][:, :, :1].expand(-1, -1, 3, -1).contiguous(),
                    "k": a["k"].expand(-1, -1, 2, -1).contiguous(),
                    "v": a["v"].expand(-1, -1, 2, -1).contiguous(),
                    "block_idx": torch.zeros(1, 8, 2, 3, dtype=torch.int32)}, "Hq=3"),
        (lambda a: {**a, "scale": 0.0}, "scale=0.0"),
    ],
)
def test_bad_input_raises_value_error(mutate, match: str) -> None:
    q, k, v, idx = _valid_args()
    args = mutate({"q": q, "k": k, "v": v, "block_idx": idx, "block_slc": 32, "scale": 0.25})
    with pytest.raises(ValueError, match=match.replace(".", r"\.").replace("[", r"\[")):
        selected_fwd(**args)


def test_backward_rejects_mismatched_lse() -> None:
    q, k, v, idx = _valid_args()
    o, lse = selected_fwd(q, k, v, idx, 32, 0.25)
    with pytest.raises(ValueError, match="lse"):
        selected_bwd(q, k, v, o, lse[:, :4], torch.ones_like(o), idx, 32, 0.25)


# ---------------------------------------------------------------- fused gated epilogue
GATED_CASES = [
    # T not a multiple of the tile, G = 1, Dk != Dv, rows with no usable key
    Case(batch=1, seqlen=45, kv_heads=2, group=1, dk=32, dv=16, block_slc=32, n_slc=2),
    Case(batch=2, seqlen=37, kv_heads=1, group=3, dk=16, dv=48, block_slc=32, n_slc=3),
]


def _gates(case: Case, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(case.batch, case.seqlen, case.kv_heads * case.group, 3, generator=gen).to(dtype)


@pytest.mark.parametrize("case", GATED_CASES, ids=lambda c: f"T{c.seqlen}-G{c.group}-D{c.dk}x{c.dv}")
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "accumulate"])
def test_gated_epilogue_matches_unfused(case: Case, accumulate: bool, variant: str) -> None:
    """out = (out if accumulate else 0) + gates[..., i] * o, o from the unfused path; lse unchanged."""
    q, k, v = _inputs(case, torch.float32, seed=81)
    block_idx = _random_selection(case, seed=82, empty_rows=True)
    scale = case.dk**-0.5
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, variant=variant, small_g="padded")
    assert (o.abs().amax(dim=-1) == 0).any(), "some rows should have no usable key"
    gates = _gates(case, torch.float32, seed=83)
    for gate_index in (1, 2):
        start = torch.randn(o.shape, generator=torch.Generator().manual_seed(84 + gate_index))
        out = start.clone() if accumulate else torch.full_like(o, float("nan"))  # NaN: must be overwritten
        got, got_lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, out=out, gates=gates,
                                    gate_index=gate_index, accumulate=accumulate, variant=variant, small_g="padded")
        want = gates[..., gate_index : gate_index + 1] * o + (start if accumulate else 0)
        assert got is out
        assert _rel(got, want) < 1e-5, gate_index
        torch.testing.assert_close(got_lse, lse, rtol=0, atol=0)


@pytest.mark.parametrize(
    "in_dtype, out_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float32)],
    ids=["fp32-in-fp16-out", "fp16-in-fp32-out"],
)
def test_gated_epilogue_mixed_dtypes(in_dtype: torch.dtype, out_dtype: torch.dtype, variant: str) -> None:
    """The epilogue computes in fp32 and stores in out's dtype, whatever q's dtype."""
    case = GATED_CASES[1]
    q, k, v = _inputs(case, in_dtype, seed=91)
    block_idx = _random_selection(case, seed=92)
    scale = case.dk**-0.5
    o, _ = selected_fwd(q, k, v, block_idx, case.block_slc, scale, variant=variant, small_g="padded")
    gates = _gates(case, out_dtype, seed=93)
    start = torch.randn(o.shape, generator=torch.Generator().manual_seed(94)).to(out_dtype)
    out = start.clone()
    got, _ = selected_fwd(q, k, v, block_idx, case.block_slc, scale, out=out, gates=gates, gate_index=0,
                          accumulate=True, variant=variant, small_g="padded")
    want = gates[..., 0:1].double() * o.double() + start.double()
    assert got.dtype == out_dtype
    # fp16 rounding (of out, or of the unfused o, which the fused path never rounds) bounds the match
    assert _rel(got, want) < 1e-3


def _gated_kwargs(out_shape=(1, 8, 2, 16), gates_shape=(1, 8, 2, 3), **overrides) -> dict:
    kwargs = {"out": torch.zeros(out_shape), "gates": torch.ones(gates_shape), "gate_index": 0, "accumulate": False}
    return {**kwargs, **overrides}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gates": torch.ones(1, 8, 2, 3)}, "gates given without out"),
        ({"accumulate": True}, "accumulate=True needs out"),
        ({"out": torch.zeros(1, 8, 2, 16)}, "gates is required"),
        (_gated_kwargs(gate_index=3), "gate_index=3"),
        (_gated_kwargs(gate_index=-1), "gate_index=-1"),
        (_gated_kwargs(gate_index=True), "gate_index=True"),
        (_gated_kwargs(accumulate=1), "accumulate=1"),
        (_gated_kwargs(out_shape=(1, 8, 2, 32)), "out shape (1, 8, 2, 32)"),
        (_gated_kwargs(gates_shape=(1, 8, 2, 2)), "gates shape (1, 8, 2, 2)"),
        ({**_gated_kwargs(), "out": torch.zeros(1, 8, 2, 16, dtype=torch.float64)}, "out dtype=torch.float64"),
        ({**_gated_kwargs(), "gates": torch.ones(1, 8, 2, 3, dtype=torch.int32)}, "gates dtype=torch.int32"),
        ({**_gated_kwargs(), "out": torch.zeros(1, 8, 16, 2).transpose(2, 3)}, "out must be contiguous"),
        ({**_gated_kwargs(), "gates": torch.ones(1, 8, 3, 2).transpose(2, 3)}, "gates must be contiguous"),
        ({**_gated_kwargs(), "out": torch.zeros(1, 8, 2, 16, device="meta")}, "out is on meta"),
    ],
)
def test_gated_bad_input_raises_value_error(kwargs: dict, match: str) -> None:
    q, k, v, idx = _valid_args()
    with pytest.raises(ValueError, match=match.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        selected_fwd(q, k, v, idx, 32, 0.25, **kwargs)


def test_dq_chain_adds_into_the_accumulator(variant: str) -> None:
    """dq_out = this branch's dq + dq_add (fp32), also in place (dq_out is dq_add), as NSA chains it."""
    case = Case(batch=1, seqlen=35, kv_heads=1, group=3, dk=48, dv=16, block_slc=32, n_slc=3)
    q, k, v = _inputs(case, torch.float32, seed=101)
    block_idx = _random_selection(case, seed=102)
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, 0.2, small_g="padded")
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(103))
    plain = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, 0.2, dq_variant=variant, small_g="padded")
    acc = torch.randn(q.shape, generator=torch.Generator().manual_seed(104))
    want = plain[0] + acc
    into = torch.empty(q.shape, dtype=torch.float16)
    got = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, 0.2,
                       dq_variant=variant, small_g="padded", dq_out=into,
                       dq_add=acc)
    assert got[0] is into and _rel(into, want) < 1e-3
    assert torch.equal(got[1], plain[1]) and torch.equal(got[2], plain[2])
    selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, 0.2,
                 dq_variant=variant, small_g="padded", dq_out=acc, dq_add=acc)
    assert _rel(acc, want) < 1e-6


@pytest.mark.parametrize("kwargs, match", [
    ({"dq_add": torch.zeros(1, 8, 2, 16, dtype=torch.float16)}, "dq_add dtype=torch.float16"),
    ({"dq_out": torch.zeros(1, 8, 2, 8)}, r"dq_out shape \(1, 8, 2, 8\)"),
    ({"dq_out": torch.zeros(1, 8, 16, 2).transpose(2, 3)}, "dq_out must be contiguous"),
    ({"dq_variant": "v0"}, "dq_variant='v0'"),
])
def test_dq_chain_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    q, k, v, idx = _valid_args()
    o, lse = selected_fwd(q, k, v, idx, 32, 0.25)
    with pytest.raises(ValueError, match=match):
        selected_bwd(q, k, v, o, lse, torch.ones_like(o), idx, 32, 0.25, **kwargs)


# ---------------------------------------------------------------- packed batches (cu_seqlens, docs/varlen.md)
# l = 16 > 10, l' = 32 > 27, an empty sequence, boundaries (1, 11, 38, 83) inside compression and selection
# blocks of the buffer, and 45 tokens: a multiple of no tile (l' = 32, 1-4 positions per tile)
PACKED_LENS = (1, 10, 0, 27, 45, 37)
PACKED_CFG = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=12)


def packed_case(kv_heads: int, group: int, dk: int = 48, dv: int = 32, n_slc: int = 3,
                lens: tuple[int, ...] = PACKED_LENS, block_slc: int = PACKED_CFG.block_slc) -> Case:
    """A Case whose batch is the packing of `lens` (batch 1, seqlen = total_T)."""
    return Case(batch=1, seqlen=sum(lens), kv_heads=kv_heads, group=group, dk=dk, dv=dv, block_slc=block_slc,
                n_slc=n_slc)


def packed_cu(lens: tuple[int, ...] = PACKED_LENS) -> torch.Tensor:
    from nsa_kernels import varlen

    return varlen.cu_seqlens_of(lens)


def packing_of(lens: tuple[int, ...] = PACKED_LENS, block_slc: int | None = None) -> Packing:
    """The packing of `lens` as the selected wrappers take it (nsa.py builds it once per call)."""
    return Packing.of(packed_cu(lens), sum(lens), 1, torch.device("cpu"), block_slc=block_slc)


def packed_real_selection(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """NSA's own block_idx of the packing, local block numbers, from float64 copies."""
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=case.block_slc, n_slc=case.n_slc, window=12)
    k_cmp, _ = reference.compress_kv(k.double(), v.double(), cfg, cu_seqlens=packed_cu())
    return reference.select_blocks(q.double(), k_cmp, cfg, cu_seqlens=packed_cu())


def packed_hand_selection(case: Case, lens: tuple[int, ...] = PACKED_LENS) -> torch.Tensor:
    """n = 4 slots per row: [own block, -1, own block again, the next block] (local numbers): padding, a
    duplicate, and a future block (past the sequence's end in its last block) that must count for
    nothing, not read the next sequence."""
    assert case.n_slc == 4
    local = torch.cat([torch.arange(n) for n in lens]) // case.block_slc
    own = local.view(1, -1, 1).expand(1, -1, case.kv_heads)
    slots = [own, torch.full_like(own, -1), own, own + 1]
    return torch.stack(slots, dim=-1).to(torch.int32).contiguous()


def packed_reference_grads(case: Case, q, k, v, block_idx, do, scale, lens: tuple[int, ...] = PACKED_LENS):
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    out = reference.selected_attention(qd, kd, vd, block_idx, case.cfg, scale, cu_seqlens=packed_cu(lens))
    out.backward(do.double())
    return out.detach(), qd.grad, kd.grad, vd.grad


def per_sequence(run, *tensors: torch.Tensor, lens: tuple[int, ...] = PACKED_LENS) -> list[torch.Tensor]:
    """`run(*slices)` on each non-empty sequence's rows of the [1, total_T, ...] tensors, outputs concatenated."""
    bounds = packed_cu(lens).tolist()
    outs = [run(*(x[:, a:e] for x in tensors)) for a, e in zip(bounds, bounds[1:]) if e > a]
    return [torch.cat(parts, dim=1) for parts in zip(*outs)]


def check_packed(case: Case, dtype: torch.dtype, block_idx: torch.Tensor | None, seed: int, small_g: str,
                 against_dense: bool = False, fused: bool = False, lens: tuple[int, ...] = PACKED_LENS) -> None:
    """Packed fwd + bwd (deterministic) against the reference with cu_seqlens. against_dense: also against
    every sequence run alone through the dense path. fused: also the gated epilogue (accumulating), and
    the backward through the dq chain (dq_out = dq_add, in place)."""
    q, k, v = _inputs(case, dtype, seed)
    if block_idx is None:
        block_idx = packed_real_selection(case, q, k, v)
    scale = case.dk**-0.5
    kw = dict(small_g=small_g, packing=packing_of(lens))
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, **kw)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    ref_o, ref_dq, ref_dk, ref_dv = packed_reference_grads(case, q, k, v, block_idx, do, scale, lens)
    fwd_tol, grad_tol = (1e-4, 1e-3) if dtype == torch.float32 else (1e-2, 1e-2)
    assert o.dtype == dtype and tuple(o.shape) == tuple(ref_o.shape) and tuple(lse.shape) == tuple(q.shape[:3])
    assert not torch.isnan(o).any() and not torch.isnan(lse).any()
    assert _rel(o, ref_o) < fwd_tol
    if fused:
        gates = _gates(case, torch.float32, seed=seed + 2)
        start = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + 3))
        out = start.clone()
        got, got_lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, out=out, gates=gates, gate_index=1,
                                    accumulate=True, **kw)
        assert got is out and _rel(got, gates[..., 1:2] * o + start) < 1e-5
        torch.testing.assert_close(got_lse, lse, rtol=0, atol=0)
        acc = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 4))
        before = acc.clone()
        grads = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale, dq_out=acc, dq_add=acc, **kw)
        assert grads[0] is acc
        grads = (acc - before, *grads[1:])
    else:
        grads = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale, **kw)
    for name, got, want in zip(("dq", "dk", "dv"), grads, (ref_dq, ref_dk, ref_dv)):
        assert got.dtype == dtype and torch.isfinite(got).all(), name
        assert _rel(got, want) < grad_tol, name
    if against_dense:
        def dense(q_s, k_s, v_s, idx_s, do_s):
            o_s, lse_s = selected_fwd(q_s, k_s, v_s, idx_s, case.block_slc, scale, small_g=small_g)
            return (o_s, lse_s, *selected_bwd(q_s, k_s, v_s, o_s, lse_s, do_s, idx_s, case.block_slc, scale,
                                              small_g=small_g))

        for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads),
                                   per_sequence(dense, q, k, v, block_idx, do, lens=lens)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_packed_g1_two_kv_heads_fp32() -> None:
    """The padded v2 kernels (fwd tiles, dq tiles, dk/dv) on a packing, NSA's own selection, G = 1."""
    check_packed(packed_case(2, 1), torch.float32, None, seed=200, small_g="padded")


def test_packed_g16_gated_and_dq_chain_fp32() -> None:
    """G = 16, what "auto" runs padded, through the fused gated epilogue and the dq chain."""
    check_packed(packed_case(1, 16, dk=32, dv=16), torch.float32, None, seed=205, small_g="auto", fused=True)


def test_packed_hand_selection_matches_each_sequence_alone() -> None:
    """-1 padding, a duplicate, future blocks; packed == every sequence through the dense path, G = 3."""
    case = packed_case(1, 3, dk=32, dv=48, n_slc=4)
    check_packed(case, torch.float32, packed_hand_selection(case), seed=210, small_g="padded", against_dense=True)


# l' = 128: two 64-key chunks per block (interpreter tiles), a second block at 150; used by
# test_selected_small_g (the padded kernels' chunks go through the same `_block_keys` in dk/dv)
LONG_LENS = (5, 0, 150, 70, 1)


def test_packed_fp16() -> None:
    case = packed_case(1, 2, dk=32, dv=16, n_slc=4)
    check_packed(case, torch.float16, packed_hand_selection(case), seed=220, small_g="padded")


@pytest.mark.parametrize("small_g", ["padded", "small_g"])
def test_packed_backward_with_lists_split_into_segments(monkeypatch: pytest.MonkeyPatch, small_g: str) -> None:
    """16-query segments: block 0 of the 45-token sequence has a 32-query list (two segments); the reduce
    (deterministic) and the atomics run per global block of the packing."""
    from nsa_kernels import _selected_tiles

    monkeypatch.setattr(_selected_tiles, "segment_len", lambda n_slc, block_slc: 16)
    case = packed_case(1, 2, dk=48, dv=32, n_slc=4)
    q, k, v = _inputs(case, torch.float32, seed=230)
    block_idx = packed_hand_selection(case)
    scale, packing = case.dk**-0.5, packing_of()
    o, lse = selected_fwd(q, k, v, block_idx, case.block_slc, scale, small_g=small_g, packing=packing)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(231))
    ref_o, ref_dq, ref_dk, ref_dv = packed_reference_grads(case, q, k, v, block_idx, do, scale)
    assert _rel(o, ref_o) < 1e-4
    for deterministic in (True, False):
        dq, dk, dv = selected_bwd(q, k, v, o, lse, do, block_idx, case.block_slc, scale,
                                  deterministic=deterministic, small_g=small_g, packing=packing)
        assert _rel(dq, ref_dq) < 1e-3 and _rel(dk, ref_dk) < 1e-3 and _rel(dv, ref_dv) < 1e-3, deterministic


def test_invert_selection_packed_lists_rows_per_global_block() -> None:
    """List g * num_blocks + slc_cu[s] + j holds the packed rows of sequence s that selected its local block j."""
    case = packed_case(2, 1, n_slc=4)
    block_idx = packed_hand_selection(case)
    block_idx[0, 50, 1] = torch.tensor([1, 1, 7, 0], dtype=torch.int32)  # a repeat, a block past the end
    packing = packing_of(block_slc=case.block_slc)
    num_blocks = packing.num_slc_blocks(case.block_slc)
    assert num_blocks == sum(-(-n // 32) for n in PACKED_LENS) and packing.max_len == max(PACKED_LENS)
    offsets, queries = invert_selection(block_idx, case.block_slc, num_blocks, packing)
    bounds = packed_cu().tolist()
    for g in range(case.kv_heads):
        vb = 0
        for s, (a, e) in enumerate(zip(bounds, bounds[1:])):
            for j in range(-(-(e - a) // 32)):
                bucket = g * num_blocks + vb
                got = queries[offsets[bucket]: offsets[bucket + 1]].tolist()
                want = [t for t in range(a, e) if j in block_idx[0, t, g].tolist() and j * 32 <= t - a]
                assert got == want, (g, s, j)
                assert int(packing.slc_block_seq(32)[vb]) == s and int(packing.slc_offsets(32)[s]) + j == vb
                vb += 1


def test_packed_bad_input_raises_value_error() -> None:
    case = packed_case(1, 2, dk=16, dv=16)
    q, k, v = _inputs(case, torch.float32, seed=250)
    idx = torch.zeros(1, case.seqlen, 1, 3, dtype=torch.int32)
    o, lse = q[..., :16], q[..., 0]
    short = packing_of((4, 5))
    with pytest.raises(ValueError, match="cu_seqlens"):
        selected_fwd(q, k, v, idx, 32, 0.25, packing=short)
    with pytest.raises(ValueError, match="cu_seqlens"):
        selected_bwd(q, k, v, o, lse, o, idx, 32, 0.25, packing=short)
    with pytest.raises(ValueError, match=r"cu_seqlens: packed batches need the v2 kernels \(variant='v1'\)"):
        selected_fwd(q, k, v, idx, 32, 0.25, variant="v1", packing=packing_of())
    with pytest.raises(ValueError, match=r"cu_seqlens: .*\(dq_variant='v1'\)"):
        selected_bwd(q, k, v, o, lse, o, idx, 32, 0.25, dq_variant="v1", packing=packing_of())
    two = [x.expand(2, *x.shape[1:]).contiguous() for x in (q, k, v, idx)]
    with pytest.raises(ValueError, match="batch size 1"):
        selected_fwd(*two, 32, 0.25, packing=packing_of())
    empty = [x[:, :0] for x in (q, k, v, idx)]
    with pytest.raises(ValueError, match="cu_seqlens holds 65536 sequences"):
        selected_fwd(*empty, 32, 0.25, packing=packing_of((0,) * 65536))
    o_empty, lse_empty = selected_fwd(*empty, 32, 0.25, packing=packing_of((0, 0)))
    assert tuple(o_empty.shape) == (1, 0, 2, 16) and tuple(lse_empty.shape) == (1, 0, 2)


_PACKED_RECORD = r"""
import torch
from nsa_bench.compilecheck.entries import kernel_modules
from nsa_bench.compilecheck.recorder import record_launches
import nsa_kernels.selected as S
from nsa_kernels.packing import Packing

cu = torch.tensor([0, 1, 11, 11, 38, 83, 160], dtype=torch.int32)  # on the CPU, q on meta
packing = Packing.of(cu, 160, 1, torch.device("meta"))
names = []
for g, small_g in ((16, "auto"), (1, "padded"), (4, "auto")):
    meta = lambda *s, dtype=torch.bfloat16: torch.empty(*s, device="meta", dtype=dtype)
    q, k, v = meta(1, 160, 2 * g, 192), meta(1, 160, 2, 192), meta(1, 160, 2, 128)
    o, lse = meta(1, 160, 2 * g, 128), meta(1, 160, 2 * g, dtype=torch.float32)
    idx = meta(1, 160, 2, 16, dtype=torch.int32)

    def host():
        S.selected_fwd(q, k, v, idx, 64, 0.1, small_g=small_g, packing=packing)
        S.selected_fwd(q, k, v, idx, 64, 0.1, out=o, gates=meta(1, 160, 2 * g, 3), accumulate=True,
                       small_g=small_g, packing=packing)
        for deterministic in (True, False):
            S.selected_bwd(q, k, v, o, lse, o, idx, 64, 0.1, deterministic, small_g=small_g, packing=packing)

    for launch in record_launches(kernel_modules(), host):
        fn = getattr(launch.kernel, "fn", launch.kernel)
        names.append((getattr(fn, "__name__", str(fn)), launch.kwargs.get("VARLEN")))
print(sorted(set(names)))
"""


@pytest.mark.subprocess
def test_packed_host_code_runs_on_meta_tensors_with_a_cpu_cu_seqlens() -> None:
    """What the sm_90 compile check does: no host read of a device value, cu_seqlens moved to q's device;
    every kernel that takes VARLEN is launched with it on."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _PACKED_RECORD], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "False)" not in done.stdout and "True)" in done.stdout, done.stdout
