"""NSA decoding (NSA_SPEC section 7): one new token per sequence over a KV cache, split-KV, Triton.

Decode is memory-bound, so the launches are organised around reading each cache byte once and
keeping ~all SMs busy even at batch 1:

1. `_cmp_partial_kernel`  compressed attention split over the compressed sequence; each program
   handles all G query heads of one KV head (G padded to >= 16 rows for `tl.dot`) and writes a
   partial (o, lse) plus the scaled logits, which the scorer needs once the full lse is known.
2. `_select_kernel`       one program per (batch, KV head): combines the partial lse, turns the
   stored logits into p_cmp, scores the selection blocks (overlap-weighted Eq. 9, group sum
   Eq. 10) and picks the top-n blocks (forced blocks, ties to the lower j).
3. `_slc_win_kernel`      selected and sliding-window attention split into l'-token work units
   (one per selected block, ceil(w / l') for the window), again all G heads per program.
4. `_combine_kernel`      merges the partials of the three branches and applies the gates.

When no compressed cache is passed, `_compress_kernel` first builds it from the KV cache (one
more launch). `CompressedKVCache` keeps a compressed cache current as tokens are appended,
computing only the blocks that became complete. Nothing here synchronises with the host:
variable cache lengths are handled with in-kernel masks and launch grids depend only on shapes,
so a decode step can be captured in a CUDA graph.

Internally logits and lse are in base 2 (scaled by log2(e)); only the final output leaves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import check_heads, check_kernel_config, interpreting, next_pow2, small_sizes
from .config import NSAConfig
from .variants import check_variant

__all__ = ["nsa_decode", "nsa_decode_with_selection", "compress_cache", "CompressedKVCache"]

_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# v1 top-n: up to this many int64 selection keys are picked from registers in one load (512k tokens
# at l' = 64, as the first decode kernels were); a longer cache takes n passes over key chunks of this size (L2).
# Neither variant limits the number of selection blocks.
_V1_KEY_CHUNK = 8192
# The combine merges at most this many partials per step (online softmax merge over steps), so the
# v2 ranking units of a 1M cache (16384 blocks / 64 = 256 units) do not need 256-row register tiles.
_MERGE_CHUNK = 64
# Split-KV aims at this many programs per SM so batch 1 still fills the GPU.
_PROGRAMS_PER_SM = 2
_DEFAULT_SMS = 132
# v2 ranking: selection candidates per unit (64 -> 16 units at 64k), keys compared per step
_RANK_RANGE = 64
_RANK_RANGE_SMALL = 16  # `small_sizes()` (the interpreter): several ranking units at test lengths
_RANK_KEY_CHUNK = 64


# ------------------------------------------------------------------------------------ kernels
# Small jit helpers shared by the kernels below; Triton inlines them, so they cost nothing.
@triton.jit
def _batch_and_head(pid, num_heads):
    """(batch, head) of a batch-major program id, as int64 so the offsets built from them cannot wrap."""
    return (pid // num_heads).to(tl.int64), (pid % num_heads).to(tl.int64)


@triton.jit
def _cache_len(seqlens_ptr, b, tmax, LEAST: tl.constexpr):
    """seqlens[b] clamped to [LEAST, tmax], so a bad length can never address outside the cache."""
    return tl.minimum(tl.maximum(tl.load(seqlens_ptr + b), LEAST), tmax)


@triton.jit
def _num_cmp_blocks(length, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr):
    """Compressed blocks complete within the first `length` tokens (NSA_SPEC section 1)."""
    return tl.where(length >= BLOCK_CMP, (length - BLOCK_CMP) // STRIDE_CMP + 1, 0)


@triton.jit
def _load_group_queries(q_ptr, b, kvh, stride_qb, stride_qh,
                        GROUP: tl.constexpr, DK: tl.constexpr, G_PAD: tl.constexpr, DK_PAD: tl.constexpr,
                        UPCAST: tl.constexpr):
    """The G query heads of KV head kvh as one [G_PAD, DK_PAD] tile (padding is 0) for `tl.dot`."""
    rows = tl.arange(0, G_PAD)
    dk = tl.arange(0, DK_PAD)
    heads = kvh * GROUP + rows
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + dk[None, :],
                mask=(rows < GROUP)[:, None] & (dk[None, :] < DK), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    return q


@triton.jit
def _score_key_tile(q, k_base, v_base, keys64, key_ok, stride_kt, stride_vt, qk_scale,
                    DK: tl.constexpr, DV: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
                    UPCAST: tl.constexpr):
    """Base-2 logits [G_PAD, tile] of q against one tile of keys (masked keys -inf), and their values."""
    dk = tl.arange(0, DK_PAD)
    dv = tl.arange(0, DV_PAD)
    k = tl.load(k_base + keys64[:, None] * stride_kt + dk[None, :],
                mask=key_ok[:, None] & (dk[None, :] < DK), other=0.0)
    v = tl.load(v_base + keys64[:, None] * stride_vt + dv[None, :],
                mask=key_ok[:, None] & (dv[None, :] < DV), other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    s = tl.where(key_ok[None, :], s, float("-inf"))
    return s, v


@triton.jit
def _online_softmax_step(s, v, m_i, l_i, acc):
    """Fold one tile of base-2 logits and its values into the running (max, sum, output)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _unit_start(q_ptr, k_ptr, v_ptr, b, kvh, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
                GROUP: tl.constexpr, DK: tl.constexpr, G_PAD: tl.constexpr, DK_PAD: tl.constexpr,
                DV_PAD: tl.constexpr, UPCAST: tl.constexpr):
    """A selected/window unit's group queries, its KV head's key and value bases, and an empty softmax state."""
    q = _load_group_queries(q_ptr, b, kvh, stride_qb, stride_qh, GROUP, DK, G_PAD, DK_PAD, UPCAST)
    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh
    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_PAD], dtype=tl.float32)
    acc = tl.zeros([G_PAD, DV_PAD], dtype=tl.float32)
    return q, k_base, v_base, m_i, l_i, acc


@triton.jit
def _attend_keys(q, k_base, v_base, start, end, m_i, l_i, acc, stride_kt, stride_vt, qk_scale,
                 DK: tl.constexpr, DV: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_SLC: tl.constexpr, BLOCK_N: tl.constexpr):
    """The group's online softmax over keys [start, end) of one l'-token range, BLOCK_N keys a step (a
    runtime loop: unrolled, l' = 256 overflows shared memory)."""
    for it in range(BLOCK_SLC // BLOCK_N):
        keys = start + it * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = (keys >= start) & (keys < end)
        s, v = _score_key_tile(q, k_base, v_base, keys.to(tl.int64), key_ok, stride_kt, stride_vt, qk_scale,
                               DK, DV, DK_PAD, DV_PAD, UPCAST)
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc)
    return m_i, l_i, acc


