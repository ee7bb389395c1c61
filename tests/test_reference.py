"""nsa_bench.reference vs a brute-force per-token reading of NSA_SPEC.md, and its identities."""
from __future__ import annotations

import math

import pytest
import torch

from nsa_bench import reference as R
from nsa_kernels.config import NSAConfig

F64 = torch.float64


def rand_inputs(seed: int, b: int, t: int, hkv: int, g: int, dk: int, dv: int, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hkv * g, dk, generator=gen, dtype=F64).to(dtype)
    k = torch.randn(b, t, hkv, dk, generator=gen, dtype=F64).to(dtype)
    v = torch.randn(b, t, hkv, dv, generator=gen, dtype=F64).to(dtype)
    gates = torch.rand(b, t, hkv * g, 3, generator=gen, dtype=F64).to(dtype)
    return q, k, v, gates


def softmax_attend(qv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    if keys.shape[0] == 0:
        return torch.zeros(values.shape[-1], dtype=F64)
    p = torch.softmax((keys @ qv) * scale, dim=0)
    return p @ values


def brute_force(q, k, v, gates, cfg: NSAConfig):
    """Per token, per head, straight from the spec's words (slow; tiny shapes only)."""
    b_, t_, hq, dk = q.shape
    hkv, g = k.shape[2], hq // k.shape[2]
    l, d, lp, n, w = cfg.block_cmp, cfg.stride_cmp, cfg.block_slc, cfg.n_slc, cfg.window
    scale = dk**-0.5
    tc = 0 if t_ < l else (t_ - l) // d + 1
    nslc = math.ceil(t_ / lp)
    out = torch.zeros(b_, t_, hq, v.shape[-1], dtype=F64)
    idx_all = torch.full((b_, t_, hkv, n), -1, dtype=torch.int32)
    for b in range(b_):
        kc = torch.stack([k[b, i * d : i * d + l].mean(0) for i in range(tc)]) if tc else k.new_zeros(0, hkv, dk)
        vc = torch.stack([v[b, i * d : i * d + l].mean(0) for i in range(tc)]) if tc else v.new_zeros(0, hkv, v.shape[-1])
        for t in range(t_):
            visible = [i for i in range(tc) if i * d + l - 1 <= t]
            for grp in range(hkv):
                scores = [0.0] * nslc
                for h in range(grp * g, (grp + 1) * g):
                    p = torch.zeros(tc, dtype=F64)
                    if visible:
                        logits = torch.stack([kc[i, grp] @ q[b, t, h] for i in visible]) * scale
                        p[visible] = torch.softmax(logits, 0)
                    for j in range(nslc):
                        for m in range(lp // d):
                            for nn in range(l // d):
                                i = (lp // d) * j + m - nn
                                if 0 <= i < tc:
                                    scores[j] += float(p[i])
                cur = t // lp
                forced = [j for j in (0, cur, cur - 1) if 0 <= j <= cur]
                forced = list(dict.fromkeys(forced))
                rest = sorted((j for j in range(cur + 1) if j not in forced), key=lambda j: (-scores[j], j))
                chosen = (forced + rest)[: min(n, cur + 1)]
                idx_all[b, t, grp, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
                slc_keys = [p_ for j in chosen for p_ in range(j * lp, min((j + 1) * lp, t + 1))]
                win_keys = list(range(max(0, t - w + 1), t + 1))
                for h in range(grp * g, (grp + 1) * g):
                    qv = q[b, t, h]
                    o_cmp = softmax_attend(qv, kc[visible, grp], vc[visible, grp], scale)
                    o_slc = softmax_attend(qv, k[b, slc_keys, grp], v[b, slc_keys, grp], scale)
                    o_win = softmax_attend(qv, k[b, win_keys, grp], v[b, win_keys, grp], scale)
                    gt = gates[b, t, h]
                    out[b, t, h] = gt[0] * o_cmp + gt[1] * o_slc + gt[2] * o_win
    return out, idx_all


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double())).item()


@pytest.mark.parametrize(
    "t,hkv,g,dk,dv,cfg",
    [
        (45, 2, 2, 8, 4, NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=3, window=6)),
        (37, 1, 1, 6, 6, NSAConfig(block_cmp=8, stride_cmp=4, block_slc=16, n_slc=3, window=5)),
        (7, 1, 3, 4, 5, NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=4, window=3)),  # T < l
        (30, 2, 1, 4, 4, NSAConfig(block_cmp=4, stride_cmp=2, block_slc=4, n_slc=5, window=9)),
    ],
)
def test_matches_brute_force(t, hkv, g, dk, dv, cfg):
    q, k, v, gates = rand_inputs(t * 7 + g, 2, t, hkv, g, dk, dv)
    want, want_idx = brute_force(q, k, v, gates, cfg)
    k_cmp, _ = R.compress_kv(k, v, cfg)
    idx = R.select_blocks(q, k_cmp, cfg)
    assert torch.equal(torch.sort(idx, dim=-1).values, torch.sort(want_idx, dim=-1).values)
    got = R.nsa_attention(q, k, v, gates, cfg)
    assert got.shape == want.shape
    assert rel(got, want) < 1e-12


def test_compress_kv_blocks():
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=3, window=4)
    _, k, v, _ = rand_inputs(1, 1, 21, 2, 1, 4, 3)
    k_cmp, v_cmp = R.compress_kv(k, v, cfg)
    assert k_cmp.shape == (1, cfg.num_cmp_blocks(21), 2, 4) == (1, 4, 2, 4)
    assert torch.allclose(k_cmp[0, 2], k[0, 8:16].mean(0))
    assert torch.allclose(v_cmp[0, 3], v[0, 12:20].mean(0))
    assert R.compress_kv(k[:, :7], v[:, :7], cfg)[0].shape[1] == 0


