"""kernels/flash.py against the float64 reference, on Triton's CPU interpreter.

Shapes are small but awkward on purpose: T not a multiple of any tile (and T=1), windows that
leave masked edge tiles on both sides of unmasked middle tiles, G=1 and G>1 (G=3 too), Dk != Dv
with non-power-of-two head dims, batch 2, and pinned tile shapes (BLOCK_M < BLOCK_N and the
reverse) so the tile-skipping bounds are exercised in both relations the GPU configs use.
Packed batches (cu_seqlens) are checked against the reference with the same cu_seqlens and against
each sequence run alone through the dense path.
"""
from __future__ import annotations

import pytest
import torch

from nsa_bench import reference
from nsa_kernels import varlen
from nsa_kernels.flash import TileConfig, attention_bwd, attention_fwd, flash_attention, flash_attention_decode
from nsa_kernels.packing import Packing

pytestmark = pytest.mark.interpreter

FP32_TOL = 1e-4
HALF_TOL = 1e-2


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


def _qkv(b: int, t: int, hq: int, hkv: int, dk: int, dv: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hq, dk, generator=gen, dtype=torch.float64)
    k = torch.randn(b, t, hkv, dk, generator=gen, dtype=torch.float64)
    v = torch.randn(b, t, hkv, dv, generator=gen, dtype=torch.float64)
    do = torch.randn(b, t, hq, dv, generator=gen, dtype=torch.float64)
    return q, k, v, do


