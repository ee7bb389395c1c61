"""kernels/compressed.py against the float64 reference (NSA_SPEC sections 1-3), on the CPU interpreter."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from nsa_bench import reference
from nsa_kernels import compressed, varlen
from nsa_kernels.compressed import compress_bwd, compress_fwd, compressed_bwd, compressed_fwd, select_blocks
from nsa_kernels.config import NSAConfig
from nsa_kernels.packing import Packing

pytestmark = pytest.mark.interpreter

CFG_A = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=4, window=64)
CFG_B = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=64)
CFG_SPILL = NSAConfig(block_cmp=64, stride_cmp=8, block_slc=32, n_slc=4, window=64)  # l/d = 8 > l'/d = 4
CFG_NO_OVERLAP = NSAConfig(block_cmp=16, stride_cmp=16, block_slc=32, n_slc=5, window=64)  # l = d
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclass(frozen=True)
class Case:
    """One shape: batch, seqlen, KV heads, group size G, head dims, block config."""

    batch: int
    seqlen: int
    kv_heads: int
    group: int
    dk: int
    dv: int
    cfg: NSAConfig

    @property
    def num_cmp(self) -> int:
        return self.cfg.num_cmp_blocks(self.seqlen)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _attention_inputs(case: Case, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """q and compressed k/v: random (never zeros), k_cmp with unit spread so scores are not flat."""
    gen = torch.Generator().manual_seed(seed)
    hq = case.kv_heads * case.group
    q = torch.randn(case.batch, case.seqlen, hq, case.dk, generator=gen)
    k_cmp = torch.randn(case.batch, case.num_cmp, case.kv_heads, case.dk, generator=gen)
    v_cmp = torch.randn(case.batch, case.num_cmp, case.kv_heads, case.dv, generator=gen)
    return q.to(dtype), k_cmp.to(dtype), v_cmp.to(dtype)


def _reference_lse(q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float) -> torch.Tensor:
    """float64 lse [B,T,Hq] over the visible blocks; +inf where none is visible (kernel convention)."""
    b, t, hq, _ = q.shape
    hkv = k_cmp.shape[2]
    qg = q.double().reshape(b, t, hkv, hq // hkv, -1)
    logits = torch.einsum("bthgd,bihd->bthgi", qg, k_cmp.double()) * scale
    ends = torch.arange(k_cmp.shape[1]) * cfg.stride_cmp + cfg.block_cmp - 1
    visible = ends[None, :] <= torch.arange(t)[:, None]  # [T, Tc]
    lse = torch.logsumexp(logits.masked_fill(~visible[None, :, None, None, :], float("-inf")), dim=-1)
    none = ~visible.any(dim=-1)[None, :, None, None]
    return torch.where(none, torch.full_like(lse, float("inf")), lse).reshape(b, t, hq)


# ------------------------------------------------------------------ section 1: compression
@pytest.mark.parametrize(
    "shape, block_cmp, stride_cmp, dtype",
    [
        ((2, 77, 2, 32), 32, 16, torch.float32),
        ((1, 257, 3, 16), 16, 8, torch.float32),
        ((1, 100, 2, 24), 64, 8, torch.float16),
        ((2, 50, 1, 32), 32, 16, torch.bfloat16),
        ((1, 1, 2, 16), 32, 16, torch.float32),  # T < l: no block
    ],
)
def test_compress_fwd_matches_reference(shape, block_cmp, stride_cmp, dtype):
    gen = torch.Generator().manual_seed(sum(shape) + block_cmp)
    x = torch.randn(*shape, generator=gen).to(dtype)
    cfg = NSAConfig(block_cmp=block_cmp, stride_cmp=stride_cmp, block_slc=64)
    out = compress_fwd(x, block_cmp, stride_cmp)
    ref = reference.compress_kv(x.double(), x.double(), cfg)[0]
    assert out.shape == ref.shape and out.dtype == dtype
    if ref.numel():
        assert _rel(out, ref) < TOL[dtype]


@pytest.mark.parametrize(
    "shape, block_cmp, stride_cmp", [((2, 77, 2, 32), 32, 16), ((1, 130, 1, 16), 64, 8), ((1, 40, 2, 16), 16, 16)]
)
def test_compress_bwd_matches_autograd(shape, block_cmp, stride_cmp):
    gen = torch.Generator().manual_seed(7 + shape[1])
    cfg = NSAConfig(block_cmp=block_cmp, stride_cmp=stride_cmp, block_slc=64)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    x_cmp = reference.compress_kv(x, x, cfg)[0]
    grad = torch.randn(x_cmp.shape, generator=gen, dtype=torch.float64)
    x_cmp.backward(grad)
    out = compress_bwd(grad.float(), shape[1], block_cmp, stride_cmp)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert _rel(out, x.grad) < 1e-5
    assert compress_bwd(grad.float()[:, :0], block_cmp - 1, block_cmp, stride_cmp).abs().sum() == 0


# ------------------------------------------------------------------ section 2: compressed attention
ATTENTION_CASES = [
    (Case(2, 77, 2, 2, 32, 16, CFG_A), torch.float32),  # Dk != Dv, first 31 rows see nothing
    (Case(1, 257, 1, 16, 32, 32, CFG_B), torch.float32),  # G = 16, several key tiles
    (Case(1, 1, 2, 1, 16, 16, CFG_A), torch.float32),  # T = 1: no block at all
    (Case(1, 129, 2, 3, 32, 16, CFG_B), torch.float16),  # G = 3 (padded heads)
    (Case(1, 100, 1, 2, 40, 24, CFG_A), torch.float32),  # Dk = 32 + 16 (8 masked), Dv not a power of two
    (Case(1, 90, 1, 4, 16, 32, CFG_SPILL), torch.bfloat16),
]


@pytest.mark.parametrize("case, dtype", ATTENTION_CASES)
def test_compressed_fwd_matches_reference(case, dtype):
    q, k_cmp, v_cmp = _attention_inputs(case, dtype, seed=case.seqlen + case.group)
    scale = case.dk**-0.5
    o, lse = compressed_fwd(q, k_cmp, v_cmp, case.cfg, scale)
    ref = reference.compressed_attention(q.double(), k_cmp.double(), v_cmp.double(), case.cfg, scale)
    assert o.shape == ref.shape and o.dtype == dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    blind = min(case.seqlen, case.cfg.block_cmp - 1)  # rows t < l - 1 see no block
    assert torch.all(o[:, :blind] == 0) and not torch.isnan(o).any()
    assert torch.all(lse[:, :blind] == float("inf"))
    if blind < case.seqlen:
        assert _rel(o, ref) < TOL[dtype]
        ref_lse = _reference_lse(q, k_cmp, case.cfg, scale)
        assert _rel(lse[:, blind:], ref_lse[:, blind:]) < TOL[dtype]


BWD_CASES = [
    *ATTENTION_CASES[:5],
    (Case(1, 161, 1, 16, 192, 128, CFG_A), torch.float32),  # the paper's head layout, T % 16, 32, 64 != 0
    (Case(1, 37, 1, 64, 16, 16, CFG_B), torch.float32),  # G = 64: one position per 64-row tile
]


@pytest.mark.parametrize("dkv_variant", ["v1", "v2"])
@pytest.mark.parametrize("case, dtype", BWD_CASES)
def test_compressed_bwd_matches_autograd(case, dtype, dkv_variant):
    q, k_cmp, v_cmp = _attention_inputs(case, dtype, seed=3 * case.seqlen + case.group)
    scale = case.dk**-0.5
    o, lse = compressed_fwd(q, k_cmp, v_cmp, case.cfg, scale)
    gen = torch.Generator().manual_seed(11)
    do = torch.randn(o.shape, generator=gen).to(dtype)
    dq, dk, dv = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, scale, dkv_variant=dkv_variant)
    leaves = [x.double().requires_grad_() for x in (q, k_cmp, v_cmp)]
    reference.compressed_attention(*leaves, case.cfg, scale).backward(do.double())
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    for name, got, leaf in (("dq", dq, leaves[0]), ("dk_cmp", dk, leaves[1]), ("dv_cmp", dv, leaves[2])):
        assert got.shape == leaf.shape and got.dtype == dtype, name
        if leaf.grad is not None and leaf.grad.abs().sum() > 0:
            assert _rel(got, leaf.grad) < tol, name
        else:
            assert got.abs().sum() == 0, name


def test_compressed_bwd_v2_crosses_chunks_and_is_bit_reproducible():
    """v2 sums fp32 partials of several query chunks in a fixed order: identical bits on every run."""
    case = Case(1, 150, 1, 3, 48, 16, CFG_B)
    b, t, hkv = case.batch, case.seqlen, case.kv_heads
    chunk, chunks = compressed._dkv_chunks(t, case.num_cmp, b * case.num_cmp * hkv, case.dk, case.dv)
    assert chunks > 2 and chunk < t, "the partials path must be exercised"
    q, k_cmp, v_cmp = _attention_inputs(case, torch.float32, seed=17)
    o, lse = compressed_fwd(q, k_cmp, v_cmp, case.cfg, 0.2)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(18))
    first = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, 0.2)
    again = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, 0.2)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    old = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, 0.2, dkv_variant="v1")
    assert torch.equal(first[0], old[0])  # dq is the same kernel in both variants
    assert _rel(first[1], old[1]) < 1e-5 and _rel(first[2], old[2]) < 1e-5


def test_compressed_bwd_writes_dq_where_asked():
    """dq_out (NSA's fp32 dq accumulator) receives dq; the returned dq is that tensor."""
    case = Case(1, 70, 1, 2, 32, 16, CFG_B)
    q, k_cmp, v_cmp = _attention_inputs(case, torch.float16, seed=19)
    o, lse = compressed_fwd(q, k_cmp, v_cmp, case.cfg, 0.2)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(20)).half()
    plain = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, 0.2)
    acc = torch.full(q.shape, float("nan"))
    got = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, 0.2, dq_out=acc)
    assert got[0] is acc and _rel(acc, plain[0]) < 1e-3 and torch.equal(got[1], plain[1])
    with pytest.raises(ValueError, match="dq_out shape"):
        compressed_bwd(q, k_cmp, v_cmp, o, lse, do, case.cfg, 0.2, dq_out=acc[:, :5])