def dense_causal(q, k, v, window=None):
    t, g = q.shape[1], q.shape[2] // k.shape[2]
    kk, vv = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    logits = torch.einsum("bthd,bshd->bhts", q, kk) * q.shape[-1] ** -0.5
    pos = torch.arange(t)
    mask = pos[None, :] <= pos[:, None]
    if window is not None:
        mask &= pos[None, :] > pos[:, None] - window
    logits = logits.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", torch.softmax(logits, -1), vv)


def test_window_at_least_t_is_causal_attention():
    q, k, v, _ = rand_inputs(3, 2, 50, 2, 3, 8, 5)
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=3, window=64)
    assert rel(R.window_attention(q, k, v, cfg), dense_causal(q, k, v)) < 1e-12
    assert rel(R.window_attention(q, k, v, 7), dense_causal(q, k, v, window=7)) < 1e-12


def test_n_at_least_blocks_selected_is_causal_attention():
    q, k, v, _ = rand_inputs(4, 1, 61, 2, 2, 8, 6)
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=8, window=4)  # 8 blocks of 8 >= 61 tokens
    k_cmp, _ = R.compress_kv(k, v, cfg)
    idx = R.select_blocks(q, k_cmp, cfg)
    assert rel(R.selected_attention(q, k, v, idx, cfg), dense_causal(q, k, v)) < 1e-12


def test_selection_rules():
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=4, window=4)
    q, k, v, _ = rand_inputs(5, 2, 70, 2, 4, 8, 8)
    k_cmp, _ = R.compress_kv(k, v, cfg)
    idx = R.select_blocks(q, k_cmp, cfg)
    scores = R.block_scores(q, k_cmp, cfg)
    assert idx.dtype == torch.int32 and idx.shape == (2, 70, 2, 4)
    for t in range(70):
        cur = t // 8
        for b in range(2):
            for grp in range(2):
                chosen = [int(j) for j in idx[b, t, grp] if j >= 0]
                assert len(chosen) == min(4, cur + 1) == len(set(chosen))
                assert all(0 <= j <= cur for j in chosen)
                forced = {0, cur, max(cur - 1, 0)}
                assert forced <= set(chosen)
                free = [j for j in chosen if j not in forced]
                others = [j for j in range(cur + 1) if j not in chosen]
                if free and others:
                    assert min(scores[b, t, grp, free]) >= max(scores[b, t, grp, others]) - 1e-12


def test_ties_go_to_lower_block():
    cfg = NSAConfig(block_cmp=4, stride_cmp=4, block_slc=4, n_slc=3, window=4)
    scores = torch.zeros(1, 20, 1, 5, dtype=F64)  # all tied
    idx = R.select_from_scores(scores, cfg)
    assert sorted(idx[0, 19, 0].tolist()) == [0, 3, 4]  # forced only
    cfg4 = NSAConfig(block_cmp=4, stride_cmp=4, block_slc=4, n_slc=4, window=4)
    assert sorted(R.select_from_scores(scores, cfg4)[0, 19, 0].tolist()) == [0, 1, 3, 4]