@triton.jit
def _store_partial(o_part_ptr, lse_part_ptr, part_rows, row_ok, m_i, l_i, acc,
                   DV: tl.constexpr, DV_PAD: tl.constexpr):
    """Normalise one split's output and store it with its lse; a row that saw no key: o = 0, lse = -inf."""
    has_keys = l_i > 0.0
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    o = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    dv = tl.arange(0, DV_PAD)
    tl.store(lse_part_ptr + part_rows, lse, mask=row_ok)
    tl.store(o_part_ptr + part_rows[:, None] * DV + dv[None, :], o,
             mask=row_ok[:, None] & (dv[None, :] < DV))


@triton.jit
def _compress_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, new_len_ptr, old_len_ptr,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_kcb, stride_kct, stride_kch,
    stride_vcb, stride_vct, stride_vch,
    num_heads, tmax, tc_max,
    DK: tl.constexpr, DV: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_I: tl.constexpr,
    HAS_OLD: tl.constexpr,
):
    """Mean-compress blocks [tc(old_len), tc(new_len)) of one (batch, head): k and v together."""
    pid_bh = tl.program_id(0)
    pid_i = tl.program_id(1)
    b, h = _batch_and_head(pid_bh, num_heads)
    new_len = _cache_len(new_len_ptr, b, tmax, 0)
    tc_new = tl.minimum(_num_cmp_blocks(new_len, BLOCK_CMP, STRIDE_CMP), tc_max)
    first = 0
    if HAS_OLD:
        first = _num_cmp_blocks(_cache_len(old_len_ptr, b, tmax, 0), BLOCK_CMP, STRIDE_CMP)
    blocks = first + pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    block_ok = blocks < tc_new
    tokens0 = blocks.to(tl.int64) * STRIDE_CMP
    dk = tl.arange(0, DK_PAD)
    dv = tl.arange(0, DV_PAD)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    k_acc = tl.zeros([BLOCK_I, DK_PAD], dtype=tl.float32)
    v_acc = tl.zeros([BLOCK_I, DV_PAD], dtype=tl.float32)
    for t in range(BLOCK_CMP):
        rows = (tokens0 + t)[:, None]
        k_acc += tl.load(k_base + rows * stride_kt + dk[None, :],
                         mask=block_ok[:, None] & (dk[None, :] < DK), other=0.0).to(tl.float32)
        v_acc += tl.load(v_base + rows * stride_vt + dv[None, :],
                         mask=block_ok[:, None] & (dv[None, :] < DV), other=0.0).to(tl.float32)
    out_rows = blocks.to(tl.int64)[:, None]
    tl.store(kc_ptr + b * stride_kcb + h * stride_kch + out_rows * stride_kct + dk[None, :],
             (k_acc / BLOCK_CMP).to(kc_ptr.dtype.element_ty),
             mask=block_ok[:, None] & (dk[None, :] < DK))
    tl.store(vc_ptr + b * stride_vcb + h * stride_vch + out_rows * stride_vct + dv[None, :],
             (v_acc / BLOCK_CMP).to(vc_ptr.dtype.element_ty),
             mask=block_ok[:, None] & (dv[None, :] < DV))