def _full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Non-causal GQA attention in plain einsum: the reference module only has the causal kind."""
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    p = torch.softmax(torch.einsum("bthd,bshd->bhts", q, k) * scale, dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v)


def _reference(q, k, v, scale, window, causal):
    if not causal:
        return _full_attention(q, k, v, scale)
    if window is None:
        return reference.causal_attention(q, k, v, scale)
    return reference.window_attention(q, k, v, window, scale)


def _reference_grads(q, k, v, do, scale, window, causal):
    """(o, dq, dk, dv) in float64 by autograd through the reference."""
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = _reference(*leaves, scale, window, causal)
    o.backward(do)
    return (o.detach(), *(x.grad for x in leaves))


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    """Relative error; a reference that is exactly zero (T=1: dq = dk = 0) is checked absolutely."""
    if ref.double().norm() == 0:
        assert out.double().abs().max().item() < tol, what
    else:
        err = _rel(out, ref)
        assert err < tol, f"{what}: rel err {err:.3g}"


def _close_grads(grads, refs, tol: float) -> None:
    """(dq, dk, dv) against their references."""
    for name, grad, ref in zip(("dq", "dk", "dv"), grads, refs, strict=True):
        _close(grad, ref, tol, name)


def _check_fwd_bwd_fp32(q, k, v, do, scale, window, causal=True, *, fwd_tiles=None, dkdv_tiles=None,
                        dq_tiles=None, variant="v2"):
    """attention_fwd then attention_bwd on fp32 copies, each against the float64 reference.

    Returns (o, lse, (dq, dk, dv)) for the callers' own checks.
    """
    o_ref, *grad_refs = _reference_grads(q, k, v, do, scale, window, causal)
    qf, kf, vf, dof = (x.float() for x in (q, k, v, do))
    o, lse = attention_fwd(qf, kf, vf, scale, window, causal, tiles=fwd_tiles, variant=variant)
    _close(o, o_ref, FP32_TOL, "o")
    grads = attention_bwd(qf, kf, vf, o, lse, dof, scale, window, causal, tiles_dkdv=dkdv_tiles, tiles_dq=dq_tiles,
                          variant=variant)
    _close_grads(grads, grad_refs, FP32_TOL)
    return o, lse, grads


# (B, T, Hq, Hkv, Dk, Dv, window, causal)
CASES = [
    pytest.param(2, 37, 4, 2, 32, 16, None, True, id="gqa2-T37-dk32dv16"),
    pytest.param(1, 1, 2, 1, 32, 32, None, True, id="T1"),
    pytest.param(2, 100, 4, 1, 48, 32, 64, True, id="gqa4-T100-dk48dv32-w64"),
    pytest.param(1, 100, 2, 2, 16, 16, 5, True, id="g1-T100-w5"),
    pytest.param(1, 37, 2, 2, 16, 24, 1, True, id="w1-dv24"),
    pytest.param(1, 50, 2, 1, 32, 32, 100, True, id="w-longer-than-T"),
    pytest.param(2, 37, 3, 1, 32, 16, None, False, id="full-g3"),
    pytest.param(1, 45, 16, 1, 192, 128, 20, True, id="paper-heads-T45-w20"),  # Dk = 128 + 64 in v2
    pytest.param(1, 20, 64, 1, 48, 16, 8, True, id="g64-dk48"),
]


def _variant_runs(cases):
    """Each case in v2 and, where Dk is not a power of two (so v1 pads and v2 splits), in v1 too: for a
    power-of-two Dk both variants launch the same kernel configuration."""
    runs = []
    for case in cases:
        dk = case.values[4]
        for variant in ("v1", "v2") if dk & (dk - 1) else ("v2",):
            runs.append(pytest.param(*case.values, variant, id=f"{case.id}-{variant}"))
    return runs


def test_power_of_two_dk_runs_one_tile_in_both_variants():
    from nsa_kernels.flash import _dk_tiles

    assert _dk_tiles(64, "v1") == _dk_tiles(64, "v2") == {"BLOCK_DK": 64, "DK_B": 0}
    assert _dk_tiles(192, "v1") == {"BLOCK_DK": 256, "DK_B": 0}
    assert _dk_tiles(192, "v2") == {"BLOCK_DK": 128, "DK_B": 64}
    with pytest.raises(ValueError, match="variant='v3'"):
        _dk_tiles(192, "v3")


@pytest.mark.parametrize("b,t,hq,hkv,dk,dv,window,causal,variant", _variant_runs(CASES))
def test_forward_and_backward_fp32(b, t, hq, hkv, dk, dv, window, causal, variant):
    q, k, v, do = _qkv(b, t, hq, hkv, dk, dv)
    o, lse, (dq, dk_out, dv_out) = _check_fwd_bwd_fp32(q, k, v, do, dk**-0.5, window, causal, variant=variant)
    assert o.dtype == torch.float32 and o.shape == (b, t, hq, dv)
    assert lse.dtype == torch.float32 and lse.shape == (b, t, hq)
    assert dq.shape == q.shape and dk_out.shape == k.shape and dv_out.shape == v.shape


def test_autotune_prune_splits_narrow_and_wide_heads():
    """Wide heads (padded Dk + Dv > 256) get only the configs built to fit their registers."""
    import triton

    from nsa_kernels.flash import _Candidates

    narrow, wide = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}), triton.Config({"BLOCK_M": 64, "BLOCK_N": 16})
    candidates = _Candidates((narrow, wide), frozenset([wide]))
    configs = list(candidates.configs)
    assert candidates.prune(configs, {}, BLOCK_DK=128, BLOCK_DV=128) == [narrow]
    assert candidates.prune(configs, {}, BLOCK_DK=256, BLOCK_DV=128) == [wide]
    assert candidates.prune(configs, {}, BLOCK_DK=128, DK_B=64, BLOCK_DV=128) == [wide]  # v2: 192 = 128 + 64


def test_lse_is_natural_log_sum_exp():
    q, k, v, _ = _qkv(1, 21, 2, 1, 16, 16)
    scale = 0.3
    _, lse = attention_fwd(q.float(), k.float(), v.float(), scale, window=6)
    logits = torch.einsum("bthd,bshd->bhts", q, k.repeat_interleave(2, dim=2)) * scale
    pos = torch.arange(21)
    allowed = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - 6)
    expected = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), dim=-1).transpose(1, 2)
    assert (lse.double() - expected).abs().max().item() < 1e-5


# A window of 2 mod BLOCK_M puts the last query that sees a KV tile exactly on a query-tile start.
@pytest.mark.parametrize(
    "fwd_tiles,dkdv_tiles,dq_tiles,window",
    [
        pytest.param(TileConfig(16, 32), TileConfig(32, 16), TileConfig(16, 32), 34, id="m<n-fwd"),
        pytest.param(TileConfig(64, 16), TileConfig(16, 64), TileConfig(64, 16), 18, id="m>n-fwd"),
        pytest.param(TileConfig(16, 16), TileConfig(16, 16), TileConfig(16, 16), 24, id="square"),
    ],
)
def test_pinned_tile_shapes(fwd_tiles, dkdv_tiles, dq_tiles, window):
    b, t, hq, hkv, dk, dv = 1, 90, 2, 1, 16, 32
    q, k, v, do = _qkv(b, t, hq, hkv, dk, dv, seed=3)
    _check_fwd_bwd_fp32(q, k, v, do, dk**-0.5, window, fwd_tiles=fwd_tiles, dkdv_tiles=dkdv_tiles,
                        dq_tiles=dq_tiles)


@pytest.mark.parametrize("causal", [True, False])
def test_flash_attention_autograd(causal):
    q, k, v, do = _qkv(2, 29, 4, 2, 32, 16, seed=1)
    _, dq_ref, dk_ref, dv_ref = _reference_grads(q, k, v, do, 32**-0.5, None, causal)
    leaves = [x.float().requires_grad_() for x in (q, k, v)]
    o = flash_attention(*leaves, causal=causal)
    o.backward(do.float())
    _close_grads([leaf.grad for leaf in leaves], (dq_ref, dk_ref, dv_ref), FP32_TOL)


def test_flash_attention_window_and_explicit_scale():
    q, k, v, do = _qkv(1, 45, 2, 1, 24, 16, seed=2)
    _, dq_ref, dk_ref, dv_ref = _reference_grads(q, k, v, do, 0.5, 9, True)
    leaves = [x.float().requires_grad_() for x in (q, k, v)]
    flash_attention(*leaves, scale=0.5, window=9).backward(do.float())
    _close_grads([leaf.grad for leaf in leaves], (dq_ref, dk_ref, dv_ref), FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_and_backward(dtype):
    b, t, hq, hkv, dk, dv, window = 2, 37, 4, 2, 32, 16, 20
    q, k, v, do = _qkv(b, t, hq, hkv, dk, dv, seed=4)
    q, k, v, do = (x.to(dtype).double() for x in (q, k, v, do))  # the reference sees the rounded inputs
    scale = dk**-0.5
    o_ref, dq_ref, dk_ref, dv_ref = _reference_grads(q, k, v, do, scale, window, True)
    qh, kh, vh, doh = (x.to(dtype) for x in (q, k, v, do))
    o, lse = attention_fwd(qh, kh, vh, scale, window)
    assert o.dtype == dtype and lse.dtype == torch.float32
    _close(o, o_ref, HALF_TOL, "o")
    grads = attention_bwd(qh, kh, vh, o, lse, doh, scale, window)
    for grad, inp in zip(grads, (qh, kh, vh), strict=True):
        assert grad.dtype == dtype and grad.shape == inp.shape
    _close_grads(grads, (dq_ref, dk_ref, dv_ref), HALF_TOL)


def test_strided_inputs():
    """Views into a packed qkv buffer (unit head-dim stride, other strides arbitrary) need no copy."""
    gen = torch.Generator().manual_seed(6)
    packed = torch.randn(2, 23, 2, 16 * 3, generator=gen)
    q, k, v = packed[..., :16], packed[..., 16:32], packed[..., 32:]
    o, _ = attention_fwd(q, k, v, 0.25)
    _close(o, reference.causal_attention(q.double(), k.double(), v.double(), 0.25), FP32_TOL, "o")


def test_int64_row_offsets(monkeypatch):
    """The int64 address path (planes past 2^31 elements) forced on at small T, fwd + bwd + decode."""
    from nsa_kernels import flash

    monkeypatch.setattr(flash, "_needs_row64", lambda *args: True)
    q, k, v, do = _qkv(1, 40, 4, 2, 16, 32, seed=10)
    _check_fwd_bwd_fp32(q, k, v, do, 0.25, 12)
    qf, kf, vf = q.float(), k.float(), v.float()
    lengths = torch.tensor([40], dtype=torch.int32)
    out = flash_attention_decode(qf[:, -1], kf, vf, lengths, scale=0.25, num_splits=2)
    full, _ = attention_fwd(qf, kf, vf, 0.25)
    assert (out - full[:, -1]).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------- decode
def _decode_reference(q, k_cache, v_cache, lengths, scale):
    """Row L-1 of causal attention over each prefix, with q placed at that row."""
    rows = []
    for b, length in enumerate(lengths):
        filler = torch.randn(1, length - 1, *q.shape[1:], dtype=torch.float64)
        q_seq = torch.cat([filler, q[b : b + 1, None].double()], dim=1)
        out = reference.causal_attention(q_seq, k_cache[b : b + 1, :length].double(),
                                         v_cache[b : b + 1, :length].double(), scale)
        rows.append(out[0, -1])
    return torch.stack(rows)


@pytest.mark.parametrize(
    "hq,hkv,dk,dv,num_splits",
    [
        pytest.param(4, 2, 32, 16, None, id="gqa2-auto-splits"),
        pytest.param(2, 2, 48, 32, 3, id="g1-dk48-3splits"),
        pytest.param(6, 2, 16, 16, 5, id="g3-5splits"),
    ],
)
def test_decode_matches_last_row(hq, hkv, dk, dv, num_splits):
    lengths = [1, 7, 70]
    max_len = 70
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(3, hq, dk, generator=gen)
    k_cache = torch.randn(3, max_len, hkv, dk, generator=gen)
    v_cache = torch.randn(3, max_len, hkv, dv, generator=gen)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    out = flash_attention_decode(q, k_cache, v_cache, seqlens, num_splits=num_splits)
    assert out.shape == (3, hq, dv) and out.dtype == torch.float32
    _close(out, _decode_reference(q, k_cache, v_cache, lengths, dk**-0.5), FP32_TOL, "decode")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_half_precision_and_scale(dtype):
    lengths = [5, 1]
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 32, generator=gen).to(dtype)
    k_cache = torch.randn(2, 40, 1, 32, generator=gen).to(dtype)
    v_cache = torch.randn(2, 40, 1, 16, generator=gen).to(dtype)
    out = flash_attention_decode(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32), scale=0.4,
                                 num_splits=2)
    assert out.dtype == dtype
    _close(out, _decode_reference(q, k_cache, v_cache, lengths, 0.4), HALF_TOL, "decode")


def test_decode_agrees_with_forward_last_row():
    q, k, v, _ = _qkv(1, 41, 4, 2, 32, 16, seed=9)
    qf, kf, vf = q.float(), k.float(), v.float()
    o, _ = attention_fwd(qf, kf, vf, 32**-0.5)
    out = flash_attention_decode(qf[:, -1], kf, vf, torch.tensor([41], dtype=torch.int32), num_splits=3)
    assert (out - o[:, -1]).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------- fused gated epilogue
GATED_TOL = 1e-5


def _gates(b: int, t: int, hq: int, seed: int) -> torch.Tensor:
    """Random gates of both signs away from zero, so a dropped or misplaced gate shows."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, hq, 3, generator=gen) * 1.5 + 0.25


