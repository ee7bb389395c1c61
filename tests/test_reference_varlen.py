"""Packed (cu_seqlens) batches in nsa_bench.reference: each sequence alone, a brute-force per-token reading of
docs/varlen.md over global token indices, gradients, decode per sequence, and clear errors."""
from __future__ import annotations

import random

import pytest
import torch

from nsa_bench import reference as R
from nsa_kernels import varlen
from nsa_kernels.config import NSAConfig

F64 = torch.float64
CFG = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=16, n_slc=3, window=6)
# 1 token, shorter than l (5 < 8), between l and l' (12), not a multiple of any block (37), 3, 29:
# the starts 1, 6, 18, 55, 58 fall inside a global compression block (d = 4) and selection block (l' = 16)
AWKWARD = (1, 5, 12, 37, 3, 29)


def packed_inputs(seed: int, lengths, hkv: int = 2, g: int = 2, dk: int = 8, dv: int = 5):
    total = sum(lengths)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, total, hkv * g, dk, generator=gen, dtype=F64)
    k = torch.randn(1, total, hkv, dk, generator=gen, dtype=F64)
    v = torch.randn(1, total, hkv, dv, generator=gen, dtype=F64)
    gates = torch.rand(1, total, hkv * g, 3, generator=gen, dtype=F64)
    return q, k, v, gates, varlen.cu_seqlens_of(lengths)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def random_lengths(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice((1, 2, 3, 7, 8, 9, 15, 16, 17)) if rng.random() < 0.4 else rng.randint(1, 70)
            for _ in range(rng.randint(2, 6))]


# ---------------------------------------------------------------- each sequence alone
@pytest.mark.parametrize("lengths", [AWKWARD, *(random_lengths(s) for s in range(4)), (40,)])
def test_packed_equals_each_sequence_alone(lengths):
    q, k, v, gates, cu = packed_inputs(sum(lengths), lengths)
    k_cmp, v_cmp = R.compress_kv(k, v, CFG, cu)
    idx = R.select_blocks(q, k_cmp, CFG, cu_seqlens=cu)
    out = R.nsa_attention(q, k, v, gates, CFG, cu_seqlens=cu)
    assert k_cmp.shape[1] == sum(CFG.num_cmp_blocks(n) for n in lengths)
    assert idx.shape == (1, sum(lengths), 2, CFG.n_slc) and out.shape == (1, sum(lengths), 4, 5)
    cmp_cu = varlen.cmp_cu_seqlens(cu, CFG).tolist()
    for i, (s, e) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        alone = [t[:, s:e] for t in (q, k, v, gates)]
        kc, vc = R.compress_kv(alone[1], alone[2], CFG)
        assert torch.equal(k_cmp[:, cmp_cu[i]:cmp_cu[i + 1]], kc) and torch.equal(v_cmp[:, cmp_cu[i]:cmp_cu[i + 1]], vc)
        assert torch.equal(idx[:, s:e], R.select_blocks(alone[0], kc, CFG))  # block numbers local to the sequence
        assert torch.equal(out[:, s:e], R.nsa_attention(*alone, CFG))
        assert torch.equal(R.causal_attention(q, k, v, cu_seqlens=cu)[:, s:e], R.causal_attention(*alone[:3]))


def test_nothing_crosses_a_boundary():
    q, k, v, gates, cu = packed_inputs(1, AWKWARD)
    out = R.nsa_attention(q, k, v, gates, CFG, cu_seqlens=cu)
    s, e = cu[3].item(), cu[4].item()  # change every token of sequence 3 (37 tokens)
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    k2[:, s:e] += 1.0
    v2[:, s:e] -= 2.0
    q2[:, s:e] *= 3.0
    out2 = R.nsa_attention(q2, k2, v2, gates, CFG, cu_seqlens=cu)
    assert torch.equal(out[:, :s], out2[:, :s]) and torch.equal(out[:, e:], out2[:, e:])
    assert not torch.allclose(out[:, s:e], out2[:, s:e])
    # and the packing matters: the same buffer read as one sequence gives a different answer
    assert rel(R.nsa_attention(q, k, v, gates, CFG), out) > 1e-2


def test_empty_sequences_are_allowed():
    lengths = (0, 9, 0, 20, 0)
    q, k, v, gates, cu = packed_inputs(2, lengths)
    out = R.nsa_attention(q, k, v, gates, CFG, cu_seqlens=cu)
    dense = torch.cat([R.nsa_attention(*(t[:, a:b] for t in (q, k, v, gates)), CFG) for a, b in ((0, 9), (9, 29))], 1)
    assert torch.equal(out, dense)
    none = varlen.cu_seqlens_of([0, 0])
    empty = [t[:, :0] for t in (q, k, v, gates)]
    assert R.nsa_attention(*empty, CFG, cu_seqlens=none).shape == (1, 0, 4, 5)


