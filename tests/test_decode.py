"""nsa_kernels.decode vs the float64 reference (CPU interpreter; small shapes).

Selection and attention are checked separately (NSA_SPEC "Numerical agreement"): the decode
returns the blocks it selected; we check that selection is *valid* against float64 scores (sizes,
forced blocks, every chosen non-forced block scores at least every rejected candidate, within a
tolerance), then compare the output against the float64 forward's row L-1 run with that same
selection, so a legitimate near-tie flip cannot fail the output check. For fp32 we additionally
require the exact reference selection and compare with `reference.nsa_decode` directly: random
normal inputs make near-ties (closer than fp32 rounding) vanishingly unlikely.
"""
from __future__ import annotations

import pytest
import torch

from nsa_bench import reference
from nsa_kernels.config import NSAConfig
from nsa_kernels.decode import CompressedKVCache, compress_cache, nsa_decode, nsa_decode_with_selection

pytestmark = pytest.mark.interpreter

# small blocks so a few hundred tokens cross every boundary: l=16, d=8, l'=32, n=4, w=40
CFG = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=4, window=40)
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _inputs(lengths, tmax, kv_heads, group, dk, dv, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch, q_heads = len(lengths), kv_heads * group
    q = torch.randn(batch, q_heads, dk, generator=gen).to(dtype)
    k = torch.randn(batch, tmax, kv_heads, dk, generator=gen).to(dtype)
    v = torch.randn(batch, tmax, kv_heads, dv, generator=gen).to(dtype)
    gates = torch.rand(batch, q_heads, 3, generator=gen).to(dtype) + 0.1
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    return q, k, v, gates, seqlens


def _sequence(q, k, v, gates, b, length):
    """Batch-1 forward inputs for sequence b: the decode query placed at row L-1 (other rows random)."""
    gen = torch.Generator().manual_seed(1000 + b)
    q_seq = torch.randn(1, length, *q.shape[1:], generator=gen, dtype=torch.float64)
    q_seq[0, -1] = q[b].double()
    g_seq = torch.rand(1, length, *gates.shape[1:], generator=gen, dtype=torch.float64)
    g_seq[0, -1] = gates[b].double()
    return q_seq, k[b : b + 1, :length].double(), v[b : b + 1, :length].double(), g_seq


def _check_selection(block_idx, scores, length, cfg, tol):
    """block_idx [Hkv, n] valid for the float64 group scores S [Hkv, Nslc] of query t = L-1."""
    current = (length - 1) // cfg.block_slc
    forced = {0, current, current - 1} & set(range(current + 1))
    want = min(cfg.n_slc, current + 1)
    for h in range(block_idx.shape[0]):
        row = block_idx[h].tolist()
        chosen = [j for j in row if j >= 0]
        assert len(chosen) == want and len(set(chosen)) == want, (h, row)
        assert all(j == -1 for j in row[want:]), row
        assert forced <= set(chosen), (h, row, forced)
        assert all(0 <= j <= current for j in chosen), row
        rest = [j for j in range(current + 1) if j not in chosen]
        free = [j for j in chosen if j not in forced]
        if rest and free:
            assert min(scores[h, j] for j in free) >= max(scores[h, j] for j in rest) - tol, (h, row)


def _check_decode(lengths, tmax, kv_heads, group, dk, dv, dtype, cfg=CFG, with_cmp=False, seed=0, **kw):
    q, k, v, gates, seqlens = _inputs(lengths, tmax, kv_heads, group, dk, dv, dtype, seed)
    k_cmp = v_cmp = None
    if with_cmp:  # deliberately not the mean: a learned compression must be used as given
        gen = torch.Generator().manual_seed(seed + 7)
        tc_max = cfg.num_cmp_blocks(tmax)
        k_cmp = torch.randn(len(lengths), tc_max, kv_heads, dk, generator=gen).to(dtype)
        v_cmp = torch.randn(len(lengths), tc_max, kv_heads, dv, generator=gen).to(dtype)
    out, block_idx = nsa_decode_with_selection(q, k, v, gates, seqlens, cfg, k_cmp_cache=k_cmp, v_cmp_cache=v_cmp,
                                               **kw)
    assert out.shape == (len(lengths), kv_heads * group, dv) and out.dtype == dtype
    assert torch.isfinite(out).all()

    ref_rows = []
    for b, length in enumerate(lengths):
        q_seq, k_seq, v_seq, g_seq = _sequence(q, k, v, gates, b, length)
        if with_cmp:
            tc = cfg.num_cmp_blocks(length)
            kc, vc = k_cmp[b : b + 1, :tc].double(), v_cmp[b : b + 1, :tc].double()
        else:
            kc, vc = reference.compress_kv(k_seq, v_seq, cfg)
        scores = reference.block_scores(q_seq, kc, cfg)[0, -1]  # [Hkv, Nslc] float64
        _check_selection(block_idx[b], scores, length, cfg, tol=1e-4 * max(1.0, scores.abs().max().item()))
        ref_idx = reference.select_from_scores(reference.block_scores(q_seq, kc, cfg), cfg)
        if dtype == torch.float32:
            assert sorted(block_idx[b].tolist()) == sorted(ref_idx[0, -1].tolist()), (b, length)
        ref_idx[0, -1] = block_idx[b]
        o = reference.nsa_attention(q_seq, k_seq, v_seq, g_seq, cfg, block_idx=ref_idx, k_cmp=kc, v_cmp=vc)
        ref_rows.append(o[0, -1])
    ref = torch.stack(ref_rows)
    err = _rel_err(out, ref)
    assert err < TOL[dtype], err
    if dtype == torch.float32:  # the reference decode itself, selection included
        direct = reference.nsa_decode(
            q.double(), k.double(), v.double(), gates.double(), seqlens, cfg,
            k_cmp_cache=None if k_cmp is None else k_cmp.double(),
            v_cmp_cache=None if v_cmp is None else v_cmp.double(),
        )
        assert _rel_err(out, direct) < TOL[dtype]
    return out


@pytest.fixture(params=["v1", "v2"])
def variant(request):
    """The decode selection variant (kernels/variants.py): v1 serial top-n, v2 parallel scoring + ranking."""
    return request.param


# L = 1, L < l, l <= L < l', not a multiple of any block, > n blocks, = Tmax: all in one batch
MIXED = [1, 10, 20, 77, 131, 160]


@pytest.mark.parametrize("with_cmp", [False, True])
def test_mixed_lengths_fp32(with_cmp, variant):
    _check_decode(MIXED, 160, kv_heads=2, group=2, dk=32, dv=16, dtype=torch.float32, with_cmp=with_cmp,
                  variant=variant)


def test_group1_odd_head_dim_fp32(variant):
    _check_decode([3, 45, 150], 150, kv_heads=2, group=1, dk=24, dv=16, dtype=torch.float32, seed=1, variant=variant)


def test_large_group_fp16(variant):
    _check_decode([33, 97, 128], 128, kv_heads=1, group=5, dk=16, dv=32, dtype=torch.float16, seed=2, variant=variant)


@pytest.mark.parametrize("with_cmp", [False, True])
def test_fp16_mixed(with_cmp, variant):
    _check_decode(MIXED, 160, kv_heads=2, group=2, dk=32, dv=16, dtype=torch.float16, with_cmp=with_cmp, seed=3,
                  variant=variant)


def test_bf16(variant):
    _check_decode([64, 159], 160, kv_heads=1, group=3, dk=32, dv=32, dtype=torch.bfloat16, seed=4, variant=variant)


def test_paper_heads_and_group_64(variant):
    """G=16 with Dk=192, Dv=128 (the paper's heads), then G=64; lengths a multiple of no block size."""
    _check_decode([45, 130], 130, kv_heads=1, group=16, dk=192, dv=128, dtype=torch.float32, seed=8,
                  variant=variant)
    _check_decode([70], 70, kv_heads=1, group=64, dk=16, dv=16, dtype=torch.float32, seed=9, variant=variant)


def test_window_larger_than_cache_and_n_above_blocks(variant):
    cfg = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16, window=512)
    _check_decode([1, 31, 32, 100, 200], 200, kv_heads=1, group=2, dk=16, dv=16, dtype=torch.float32, cfg=cfg, seed=5,
                  variant=variant)