def _random_out(b: int, t: int, hq: int, dv: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, hq, dv, generator=gen).to(dtype)


# (B, T, Hq, Hkv, Dk, Dv, window, causal, tiles): T never a multiple of the tile; G=1, 2, 3; Dk != Dv.
GATED_CASES = [
    pytest.param(2, 37, 4, 2, 32, 16, None, True, None, id="gqa2-T37-dk32dv16"),
    pytest.param(1, 45, 2, 2, 16, 24, 9, True, None, id="g1-T45-w9-dv24"),
    pytest.param(1, 53, 3, 1, 24, 32, None, False, TileConfig(16, 32), id="full-g3-m16n32"),
    pytest.param(1, 1, 2, 1, 32, 16, None, True, None, id="T1"),
]


@pytest.mark.parametrize("b,t,hq,hkv,dk,dv,window,causal,tiles,variant", _variant_runs(GATED_CASES))
@pytest.mark.parametrize("accumulate", [False, True])
def test_gated_epilogue_matches_unfused(b, t, hq, hkv, dk, dv, window, causal, tiles, variant, accumulate):
    """out = (out if accumulate else 0) + gates[..., i] * o, with o and lse from the unfused launch."""
    q, k, v, _ = _qkv(b, t, hq, hkv, dk, dv, seed=7)
    q, k, v = q.float(), k.float(), v.float()
    scale = dk**-0.5
    gates = _gates(b, t, hq, seed=8)
    o, lse = attention_fwd(q, k, v, scale, window, causal, tiles=tiles, variant=variant)
    for gate_index in range(3):
        start = _random_out(b, t, hq, dv, torch.float32, seed=9 + gate_index)
        out = start.clone()
        returned, lse_gated = attention_fwd(q, k, v, scale, window, causal, tiles=tiles, out=out, gates=gates,
                                            gate_index=gate_index, accumulate=accumulate, variant=variant)
        assert returned is out
        expected = gates[..., gate_index:gate_index + 1].double() * o.double()
        if accumulate:
            expected = expected + start.double()
        _close(out, expected, GATED_TOL, f"gate {gate_index}")
        assert torch.equal(lse_gated, lse)