def test_no_visible_compressed_block_gives_zero_not_nan():
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=16, n_slc=3, window=4)
    q, k, v, _ = rand_inputs(6, 1, 20, 1, 2, 8, 8)
    k_cmp, v_cmp = R.compress_kv(k, v, cfg)
    o = R.compressed_attention(q, k_cmp, v_cmp, cfg)
    assert torch.isfinite(o).all()
    assert o[:, :15].abs().max() == 0
    assert o[:, 15:].abs().max() > 0


def test_chunked_equals_unchunked(monkeypatch):
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=3, window=10)
    q, k, v, gates = rand_inputs(7, 2, 90, 2, 2, 8, 4)
    whole = R.nsa_attention(q, k, v, gates, cfg)
    monkeypatch.setattr(R, "_CHUNK_ELEMENTS", 200)  # forces many small query chunks
    assert R._chunk_size(2, 4, 90) < 90
    assert rel(R.nsa_attention(q, k, v, gates, cfg), whole) < 1e-13


def test_decode_equals_forward_last_row_mixed_lengths():
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=3, window=6)
    q, k, v, gates = rand_inputs(8, 4, 41, 2, 2, 8, 5)
    lengths = [1, 7, 19, 41]  # L = 1, L < l, L not a multiple of any block, full
    q1 = torch.stack([q[b, lengths[b] - 1] for b in range(4)])
    g1 = torch.stack([gates[b, lengths[b] - 1] for b in range(4)])
    got = R.nsa_decode(q1, k, v, g1, torch.tensor(lengths, dtype=torch.int32), cfg)
    for b, length in enumerate(lengths):
        full = R.nsa_attention(q[b : b + 1, :length], k[b : b + 1, :length], v[b : b + 1, :length],
                               gates[b : b + 1, :length], cfg)
        assert rel(got[b], full[0, -1]) < 1e-12
    k_cmp, v_cmp = R.compress_kv(k, v, cfg)
    with_cache = R.nsa_decode(q1, k, v, g1, torch.tensor(lengths, dtype=torch.int32), cfg, k_cmp_cache=k_cmp,
                              v_cmp_cache=v_cmp)
    assert rel(with_cache, got) < 1e-13


def test_gradients_match_finite_differences():
    cfg = NSAConfig(block_cmp=4, stride_cmp=2, block_slc=4, n_slc=3, window=3)
    q, k, v, gates = rand_inputs(9, 1, 11, 1, 2, 4, 3)
    k_cmp, _ = R.compress_kv(k, v, cfg)
    idx = R.select_blocks(q, k_cmp, cfg)  # selection is a constant of the backward
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, gates)]
    assert torch.autograd.gradcheck(lambda *xs: R.nsa_attention(*xs, cfg, block_idx=idx), leaves, eps=1e-6, atol=1e-7)
    kc, vc = R.compress_kv(k, v, cfg)
    extra = [t.clone().requires_grad_(True) for t in (kc, vc)]
    assert torch.autograd.gradcheck(
        lambda a, b: R.nsa_attention(q, k, v, gates, cfg, block_idx=idx, k_cmp=a, v_cmp=b), extra, eps=1e-6, atol=1e-7
    )


def test_low_precision_inputs_keep_dtype():
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=3, window=6)
    q, k, v, gates = rand_inputs(10, 1, 33, 1, 2, 8, 8)
    ref = R.nsa_attention(q, k, v, gates, cfg)
    k_cmp, _ = R.compress_kv(k, v, cfg)
    idx = R.select_blocks(q, k_cmp, cfg)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 1e-2)):
        got = R.nsa_attention(*(t.to(dtype) for t in (q, k, v, gates)), cfg, block_idx=idx)
        assert got.dtype == dtype
        assert rel(got, ref) < tol


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"block_cmp": 32, "stride_cmp": 24}, "stride_cmp"),
        ({"block_slc": 40, "stride_cmp": 16}, "stride_cmp"),
        ({"n_slc": 2}, "n_slc"),
        ({"window": 0}, "window"),
        ({"block_cmp": -32}, "block_cmp"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        NSAConfig(**kwargs)


def test_bad_shapes_raise():
    cfg = NSAConfig()
    q, k, v, gates = rand_inputs(11, 1, 8, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="gates"):
        R.nsa_attention(q, k, v, gates[..., :2], cfg)
    with pytest.raises(ValueError, match="multiple"):
        R.nsa_attention(q[:, :, :1], k, v, gates[:, :, :1], cfg)