def test_compressed_bwd_rejects_unknown_variant():
    case = Case(1, 64, 1, 2, 16, 16, CFG_A)
    q, k_cmp, v_cmp = _attention_inputs(case, torch.float32, seed=1)
    o, lse = compressed_fwd(q, k_cmp, v_cmp, case.cfg, 0.25)
    with pytest.raises(ValueError, match="dkv_variant='v3'"):
        compressed_bwd(q, k_cmp, v_cmp, o, lse, o, case.cfg, 0.25, dkv_variant="v3")


def test_dkv_chunks_bound_the_partials():
    """64k paper shape: 32 chunks of 2048 positions; 1M tokens: fewer chunks, partials <= 1 GiB."""
    tc_64k, tc_1m = (65536 - 32) // 16 + 1, (1 << 20) - 32
    for t, tc in ((65536, tc_64k), (1 << 20, tc_1m // 16 + 1)):
        rows = tc * 4
        chunk, chunks = compressed._dkv_chunks(t, tc, rows, 192, 128)
        assert chunks * chunk >= t and chunks * rows * 320 * 4 <= compressed._DKV_PARTIAL_BUDGET
    if not compressed.interpreting():
        assert compressed._dkv_chunks(65536, tc_64k, tc_64k * 4, 192, 128) == (2048, 32)


# ------------------------------------------------------------------ section 2: fused gated epilogue
def _gated_inputs(case: Case, out_dtype: torch.dtype, gate_dtype: torch.dtype, accumulate: bool, seed: int):
    """(out, gates): a random out to accumulate onto, else NaN so every element must be written."""
    gen = torch.Generator().manual_seed(seed)
    shape = (case.batch, case.seqlen, case.kv_heads * case.group)
    gates = torch.rand(*shape, 3, generator=gen).to(gate_dtype)
    out = torch.randn(*shape, case.dv, generator=gen) if accumulate else torch.full((*shape, case.dv), float("nan"))
    return out.to(out_dtype), gates


GATED_CASES = [  # case, q/k/v dtype, out dtype, gates dtype, gate_index
    (Case(2, 77, 2, 2, 32, 16, CFG_A), torch.float32, torch.float32, torch.float32, 0),  # T % tile, Dk != Dv, G > 1
    (Case(1, 100, 1, 1, 40, 24, CFG_A), torch.float32, torch.float32, torch.float32, 2),  # G = 1, Dk = 32 + 16
    (Case(1, 70, 2, 3, 32, 16, CFG_B), torch.float32, torch.float16, torch.float32, 1),  # fp16 out, padded heads
    (Case(1, 61, 1, 2, 16, 32, CFG_B), torch.float16, torch.float32, torch.float16, 1),  # fp16 inputs, fp32 out
    (Case(1, 50, 2, 2, 32, 16, CFG_A), torch.bfloat16, torch.bfloat16, torch.bfloat16, 2),
    (Case(1, 1, 2, 1, 16, 16, CFG_A), torch.float32, torch.float32, torch.float32, 0),  # T = 1: no block at all
]


@pytest.mark.parametrize("case, dtype, out_dtype, gate_dtype, gate_index", GATED_CASES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_gated_epilogue_matches_unfused(case, dtype, out_dtype, gate_dtype, gate_index, accumulate):
    """out = (out if accumulate else 0) + gates[..., i] * o, o and lse from the unfused launch."""
    q, k_cmp, v_cmp = _attention_inputs(case, dtype, seed=7 * case.seqlen + case.group)
    scale = case.dk**-0.5
    o, lse = compressed_fwd(q, k_cmp, v_cmp, case.cfg, scale)
    out, gates = _gated_inputs(case, out_dtype, gate_dtype, accumulate, seed=case.seqlen)
    before = out.clone()
    returned, lse_gated = compressed_fwd(q, k_cmp, v_cmp, case.cfg, scale, out=out, gates=gates,
                                         gate_index=gate_index, accumulate=accumulate)
    assert returned is out and out.dtype == out_dtype
    assert torch.equal(lse_gated, lse)
    expected = gates[..., gate_index : gate_index + 1].double() * o.double()
    if accumulate:
        expected = expected + before.double()
    assert not torch.isnan(out).any()
    blind = min(case.seqlen, case.cfg.block_cmp - 1)  # rows with no block add exactly 0
    assert torch.equal(out[:, :blind], before[:, :blind] if accumulate else torch.zeros_like(out[:, :blind]))
    exact = dtype == out_dtype == gate_dtype == torch.float32
    assert _rel(out, expected) < (1e-5 if exact else 1e-2)


def test_gated_epilogue_accumulates_three_launches():
    """gate_index 0, then 1 and 2 accumulating (the NSA use): the gated sum of three outputs."""
    case = Case(1, 90, 2, 2, 32, 16, CFG_B)
    scale = 0.2
    out = torch.full((1, 90, 4, 16), float("nan"))
    gates = torch.rand(1, 90, 4, 3, generator=torch.Generator().manual_seed(3))
    expected = torch.zeros(out.shape, dtype=torch.float64)
    for gate_index in range(3):
        q, k_cmp, v_cmp = _attention_inputs(case, torch.float32, seed=40 + gate_index)
        o, _ = compressed_fwd(q, k_cmp, v_cmp, case.cfg, scale)
        expected += gates[..., gate_index : gate_index + 1].double() * o.double()
        compressed_fwd(q, k_cmp, v_cmp, case.cfg, scale, out=out, gates=gates, gate_index=gate_index,
                       accumulate=gate_index > 0)
    assert _rel(out, expected) < 1e-5


def test_gated_accumulate_tuner_restores_out():
    """On the GPU the tuner times several configs: an accumulating launch must get O restored."""
    assert compressed._cmp_fwd_tuned_accumulate.restore_value == ["O"]
    assert "O" in compressed._cmp_fwd_kernel.arg_names
    assert not compressed._cmp_fwd_tuned.restore_value  # the default path keeps no copy of O


def _gated_args() -> dict:
    return {"out": torch.zeros(1, 64, 2, 16), "gates": torch.rand(1, 64, 2, 3)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"out": torch.zeros(1, 64, 2, 16)}, "gates is required", id="out-without-gates"),
        pytest.param({"gates": torch.rand(1, 64, 2, 3)}, "gates given without out", id="gates-without-out"),
        pytest.param({"accumulate": True}, "accumulate=True needs out", id="accumulate-without-out"),
        pytest.param({**_gated_args(), "gate_index": 3}, "gate_index=3", id="gate-index-3"),
        pytest.param({**_gated_args(), "gate_index": -1}, "gate_index=-1", id="gate-index-negative"),
        pytest.param({**_gated_args(), "gate_index": True}, "gate_index=True", id="gate-index-bool"),
        pytest.param({**_gated_args(), "accumulate": 1}, "accumulate=1", id="accumulate-int"),
        pytest.param({**_gated_args(), "out": torch.zeros(1, 64, 2, 32)}, r"out shape \(1, 64, 2, 32\)",
                     id="out-shape"),
        pytest.param({**_gated_args(), "gates": torch.rand(1, 64, 2, 2)}, r"gates shape \(1, 64, 2, 2\)",
                     id="gates-shape"),
        pytest.param({**_gated_args(), "out": torch.zeros(1, 64, 2, 16, dtype=torch.float64)}, "out dtype",
                     id="out-dtype"),
        pytest.param({**_gated_args(), "gates": torch.ones(1, 64, 2, 3, dtype=torch.int32)}, "gates dtype",
                     id="gates-dtype"),
        pytest.param({**_gated_args(), "out": torch.zeros(1, 2, 64, 16).transpose(1, 2)}, "out must be contiguous",
                     id="out-strided"),
        pytest.param({**_gated_args(), "gates": torch.rand(1, 64, 3, 2).transpose(2, 3)},
                     "gates must be contiguous", id="gates-strided"),
        pytest.param({**_gated_args(), "out": torch.zeros(1, 64, 2, 16, device="meta")}, "out is on meta",
                     id="out-device"),
        pytest.param({**_gated_args(), "gates": [[0.5]]}, "gates must be a tensor", id="gates-not-tensor"),
    ],
)
def test_gated_bad_arguments_raise_value_error(kwargs, message):
    case = Case(1, 64, 1, 2, 16, 16, CFG_A)
    q, k_cmp, v_cmp = _attention_inputs(case, torch.float32, seed=1)
    with pytest.raises(ValueError, match=message):
        compressed_fwd(q, k_cmp, v_cmp, case.cfg, 0.25, **kwargs)