def test_many_selection_blocks_and_splits(variant):
    """Nslc > one score tile (128) and the compressed sequence split over many programs."""
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=6, window=32)
    _check_decode([4200, 2049], 4200, kv_heads=1, group=1, dk=16, dv=16, dtype=torch.float32, cfg=cfg, seed=6,
                  variant=variant)


def test_tile_override_matches_default():
    q, k, v, gates, seqlens = _inputs(MIXED, 160, 2, 2, 32, 16, torch.float32)
    base = nsa_decode(q, k, v, gates, seqlens, CFG)
    for block_c in (16, 64):
        out, _ = nsa_decode_with_selection(q, k, v, gates, seqlens, CFG, block_c=block_c)
        assert _rel_err(out, base) < 1e-6


def test_compress_cache_matches_reference():
    _, k, v, _, seqlens = _inputs([5, 16, 57, 100], 100, 2, 1, 24, 16, torch.float32)
    k_cmp, v_cmp = compress_cache(k, v, seqlens, CFG)
    for b, length in enumerate(seqlens.tolist()):
        ref_k, ref_v = reference.compress_kv(k[b : b + 1, :length].double(), v[b : b + 1, :length].double(), CFG)
        tc = ref_k.shape[1]
        assert tc == CFG.num_cmp_blocks(length)
        if tc:
            assert _rel_err(k_cmp[b : b + 1, :tc], ref_k) < 1e-6
            assert _rel_err(v_cmp[b : b + 1, :tc], ref_v) < 1e-6