@triton.jit
def _cmp_partial_kernel(
    q_ptr, kc_ptr, vc_ptr, seqlens_ptr, logits_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qh,
    stride_kcb, stride_kct, stride_kch,
    stride_vcb, stride_vct, stride_vch,
    num_kv_heads, tmax, tc_max, qk_scale,
    GROUP: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, NSPLIT: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    G_PAD: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr, TILES_PER_SPLIT: tl.constexpr, UPCAST: tl.constexpr,
):
    """Compressed attention of one KV head's G query heads over one chunk of visible blocks."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b, kvh = _batch_and_head(pid_bh, num_kv_heads)
    seqlen = _cache_len(seqlens_ptr, b, tmax, 1)
    tc_vis = tl.minimum(_num_cmp_blocks(seqlen, BLOCK_CMP, STRIDE_CMP), tc_max)

    rows = tl.arange(0, G_PAD)
    row_ok = rows < GROUP
    q = _load_group_queries(q_ptr, b, kvh, stride_qb, stride_qh, GROUP, DK, G_PAD, DK_PAD, UPCAST)
    kc_base = kc_ptr + b * stride_kcb + kvh * stride_kch
    vc_base = vc_ptr + b * stride_vcb + kvh * stride_vch
    logit_rows = logits_ptr + (pid_bh.to(tl.int64) * GROUP + rows)[:, None] * tc_max

    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_PAD], dtype=tl.float32)
    acc = tl.zeros([G_PAD, DV_PAD], dtype=tl.float32)
    for it in range(TILES_PER_SPLIT):
        cols = (split * TILES_PER_SPLIT + it) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < tc_vis
        cols64 = cols.to(tl.int64)
        s, v = _score_key_tile(q, kc_base, vc_base, cols64, col_ok, stride_kct, stride_vct, qk_scale,
                               DK, DV, DK_PAD, DV_PAD, UPCAST)
        tl.store(logit_rows + cols64[None, :], s, mask=row_ok[:, None] & col_ok[None, :])
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc)

    part_rows = (pid_bh.to(tl.int64) * NSPLIT + split) * GROUP + rows
    _store_partial(o_part_ptr, lse_part_ptr, part_rows, row_ok, m_i, l_i, acc, DV, DV_PAD)


@triton.jit
def _select_kernel(
    logits_ptr, lse_part_ptr, seqlens_ptr, keys_ptr, block_idx_ptr,
    num_kv_heads, tmax, tc_max,
    GROUP: tl.constexpr, NSPLIT: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_SLC: tl.constexpr, N_SLC: tl.constexpr,
    PER_SLC: tl.constexpr, PER_CMP: tl.constexpr,
    G_PAD: tl.constexpr, NSPLIT_PAD: tl.constexpr, NSLC_PAD: tl.constexpr, BLOCK_J: tl.constexpr,
    N_PAD: tl.constexpr, KEY_CHUNK: tl.constexpr,
):
    """Block scores and top-n selection (NSA_SPEC section 3) for one (batch, KV head).

    Each candidate block becomes one int64 key: high 32 bits the score's float bits (scores are
    >= 0, so their bits order like the floats; forced blocks get +inf), low 32 bits NSLC_PAD - j
    so equal scores prefer the lower j. Non-candidates are -1. Top-n is n max-reductions over the
    keys in registers, or, beyond KEY_CHUNK keys, n passes over KEY_CHUNK-key chunks (no length limit).
    """
    pid_bh = tl.program_id(0)
    b = (pid_bh // num_kv_heads).to(tl.int64)
    seqlen = _cache_len(seqlens_ptr, b, tmax, 1)
    tc_vis = tl.minimum(_num_cmp_blocks(seqlen, BLOCK_CMP, STRIDE_CMP), tc_max)
    current = (seqlen - 1) // BLOCK_SLC

    # full lse of every head of the group from the split partials
    rows = tl.arange(0, G_PAD)
    row_ok = rows < GROUP
    splits = tl.arange(0, NSPLIT_PAD)
    part = tl.load(lse_part_ptr + (pid_bh.to(tl.int64) * NSPLIT + splits[None, :]) * GROUP + rows[:, None],
                   mask=row_ok[:, None] & (splits[None, :] < NSPLIT), other=float("-inf"))
    top = tl.max(part, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp2(part - top[:, None]), axis=1)
    lse = tl.where(total > 0.0, top + tl.log2(tl.where(total > 0.0, total, 1.0)), 0.0)

    logit_rows = logits_ptr + (pid_bh.to(tl.int64) * GROUP + rows)[:, None] * tc_max
    key_base = keys_ptr + pid_bh.to(tl.int64) * NSLC_PAD
    for jt in range(NSLC_PAD // BLOCK_J):
        j = jt * BLOCK_J + tl.arange(0, BLOCK_J)
        score = tl.zeros([BLOCK_J], dtype=tl.float32)
        # compressed block i covers stride chunks [i, i + PER_CMP), selection block j covers
        # [j * PER_SLC, (j + 1) * PER_SLC): i contributes p_cmp[i] times their overlap.
        for r in tl.static_range(PER_SLC + PER_CMP - 1):
            i = j * PER_SLC + (r - (PER_CMP - 1))
            overlap = tl.minimum(i + PER_CMP, (j + 1) * PER_SLC) - tl.maximum(i, j * PER_SLC)
            i_ok = (i >= 0) & (i < tc_vis)
            logit = tl.load(logit_rows + i.to(tl.int64)[None, :], mask=row_ok[:, None] & i_ok[None, :],
                            other=float("-inf"))
            p_group = tl.sum(tl.exp2(logit - lse[:, None]), axis=0)
            score += overlap.to(tl.float32) * p_group
        bits = tl.maximum(score, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
        forced = (j == 0) | (j == current) | (j == current - 1)
        bits = tl.where(forced, 0x7F800000, bits)
        key = (bits << 32) | (NSLC_PAD - j).to(tl.int64)
        key = tl.where(j <= current, key, -1)
        tl.store(key_base + j, key, mask=j < NSLC_PAD)
    tl.debug_barrier()  # the keys written above by all threads are read back below

    slots = tl.arange(0, N_PAD)
    picks = tl.full([N_PAD], -1, dtype=tl.int32)
    if NSLC_PAD <= KEY_CHUNK:  # every key in registers: n max-reductions
        all_j = tl.arange(0, NSLC_PAD)
        keys = tl.load(key_base + all_j, mask=all_j < NSLC_PAD, other=-1)
        for s in range(N_SLC):
            best = tl.max(keys, axis=0)
            chosen = tl.where(best >= 0, NSLC_PAD - (best & 0x7FFFFFFF), -1).to(tl.int32)
            picks = tl.where(slots == s, chosen, picks)
            keys = tl.where(keys == best, -1, keys)
    else:  # keys are unique: pick s is the largest key below pick s-1, found in one pass over the chunks
        bound = tl.full([], 0x7FFFFFFFFFFFFFFF, dtype=tl.int64)
        for s in range(N_SLC):
            best = tl.full([], -1, dtype=tl.int64)
            for c0 in range(0, NSLC_PAD, KEY_CHUNK):
                c_j = c0 + tl.arange(0, KEY_CHUNK)
                chunk = tl.load(key_base + c_j, mask=c_j < NSLC_PAD, other=-1)
                best = tl.maximum(best, tl.max(tl.where(chunk < bound, chunk, -1), axis=0))
            chosen = tl.where(best >= 0, NSLC_PAD - (best & 0x7FFFFFFF), -1).to(tl.int32)
            picks = tl.where(slots == s, chosen, picks)
            bound = best
    tl.store(block_idx_ptr + pid_bh.to(tl.int64) * N_SLC + slots, picks, mask=slots < N_SLC)


@triton.jit
def _slc_win_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, block_idx_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    num_kv_heads, tmax, qk_scale,
    GROUP: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    N_SLC: tl.constexpr, NUM_UNITS: tl.constexpr, BLOCK_SLC: tl.constexpr, WINDOW: tl.constexpr,
    G_PAD: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One l'-token work unit: unit < n is the unit-th selected block, the rest window chunks."""
    pid_bh = tl.program_id(0)
    unit = tl.program_id(1)
    b, kvh = _batch_and_head(pid_bh, num_kv_heads)
    seqlen = _cache_len(seqlens_ptr, b, tmax, 1)

    is_slc = unit < N_SLC
    block = tl.load(block_idx_ptr + pid_bh.to(tl.int64) * N_SLC + unit, mask=is_slc, other=-1)
    slc_start = block * BLOCK_SLC
    slc_end = tl.where(block >= 0, tl.minimum(slc_start + BLOCK_SLC, seqlen), slc_start)
    win_start = tl.maximum(seqlen - WINDOW, 0) + (unit - N_SLC) * BLOCK_SLC
    win_end = tl.minimum(win_start + BLOCK_SLC, seqlen)
    start = tl.where(is_slc, slc_start, win_start)
    end = tl.where(is_slc, slc_end, win_end)

    rows = tl.arange(0, G_PAD)
    row_ok = rows < GROUP
    q, k_base, v_base, m_i, l_i, acc = _unit_start(q_ptr, k_ptr, v_ptr, b, kvh, stride_qb, stride_qh, stride_kb,
                                                   stride_kh, stride_vb, stride_vh, GROUP, DK, G_PAD, DK_PAD, DV_PAD,
                                                   UPCAST)
    m_i, l_i, acc = _attend_keys(q, k_base, v_base, start, end, m_i, l_i, acc, stride_kt, stride_vt, qk_scale, DK, DV,
                                 DK_PAD, DV_PAD, UPCAST, BLOCK_SLC, BLOCK_N)

    part_rows = (pid_bh.to(tl.int64) * NUM_UNITS + unit) * GROUP + rows
    _store_partial(o_part_ptr, lse_part_ptr, part_rows, row_ok, m_i, l_i, acc, DV, DV_PAD)