# ------------------------------------------------------------------ section 3: selection
def _check_selection(block_idx: torch.Tensor, scores: torch.Tensor, cfg: NSAConfig, tol: float,
                     positions: torch.Tensor | None = None) -> None:
    """Validity per NSA_SPEC section 3 against float64 group scores S [B,T,Hkv,Nslc]; `positions` [T]:
    each row's position in its sequence (packed batches: local), default 0..T-1."""
    b, t, hkv, _ = scores.shape
    assert block_idx.shape == (b, t, hkv, cfg.n_slc) and block_idx.dtype == torch.int32
    positions = torch.arange(t) if positions is None else positions
    for r in range(t):
        pos = int(positions[r])
        current = pos // cfg.block_slc
        count = min(cfg.n_slc, current + 1)
        forced = {0, current, current - 1} - {-1}
        for bi in range(b):
            for g in range(hkv):
                row = block_idx[bi, r, g].tolist()
                chosen = [j for j in row if j != -1]
                assert row.count(-1) == cfg.n_slc - count, (bi, pos, g, row)
                assert len(set(chosen)) == len(chosen), (bi, pos, g, row)
                assert all(0 <= j <= current for j in chosen), (bi, pos, g, row)
                assert forced <= set(chosen), (bi, pos, g, row)
                s = scores[bi, r, g]
                free = [j for j in chosen if j not in forced]
                left = [j for j in range(current + 1) if j not in chosen]
                if free and left:
                    assert min(s[free]) >= max(s[left]) - tol, (bi, pos, g, row)