# ---------------------------------------------------------------- brute force over global token indices
def brute_force_packed(q, k, v, gates, cu, cfg: NSAConfig):
    """Per packed token, straight from docs/varlen.md: token p of sequence s (start a) has local position
    t = p - a; compressed block i of s covers global tokens a + [i*d, i*d + l); selection block j covers
    a + [j*l', (j+1)*l'); keys come only from [a, p]. No per-sequence slicing: every index is global."""
    _, total, hq, dk = q.shape
    hkv, g = k.shape[2], hq // k.shape[2]
    l, d, lp, n, w = cfg.block_cmp, cfg.stride_cmp, cfg.block_slc, cfg.n_slc, cfg.window
    scale = dk**-0.5
    offsets = cu.tolist()
    out = torch.zeros(1, total, hq, v.shape[-1], dtype=F64)
    idx_all = torch.full((1, total, hkv, n), -1, dtype=torch.int32)

    def attend(qv, pairs):
        if not pairs:
            return torch.zeros(v.shape[-1], dtype=F64)
        kk = torch.stack([x for x, _ in pairs])
        vv = torch.stack([y for _, y in pairs])
        return torch.softmax(kk @ qv * scale, 0) @ vv

    for p in range(total):
        seq = next(i for i in range(len(offsets) - 1) if offsets[i] <= p < offsets[i + 1])
        a, end = offsets[seq], offsets[seq + 1]
        t = p - a
        blocks = [(i, range(a + i * d, a + i * d + l)) for i in range(total) if a + i * d + l <= end]  # whole blocks
        visible = [i for i, toks in blocks if toks[-1] <= p]
        for grp in range(hkv):
            kc = {i: k[0, list(toks), grp].mean(0) for i, toks in blocks}
            vc = {i: v[0, list(toks), grp].mean(0) for i, toks in blocks}
            nslc = -(-(end - a) // lp)
            scores = [0.0] * nslc
            for h in range(grp * g, (grp + 1) * g):
                if visible:
                    probs = torch.softmax(torch.stack([kc[i] @ q[0, p, h] for i in visible]) * scale, 0)
                    for i, pr in zip(visible, probs):
                        for j in range(nslc):  # chunks shared by block i and selection block j, times p
                            shared = set(range(a + i * d, a + i * d + l)) & set(range(a + j * lp, a + (j + 1) * lp))
                            scores[j] += float(pr) * len(shared) / d
            cur = t // lp
            forced = list(dict.fromkeys(j for j in (0, cur, cur - 1) if 0 <= j <= cur))
            rest = sorted((j for j in range(cur + 1) if j not in forced), key=lambda j: (-scores[j], j))
            chosen = (forced + rest)[: min(n, cur + 1)]
            idx_all[0, p, grp, : len(chosen)] = torch.tensor(chosen, dtype=torch.int32)
            slc = [(k[0, x, grp], v[0, x, grp]) for j in chosen for x in range(a + j * lp, min(a + (j + 1) * lp, p + 1))]
            win = [(k[0, x, grp], v[0, x, grp]) for x in range(max(a, p - w + 1), p + 1)]
            cmp = [(kc[i], vc[i]) for i in visible]
            for h in range(grp * g, (grp + 1) * g):
                qv, gt = q[0, p, h], gates[0, p, h]
                out[0, p, h] = gt[0] * attend(qv, cmp) + gt[1] * attend(qv, slc) + gt[2] * attend(qv, win)
    return out, idx_all


def test_matches_brute_force_over_global_indices():
    lengths = (1, 7, 20, 34)  # starts 1, 8, 28: inside a compression block and a selection block of the buffer
    q, k, v, gates, cu = packed_inputs(3, lengths, hkv=2, g=2, dk=6, dv=4)
    want, want_idx = brute_force_packed(q, k, v, gates, cu, CFG)
    k_cmp, _ = R.compress_kv(k, v, CFG, cu)
    idx = R.select_blocks(q, k_cmp, CFG, cu_seqlens=cu)
    assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values)
    assert rel(R.nsa_attention(q, k, v, gates, CFG, cu_seqlens=cu), want) < 1e-12


def test_causal_attention_is_a_block_diagonal_mask():
    lengths = (5, 1, 30, 12)
    q, k, v, _, cu = packed_inputs(4, lengths, hkv=2, g=3)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(sum(lengths))
    mask = (seq[None, :] == seq[:, None]) & (pos[None, :] <= pos[:, None])
    kk, vv = k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2)
    logits = torch.einsum("bthd,bshd->bhts", q, kk) * q.shape[-1] ** -0.5
    want = torch.einsum("bhts,bshd->bthd", torch.softmax(logits.masked_fill(~mask, float("-inf")), -1), vv)
    assert rel(R.causal_attention(q, k, v, cu_seqlens=cu), want) < 1e-13


def test_block_scores_are_local_and_padded_with_minus_inf():
    lengths = (20, 50, 3)
    q, k, v, _, cu = packed_inputs(5, lengths)
    k_cmp, _ = R.compress_kv(k, v, CFG, cu)
    scores = R.block_scores(q, k_cmp, CFG, cu_seqlens=cu)
    assert scores.shape == (1, 73, 2, 4)  # ceil(50 / 16) = 4 columns
    assert torch.isinf(scores[0, :20, :, 2:]).all() and torch.isfinite(scores[0, :20, :, :2]).all()
    assert torch.equal(scores[:, 20:70], R.block_scores(q[:, 20:70], k_cmp[:, 4:15], CFG))
    assert torch.equal(R.select_from_scores(scores, CFG, cu_seqlens=cu), R.select_blocks(q, k_cmp, CFG, cu_seqlens=cu))