# ------------------------------------------------------------------ v2: parallel scoring, ranking in the units
@triton.jit
def _group_lse(lse_part_ptr, pid_bh, GROUP: tl.constexpr, NSPLIT: tl.constexpr, G_PAD: tl.constexpr,
               NSPLIT_PAD: tl.constexpr):
    """Base-2 lse of every head of one group from the compressed-attention split partials (0 if none)."""
    rows = tl.arange(0, G_PAD)
    splits = tl.arange(0, NSPLIT_PAD)
    part = tl.load(lse_part_ptr + (pid_bh.to(tl.int64) * NSPLIT + splits[None, :]) * GROUP + rows[:, None],
                   mask=(rows < GROUP)[:, None] & (splits[None, :] < NSPLIT), other=float("-inf"))
    top = tl.max(part, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp2(part - top[:, None]), axis=1)
    return tl.where(total > 0.0, top + tl.log2(tl.where(total > 0.0, total, 1.0)), 0.0)


@triton.jit
def _score_kernel(
    logits_ptr, lse_part_ptr, seqlens_ptr, keys_ptr,
    num_kv_heads, tmax, tc_max,
    GROUP: tl.constexpr, NSPLIT: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_SLC: tl.constexpr,
    PER_SLC: tl.constexpr, PER_CMP: tl.constexpr,
    G_PAD: tl.constexpr, NSPLIT_PAD: tl.constexpr, NSLC_PAD: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """v2: the selection keys of BLOCK_J selection blocks of one (batch, KV head), as `_select_kernel`
    builds them (score bits << 32 | NSLC_PAD - j, forced blocks +inf, non-candidates -1); no top-n."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // num_kv_heads).to(tl.int64)
    seqlen = _cache_len(seqlens_ptr, b, tmax, 1)
    tc_vis = tl.minimum(_num_cmp_blocks(seqlen, BLOCK_CMP, STRIDE_CMP), tc_max)
    current = (seqlen - 1) // BLOCK_SLC
    lse = _group_lse(lse_part_ptr, pid_bh, GROUP, NSPLIT, G_PAD, NSPLIT_PAD)
    rows = tl.arange(0, G_PAD)
    row_ok = rows < GROUP
    logit_rows = logits_ptr + (pid_bh.to(tl.int64) * GROUP + rows)[:, None] * tc_max
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    score = tl.zeros([BLOCK_J], dtype=tl.float32)
    for r in tl.static_range(PER_SLC + PER_CMP - 1):
        i = j * PER_SLC + (r - (PER_CMP - 1))
        overlap = tl.minimum(i + PER_CMP, (j + 1) * PER_SLC) - tl.maximum(i, j * PER_SLC)
        i_ok = (i >= 0) & (i < tc_vis)
        logit = tl.load(logit_rows + i.to(tl.int64)[None, :], mask=row_ok[:, None] & i_ok[None, :],
                        other=float("-inf"))
        score += overlap.to(tl.float32) * tl.sum(tl.exp2(logit - lse[:, None]), axis=0)
    bits = tl.maximum(score, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    forced = (j == 0) | (j == current) | (j == current - 1)
    bits = tl.where(forced, 0x7F800000, bits)
    key = (bits << 32) | (NSLC_PAD - j).to(tl.int64)
    tl.store(keys_ptr + pid_bh.to(tl.int64) * NSLC_PAD + j, tl.where(j <= current, key, -1), mask=j < NSLC_PAD)


@triton.jit
def _slc_win_rank_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, keys_ptr, block_idx_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    num_kv_heads, tmax, qk_scale,
    GROUP: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    N_SLC: tl.constexpr, N_PAD: tl.constexpr, NSEL: tl.constexpr, NUM_UNITS: tl.constexpr,
    BLOCK_SLC: tl.constexpr, WINDOW: tl.constexpr, NSLC_PAD: tl.constexpr, RANGE: tl.constexpr,
    KEY_CHUNK: tl.constexpr, G_PAD: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
):
    """v2 units: unit < NSEL owns selection candidates [unit*RANGE, (unit+1)*RANGE): it ranks each
    against all keys (rank = keys that beat it; keys are unique), writes block_idx[rank] = j for the
    ranks < n and attends over those blocks into one partial. The other units are window chunks."""
    pid_bh = tl.program_id(0)
    unit = tl.program_id(1)
    b, kvh = _batch_and_head(pid_bh, num_kv_heads)
    seqlen = _cache_len(seqlens_ptr, b, tmax, 1)
    is_sel = unit < NSEL
    key_base = keys_ptr + pid_bh.to(tl.int64) * NSLC_PAD

    cand = unit * RANGE + tl.arange(0, RANGE)
    if is_sel:
        mine = tl.load(key_base + cand, mask=cand < NSLC_PAD, other=-1)
        rank = tl.zeros([RANGE], dtype=tl.int32)
        for c0 in range(0, NSLC_PAD, KEY_CHUNK):
            others = tl.load(key_base + c0 + tl.arange(0, KEY_CHUNK), mask=c0 + tl.arange(0, KEY_CHUNK) < NSLC_PAD,
                             other=-1)
            rank += tl.sum((others[None, :] > mine[:, None]).to(tl.int32), axis=1)
        chosen = (mine >= 0) & (rank < N_SLC)
        tl.store(block_idx_ptr + pid_bh.to(tl.int64) * N_SLC + rank, cand.to(tl.int32), mask=chosen)
        count = tl.minimum((seqlen - 1) // BLOCK_SLC + 1, N_SLC)  # slots [count, n) stay -1
        slots = tl.arange(0, N_PAD)
        tl.store(block_idx_ptr + pid_bh.to(tl.int64) * N_SLC + slots, tl.full([N_PAD], -1, tl.int32),
                 mask=(unit == 0) & (slots >= count) & (slots < N_SLC))
        order = tl.cumsum(chosen.to(tl.int32), axis=0) - 1
        num_ranges = tl.sum(chosen.to(tl.int32), axis=0)
    else:
        chosen = cand < 0
        order = tl.zeros([RANGE], dtype=tl.int32)
        num_ranges = tl.sum(chosen.to(tl.int32), axis=0) + 1  # one window chunk

    rows = tl.arange(0, G_PAD)
    row_ok = rows < GROUP
    q, k_base, v_base, m_i, l_i, acc = _unit_start(q_ptr, k_ptr, v_ptr, b, kvh, stride_qb, stride_qh, stride_kb,
                                                   stride_kh, stride_vb, stride_vh, GROUP, DK, G_PAD, DK_PAD, DV_PAD,
                                                   UPCAST)
    win_start = tl.maximum(seqlen - WINDOW, 0) + (unit - NSEL) * BLOCK_SLC
    for r in range(0, num_ranges):
        block = tl.sum(tl.where(chosen & (order == r), cand, 0), axis=0)
        start = tl.where(is_sel, block * BLOCK_SLC, win_start)
        end = tl.minimum(start + BLOCK_SLC, seqlen)
        m_i, l_i, acc = _attend_keys(q, k_base, v_base, start, end, m_i, l_i, acc, stride_kt, stride_vt, qk_scale,
                                     DK, DV, DK_PAD, DV_PAD, UPCAST, BLOCK_SLC, BLOCK_N)

    part_rows = (pid_bh.to(tl.int64) * NUM_UNITS + unit) * GROUP + rows
    _store_partial(o_part_ptr, lse_part_ptr, part_rows, row_ok, m_i, l_i, acc, DV, DV_PAD)


@triton.jit
def _merge_partials(o_ptr, lse_ptr, first, count, unit_stride, DV: tl.constexpr,
                    UNITS_PAD: tl.constexpr, DV_PAD: tl.constexpr):
    """Softmax-merge `count` partial outputs (o normalised, lse base 2), UNITS_PAD per step with an
    online rescale, so `count` is unbounded (one step when count <= UNITS_PAD); none visible -> 0."""
    dv = tl.arange(0, DV_PAD)
    top = tl.full([], float("-inf"), dtype=tl.float32)
    total = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([DV_PAD], dtype=tl.float32)
    for c0 in range(0, count, UNITS_PAD):
        units = c0 + tl.arange(0, UNITS_PAD)
        unit_ok = units < count
        rows = (first + units).to(tl.int64) * unit_stride
        lse = tl.load(lse_ptr + rows, mask=unit_ok, other=float("-inf"))
        top_new = tl.maximum(top, tl.max(lse, axis=0))
        top_safe = tl.where(top_new == float("-inf"), 0.0, top_new)
        rescale = tl.exp2(top - top_safe)  # 0 on the first step (top = -inf)
        weight = tl.exp2(lse - top_safe)
        o = tl.load(o_ptr + rows[:, None] * DV + dv[None, :], mask=unit_ok[:, None] & (dv[None, :] < DV),
                    other=0.0)
        total = total * rescale + tl.sum(weight, axis=0)
        acc = acc * rescale + tl.sum(weight[:, None] * o, axis=0)
        top = top_new
    return acc / tl.where(total > 0.0, total, 1.0)


@triton.jit
def _combine_kernel(
    cmp_o_ptr, cmp_lse_ptr, sw_o_ptr, sw_lse_ptr, gates_ptr, out_ptr,
    stride_gb, stride_gh, stride_gc, stride_ob, stride_oh,
    num_q_heads,
    GROUP: tl.constexpr, DV: tl.constexpr, NSPLIT: tl.constexpr, N_SLC: tl.constexpr,
    NUM_UNITS: tl.constexpr, NSPLIT_PAD: tl.constexpr, NSLC_PAD: tl.constexpr, NWIN_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
):
    """o = g0 * o_cmp + g1 * o_slc + g2 * o_win for one (batch, query head)."""
    pid = tl.program_id(0)
    b, h = _batch_and_head(pid, num_q_heads)
    pid_bh = b * (num_q_heads // GROUP) + h // GROUP
    g = h % GROUP
    cmp_first = pid_bh * NSPLIT * GROUP + g
    sw_first = pid_bh * NUM_UNITS * GROUP + g
    o_cmp = _merge_partials(cmp_o_ptr + cmp_first * DV, cmp_lse_ptr + cmp_first, 0, NSPLIT, GROUP,
                            DV, NSPLIT_PAD, DV_PAD)
    o_slc = _merge_partials(sw_o_ptr + sw_first * DV, sw_lse_ptr + sw_first, 0, N_SLC, GROUP,
                            DV, NSLC_PAD, DV_PAD)
    o_win = _merge_partials(sw_o_ptr + sw_first * DV, sw_lse_ptr + sw_first, N_SLC, NUM_UNITS - N_SLC,
                            GROUP, DV, NWIN_PAD, DV_PAD)
    gate_base = gates_ptr + b * stride_gb + h * stride_gh
    g_cmp = tl.load(gate_base).to(tl.float32)
    g_slc = tl.load(gate_base + stride_gc).to(tl.float32)
    g_win = tl.load(gate_base + 2 * stride_gc).to(tl.float32)
    o = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win
    dv = tl.arange(0, DV_PAD)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + dv, o.to(out_ptr.dtype.element_ty), mask=dv < DV)


# ------------------------------------------------------------------------------------ host side
@dataclass(frozen=True)
class _DecodePlan:
    """Launch parameters of one decode call; depend on shapes only (CUDA-graph safe)."""

    group: int
    g_pad: int
    dk_pad: int
    dv_pad: int
    tc_max: int
    block_c: int
    tiles_per_split: int
    num_splits: int
    nslc_pad: int
    block_j: int
    num_win_units: int
    block_n: int
    attn_warps: int
    combine_warps: int


def _merge_pad(count: int) -> int:
    """Partials `_merge_partials` takes per step for `count` partials: all of them up to _MERGE_CHUNK."""
    return max(2, min(next_pow2(count), _MERGE_CHUNK))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_SMS


def _plan(batch: int, tmax: int, kv_heads: int, group: int, dk: int, dv: int, tc_max: int,
          cfg: NSAConfig, device: torch.device, block_c: int | None) -> _DecodePlan:
    dk_pad, dv_pad = max(16, next_pow2(dk)), max(16, next_pow2(dv))
    g_pad = max(16, next_pow2(group))
    # register budget (checked by compiling for sm_90): wide heads take narrower key tiles, and
    # wide head groups more warps, so q/acc tiles of G_PAD x D do not spill
    wide = max(dk_pad, dv_pad) > 128
    big_group = g_pad * max(dk_pad, dv_pad) >= 8192
    key_tile = (16 if big_group else 32) if wide else 64
    if block_c is None:
        block_c = 16 if small_sizes() else key_tile
    total_tiles = max(1, triton.cdiv(tc_max, block_c))
    wanted_splits = max(1, triton.cdiv(_PROGRAMS_PER_SM * _num_sms(device), batch * kv_heads))
    tiles_per_split = triton.cdiv(total_tiles, min(wanted_splits, total_tiles))
    num_splits = triton.cdiv(total_tiles, tiles_per_split)
    nslc_pad = max(16, next_pow2(cfg.num_slc_blocks(tmax)))
    num_win_units = triton.cdiv(min(cfg.window, tmax), cfg.block_slc)
    most_partials = max(next_pow2(num_splits), next_pow2(cfg.n_slc), next_pow2(num_win_units))
    return _DecodePlan(
        group=group, g_pad=g_pad, dk_pad=dk_pad, dv_pad=dv_pad, tc_max=tc_max,
        block_c=block_c, tiles_per_split=tiles_per_split, num_splits=num_splits,
        nslc_pad=nslc_pad, block_j=min(nslc_pad, max(16, 2048 // g_pad)),
        num_win_units=num_win_units, block_n=min(cfg.block_slc, key_tile),
        attn_warps=8 if big_group else 4,
        combine_warps=min(8, max(2, next_pow2(most_partials * dv_pad // 2048))),
    )


def _check_seqlens(cache_seqlens: torch.Tensor, batch: int, device: torch.device) -> None:
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.dtype != torch.int32:
        raise ValueError(f"cache_seqlens must be an int32 tensor, got {getattr(cache_seqlens, 'dtype', type(cache_seqlens))}")
    if tuple(cache_seqlens.shape) != (batch,):
        raise ValueError(f"cache_seqlens must have shape [{batch}], got {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device}, the caches on {device}")


def _check_decode_inputs(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, gates: torch.Tensor,
    cache_seqlens: torch.Tensor, k_cmp_cache: torch.Tensor | None, v_cmp_cache: torch.Tensor | None,
    cfg: NSAConfig,
) -> int:
    """Validate shapes, dtypes and devices (never values: that would synchronise); return G."""
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, Dk], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.dim() != 4:
        raise ValueError("k_cache and v_cache must be [B, Tmax, Hkv, D]")
    group = check_heads(q[:, None], k_cache, v_cache)
    batch, tmax = k_cache.shape[0], k_cache.shape[1]
    if tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} disagree on [B, Tmax, Hkv]")
    if q.shape[0] != batch or q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} does not match k_cache {tuple(k_cache.shape)} (batch or Dk)")
    if tmax < 1:
        raise ValueError(f"k_cache has Tmax={tmax}; need at least one token")
    if tuple(gates.shape) != (batch, q.shape[1], 3):
        raise ValueError(f"gates must be [B, Hq, 3] = {[batch, q.shape[1], 3]}, got {tuple(gates.shape)}")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q.dtype={q.dtype} unsupported (use one of {_SUPPORTED_DTYPES})")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"k_cache/v_cache dtypes {k_cache.dtype}/{v_cache.dtype} must equal q.dtype={q.dtype}")
    if not gates.is_floating_point():
        raise ValueError(f"gates.dtype={gates.dtype} must be floating point")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("gates", gates)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    if q.stride(-1) != 1:
        raise ValueError("q must be contiguous in its last dimension")
    _check_seqlens(cache_seqlens, batch, q.device)
    if (k_cmp_cache is None) != (v_cmp_cache is None):
        raise ValueError("pass both k_cmp_cache and v_cmp_cache, or neither")
    if k_cmp_cache is not None:
        need = cfg.num_cmp_blocks(tmax)
        for name, t, d in (("k_cmp_cache", k_cmp_cache, k_cache.shape[3]), ("v_cmp_cache", v_cmp_cache, v_cache.shape[3])):
            if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != k_cache.shape[2] or t.shape[3] != d:
                raise ValueError(f"{name} must be [B, Tc_max, Hkv, D] = [{batch}, >= {need}, {k_cache.shape[2]}, {d}], got {tuple(t.shape)}")
            if t.shape[1] < need:
                raise ValueError(f"{name} has Tc_max={t.shape[1]} blocks; Tmax={tmax} needs {need}")
            if t.dtype != q.dtype or t.device != q.device or t.stride(-1) != 1:
                raise ValueError(f"{name} must have q's dtype and device and a contiguous last dimension")
    return group


def _launch_compress(k: torch.Tensor, v: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor,
                     new_lens: torch.Tensor, old_lens: torch.Tensor | None, max_blocks: int,
                     cfg: NSAConfig) -> None:
    """Compress blocks [tc(old_lens[b]), tc(new_lens[b])) of every (b, head) into k_cmp/v_cmp."""
    batch, tmax, heads, dk = k.shape
    dv = v.shape[3]
    tc_max = k_cmp.shape[1]
    if tc_max == 0 or max_blocks <= 0:
        return
    block_i = 16
    grid = (batch * heads, triton.cdiv(min(max_blocks, tc_max), block_i))
    _compress_kernel[grid](
        k, v, k_cmp, v_cmp, new_lens, new_lens if old_lens is None else old_lens,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2), v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2),
        heads, tmax, tc_max,
        DK=dk, DV=dv, DK_PAD=max(16, next_pow2(dk)), DV_PAD=max(16, next_pow2(dv)),
        BLOCK_CMP=cfg.block_cmp, STRIDE_CMP=cfg.stride_cmp, BLOCK_I=block_i,
        HAS_OLD=old_lens is not None, num_warps=4,
    )


def compress_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                   cfg: NSAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-compressed caches [B, tc(Tmax), Hkv, D*] of the first cache_seqlens[b] tokens.

    Only blocks complete within each sequence are written; later entries are left uninitialised,
    which is fine because no query can see them (decode masks by the same lengths).
    """
    check_kernel_config(cfg)
    if k_cache.dim() != 4 or v_cache.dim() != 4 or tuple(k_cache.shape[:3]) != tuple(v_cache.shape[:3]):
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must be [B, Tmax, Hkv, D*]")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in their last dimension")
    batch, tmax, heads, dk = k_cache.shape
    _check_seqlens(cache_seqlens, batch, k_cache.device)
    tc_max = cfg.num_cmp_blocks(tmax)
    k_cmp = k_cache.new_empty(batch, tc_max, heads, dk)
    v_cmp = v_cache.new_empty(batch, tc_max, heads, v_cache.shape[3])
    _launch_compress(k_cache, v_cache, k_cmp, v_cmp, cache_seqlens, None, tc_max, cfg)
    return k_cmp, v_cmp