def _boundary_gap(scores: torch.Tensor, cfg: NSAConfig, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: smallest gap between consecutive ranked non-forced candidate scores (inf if none)."""
    b, t, hkv, nslc = scores.shape
    j = torch.arange(nslc)
    positions = torch.arange(t) if positions is None else positions
    current = (positions // cfg.block_slc)[:, None]
    free = (j <= current) & (j != 0) & (j != current) & (j != current - 1)  # [T, Nslc]
    ranked = torch.where(free[None, :, None, :], scores, torch.full_like(scores, float("-inf")))
    ranked = ranked.sort(dim=-1, descending=True).values
    gaps = ranked[..., :-1] - ranked[..., 1:]
    gaps = torch.where(torch.isfinite(gaps), gaps, torch.full_like(gaps, float("inf")))
    return gaps.amin(dim=-1) if nslc > 1 else torch.full(scores.shape[:3], float("inf"), dtype=scores.dtype)


SELECT_CASES = [
    (Case(2, 257, 2, 2, 32, 16, CFG_A), torch.float32),  # batch 2, T not a multiple of l'
    (Case(1, 257, 1, 16, 16, 16, CFG_B), torch.float32),  # G = 16, 9 selection blocks, n = 3
    (Case(1, 200, 2, 1, 32, 16, CFG_SPILL), torch.float32),  # G = 1, compressed blocks spill across tiles
    (Case(1, 150, 1, 3, 48, 16, CFG_NO_OVERLAP), torch.float32),  # l = d, padded heads, Dk = 32 + 16
    (Case(1, 77, 2, 2, 32, 16, NSAConfig(32, 16, 64, 16, 64)), torch.float32),  # n > number of blocks
    (Case(1, 20, 1, 2, 16, 16, CFG_B), torch.float32),  # T < l: no compressed block, T < l'
    (Case(1, 1, 1, 2, 16, 16, CFG_A), torch.float32),  # T = 1
    (Case(1, 257, 2, 2, 32, 16, CFG_B), torch.float16),
    (Case(1, 130, 1, 4, 32, 16, CFG_A), torch.bfloat16),
]


@pytest.mark.parametrize("case, dtype", SELECT_CASES)
def test_select_blocks_valid_and_matches_reference(case, dtype):
    q, k_cmp, _ = _attention_inputs(case, dtype, seed=5 * case.seqlen + case.group)
    scale = case.dk**-0.5
    _, lse = compressed_fwd(q, k_cmp, k_cmp, case.cfg, scale)
    block_idx = select_blocks(q, k_cmp, case.cfg, scale, lse=lse)
    scores = reference.block_scores(q.double(), k_cmp.double(), case.cfg, scale)
    _check_selection(block_idx, scores, case.cfg, tol=1e-5 if dtype == torch.float32 else 2e-2)
    if dtype == torch.float32:
        expected = reference.select_blocks(q.double(), k_cmp.double(), case.cfg, scale)
        clear = _boundary_gap(scores, case.cfg) > 1e-4  # rows without a near-tie must match exactly
        got = block_idx.sort(dim=-1).values[clear]
        want = expected.sort(dim=-1).values[clear]
        assert torch.equal(got, want)
        assert clear.float().mean() > 0.9  # the exact comparison covers most rows


def test_select_blocks_exact_ties_go_to_lower_block():
    """Identical compressed keys make every fully visible block score the same: lower j must win."""
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=5, window=64)
    case = Case(1, 257, 2, 2, 32, 16, cfg)
    q, k_cmp, _ = _attention_inputs(case, torch.float32, seed=21)
    k_cmp = k_cmp[:, :1].expand_as(k_cmp).contiguous()
    block_idx = select_blocks(q, k_cmp, cfg, 0.2)
    expected = reference.select_blocks(q.double(), k_cmp.double(), cfg, 0.2)
    assert torch.equal(block_idx.sort(dim=-1).values, expected.sort(dim=-1).values)
    last = block_idx[0, -1, 0].tolist()  # t = 256: forced {0, 7, 8}, then the lowest tied blocks 1 and 2
    assert sorted(last) == [0, 1, 2, 7, 8]


def test_select_blocks_computes_lse_when_absent():
    case = Case(1, 150, 2, 2, 32, 16, CFG_A)
    q, k_cmp, _ = _attention_inputs(case, torch.float32, seed=99)
    scale = 0.3
    _, lse = compressed_fwd(q, k_cmp, k_cmp, case.cfg, scale)
    assert torch.equal(select_blocks(q, k_cmp, case.cfg, scale), select_blocks(q, k_cmp, case.cfg, scale, lse=lse))


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_value_error():
    case = Case(1, 64, 1, 2, 16, 16, CFG_A)
    q, k_cmp, v_cmp = _attention_inputs(case, torch.float32, seed=1)
    with pytest.raises(ValueError, match="block_slc=48"):
        compressed_fwd(q, k_cmp, v_cmp, NSAConfig(32, 16, 48, 4, 64), 0.25)
    with pytest.raises(ValueError, match="n_slc=65"):
        select_blocks(q, k_cmp, NSAConfig(32, 16, 64, 65, 64), 0.25)
    with pytest.raises(ValueError, match="Dk"):
        compressed_fwd(q[..., :8], k_cmp[..., :8], v_cmp, case.cfg, 0.25)
    with pytest.raises(ValueError, match="scale"):
        compressed_fwd(q, k_cmp, v_cmp, case.cfg, -1.0)
    with pytest.raises(ValueError, match="lse"):
        select_blocks(q, k_cmp, case.cfg, 0.25, lse=torch.zeros(1, 64, 3))
    with pytest.raises(ValueError, match="stride_cmp=24"):
        compress_fwd(q, 32, 24)
    with pytest.raises(ValueError, match="Tc=3"):
        compress_bwd(torch.randn(1, 3, 1, 16), 80, 32, 16)
    with pytest.raises(ValueError, match="dtype"):
        compressed_fwd(q.double(), k_cmp.double(), v_cmp.double(), case.cfg, 0.25)


# ------------------------------------------------------------------ packed batches (cu_seqlens, docs/varlen.md)
# Lengths: one token; 10 < l = 16 (no compressed block); 25 < l' = 32 (two blocks); an empty sequence;
# 45; and 77, a multiple of no tile (16, 32, 64). The packed boundaries 1, 11, 36, 81 fall inside the
# buffer's compression (d = 8) and selection (l' = 32) blocks. Under the interpreter the chunked dK/dV
# runs 32-position chunks, so the 77-token sequence crosses three of them (the partials path).
PACKED_LENS = (1, 10, 25, 0, 45, 77)
PACKED_ONE_CHUNK = (0, 16, 31, 3, 24, 0)  # empty first and last; every sequence within one dK/dV chunk


def _packed_inputs(lengths, kv_heads: int, group: int, dk: int, dv: int, cfg: NSAConfig, dtype: torch.dtype,
                   seed: int):
    """(q [1,total,Hq,Dk], k_cmp, v_cmp [1,sum Tc_s,Hkv,*], cu_seqlens): random float64 cast to dtype."""
    gen = torch.Generator().manual_seed(seed)
    cu = varlen.cu_seqlens_of(lengths)
    total, total_cmp = int(cu[-1]), sum(cfg.num_cmp_blocks(n) for n in lengths)
    q = torch.randn(1, total, kv_heads * group, dk, generator=gen, dtype=torch.float64)
    k_cmp = torch.randn(1, total_cmp, kv_heads, dk, generator=gen, dtype=torch.float64)
    v_cmp = torch.randn(1, total_cmp, kv_heads, dv, generator=gen, dtype=torch.float64)
    return q.to(dtype), k_cmp.to(dtype), v_cmp.to(dtype), cu


def _packing(cu: torch.Tensor, x: torch.Tensor) -> Packing:
    """The packed batch as the wrappers take it (nsa.py builds it once a call), for x [1, total_T, ...]."""
    return Packing.of(cu, x.shape[1], 1, x.device)


def _sequences(cu: torch.Tensor, cfg: NSAConfig) -> list[tuple[slice, slice]]:
    """(token slice, compressed-block slice) of every non-empty sequence."""
    cmp = varlen.cmp_cu_seqlens(cu, cfg).tolist()
    return [(slice(s, e), slice(cmp[i], cmp[i + 1])) for i, (s, e) in enumerate(varlen.spans(cu, int(cu[-1])))
            if e > s]


def _local_positions(cu: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in varlen.seqlens(cu)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_compress_packed_matches_reference(dtype):
    cfg = CFG_B
    cu = varlen.cu_seqlens_of(PACKED_LENS)
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(1, int(cu[-1]), 2, 24, generator=gen, dtype=torch.float64)
    out = compress_fwd(x.to(dtype), cfg.block_cmp, cfg.stride_cmp, packing=_packing(cu, x))
    leaf = x.clone().requires_grad_()
    ref = reference.compress_kv(leaf, leaf, cfg, cu_seqlens=cu)[0]
    assert out.shape == ref.shape == (1, sum(cfg.num_cmp_blocks(n) for n in PACKED_LENS), 2, 24)
    assert out.dtype == dtype and _rel(out, ref) < TOL[dtype]
    alone = torch.cat([compress_fwd(x[:, tok].to(dtype), cfg.block_cmp, cfg.stride_cmp) for tok, _ in
                       _sequences(cu, cfg)], dim=1)
    assert torch.equal(out, alone)
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref.backward(grad)
    dx = compress_bwd(grad.to(dtype), int(cu[-1]), cfg.block_cmp, cfg.stride_cmp, packing=_packing(cu, x))
    assert dx.shape == x.shape and _rel(dx, leaf.grad) < TOL[dtype]
    assert torch.all(dx[0, :11] == 0)  # the first two sequences (1 and 10 tokens) have no block


PACKED_ATTENTION_CASES = [  # lengths, Hkv, G, Dk, Dv, dtype
    (PACKED_LENS, 1, 1, 32, 16, torch.float32),  # G = 1, Dk != Dv
    (PACKED_LENS, 2, 3, 48, 16, torch.float32),  # G = 3 (padded heads), Dk = 32 + 16
    (PACKED_ONE_CHUNK, 2, 2, 16, 32, torch.float16),
]


@pytest.mark.parametrize("lengths, hkv, group, dk, dv, dtype", PACKED_ATTENTION_CASES)
def test_compressed_fwd_packed_matches_reference_and_dense(lengths, hkv, group, dk, dv, dtype):
    """Each row sees its own sequence's blocks only; rows seeing none: o = 0, lse = +inf; packed == alone."""
    cfg = CFG_B
    q, k_cmp, v_cmp, cu = _packed_inputs(lengths, hkv, group, dk, dv, cfg, dtype, seed=sum(lengths) + group)
    scale = dk**-0.5
    o, lse = compressed_fwd(q, k_cmp, v_cmp, cfg, scale, packing=_packing(cu, q))
    ref = reference.compressed_attention(q.double(), k_cmp.double(), v_cmp.double(), cfg, scale, cu_seqlens=cu)
    assert o.shape == ref.shape == (*q.shape[:3], dv) and lse.shape == q.shape[:3]
    assert _rel(o, ref) < TOL[dtype]
    blind = _local_positions(cu) < cfg.block_cmp - 1
    assert torch.all(o[:, blind] == 0) and torch.all(lse[:, blind] == float("inf"))
    for tok, cmp in _sequences(cu, cfg):
        o_alone, lse_alone = compressed_fwd(q[:, tok], k_cmp[:, cmp], v_cmp[:, cmp], cfg, scale)
        assert torch.equal(o[:, tok], o_alone) and torch.equal(lse[:, tok], lse_alone)
        seen = ~blind[tok]
        if seen.any():
            ref_lse = _reference_lse(q[:, tok], k_cmp[:, cmp], cfg, scale)
            assert _rel(lse[:, tok][:, seen], ref_lse[:, seen]) < TOL[dtype]


def test_gated_epilogue_packed_matches_unfused():
    cfg = CFG_B
    q, k_cmp, v_cmp, cu = _packed_inputs(PACKED_LENS, 2, 2, 32, 16, cfg, torch.float32, seed=5)
    o, lse = compressed_fwd(q, k_cmp, v_cmp, cfg, 0.2, packing=_packing(cu, q))
    gen = torch.Generator().manual_seed(6)
    gates = torch.rand(*q.shape[:3], 3, generator=gen)
    out = torch.randn(o.shape, generator=gen)
    before = out.clone()
    got, lse_gated = compressed_fwd(q, k_cmp, v_cmp, cfg, 0.2, out=out, gates=gates, gate_index=1, accumulate=True,
                                    packing=_packing(cu, q))
    assert got is out and torch.equal(lse_gated, lse)
    assert _rel(out, before.double() + gates[..., 1:2].double() * o.double()) < 1e-5


PACKED_SELECT_CASES = [  # lengths, Hkv, G, Dk, n_slc
    (PACKED_LENS, 2, 2, 32, 3),
    ((40, 0, 130, 7), 1, 1, 16, 4),  # G = 1, 5 selection blocks in the long one
]


@pytest.mark.parametrize("lengths, hkv, group, dk, n_slc", PACKED_SELECT_CASES)
def test_select_blocks_packed_local_and_valid(lengths, hkv, group, dk, n_slc):
    """Local block numbers, forced blocks and the top-n rule per sequence (T = L_s); packed == alone."""
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=n_slc, window=64)
    q, k_cmp, _, cu = _packed_inputs(lengths, hkv, group, dk, 16, cfg, torch.float32, seed=3 * sum(lengths))
    scale = dk**-0.5
    _, lse = compressed_fwd(q, k_cmp, k_cmp, cfg, scale, packing=_packing(cu, q))
    block_idx = select_blocks(q, k_cmp, cfg, scale, lse=lse, packing=_packing(cu, q))
    assert torch.equal(block_idx, select_blocks(q, k_cmp, cfg, scale, packing=_packing(cu, q)))  # lse-only pass
    positions = _local_positions(cu)
    scores = reference.block_scores(q.double(), k_cmp.double(), cfg, scale, cu_seqlens=cu)
    _check_selection(block_idx, scores, cfg, tol=1e-5, positions=positions)
    expected = reference.select_blocks(q.double(), k_cmp.double(), cfg, scale, cu_seqlens=cu)
    clear = _boundary_gap(scores, cfg, positions) > 1e-4
    assert torch.equal(block_idx.sort(dim=-1).values[clear], expected.sort(dim=-1).values[clear])
    assert clear.float().mean() > 0.9
    for tok, cmp in _sequences(cu, cfg):
        assert torch.equal(block_idx[:, tok], select_blocks(q[:, tok], k_cmp[:, cmp], cfg, scale))