# ---------------------------------------------------------------- gradients and decode
def test_gradients_match_finite_differences():
    cfg = NSAConfig(block_cmp=4, stride_cmp=2, block_slc=4, n_slc=3, window=3)
    lengths = (3, 1, 9)  # shorter than l, a single token, and a boundary inside a block of the buffer
    q, k, v, gates, cu = packed_inputs(6, lengths, hkv=1, g=2, dk=4, dv=3)
    k_cmp, v_cmp = R.compress_kv(k, v, cfg, cu)
    idx = R.select_blocks(q, k_cmp, cfg, cu_seqlens=cu)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, gates)]
    # fast mode (random projections of the Jacobian) keeps this to seconds; the dense test checks every entry
    assert torch.autograd.gradcheck(lambda *xs: R.nsa_attention(*xs, cfg, block_idx=idx, cu_seqlens=cu), leaves,
                                    eps=1e-6, atol=1e-7, fast_mode=True)
    extra = [t.clone().requires_grad_(True) for t in (k_cmp, v_cmp)]
    assert torch.autograd.gradcheck(
        lambda a, b: R.nsa_attention(q, k, v, gates, cfg, block_idx=idx, k_cmp=a, v_cmp=b, cu_seqlens=cu), extra,
        eps=1e-6, atol=1e-7, fast_mode=True)


def test_gradients_do_not_cross_a_boundary():
    q, k, v, gates, cu = packed_inputs(7, AWKWARD)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, gates)]
    out = R.nsa_attention(*leaves, CFG, cu_seqlens=cu)
    s, e = cu[3].item(), cu[4].item()
    out[:, s:e].sum().backward()
    for leaf in leaves:
        assert leaf.grad[:, :s].abs().max() == 0 and leaf.grad[:, e:].abs().max() == 0
        assert leaf.grad[:, s:e].abs().max() > 0


def test_decode_per_sequence_equals_the_packed_forward():
    lengths = (1, 7, 19, 41, 16)
    q, k, v, gates, cu = packed_inputs(8, lengths)
    full = R.nsa_attention(q, k, v, gates, CFG, cu_seqlens=cu)
    k_cache, v_cache = varlen.pad_packed(k, cu), varlen.pad_packed(v, cu)
    assert k_cache.shape == (5, 41, 2, 8) and k_cache[0, 1:].abs().max() == 0
    got = R.nsa_decode(varlen.last_rows(q, cu), k_cache, v_cache, varlen.last_rows(gates, cu),
                       torch.tensor(lengths, dtype=torch.int32), CFG)
    assert rel(got, varlen.last_rows(full, cu)) < 1e-12


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("cu,words", [
    (torch.tensor([0.0, 3.0]), "integer"),
    (torch.tensor([[0, 3]]), "1-D"),
    (torch.tensor([1, 74], dtype=torch.int32), "start at 0"),
    (torch.tensor([0, 40, 30, 74], dtype=torch.int32), "non-decreasing"),
    (torch.tensor([0, 70], dtype=torch.int32), "ends at 70"),
])
def test_bad_cu_seqlens_raise_naming_it(cu, words):
    q, k, v, gates, _ = packed_inputs(9, (30, 44))
    with pytest.raises(ValueError, match=words):
        R.nsa_attention(q, k, v, gates, CFG, cu_seqlens=cu)


def test_packed_layout_errors():
    q, k, v, gates, cu = packed_inputs(10, (30, 44))
    with pytest.raises(ValueError, match="batch size 1"):
        R.causal_attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), cu_seqlens=cu)
    k_cmp, v_cmp = R.compress_kv(k, v, CFG)  # the dense layout: one block too many across the boundary
    with pytest.raises(ValueError, match="k_cmp holds 17 compressed blocks .* 16"):
        R.nsa_attention(q, k, v, gates, CFG, k_cmp=k_cmp, v_cmp=v_cmp, cu_seqlens=cu)
    with pytest.raises(ValueError, match="block_idx must be"):
        R.nsa_attention(q, k, v, gates, CFG, block_idx=torch.zeros(1, 74, 2, dtype=torch.int32), cu_seqlens=cu)


def test_varlen_helpers():
    cu = varlen.cu_seqlens_of([5, 0, 40, 8])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 5, 5, 45, 53]
    assert varlen.seqlens(cu) == [5, 0, 40, 8]
    assert varlen.cmp_cu_seqlens(cu, CFG).tolist() == [0, 0, 0, 9, 10]  # Tc = (L - 8) // 4 + 1 for L >= 8
    x = torch.arange(53.0).view(1, 53, 1, 1)
    assert varlen.pad_packed(x, cu).shape == (4, 40, 1, 1)
    with pytest.raises(ValueError, match="at least one token"):
        varlen.last_rows(x, cu)