def test_gated_epilogue_accumulates_all_three_branches():
    """Three launches with gate_index 0, 1, 2 (the NSA use) sum to the gated sum of their outputs."""
    q, k, v, _ = _qkv(1, 29, 4, 2, 16, 32, seed=10)
    q, k, v = q.float(), k.float(), v.float()
    gates = _gates(1, 29, 4, seed=11)
    modes = [dict(window=None), dict(window=5), dict(window=None, causal=False)]
    out = _random_out(1, 29, 4, 32, torch.float32, seed=12)  # overwritten by the first launch
    expected = torch.zeros(1, 29, 4, 32, dtype=torch.float64)
    for gate_index, mode in enumerate(modes):
        o, _ = attention_fwd(q, k, v, 0.3, **mode)
        expected += gates[..., gate_index:gate_index + 1].double() * o.double()
        attention_fwd(q, k, v, 0.3, **mode, out=out, gates=gates, gate_index=gate_index, accumulate=gate_index > 0)
    _close(out, expected, GATED_TOL, "sum of three")


@pytest.mark.parametrize(
    "in_dtype,out_dtype,gate_dtype",
    [
        pytest.param(torch.float32, torch.float16, torch.float32, id="fp32-in-fp16-out"),
        pytest.param(torch.float16, torch.float32, torch.float16, id="fp16-in-fp32-out"),
        pytest.param(torch.bfloat16, torch.float32, torch.bfloat16, id="bf16-in-fp32-out"),
        pytest.param(torch.float32, torch.bfloat16, torch.float32, id="fp32-in-bf16-out"),
    ],
)
def test_gated_epilogue_mixed_dtypes(in_dtype, out_dtype, gate_dtype):
    """out's dtype is independent of q's: math in fp32, one rounding to out's dtype at the store."""
    b, t, hq, hkv, dk, dv = 1, 37, 4, 2, 32, 16
    q, k, v, _ = _qkv(b, t, hq, hkv, dk, dv, seed=13)
    q, k, v = (x.to(in_dtype) for x in (q, k, v))
    gates = _gates(b, t, hq, seed=14).to(gate_dtype)
    o, lse = attention_fwd(q, k, v, 0.2, window=11)
    start = _random_out(b, t, hq, dv, out_dtype, seed=15)
    out = start.clone()
    _, lse_gated = attention_fwd(q, k, v, 0.2, window=11, out=out, gates=gates, gate_index=2, accumulate=True)
    assert out.dtype == out_dtype
    expected = start.double() + gates[..., 2:3].double() * o.double()
    # Exact when out and o are fp32; otherwise one rounding of o (q's dtype) and one of out.
    tol = GATED_TOL if torch.float32 == out_dtype == in_dtype else HALF_TOL
    _close(out, expected, tol, "mixed dtypes")
    assert torch.equal(lse_gated, lse)


def test_gated_epilogue_empty_sequence_and_zero_gates():
    """T=0 returns out untouched; a gate of 0 leaves an accumulated out bit-for-bit unchanged."""
    q, k, v, _ = _qkv(1, 0, 2, 1, 16, 16)
    out = torch.empty(1, 0, 2, 16)
    returned, lse = attention_fwd(q.float(), k.float(), v.float(), 0.25, out=out, gates=torch.empty(1, 0, 2, 3))
    assert returned is out and lse.shape == (1, 0, 2)
    q, k, v, _ = _qkv(1, 19, 2, 1, 16, 16, seed=16)
    start = _random_out(1, 19, 2, 16, torch.float32, seed=17)
    out = start.clone()
    attention_fwd(q.float(), k.float(), v.float(), 0.25, window=3, out=out, gates=torch.zeros(1, 19, 2, 3),
                  gate_index=1, accumulate=True)
    assert torch.equal(out, start)