@pytest.mark.parametrize("lengths, hkv, group, dk, dv, dtype", [
    (PACKED_LENS, 2, 2, 32, 16, torch.float32),  # chunked dK/dV partials
    (PACKED_ONE_CHUNK, 1, 3, 16, 32, torch.float32),  # one chunk: dk_cmp/dv_cmp stored directly
    (PACKED_LENS, 1, 1, 16, 16, torch.float16),
])
def test_compressed_bwd_packed_matches_autograd(lengths, hkv, group, dk, dv, dtype):
    cfg = CFG_B
    q, k_cmp, v_cmp, cu = _packed_inputs(lengths, hkv, group, dk, dv, cfg, dtype, seed=7 * sum(lengths) + group)
    scale = dk**-0.5
    o, lse = compressed_fwd(q, k_cmp, v_cmp, cfg, scale, packing=_packing(cu, q))
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64).to(dtype)
    dq_out = torch.full(q.shape, float("nan"))
    dq, dk_cmp, dv_cmp = compressed_bwd(q, k_cmp, v_cmp, o, lse, do, cfg, scale, dq_out=dq_out, packing=_packing(cu, q))
    assert dq is dq_out
    leaves = [x.double().requires_grad_() for x in (q, k_cmp, v_cmp)]
    reference.compressed_attention(*leaves, cfg, scale, cu_seqlens=cu).backward(do.double())
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for name, got, leaf in (("dq", dq, leaves[0]), ("dk_cmp", dk_cmp, leaves[1]), ("dv_cmp", dv_cmp, leaves[2])):
        assert got.shape == leaf.shape, name
        assert _rel(got, leaf.grad) < tol, name
    assert torch.all(dq[:, _local_positions(cu) < cfg.block_cmp - 1] == 0)
    for tok, cmp in _sequences(cu, cfg):
        alone = compressed_bwd(q[:, tok], k_cmp[:, cmp], v_cmp[:, cmp], o[:, tok], lse[:, tok], do[:, tok], cfg,
                               scale, dq_out=torch.empty(q[:, tok].shape))
        assert torch.equal(dq[:, tok], alone[0])
        assert _rel(dk_cmp[:, cmp], alone[1]) < 1e-6 and _rel(dv_cmp[:, cmp], alone[2]) < 1e-6