def test_cache_helper_token_by_token():
    """Append one token at a time across several compressed-block boundaries, two sequences at
    different offsets; after every update the cache equals the recomputed compression."""
    tmax, start = 70, [0, 13]
    _, k, v, _, _ = _inputs([tmax, tmax], tmax, 2, 1, 16, 24, torch.float32, seed=8)
    cache = CompressedKVCache.allocate(2, tmax, 2, 16, 24, CFG, device="cpu", dtype=torch.float32)
    lengths = torch.tensor(start, dtype=torch.int32)
    cache.update(k, v, lengths, max_new_tokens=max(start))  # the "prefill"
    while int(lengths.min()) < tmax:  # the longer one then sits at Tmax (no-op updates)
        lengths = torch.clamp(lengths + 1, max=tmax)
        cache.update(k, v, lengths, max_new_tokens=1)
        for b, length in enumerate(lengths.tolist()):
            ref_k, ref_v = reference.compress_kv(k[b : b + 1, :length].double(), v[b : b + 1, :length].double(), CFG)
            tc = ref_k.shape[1]
            if tc:
                assert _rel_err(cache.k_cmp[b : b + 1, :tc], ref_k) < 1e-6, (b, length)
                assert _rel_err(cache.v_cmp[b : b + 1, :tc], ref_v) < 1e-6, (b, length)
            assert (cache.k_cmp[b, tc:] == 0).all(), "blocks not yet complete must not be written"
    assert cache.seqlens.tolist() == [tmax, tmax]


def test_cache_helper_bulk_append_then_decode():
    """A multi-token append with no bound, then decode through the helper's caches."""
    lengths = [40, 150, 90]
    q, k, v, gates, seqlens = _inputs(lengths, 160, 2, 2, 32, 16, torch.float32, seed=9)
    cache = CompressedKVCache.allocate(3, 160, 2, 32, 16, CFG, device="cpu", dtype=torch.float32)
    cache.update(k, v, torch.tensor([7, 60, 33], dtype=torch.int32))
    cache.update(k, v, seqlens)  # max_new_tokens=None: every block may be new
    out = nsa_decode(q, k, v, gates, seqlens, CFG, k_cmp_cache=cache.k_cmp, v_cmp_cache=cache.v_cmp)
    ref = reference.nsa_decode(q.double(), k.double(), v.double(), gates.double(), seqlens, CFG)
    assert _rel_err(out, ref) < 1e-4