def _gated_args() -> dict:
    return {"out": torch.randn(1, 8, 4, 16), "gates": torch.rand(1, 8, 4, 3)}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        pytest.param({"gates": torch.rand(1, 8, 4, 3)}, "gates given without out", id="gates-without-out"),
        pytest.param({"out": torch.randn(1, 8, 4, 16)}, "gates is required", id="out-without-gates"),
        pytest.param({"accumulate": True}, "accumulate=True needs out", id="accumulate-without-out"),
        pytest.param({**_gated_args(), "gate_index": 3}, "gate_index=3", id="gate-index-3"),
        pytest.param({**_gated_args(), "gate_index": -1}, "gate_index=-1", id="gate-index-negative"),
        pytest.param({**_gated_args(), "gate_index": True}, "gate_index=True", id="gate-index-bool"),
        pytest.param({**_gated_args(), "accumulate": 1}, "accumulate=1", id="accumulate-int"),
        pytest.param({**_gated_args(), "out": torch.randn(1, 8, 4, 8)}, r"out shape \(1, 8, 4, 8\)",
                     id="out-shape"),
        pytest.param({**_gated_args(), "gates": torch.rand(1, 8, 4, 2)}, r"gates shape \(1, 8, 4, 2\)",
                     id="gates-shape"),
        pytest.param({**_gated_args(), "out": torch.randn(1, 8, 4, 16, dtype=torch.float64)}, "out.dtype",
                     id="out-float64"),
        pytest.param({**_gated_args(), "gates": torch.rand(1, 8, 4, 3).to(torch.int32)}, "gates.dtype",
                     id="gates-int"),
        pytest.param({**_gated_args(), "out": torch.randn(1, 4, 8, 16).transpose(1, 2)}, "out must be contiguous",
                     id="out-strided"),
        pytest.param({**_gated_args(), "gates": torch.rand(1, 8, 3, 4).transpose(2, 3)},
                     "gates must be contiguous", id="gates-strided"),
        pytest.param({**_gated_args(), "out": torch.randn(1, 8, 4, 16, device="meta")}, "out is on meta",
                     id="out-device"),
        pytest.param({**_gated_args(), "gates": torch.rand(1, 8, 4, 3, device="meta")}, "gates is on meta",
                     id="gates-device"),
    ],
)
def test_gated_epilogue_rejects_bad_arguments(kwargs, match):
    q, k, v = _good()
    with pytest.raises(ValueError, match=match):
        attention_fwd(q, k, v, 0.25, **kwargs)


# ---------------------------------------------------------------------------------- bad input
def _good() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(1, 8, 4, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)


@pytest.mark.parametrize(
    "mutate,kwargs,match",
    [
        pytest.param(lambda q, k, v: (q[0], k, v), {}, "B, T, H, D", id="q-3d"),
        pytest.param(lambda q, k, v: (q[:, :, :3], k, v), {}, "Hq=3", id="hq-not-multiple"),
        pytest.param(lambda q, k, v: (q, k[:, :5], v[:, :5]), {}, "B, T", id="t-mismatch"),
        pytest.param(lambda q, k, v: (q, k, v[:, :, :1]), {}, "Hkv", id="kv-heads-mismatch"),
        pytest.param(lambda q, k, v: (q, k[..., :8], v), {}, "Dk", id="dk-mismatch"),
        pytest.param(lambda q, k, v: (q, k, torch.randn(1, 8, 2, 512)), {}, "Dv=512", id="dv-too-big"),
        pytest.param(lambda q, k, v: (q, k, v.half()), {}, "dtype", id="dtype-mismatch"),
        pytest.param(lambda q, k, v: (q.double(), k.double(), v.double()), {}, "float64", id="float64"),
        pytest.param(lambda q, k, v: (q, k, v), {"window": 0}, "window=0", id="window-0"),
        pytest.param(lambda q, k, v: (q, k, v), {"window": 4, "causal": False}, "causal", id="window-noncausal"),
        pytest.param(lambda q, k, v: (q, k, v), {"scale": -1.0}, "scale", id="negative-scale"),
    ],
)
def test_forward_rejects_bad_input(mutate, kwargs, match):
    q, k, v = mutate(*_good())
    args = {"scale": 0.25, **kwargs}
    with pytest.raises(ValueError, match=match):
        attention_fwd(q, k, v, **args)


def test_backward_rejects_bad_lse():
    q, k, v = _good()
    o, lse = attention_fwd(q, k, v, 0.25)
    with pytest.raises(ValueError, match="lse"):
        attention_bwd(q, k, v, o, lse[:, :4], torch.randn_like(o), 0.25)
    with pytest.raises(ValueError, match="do shape"):
        attention_bwd(q, k, v, o, lse, torch.randn(1, 8, 4, 8), 0.25)


@pytest.mark.parametrize(
    "seqlens,match",
    [
        pytest.param(torch.tensor([0, 3], dtype=torch.int32), "cache_seqlens", id="zero-length"),
        pytest.param(torch.tensor([3, 11], dtype=torch.int32), "cache_seqlens", id="longer-than-cache"),
        pytest.param(torch.tensor([3, 4], dtype=torch.int64), "int32", id="int64"),
        pytest.param(torch.tensor([3], dtype=torch.int32), "int32", id="wrong-batch"),
    ],
)
def test_decode_rejects_bad_seqlens(seqlens, match):
    q, k_cache, v_cache = torch.randn(2, 4, 16), torch.randn(2, 10, 2, 16), torch.randn(2, 10, 2, 16)
    with pytest.raises(ValueError, match=match):
        flash_attention_decode(q, k_cache, v_cache, seqlens)