def test_packed_bad_input_raises_value_error():
    cfg = CFG_B
    q, k_cmp, v_cmp, cu = _packed_inputs((20, 30), 1, 2, 16, 16, cfg, torch.float32, seed=1)
    packing = _packing(cu, q)
    o, lse = compressed_fwd(q, k_cmp, v_cmp, cfg, 0.25, packing=packing)
    short = Packing.of(torch.tensor([0, 20, 49], dtype=torch.int32), 49, 1, q.device)  # ends before total_T = 50
    with pytest.raises(ValueError, match="cu_seqlens"):
        compressed_fwd(q, k_cmp, v_cmp, cfg, 0.25, packing=short)
    with pytest.raises(ValueError, match="cu_seqlens"):
        select_blocks(q, k_cmp, cfg, 0.25, packing=short)
    with pytest.raises(ValueError, match="cu_seqlens"):
        compress_fwd(q, 16, 8, packing=short)
    with pytest.raises(ValueError, match="cu_seqlens"):
        compress_fwd(q.expand(2, -1, -1, -1), 16, 8, packing=packing)  # a packed batch has B = 1
    with pytest.raises(ValueError, match="cu_seqlens"):  # refused where a raw cu_seqlens becomes a Packing
        compressed_bwd(q, k_cmp, v_cmp, o, lse, o, cfg, 0.25, packing=_packing(cu.float(), q))
    with pytest.raises(ValueError, match="k_cmp holds 2 compressed blocks"):
        compressed_fwd(q, k_cmp[:, :2], v_cmp[:, :2], cfg, 0.25, packing=packing)
    with pytest.raises(ValueError, match="k_cmp"):
        select_blocks(q, k_cmp[:, :2], cfg, 0.25, packing=packing)
    with pytest.raises(ValueError, match="dx_cmp"):
        compress_bwd(k_cmp[:, :2], 50, 16, 8, packing=packing)
    v2_only = r"cu_seqlens: packed batches need the v2 kernels"
    with pytest.raises(ValueError, match=v2_only + r" \(variant='v1'\)"):
        compressed_fwd(q, k_cmp, v_cmp, cfg, 0.25, variant="v1", packing=packing)
    with pytest.raises(ValueError, match=v2_only):
        select_blocks(q, k_cmp, cfg, 0.25, variant="v1", packing=packing)
    for kwargs in ({"dkv_variant": "v1"}, {"dq_variant": "v1"}):
        with pytest.raises(ValueError, match=v2_only):
            compressed_bwd(q, k_cmp, v_cmp, o, lse, o, cfg, 0.25, packing=packing, **kwargs)