def nsa_decode_with_selection(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, gates: torch.Tensor,
    cache_seqlens: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
    k_cmp_cache: torch.Tensor | None = None, v_cmp_cache: torch.Tensor | None = None,
    block_c: int | None = None, *, variant: str = "v2",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`nsa_decode` that also returns the selection it used, block_idx int32 [B, Hkv, n] (-1 padded).

    `block_c` overrides the compressed-attention tile (tests use it to force several splits).
    variant "v2" (default): selection scored by many programs and ranked inside the selected-attention
    units; "v1": one program per (batch, KV head) scores and picks the top n serially
    (docs/tuning-notes.md, the decode selection's traffic model).
    """
    check_variant("variant", variant)
    check_kernel_config(cfg)
    group = _check_decode_inputs(q, k_cache, v_cache, gates, cache_seqlens, k_cmp_cache, v_cmp_cache, cfg)
    if block_c is not None and (block_c < 16 or block_c != next_pow2(block_c)):
        raise ValueError(f"block_c={block_c} must be a power of two >= 16")
    batch, tmax, kv_heads, dk = k_cache.shape
    q_heads, dv = q.shape[1], v_cache.shape[3]
    scale = dk**-0.5 if scale is None else float(scale)
    qk_scale = scale * _LOG2E
    if k_cmp_cache is None:
        k_cmp_cache, v_cmp_cache = compress_cache(k_cache, v_cache, cache_seqlens, cfg)
    plan = _plan(batch, tmax, kv_heads, group, dk, dv, k_cmp_cache.shape[1], cfg, q.device, block_c)
    upcast = interpreting() and q.dtype == torch.bfloat16
    device = q.device
    f32 = dict(device=device, dtype=torch.float32)
    bh = batch * kv_heads
    n_slc = cfg.n_slc
    num_units = n_slc + plan.num_win_units

    logits = torch.empty(bh * group * max(plan.tc_max, 1), **f32)
    cmp_o = torch.empty(bh * plan.num_splits * group * dv, **f32)
    cmp_lse = torch.empty(bh * plan.num_splits * group, **f32)
    _cmp_partial_kernel[(bh, plan.num_splits)](
        q, k_cmp_cache, v_cmp_cache, cache_seqlens, logits, cmp_o, cmp_lse,
        q.stride(0), q.stride(1),
        k_cmp_cache.stride(0), k_cmp_cache.stride(1), k_cmp_cache.stride(2),
        v_cmp_cache.stride(0), v_cmp_cache.stride(1), v_cmp_cache.stride(2),
        kv_heads, tmax, plan.tc_max, qk_scale,
        GROUP=group, DK=dk, DV=dv, NSPLIT=plan.num_splits,
        BLOCK_CMP=cfg.block_cmp, STRIDE_CMP=cfg.stride_cmp,
        G_PAD=plan.g_pad, DK_PAD=plan.dk_pad, DV_PAD=plan.dv_pad,
        BLOCK_C=plan.block_c, TILES_PER_SPLIT=plan.tiles_per_split, UPCAST=upcast, num_warps=plan.attn_warps,
    )

    keys = torch.empty(bh * plan.nslc_pad, device=device, dtype=torch.int64)
    block_idx = torch.empty(batch, kv_heads, n_slc, device=device, dtype=torch.int32)
    if variant == "v2":
        return _decode_v2_tail(q, k_cache, v_cache, gates, cache_seqlens, cfg, plan, logits, cmp_o, cmp_lse, keys,
                               block_idx, qk_scale, upcast)
    _select_kernel[(bh,)](
        logits, cmp_lse, cache_seqlens, keys, block_idx,
        kv_heads, tmax, plan.tc_max,
        GROUP=group, NSPLIT=plan.num_splits,
        BLOCK_CMP=cfg.block_cmp, STRIDE_CMP=cfg.stride_cmp, BLOCK_SLC=cfg.block_slc, N_SLC=n_slc,
        PER_SLC=cfg.block_slc // cfg.stride_cmp, PER_CMP=cfg.block_cmp // cfg.stride_cmp,
        G_PAD=plan.g_pad, NSPLIT_PAD=max(2, next_pow2(plan.num_splits)), NSLC_PAD=plan.nslc_pad,
        BLOCK_J=plan.block_j, N_PAD=max(2, next_pow2(n_slc)), KEY_CHUNK=min(plan.nslc_pad, _V1_KEY_CHUNK),
        num_warps=8 if plan.nslc_pad >= 4096 else 4,
    )

    sw_o = torch.empty(bh * num_units * group * dv, **f32)
    sw_lse = torch.empty(bh * num_units * group, **f32)
    _slc_win_kernel[(bh, num_units)](
        q, k_cache, v_cache, cache_seqlens, block_idx, sw_o, sw_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        kv_heads, tmax, qk_scale,
        GROUP=group, DK=dk, DV=dv, N_SLC=n_slc, NUM_UNITS=num_units,
        BLOCK_SLC=cfg.block_slc, WINDOW=cfg.window,
        G_PAD=plan.g_pad, DK_PAD=plan.dk_pad, DV_PAD=plan.dv_pad, BLOCK_N=plan.block_n,
        UPCAST=upcast, num_warps=plan.attn_warps,
    )

    out = torch.empty(batch, q_heads, dv, device=device, dtype=q.dtype)
    _combine_kernel[(batch * q_heads,)](
        cmp_o, cmp_lse, sw_o, sw_lse, gates, out,
        gates.stride(0), gates.stride(1), gates.stride(2), out.stride(0), out.stride(1),
        q_heads,
        GROUP=group, DV=dv, NSPLIT=plan.num_splits, N_SLC=n_slc, NUM_UNITS=num_units,
        NSPLIT_PAD=_merge_pad(plan.num_splits), NSLC_PAD=_merge_pad(n_slc),
        NWIN_PAD=_merge_pad(plan.num_win_units), DV_PAD=plan.dv_pad, num_warps=plan.combine_warps,
    )
    return out, block_idx


def _decode_v2_tail(q, k_cache, v_cache, gates, cache_seqlens, cfg: NSAConfig, plan: _DecodePlan, logits, cmp_o,
                    cmp_lse, keys, block_idx, qk_scale: float, upcast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """v2 after the compressed partials: parallel scoring, ranking units + window units, combine."""
    batch, tmax, kv_heads, dk = k_cache.shape
    q_heads, dv, group, bh = q.shape[1], v_cache.shape[3], plan.group, batch * kv_heads
    f32 = dict(device=q.device, dtype=torch.float32)
    nsplit_pad = max(2, next_pow2(plan.num_splits))
    _score_kernel[(bh, plan.nslc_pad // plan.block_j)](
        logits, cmp_lse, cache_seqlens, keys, kv_heads, tmax, plan.tc_max,
        GROUP=group, NSPLIT=plan.num_splits, BLOCK_CMP=cfg.block_cmp, STRIDE_CMP=cfg.stride_cmp,
        BLOCK_SLC=cfg.block_slc, PER_SLC=cfg.block_slc // cfg.stride_cmp, PER_CMP=cfg.block_cmp // cfg.stride_cmp,
        G_PAD=plan.g_pad, NSPLIT_PAD=nsplit_pad, NSLC_PAD=plan.nslc_pad, BLOCK_J=plan.block_j, num_warps=4,
    )
    rank_range = min(plan.nslc_pad, _RANK_RANGE_SMALL if small_sizes() else _RANK_RANGE)
    num_sel = plan.nslc_pad // rank_range
    num_units = num_sel + plan.num_win_units
    sw_o = torch.empty(bh * num_units * group * dv, **f32)
    sw_lse = torch.empty(bh * num_units * group, **f32)
    _slc_win_rank_kernel[(bh, num_units)](
        q, k_cache, v_cache, cache_seqlens, keys, block_idx, sw_o, sw_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        kv_heads, tmax, qk_scale,
        GROUP=group, DK=dk, DV=dv, N_SLC=cfg.n_slc, N_PAD=max(2, next_pow2(cfg.n_slc)), NSEL=num_sel,
        NUM_UNITS=num_units, BLOCK_SLC=cfg.block_slc, WINDOW=cfg.window, NSLC_PAD=plan.nslc_pad,
        RANGE=rank_range, KEY_CHUNK=min(plan.nslc_pad, _RANK_KEY_CHUNK),
        G_PAD=plan.g_pad, DK_PAD=plan.dk_pad, DV_PAD=plan.dv_pad, BLOCK_N=plan.block_n,
        UPCAST=upcast, num_warps=plan.attn_warps,
    )
    out = torch.empty(batch, q_heads, dv, device=q.device, dtype=q.dtype)
    _combine_kernel[(batch * q_heads,)](
        cmp_o, cmp_lse, sw_o, sw_lse, gates, out,
        gates.stride(0), gates.stride(1), gates.stride(2), out.stride(0), out.stride(1),
        q_heads,
        GROUP=group, DV=dv, NSPLIT=plan.num_splits, N_SLC=num_sel, NUM_UNITS=num_units,
        NSPLIT_PAD=_merge_pad(plan.num_splits), NSLC_PAD=_merge_pad(num_sel),
        NWIN_PAD=_merge_pad(plan.num_win_units), DV_PAD=plan.dv_pad, num_warps=plan.combine_warps,
    )
    return out, block_idx


def nsa_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, gates: torch.Tensor,
    cache_seqlens: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
    k_cmp_cache: torch.Tensor | None = None, v_cmp_cache: torch.Tensor | None = None,
) -> torch.Tensor:
    """NSA_SPEC section 7: o [B, Hq, Dv] = row L-1 of the NSA forward over each cached sequence.

    cache_seqlens[b] must lie in 1..Tmax (not checked: checking would synchronise with the host;
    out-of-range lengths are clamped in-kernel so memory stays safe).
    """
    return nsa_decode_with_selection(q, k_cache, v_cache, gates, cache_seqlens, cfg, scale,
                                     k_cmp_cache, v_cmp_cache)[0]


@dataclass(frozen=True)
class CompressedKVCache:
    """Mean-compressed K/V kept current as tokens are appended to a KV cache.

    The spec is frozen; `k_cmp`, `v_cmp` and `seqlens` (tokens already accounted for, on the
    device) are updated in place, so a decode loop can run inside a CUDA graph.
    """

    cfg: NSAConfig
    k_cmp: torch.Tensor  # [B, tc(max_tokens), Hkv, Dk]
    v_cmp: torch.Tensor  # [B, tc(max_tokens), Hkv, Dv]
    seqlens: torch.Tensor  # int32 [B]

    @classmethod
    def allocate(cls, batch: int, max_tokens: int, kv_heads: int, dk: int, dv: int, cfg: NSAConfig,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16) -> "CompressedKVCache":
        """Empty compressed cache for caches of `max_tokens` tokens (no token compressed yet)."""
        check_kernel_config(cfg)
        for name, value in (("batch", batch), ("max_tokens", max_tokens), ("kv_heads", kv_heads), ("dk", dk), ("dv", dv)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"dtype={dtype} unsupported (use one of {_SUPPORTED_DTYPES})")
        tc_max = cfg.num_cmp_blocks(max_tokens)
        return cls(
            cfg=cfg,
            k_cmp=torch.zeros(batch, tc_max, kv_heads, dk, device=device, dtype=dtype),
            v_cmp=torch.zeros(batch, tc_max, kv_heads, dv, device=device, dtype=dtype),
            seqlens=torch.zeros(batch, device=device, dtype=torch.int32),
        )

    def update(self, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
               max_new_tokens: int | None = None) -> None:
        """Compress the blocks completed since the last update (lengths self.seqlens -> cache_seqlens).

        `max_new_tokens` bounds how many tokens any sequence gained (1 in a decode step), which
        shrinks the launch to the few blocks that can be new; None covers the whole cache.
        Lengths that shrank (a rewound cache) compute nothing and are simply recorded.
        """
        batch, _, heads, dk = self.k_cmp.shape
        if k_cache.dim() != 4 or tuple(k_cache.shape[::2]) != (batch, heads) or k_cache.shape[3] != dk:
            raise ValueError(f"k_cache {tuple(k_cache.shape)} does not match k_cmp {tuple(self.k_cmp.shape)}")
        if v_cache.dim() != 4 or tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]) or v_cache.shape[3] != self.v_cmp.shape[3]:
            raise ValueError(f"v_cache {tuple(v_cache.shape)} does not match v_cmp {tuple(self.v_cmp.shape)}")
        if k_cache.dtype != self.k_cmp.dtype or v_cache.dtype != self.v_cmp.dtype:
            raise ValueError(f"cache dtypes {k_cache.dtype}/{v_cache.dtype} must equal {self.k_cmp.dtype}")
        if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
            raise ValueError("k_cache and v_cache must be contiguous in their last dimension")
        if self.cfg.num_cmp_blocks(k_cache.shape[1]) > self.k_cmp.shape[1]:
            raise ValueError(f"k_cache holds {k_cache.shape[1]} tokens, more than this compressed cache was allocated for")
        _check_seqlens(cache_seqlens, batch, self.seqlens.device)
        if max_new_tokens is None:
            max_blocks = self.k_cmp.shape[1]
        elif isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int or None, got {max_new_tokens!r}")
        else:
            max_blocks = max_new_tokens // self.cfg.stride_cmp + 1
        _launch_compress(k_cache, v_cache, self.k_cmp, self.v_cmp, cache_seqlens, self.seqlens, max_blocks, self.cfg)
        self.seqlens.copy_(cache_seqlens)