def test_decode_rejects_bad_shapes():
    seqlens = torch.tensor([3, 4], dtype=torch.int32)
    k_cache, v_cache = torch.randn(2, 10, 2, 16), torch.randn(2, 10, 2, 16)
    with pytest.raises(ValueError, match="q must be"):
        flash_attention_decode(torch.randn(2, 1, 4, 16), k_cache, v_cache, seqlens)
    with pytest.raises(ValueError, match="Hq=3"):
        flash_attention_decode(torch.randn(2, 3, 16), k_cache, v_cache, seqlens)
    with pytest.raises(ValueError, match="does not match"):
        flash_attention_decode(torch.randn(3, 4, 16), k_cache, v_cache, seqlens)


def test_dq_add_finishes_a_sum_in_the_epilogue():
    """dq_out = this attention's dq + dq_add (fp32): how NSA's window branch ends its three-branch dq sum."""
    q, k, v, do = (x.float() for x in _qkv(1, 45, 4, 2, 48, 16, seed=7))
    o, lse = attention_fwd(q, k, v, 0.2, window=20)
    plain = attention_bwd(q, k, v, o, lse, do, 0.2, window=20)
    acc = torch.randn(q.shape, generator=torch.Generator().manual_seed(8))
    out = torch.empty(q.shape, dtype=torch.float16)
    got = attention_bwd(q, k, v, o, lse, do, 0.2, window=20, dq_out=out, dq_add=acc)
    assert got[0] is out and _rel(out, plain[0] + acc) < 1e-3
    assert torch.equal(got[1], plain[1]) and torch.equal(got[2], plain[2])
    with pytest.raises(ValueError, match="dq_add must not be dq_out"):
        attention_bwd(q, k, v, o, lse, do, 0.2, window=20, dq_out=acc, dq_add=acc)
    with pytest.raises(ValueError, match="dq_add dtype"):
        attention_bwd(q, k, v, o, lse, do, 0.2, window=20, dq_add=acc.half())


# ---------------------------------------------------------------------------------- packed batches (cu_seqlens)
# One packing for every varlen test (docs/varlen.md): a sequence of length 1, one shorter than l = 8
# (block_cmp of the tests' NSA config), one shorter than l' = 16, an empty one, boundaries inside
# compression and selection blocks (offsets 1, 6, 19, 64, 67), and a long one (45) that is no multiple of
# any tile; an empty sequence last too. The window 12 is the tests' NSAConfig window.
PACKED_LENGTHS = (1, 5, 0, 13, 45, 3, 22, 0)
PACKED_WINDOW = 12


def _packed_cu() -> torch.Tensor:
    return varlen.cu_seqlens_of(PACKED_LENGTHS)


def _packing(cu: torch.Tensor, q: torch.Tensor, max_seqlen: int | None = None) -> Packing:
    """The packed batch as attention_fwd/attention_bwd take it: what flash_attention builds from cu_seqlens."""
    return Packing.of(cu, q.shape[1], q.shape[0], q.device, max_seqlen=max_seqlen)


def _packed_reference(q, k, v, scale, window, causal, cu):
    """The float64 reference with cu_seqlens; full attention (no reference function) sequence by sequence."""
    if causal:
        if window is None:
            return reference.causal_attention(q, k, v, scale, cu_seqlens=cu)
        return reference.window_attention(q, k, v, window, scale, cu_seqlens=cu)
    parts = [_full_attention(q[:, s:e], k[:, s:e], v[:, s:e], scale) for s, e in varlen.spans(cu, q.shape[1]) if e > s]
    return torch.cat(parts, dim=1)


def _packed_reference_grads(q, k, v, do, scale, window, causal, cu):
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = _packed_reference(*leaves, scale, window, causal, cu)
    o.backward(do)
    return (o.detach(), *(x.grad for x in leaves))


def _per_sequence_dense(q, k, v, scale, window, causal, cu):
    """Each sequence alone through the dense path (B = 1), outputs and lse concatenated along T."""
    outs, lses = [], []
    for s, e in varlen.spans(cu, q.shape[1]):
        if e > s:
            o, lse = attention_fwd(q[:, s:e], k[:, s:e], v[:, s:e], scale, window, causal)
            outs.append(o)
            lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


# (Hq, Hkv, Dk, Dv, window, causal): G = 1, 2, 3, 4; Dk != Dv; Dk = 48 runs as 32 + 16 column chunks (v2).
PACKED_CASES = [
    pytest.param(2, 2, 16, 32, PACKED_WINDOW, True, id="g1-window"),
    pytest.param(4, 2, 32, 16, None, True, id="g2-causal"),
    pytest.param(3, 1, 24, 16, None, False, id="g3-full"),
    pytest.param(4, 1, 48, 32, PACKED_WINDOW, True, id="g4-dk48-window"),
]