def test_bad_inputs_raise():
    q, k, v, gates, seqlens = _inputs([5, 9], 32, 2, 2, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="cache_seqlens"):
        nsa_decode(q, k, v, gates, seqlens.long(), CFG)
    with pytest.raises(ValueError, match="cache_seqlens"):
        nsa_decode(q, k, v, gates, seqlens[:1], CFG)
    with pytest.raises(ValueError, match="gates"):
        nsa_decode(q, k, v, gates[..., :2], seqlens, CFG)
    with pytest.raises(ValueError, match="q"):
        nsa_decode(q[:, None], k, v, gates, seqlens, CFG)
    with pytest.raises(ValueError, match="block_slc"):
        nsa_decode(q, k, v, gates, seqlens, NSAConfig(block_cmp=16, stride_cmp=8, block_slc=48, n_slc=4, window=8))
    with pytest.raises(ValueError, match="v_cmp_cache"):
        nsa_decode(q, k, v, gates, seqlens, CFG, k_cmp_cache=torch.zeros(2, 3, 2, 16))
    with pytest.raises(ValueError, match="Tc_max"):
        nsa_decode(q, k, v, gates, seqlens, CFG, k_cmp_cache=torch.zeros(2, 1, 2, 16), v_cmp_cache=torch.zeros(2, 1, 2, 16))
    with pytest.raises(ValueError, match="dtype"):
        nsa_decode(q, k.half(), v, gates, seqlens, CFG)
    with pytest.raises(ValueError, match="block_c"):
        nsa_decode_with_selection(q, k, v, gates, seqlens, CFG, block_c=24)
    with pytest.raises(ValueError, match="max_tokens"):
        CompressedKVCache.allocate(2, 0, 2, 16, 16, CFG)
    cache = CompressedKVCache.allocate(2, 32, 2, 16, 16, CFG, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="max_new_tokens"):
        cache.update(k, v, seqlens, max_new_tokens=-1)
    with pytest.raises(ValueError, match="k_cache"):
        cache.update(k[:, :, :1], v, seqlens)


def test_chunked_top_n_and_merge(variant, monkeypatch):
    """No selection-block limit. v1's top-n over key chunks and the combine's chunked merge,
    run with tiny chunks (16 keys, 2 partials per step) so a short cache crosses several of each."""
    from nsa_kernels import decode

    monkeypatch.setattr(decode, "_V1_KEY_CHUNK", 16)
    monkeypatch.setattr(decode, "_MERGE_CHUNK", 2)
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=5, window=64)
    _check_decode([600, 333, 41], 600, kv_heads=1, group=2, dk=16, dv=16, dtype=torch.float32, cfg=cfg, seed=14,
                  variant=variant)


def test_cache_past_8192_selection_blocks_is_accepted():
    """The former MAX_DECODE_SLC_BLOCKS = 8192 check is gone: a 1M cache (16384 blocks at l'=64) validates."""
    from nsa_kernels import decode

    cfg = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16, window=512)
    k = torch.empty(1, 1 << 20, 4, 192, device="meta", dtype=torch.bfloat16)
    v = torch.empty(1, 1 << 20, 4, 128, device="meta", dtype=torch.bfloat16)
    q = torch.empty(1, 64, 192, device="meta", dtype=torch.bfloat16)
    gates = torch.empty(1, 64, 3, device="meta", dtype=torch.bfloat16)
    seqlens = torch.empty(1, device="meta", dtype=torch.int32)
    assert cfg.num_slc_blocks(1 << 20) == 16384
    assert decode._check_decode_inputs(q, k, v, gates, seqlens, None, None, cfg) == 16