def test_packed_host_code_takes_meta_tensors_and_a_cpu_cu_seqlens():
    """The sm_90 compile check's call: meta q/k/v, cu_seqlens on the CPU. The wrappers read lengths on
    the host only and launch every kernel VARLEN over (tiles of the longest sequence, N x heads)."""
    from nsa_bench.compilecheck.recorder import record_launches

    cfg, lengths, hkv, hq = CFG_A, (2000, 0, 3, 2093), 2, 8
    cu = varlen.cu_seqlens_of(lengths)
    total = sum(lengths)
    meta = lambda *shape, dtype=torch.float16: torch.empty(*shape, device="meta", dtype=dtype)  # noqa: E731

    def host() -> None:
        q, k = meta(1, total, hq, 64), meta(1, total, hkv, 64)
        packing = _packing(cu, q)
        k_cmp = compress_fwd(k, cfg.block_cmp, cfg.stride_cmp, packing=packing)
        assert k_cmp.shape == (1, sum(cfg.num_cmp_blocks(n) for n in lengths), hkv, 64)
        o, lse = compressed_fwd(q, k_cmp, k_cmp, cfg, 0.125, packing=packing)
        compressed_fwd(q, k_cmp, k_cmp, cfg, 0.125, out=meta(*o.shape), gates=meta(1, total, hq, 3), accumulate=True,
                       packing=packing)
        select_blocks(q, k_cmp, cfg, 0.125, packing=packing)
        compressed_bwd(q, k_cmp, k_cmp, o, lse, o, cfg, 0.125, dq_out=meta(*q.shape, dtype=torch.float32),
                       packing=packing)
        compress_bwd(k_cmp, total, cfg.block_cmp, cfg.stride_cmp, packing=packing)

    launches = record_launches([compressed], host)
    names = []
    for launch in launches:
        kernel = launch.kernel
        while hasattr(kernel, "fn"):
            kernel = kernel.fn
        names.append(kernel.__name__)
        if kernel.__name__ == "_delta_kernel":  # row-wise over all packed rows: no sequence structure
            continue
        assert launch.kwargs.get("VARLEN") is True, kernel.__name__
        grid = launch.grid({**launch.kwargs, "BLOCK_M": 64, "BLOCK_N": 16}) if callable(launch.grid) else launch.grid
        assert grid[1] == len(lengths) * hkv, (kernel.__name__, grid)
        offsets = [a for a in (*launch.args, *launch.kwargs.values()) if isinstance(a, torch.Tensor)
                   and a.dtype == torch.int32 and a.dim() == 1 and a.shape[0] == len(lengths) + 1]
        assert len(offsets) == 2 and all(a.device.type == "meta" for a in offsets), kernel.__name__
    assert {"_compress_fwd_kernel", "_cmp_fwd_kernel", "_select_kernel", "_cmp_bwd_dq_kernel",
            "_cmp_bwd_dkv_chunk_kernel", "_cmp_dkv_reduce_kernel", "_compress_bwd_kernel"} <= set(names)


def test_packed_grid_limit_is_a_value_error():
    """Sequences x heads run on CUDA grid axis 1 (at most 65535): past it, a ValueError naming cu_seqlens, not a
    launch failure on the GPU (meta tensors: nothing runs)."""
    from nsa_kernels import varlen

    cu = varlen.cu_seqlens_of([2] * 16384)  # x 4 KV heads = 65536 programs on axis 1
    x = torch.empty(1, 2 * 16384, 4, 32, device="meta", dtype=torch.float16)
    with pytest.raises(ValueError, match="cu_seqlens holds 16384 sequences.*at most 16383"):
        compressed.compress_fwd(x, 16, 8, packing=_packing(cu, x))
    k_cmp = torch.empty(1, 0, 4, 32, device="meta", dtype=torch.float16)
    q = torch.empty(1, 2 * 16384, 8, 32, device="meta", dtype=torch.float16)
    with pytest.raises(ValueError, match="at most 16383"):
        compressed.compressed_fwd(q, k_cmp, k_cmp, CFG_B, 0.1, packing=_packing(cu, q))