@pytest.mark.parametrize("hq,hkv,dk,dv,window,causal", PACKED_CASES)
def test_packed_forward_and_backward_fp32(hq, hkv, dk, dv, window, causal):
    """Packed o, dq, dk, dv against the reference with the same cu_seqlens; o and lse also against each
    sequence run alone through the dense path."""
    cu = _packed_cu()
    total = int(cu[-1])
    q, k, v, do = _qkv(1, total, hq, hkv, dk, dv, seed=20)
    scale = dk**-0.5
    o_ref, *grad_refs = _packed_reference_grads(q, k, v, do, scale, window, causal, cu)
    qf, kf, vf, dof = (x.float() for x in (q, k, v, do))
    o, lse = attention_fwd(qf, kf, vf, scale, window, causal, packing=_packing(cu, qf))
    assert o.shape == (1, total, hq, dv) and lse.shape == (1, total, hq)
    _close(o, o_ref, FP32_TOL, "o")
    o_alone, lse_alone = _per_sequence_dense(qf, kf, vf, scale, window, causal, cu)
    assert (o - o_alone).abs().max().item() < 1e-6 and (lse - lse_alone).abs().max().item() < 1e-6
    grads = attention_bwd(qf, kf, vf, o, lse, dof, scale, window, causal, packing=_packing(cu, qf))
    _close_grads(grads, grad_refs, FP32_TOL)


def test_packed_pinned_tiles_and_int64_rows(monkeypatch):
    """Tile shapes in both relations (BLOCK_M < BLOCK_N and the reverse) against local positions, with
    the int64 row-offset path forced on."""
    from nsa_kernels import flash

    monkeypatch.setattr(flash, "_needs_row64", lambda *args: True)
    cu = _packed_cu()
    q, k, v, do = _qkv(1, int(cu[-1]), 2, 1, 16, 32, seed=21)
    o_ref, *grad_refs = _packed_reference_grads(q, k, v, do, 0.25, PACKED_WINDOW, True, cu)
    qf, kf, vf, dof = (x.float() for x in (q, k, v, do))
    o, lse = attention_fwd(qf, kf, vf, 0.25, PACKED_WINDOW, tiles=TileConfig(64, 16), packing=_packing(cu, qf))
    _close(o, o_ref, FP32_TOL, "o")
    grads = attention_bwd(qf, kf, vf, o, lse, dof, 0.25, PACKED_WINDOW, tiles_dkdv=TileConfig(32, 16),
                          tiles_dq=TileConfig(16, 32), packing=_packing(cu, qf))
    _close_grads(grads, grad_refs, FP32_TOL)


def test_packed_half_precision():
    cu = _packed_cu()
    q, k, v, do = _qkv(1, int(cu[-1]), 4, 2, 32, 16, seed=22)
    q, k, v, do = (x.half().double() for x in (q, k, v, do))  # the reference sees the rounded inputs
    o_ref, *grad_refs = _packed_reference_grads(q, k, v, do, 0.2, PACKED_WINDOW, True, cu)
    qh, kh, vh, doh = (x.half() for x in (q, k, v, do))
    o, lse = attention_fwd(qh, kh, vh, 0.2, PACKED_WINDOW, packing=_packing(cu, qh))
    assert o.dtype == torch.float16
    _close(o, o_ref, HALF_TOL, "o")
    _close_grads(attention_bwd(qh, kh, vh, o, lse, doh, 0.2, PACKED_WINDOW, packing=_packing(cu, qh)), grad_refs,
                 HALF_TOL)


@pytest.mark.parametrize("accumulate", [False, True])
def test_packed_gated_epilogue_and_dq_chain(accumulate):
    """NSA's window-branch calls, packed: the fused gated epilogue (out=, gates=, accumulate=) matches the
    unfused packed launch, and dq_out = dq + dq_add."""
    cu = _packed_cu()
    total = int(cu[-1])
    q, k, v, do = (x.float() for x in _qkv(1, total, 4, 2, 16, 32, seed=23))
    packing = _packing(cu, q)
    gates = _gates(1, total, 4, seed=24)
    o, lse = attention_fwd(q, k, v, 0.3, PACKED_WINDOW, packing=packing)
    start = _random_out(1, total, 4, 32, torch.float32, seed=25)
    out = start.clone()
    _, lse_gated = attention_fwd(q, k, v, 0.3, PACKED_WINDOW, out=out, gates=gates, gate_index=2,
                                 accumulate=accumulate, packing=packing)
    expected = gates[..., 2:3].double() * o.double() + (start.double() if accumulate else 0)
    _close(out, expected, GATED_TOL, "gated")
    assert torch.equal(lse_gated, lse)
    plain = attention_bwd(q, k, v, o, lse, do, 0.3, PACKED_WINDOW, packing=packing)
    acc = torch.randn(q.shape, generator=torch.Generator().manual_seed(26))
    dq = torch.empty_like(q)
    got = attention_bwd(q, k, v, o, lse, do, 0.3, PACKED_WINDOW, dq_out=dq, dq_add=acc, packing=packing)
    assert got[0] is dq and _rel(dq, plain[0] + acc) < 1e-6
    assert torch.equal(got[1], plain[1]) and torch.equal(got[2], plain[2])


def test_packed_flash_attention_autograd_and_max_seqlen_hint():
    """flash_attention passes cu_seqlens (and the max_seqlen hint) through forward and backward."""
    cu = _packed_cu()
    q, k, v, do = _qkv(1, int(cu[-1]), 4, 2, 32, 16, seed=27)
    _, *grad_refs = _packed_reference_grads(q, k, v, do, 32**-0.5, None, True, cu)
    for hint in (None, max(PACKED_LENGTHS)):
        leaves = [x.float().requires_grad_() for x in (q, k, v)]
        flash_attention(*leaves, cu_seqlens=cu, max_seqlen=hint).backward(do.float())
        _close_grads([leaf.grad for leaf in leaves], grad_refs, FP32_TOL)


def test_packed_all_empty_and_single_sequence():
    """Only empty sequences (total 0), and one sequence: packed equals the dense call bit for bit."""
    q, k, v, _ = _qkv(1, 0, 2, 1, 16, 16)
    o, lse = attention_fwd(q.float(), k.float(), v.float(), 0.25, packing=_packing(varlen.cu_seqlens_of([0, 0]), q))
    assert o.shape == (1, 0, 2, 16) and lse.shape == (1, 0, 2)
    q, k, v, _ = (x.float() for x in _qkv(1, 37, 2, 1, 16, 16, seed=28))
    dense = attention_fwd(q, k, v, 0.25, window=9)
    packed = attention_fwd(q, k, v, 0.25, window=9, packing=_packing(varlen.cu_seqlens_of([37]), q))
    assert torch.equal(dense[0], packed[0]) and torch.equal(dense[1], packed[1])


@pytest.mark.parametrize(
    "cu_seqlens,kwargs,match",
    [
        pytest.param([0, 3, 7], {}, "cu_seqlens ends at 7", id="short-of-total"),
        pytest.param([0, 3, 9], {}, "cu_seqlens ends at 9", id="past-total"),
        pytest.param([0, 5, 3, 8], {}, "cu_seqlens must be non-decreasing", id="decreasing"),
        pytest.param([1, 8], {}, "cu_seqlens must start at 0", id="not-from-0"),
        pytest.param([0.0, 8.0], {}, "cu_seqlens must be an integer", id="float"),
        pytest.param([0, 3, 8], {"variant": "v1"}, r"cu_seqlens: packed batches need the v2 kernels \(variant='v1'\)",
                     id="v1"),
        pytest.param([0, 3, 8], {"max_seqlen": 4}, "max_seqlen=4 is below", id="hint-too-small"),
        pytest.param(None, {"max_seqlen": 4}, "max_seqlen is a hint for cu_seqlens", id="hint-alone"),
    ],
)
def test_packed_rejects_bad_cu_seqlens(cu_seqlens, kwargs, match):
    """Refused where cu_seqlens (and the hint) become the Packing attention_fwd/attention_bwd take, or by
    them (v1); a hint without cu_seqlens is flash_attention's alone."""
    q, k, v = _good()
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens)
    if cu is not None and not cu.dtype.is_floating_point:
        cu = cu.to(torch.int32)
    variant = kwargs.get("variant", "v2")
    o, lse = attention_fwd(q, k, v, 0.25)
    if cu is not None:
        with pytest.raises(ValueError, match=match):
            attention_fwd(q, k, v, 0.25, variant=variant, packing=_packing(cu, q, kwargs.get("max_seqlen")))
        with pytest.raises(ValueError, match=match):
            attention_bwd(q, k, v, o, lse, torch.randn_like(o), 0.25, variant=variant,
                          packing=_packing(cu, q, kwargs.get("max_seqlen")))
    if "variant" not in kwargs:
        with pytest.raises(ValueError, match=match):
            flash_attention(q, k, v, cu_seqlens=cu, **kwargs)


def test_packed_rejects_a_batch_of_two():
    q, k, v = (torch.cat([x, x]) for x in _good())
    with pytest.raises(ValueError, match="batch size 1"):
        attention_fwd(q, k, v, 0.25, packing=_packing(varlen.cu_seqlens_of([3, 5]), q[:1]))


def test_packed_sequence_base_past_2_31(run_only):
    """bos * stride_t past 2^31 with int32 rows (ROW64 off): q, k, v are views with token stride 2048 into
    one virtual buffer (tests/test_offsets64.py's technique), the last of three sequences starts at row
    2,000,000 (4.1e9 elements in), and only its programs run; its o, dq, dk, dv match the reference."""
    from nsa_kernels import flash

    lengths = (1_000_000, 1_000_000, 40)
    cu = varlen.cu_seqlens_of(lengths)
    bos, total = sum(lengths[:2]), sum(lengths)
    buf = torch.empty(1, total, 16, 128, dtype=torch.float16)  # virtual memory: untouched pages cost nothing
    gen = torch.Generator().manual_seed(29)
    buf[:, bos:] = torch.randn(1, lengths[2], 16, 128, generator=gen).half()
    q, k, v = buf[:, :, 0:2, :32], buf[:, :, 2:3, :32], buf[:, :, 3:4, :16]
    assert bos * q.stride(1) > 2**31 and not flash._needs_row64(max(lengths), q, k, v)
    do = torch.zeros(1, total, 2, 16, dtype=torch.float16)
    do[:, bos:] = torch.randn(1, lengths[2], 2, 16, generator=gen).half()
    # the last sequence's programs: its first tiles, at the low grid end or (tiles issued last-first) the high one
    run_only(lambda x, y, z, nx, ny, nz: z == nz - 1 and (x < 4 or x >= nx - 4))
    o, lse = attention_fwd(q, k, v, 0.3, PACKED_WINDOW, packing=_packing(cu, q))
    grads = attention_bwd(q, k, v, o, lse, do, 0.3, PACKED_WINDOW, packing=_packing(cu, q))
    o_ref, *grad_refs = _reference_grads(*(x[:, bos:].double() for x in (q, k, v, do)), 0.3, PACKED_WINDOW, True)
    _close(o[:, bos:], o_ref, HALF_TOL, "o")
    _close_grads([g[:, bos:] for g in grads], grad_refs, HALF_TOL)
