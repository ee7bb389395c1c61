"""Selected-block attention (NSA branch "slc", NSA_SPEC section 4), forward and backward.

Group-centric, as the NSA paper designs it: one program per (query position, KV group, batch)
loads the G query heads of its group once and streams the group's selected key blocks, so each
selected block is read once for all G heads. The backward computes dq with the same loop, and
computes dk/dv block-centric: the selection is inverted on the device into per-block query lists
(a stable sort, no host sync), and a program per (key chunk of block j, list segment, batch x KV
head) walks the queries that selected j. Short lists have one owner that stores its keys; long
lists (block 0's holds every query) are split into segments whose fp32 partials a second kernel
sums in a fixed order, so the default backward needs no atomics and is bit-for-bit reproducible.

Slot semantics everywhere (forward, dq, and the query lists): a slot is used iff its block j
satisfies 0 <= j <= t // block_slc and j does not repeat an earlier slot of the same row; -1,
out-of-range and future blocks are ignored, which matches the reference's set semantics.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (
    MAX_N_SLC, SUPPORTED_BLOCK_SLC, TUNING_ARGS, autotune, check_gated, check_heads, interpreting, next_pow2,
    check_dq_chain, same_memory, split_head_dim, tuning_buckets,
)
from . import _selected_tiles as tiles, selected_small_g
from ._selected_tiles import (
    _block_keys, _dkdv_reduce_kernel, _gated_epilogue, _kv_rows, _load_cols, _load_rows, _load_split_cols, _row_tile,
    _seq_start, _store_rows,
)
from .packing import Packing, refuse_v1
from .variants import check_variant, runs_small_g

__all__ = ["selected_fwd", "selected_bwd", "invert_selection"]

_LOG2E = 1.4426950408889634  # kernels work in the exp2 domain; the literals there are log2(e) and ln(2)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NUM_GATES = 3  # gates [B, T, Hq, 3]: one per NSA branch (cmp, slc, win)


# ---------------------------------------------------------------- autotune configs
def _fwd_configs() -> list[triton.Config]:
    """BLOCK_K keys per step (forward and dq). Under the interpreter `tiles.launcher` bypasses autotuning."""
    return [
        triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bk in (32, 64, 128)
        for w in (4, 8)
        for s in (2, 3)
    ]


def _dkdv_configs() -> list[triton.Config]:
    """BLOCK_N keys per program, BLOCK_M gathered (query, head) rows per step (dk/dv)."""
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm}, num_warps=w, num_stages=s)
        for bn in (32, 64)
        for bm in (32, 64)
        for w in (4, 8)
        for s in (1, 2)
    ]


_SHARED_MEMORY_BYTES = 227 * 1024  # an H100's opt-in shared memory per block
_WIDE_HEADS = 256  # DK_PAD + DV_PAD beyond this (192 + 128 pads to 256 + 128) is "wide"
# Limits below were read off sm_90 compiles (ptxas register/stack usage, the suite's compile check) at
# G=16, Dk/Dv = 192/128 and 128/128, l' = 32..256, n = 16 and 64, and G=1, Dk=Dv=64.
_BLOCK_SHARE_MAX = 1024  # bytes of one selected block's K+V per thread (fwd and dq)
_BLOCK_SHARE_FEW_CHUNKS = 512  # dq: above this share, at most two unrolled chunks


def _block_params(named_args: dict, kwargs: dict) -> tuple[int, int, int, int]:
    """(BLOCK_SLC, DK_PAD + DV_PAD, G_PAD, element bytes) of a launch, as the prune hooks see it."""
    def arg(name: str, default: int) -> int:
        return kwargs.get(name, named_args.get(name, default))

    q = named_args.get("q_ptr")
    elem = q.element_size() if hasattr(q, "element_size") else 2
    return arg("BLOCK_SLC", 64), arg("DK_PAD", 0) + arg("DV_PAD", 0), arg("G_PAD", 16), elem


def _gather_prune(configs, named_args, kwargs, dq: bool):
    """Configs of the group-centric kernels (forward, dq) that divide l', fit and do not spill.

    The chunk loop is unrolled inside the slot loop, so the pipeliner keeps a whole selected
    block of K and V (l' x (DK_PAD + DV_PAD)) in flight per stage:
    - shared memory: (num_stages - 1) blocks plus the q/do tiles' staging must fit 227 KiB
      (l' = 256 at 192/128 needs ~400 KB with 3 stages);
    - registers: a thread's share of one block (its gather addresses and masks) above 1 KiB
      spills (4 warps at l' = 256, 192/128: BLOCK_K=128 by 120 B), so it takes more warps;
    - dq holds more (q, do, an fp32 dq row block): above 512 B per thread it spills with 4
      unrolled chunks (l' = 256, 8 warps, n = 64: BLOCK_K=64 spills, 128 does not), and with
      wide heads ptxas caps a 4-warp single-chunk 3-stage dq at 128 registers and spills 8 B
      (paper shape; the 2-stage and 8-warp ones do not).
    BLOCK_K must divide l' (powers of two, so <= suffices); at most 4 unrolled chunks.
    """
    block_slc, heads_pad, g_pad, elem = _block_params(named_args, kwargs)
    block_bytes = block_slc * heads_pad * elem
    wide = heads_pad > _WIDE_HEADS

    def shared_bytes(c) -> int:
        return (c.num_stages - 1) * block_bytes + 2 * g_pad * heads_pad * elem

    def spills(c) -> bool:
        share = block_bytes // (32 * c.num_warps)
        chunks = block_slc // c.kwargs["BLOCK_K"]
        if share > _BLOCK_SHARE_MAX:
            return True
        if dq and share > _BLOCK_SHARE_FEW_CHUNKS and chunks > 2:
            return True
        return dq and wide and c.num_warps < 8 and chunks == 1 and c.num_stages > 2

    legal = [c for c in configs if block_slc // 4 <= c.kwargs["BLOCK_K"] <= block_slc] or configs[:1]
    fitting = [c for c in legal if shared_bytes(c) <= _SHARED_MEMORY_BYTES]
    if not fitting:  # no prefetch buffers at all: one stage is the least shared memory there is
        fitting = [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=1) for c in legal
                   if c.num_stages == min(x.num_stages for x in legal)]
    return [c for c in fitting if not spills(c)] or [max(fitting, key=lambda c: (c.num_warps, c.kwargs["BLOCK_K"]))]


def _prune_fwd(configs, named_args, **kwargs):
    """Forward configs: see `_gather_prune`."""
    return _gather_prune(configs, named_args, kwargs, dq=False)


def _prune_dq(configs, named_args, **kwargs):
    """dq configs: see `_gather_prune` (dq keeps more live state than the forward)."""
    return _gather_prune(configs, named_args, kwargs, dq=True)


def _prune_block_n(configs, named_args, **kwargs):
    """BLOCK_N must divide l'. With wide heads (DK_PAD + DV_PAD > 256, e.g. 256 + 128) the dk/dv
    accumulators and the gathered q/do rows fill the registers: keep 8 warps and at most 32
    gathered rows per step (max(BLOCK_M, G_IN)); on sm_90 at Dk=192, Dv=128 the 4-warp configs
    and the 64-row ones spill (40 to 1000 B per thread), 32 x 32 and 32 x 64 with 8 warps do not."""
    block_slc = kwargs.get("BLOCK_SLC", named_args.get("BLOCK_SLC"))
    g_in = kwargs.get("G_IN", named_args.get("G_IN", 1))
    wide = kwargs.get("DK_PAD", 0) + kwargs.get("DV_PAD", 0) > _WIDE_HEADS
    legal = [c for c in configs if c.kwargs["BLOCK_N"] <= block_slc] or configs[:1]
    kept = [
        c for c in legal
        if not (wide and (c.num_warps < 8 or max(c.kwargs["BLOCK_M"], g_in) > 32))
    ]
    # fallback (e.g. G = 64, whose 64 gathered rows spill at any tile): the lightest 8-warp config
    return kept or [min(legal, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], -c.num_warps,
                                              c.num_stages))]


# ---------------------------------------------------------------- tile helpers
@triton.jit
def _head_cols(DK, DV, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr):
    """Column offsets of K and V tiles and which are real: (dk_offs, dk_ok, dv_offs, dv_ok)."""
    dk_offs = tl.arange(0, DK_PAD)
    dv_offs = tl.arange(0, DV_PAD)
    return dk_offs, dk_offs < DK, dv_offs, dv_offs < DV


@triton.jit
def _group_program(T, HQ, G, G_PAD: tl.constexpr):
    """(t, g, b) of a program of the (T, Hkv, B) grid, the rows [B*T*Hq] of its G query heads, which exist."""
    t = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    heads = tl.arange(0, G_PAD)
    return t, g, b, ((b * T + t) * HQ + g * G + heads).to(tl.int64), heads < G


@triton.jit
def _slot_setup(idx_ptr, t, g, b, T, HKV, N_SLOTS: tl.constexpr, N_PAD: tl.constexpr):
    """What the slot loop of program (t, g, b) needs: (pointer to row (b, t, g) of block_idx, its slot
    numbers, the row itself -1 padded to N_PAD, `_kv_rows` of key 0 of (b, g))."""
    idx_row_ptr = idx_ptr + ((b * T + t) * HKV + g) * N_SLOTS
    kv_base = _kv_rows(b, g, 0, T, HKV)
    row_slots = tl.arange(0, N_PAD)
    idx_row = tl.load(idx_row_ptr + row_slots, mask=row_slots < N_SLOTS, other=-1)
    return idx_row_ptr, row_slots, idx_row, kv_base


@triton.jit
def _load_lse2_delta(lse_ptr, delta_ptr, row, row_ok):
    """The backward's per-row statistics: (lse in the exp2 domain, delta); 0 in masked rows."""
    lse2 = tl.load(lse_ptr + row, mask=row_ok, other=0.0) * 1.4426950408889634
    return lse2, tl.load(delta_ptr + row, mask=row_ok, other=0.0)


# ---------------------------------------------------------------- forward
@triton.jit(do_not_specialize=TUNING_ARGS)
def _selected_fwd_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, lse_ptr, gate_ptr,
    T, HQ, HKV, G, DK, DV, qk_scale_log2, SEQ_BUCKET, ROWS_BUCKET,
    N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_SLC: tl.constexpr, N_PAD: tl.constexpr, UPCAST: tl.constexpr,
    GATED: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (query position, KV group, batch): the group's G heads over their selected blocks.

    GATED: o_ptr is the final NSA output and gets gates[row, branch] * o (added to its contents when
    ACCUMULATE); gate_ptr then points at the branch's gate column. Ungated, gate_ptr is never read.
    """
    t, g, b, row, head_ok = _group_program(T, HQ, G, G_PAD)
    dk_offs, dk_ok, dv_offs, dv_ok = _head_cols(DK, DV, DK_PAD, DV_PAD)
    q = _load_cols(q_ptr, row, head_ok, dk_offs, dk_ok, DK, UPCAST)  # the G query heads of group g at t, once
    idx_row_ptr, row_slots, idx_row, kv_base = _slot_setup(idx_ptr, t, g, b, T, HKV, N_SLOTS, N_PAD)

    m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([G_PAD], dtype=tl.float32)
    acc = tl.zeros([G_PAD, DV_PAD], dtype=tl.float32)

    # the slot loop is the innermost runtime loop (chunks are unrolled), so the GPU pipeliner
    # prefetches the next selected block while this one is in the tensor cores. Its body calls no
    # @triton.jit helper: the debug labels LLVM puts around inlined code split ptxas' basic blocks
    # (+46 registers per thread at the paper shape, BLOCK_K = l', 4 warps), so it repeats in dq.
    for slot in range(0, N_SLOTS):
        # a slot is used iff 0 <= j <= t // l' and j does not repeat an earlier slot
        j = tl.load(idx_row_ptr + slot)
        repeats = tl.sum(((idx_row == j) & (row_slots < slot)).to(tl.int32), axis=0)
        used = (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= t) & (repeats == 0)
        for c in tl.static_range(BLOCK_SLC // BLOCK_K):
            pos = j.to(tl.int64) * BLOCK_SLC + c * BLOCK_K + tl.arange(0, BLOCK_K)
            key_ok = used & (pos <= t)  # causal: only bites in the query's own block
            kv_row = kv_base + pos * HKV
            k = tl.load(k_ptr + kv_row[:, None] * DK + dk_offs[None, :],
                        mask=key_ok[:, None] & dk_ok[None, :], other=0.0)
            v = tl.load(v_ptr + kv_row[:, None] * DV + dv_offs[None, :],
                        mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * qk_scale_log2  # log2 domain
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new > float("-inf"), m_new, 0.0)  # a row with no key yet stays NaN-free
            p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

    has_key = l_i > 0.0
    o = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    if GATED:
        o = _gated_epilogue(o, o_ptr, gate_ptr, row, head_ok, dv_offs, dv_ok, DV, 3, ACCUMULATE)  # 3: _NUM_GATES
    _store_rows(o_ptr, row, head_ok, o, DV, DV_PAD)
    tl.store(lse_ptr + row, lse, mask=head_ok)


_FWD_KEY = ["G_PAD", "DK_PAD", "DV_PAD", "BLOCK_SLC"]
_selected_fwd_tuned = autotune(
    configs=_fwd_configs(), key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune_fwd},
)(_selected_fwd_kernel)
# Accumulating launches read o: their tuner restores it around each timed run, so tuning does not
# add into it repeatedly (that costs a copy of o per new key, which the default tuner avoids).
_selected_fwd_accumulate_tuned = autotune(
    configs=_fwd_configs(), key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune_fwd},
    restore_value=["o_ptr"],
)(_selected_fwd_kernel)


# ---------------------------------------------------------------- backward: dq (query-centric)
@triton.jit(do_not_specialize=TUNING_ARGS)
def _selected_dq_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dq_add_ptr,
    T, HQ, HKV, G, DK, DV, qk_scale_log2, scale, SEQ_BUCKET, ROWS_BUCKET,
    N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_SLC: tl.constexpr, N_PAD: tl.constexpr, UPCAST: tl.constexpr, ADD_DQ: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """ADD_DQ: dq_add_ptr's fp32 rows (the other branches' dq so far) are added before the store; it may
    be dq_ptr itself (each row is read and written by this program only)."""
    t, g, b, row, head_ok = _group_program(T, HQ, G, G_PAD)
    dk_offs, dk_ok, dv_offs, dv_ok = _head_cols(DK, DV, DK_PAD, DV_PAD)
    q = _load_cols(q_ptr, row, head_ok, dk_offs, dk_ok, DK, UPCAST)
    do = _load_cols(do_ptr, row, head_ok, dv_offs, dv_ok, DV, UPCAST)
    lse2, delta = _load_lse2_delta(lse_ptr, delta_ptr, row, head_ok)
    idx_row_ptr, row_slots, idx_row, kv_base = _slot_setup(idx_ptr, t, g, b, T, HKV, N_SLOTS, N_PAD)
    dq = tl.zeros([G_PAD, DK_PAD], dtype=tl.float32)

    for slot in range(0, N_SLOTS):
        # a slot is used iff 0 <= j <= t // l' and j does not repeat an earlier slot
        j = tl.load(idx_row_ptr + slot)
        repeats = tl.sum(((idx_row == j) & (row_slots < slot)).to(tl.int32), axis=0)
        used = (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= t) & (repeats == 0)
        for c in tl.static_range(BLOCK_SLC // BLOCK_K):
            pos = j.to(tl.int64) * BLOCK_SLC + c * BLOCK_K + tl.arange(0, BLOCK_K)
            key_ok = used & (pos <= t)  # causal: only bites in the query's own block
            kv_row = kv_base + pos * HKV
            k = tl.load(k_ptr + kv_row[:, None] * DK + dk_offs[None, :],
                        mask=key_ok[:, None] & dk_ok[None, :], other=0.0)
            v = tl.load(v_ptr + kv_row[:, None] * DV + dv_offs[None, :],
                        mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * qk_scale_log2
            live = head_ok[:, None] & key_ok[None, :]
            p = tl.where(live, tl.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)

    dq = dq * scale
    if ADD_DQ:
        dq += _load_cols(dq_add_ptr, row, head_ok, dk_offs, dk_ok, DK, False)
    _store_rows(dq_ptr, row, head_ok, dq, DK, DK_PAD)


_DQ_KEY = ["G_PAD", "DK_PAD", "DV_PAD", "BLOCK_SLC", "ADD_DQ"]
# An in-place accumulating launch (dq_ptr is dq_add_ptr) reads what it writes: its tuner restores dq.
_selected_dq_accumulate_tuned = autotune(
    configs=_fwd_configs(), key=_DQ_KEY, prune_configs_by={"early_config_prune": _prune_dq},
    restore_value=["dq_ptr"],
)(_selected_dq_kernel)
_selected_dq_kernel = autotune(
    configs=_fwd_configs(), key=_DQ_KEY, prune_configs_by={"early_config_prune": _prune_dq},
)(_selected_dq_kernel)


# ---------------------------------------------------------------- backward: dk, dv (block-centric)
@triton.jit
def _dkdv_step(
    q_ptr, do_ptr, lse_ptr, delta_ptr, qlist_ptr, k, v, dk, dv, pos, pos_ok,
    start, end, b, g, r_query, r_head, head_ok, T, HQ, G, DK, DV, qk_scale_log2,
    DK_PAD: tl.constexpr, DV_PAD: tl.constexpr, UPCAST: tl.constexpr,
):
    """One step of the block-centric backward: gather the next queries' G heads, add to dk/dv."""
    entry = start + r_query
    row_ok = (entry < end) & head_ok
    t = tl.load(qlist_ptr + entry, mask=row_ok, other=0).to(tl.int64)
    q_row = (b * T + t) * HQ + g * G + r_head
    q = _load_rows(q_ptr, q_row, row_ok, DK, DK_PAD, UPCAST)
    do = _load_rows(do_ptr, q_row, row_ok, DV, DV_PAD, UPCAST)
    lse2, delta = _load_lse2_delta(lse_ptr, delta_ptr, q_row, row_ok)
    s = tl.dot(q, tl.trans(k)) * qk_scale_log2  # [ROWS, BLOCK_N]
    live = row_ok[:, None] & pos_ok[None, :] & (pos[None, :] <= t[:, None])
    p = tl.where(live, tl.exp2(s - lse2[:, None]), 0.0)
    dv += tl.dot(tl.trans(p.to(do.dtype)), do)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    return dk, dv


@triton.jit(do_not_specialize=TUNING_ARGS)
def _selected_dkdv_body(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, offsets_ptr, qlist_ptr, slots_ptr,
    dk_ptr, dv_ptr, dk_part_ptr, dv_part_ptr, cu_ptr, block_seq_ptr, slc_cu_ptr,
    T, HQ, HKV, G, DK, DV, NUM_BLOCKS, SEGMENT, qk_scale_log2, scale, SEQ_BUCKET, ROWS_BUCKET,
    G_IN: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_SLC: tl.constexpr,
    UPCAST: tl.constexpr, ATOMIC: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dk/dv of BLOCK_N keys of block j from segment program_id(1) of j's query list.

    VARLEN (packed batch, B = 1): j is a global block number (`_block_keys`), the query lists hold
    packed rows and T is total_T, so causality (key <= query) compares packed rows of one sequence.

    A list is cut into SEGMENT-query segments so a long one (block 0 is in every query's
    selection) spreads over many SMs. ATOMIC=False (deterministic): a list of one segment is
    stored straight to dk/dv; the segments of a longer list store fp32 partials to their own
    slots (slots_ptr[bucket] + segment) and `_dkdv_reduce_kernel` sums them in a fixed order.
    ATOMIC=True: every segment atomically adds into fp32 dk/dv.
    """
    CHUNKS: tl.constexpr = BLOCK_SLC // BLOCK_N
    ROWS: tl.constexpr = BLOCK_M if BLOCK_M > G_IN else G_IN  # gathered (query, head) rows per step
    QUERIES: tl.constexpr = ROWS // G_IN  # queries per step

    pid = tl.program_id(0)
    j = (pid // CHUNKS).to(tl.int64)
    chunk = (pid % CHUNKS).to(tl.int64)
    segment = tl.program_id(1)
    bg = tl.program_id(2).to(tl.int64)
    b = bg // HKV
    g = bg % HKV

    bucket = bg * NUM_BLOCKS + j
    list_begin = tl.load(offsets_ptr + bucket)
    list_end = tl.load(offsets_ptr + bucket + 1)
    begin = list_begin + segment * SEGMENT
    end = tl.minimum(list_end, begin + SEGMENT)
    if ATOMIC:
        active = begin < end  # the accumulators start at zero: empty segments add nothing
    else:
        # segment 0 also runs for an empty list: it writes the zeros of unselected keys
        active = (begin < end) | (segment == 0)

    if active:
        key = chunk * BLOCK_N + tl.arange(0, BLOCK_N)  # key offset inside block j
        pos, pos_ok = _block_keys(j, key, T, cu_ptr, block_seq_ptr, slc_cu_ptr, BLOCK_SLC, VARLEN)
        kv_row = _kv_rows(b, g, pos, T, HKV)
        k = _load_rows(k_ptr, kv_row, pos_ok, DK, DK_PAD, UPCAST)
        v = _load_rows(v_ptr, kv_row, pos_ok, DV, DV_PAD, UPCAST)

        r = tl.arange(0, ROWS)
        r_query = r // G_IN
        r_head = r % G_IN
        head_ok = r_head < G

        dk = tl.zeros([BLOCK_N, DK_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, DV_PAD], dtype=tl.float32)
        for start in range(begin, end, QUERIES):
            dk, dv = _dkdv_step(q_ptr, do_ptr, lse_ptr, delta_ptr, qlist_ptr, k, v, dk, dv, pos, pos_ok,
                                start, end, b, g, r_query, r_head, head_ok, T, HQ, G, DK, DV, qk_scale_log2,
                                DK_PAD, DV_PAD, UPCAST)
        dk = dk * scale

        if ATOMIC:
            dk_where, dk_mask = _row_tile(dk_ptr, kv_row, pos_ok, DK, DK_PAD)
            dv_where, dv_mask = _row_tile(dv_ptr, kv_row, pos_ok, DV, DV_PAD)
            tl.atomic_add(dk_where, dk, mask=dk_mask, sem="relaxed")
            tl.atomic_add(dv_where, dv, mask=dv_mask, sem="relaxed")
        else:
            if list_end - list_begin <= SEGMENT:
                _store_rows(dk_ptr, kv_row, pos_ok, dk, DK, DK_PAD)
                _store_rows(dv_ptr, kv_row, pos_ok, dv, DV, DV_PAD)
            else:  # fp32 partials: stored as they are
                part_row = (tl.load(slots_ptr + bucket) + segment).to(tl.int64) * BLOCK_SLC + key
                _store_rows(dk_part_ptr, part_row, pos_ok, dk, DK, DK_PAD)
                _store_rows(dv_part_ptr, part_row, pos_ok, dv, DV, DV_PAD)


_DKDV_KEY = ["G_IN", "DK_PAD", "DV_PAD", "BLOCK_SLC", "VARLEN"]
_dkdv_kernel = autotune(
    configs=_dkdv_configs(), key=_DKDV_KEY, prune_configs_by={"early_config_prune": _prune_block_n},
)(_selected_dkdv_body)
# the atomic variant accumulates into its outputs, so autotuning must zero them between trials
_dkdv_atomic_kernel = autotune(
    configs=_dkdv_configs(), key=_DKDV_KEY, prune_configs_by={"early_config_prune": _prune_block_n},
    reset_to_zero=["dk_ptr", "dv_ptr"],
)(_selected_dkdv_body)


# ---------------------------------------------------------------- v2: tiles of POSITIONS positions
# One program per (POSITIONS consecutive positions, KV group, batch), rows = positions x G_PAD heads.
# The slot loop runs over the union of the positions' selections: a block an earlier slot of the tile
# already brought is masked (its loads fetch nothing), so block 0, the local blocks and any block two
# positions share pass L2 once per tile; each block updates only the rows whose position selected it
# (set semantics per row, as in v1). Dk runs as two exact column chunks (192 = 128 + 64).
# docs/tuning-notes.md has the traffic model (the selected forward's v2 section).
def _tile_configs(positions: tuple[int, ...]) -> list[triton.Config]:
    """POSITIONS per program and BLOCK_K keys per step; under the interpreter `tiles.launcher` pins both."""
    return [
        triton.Config({"POSITIONS": p, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for p in positions for bk in (32, 64, 128, 256) for w in (4, 8) for s in (2, 3)
    ]


_TILE_MAX_ROWS = 64  # POSITIONS x G_PAD rows at most: beyond, q and the accumulators leave no room


def _tile_prune(configs, named_args, kwargs, dq: bool):
    """Tiles of at most 64 rows, BLOCK_K dividing l' (at most 4 unrolled chunks), stage counts whose
    prefetch of one selected block fits shared memory, and what sm_90 builds without spills. Read off
    ptxas at the paper shape, G=1 (64/64), G=64 and l'=256 (`_BLOCK_SHARE_*` as in v1: a thread's share
    of one selected block's K+V): above 1 KiB everything spills; above 512 B only one-position tiles
    build, and dq only as one chunk (BLOCK_K = l'); the forward's two-position tiles need BLOCK_K=64, its
    four-position ones 8 warps, its one-position 4-warp ones not BLOCK_K=32 with 2 stages; dq tiles of
    32-64 rows (2 positions, or G=64) only as BLOCK_K=64, 8 warps, 3 stages. Fallback: one position,
    8 warps, one stage."""
    block_slc = kwargs.get("BLOCK_SLC", 64)
    g_pad = kwargs.get("G_PAD", 16)
    q = named_args.get("q_ptr")
    elem = q.element_size() if hasattr(q, "element_size") else 2
    heads = kwargs.get("DK_A", 0) + kwargs.get("DK_B", 0) + kwargs.get("DV_PAD", 0)
    block_bytes = block_slc * heads * elem  # one selected block's K and V

    def builds(c) -> bool:
        positions, block_k, warps, stages = c.kwargs["POSITIONS"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages
        share, chunks, rows = block_bytes // (32 * warps), block_slc // block_k, positions * g_pad
        if share > _BLOCK_SHARE_MAX:
            return False
        if share > _BLOCK_SHARE_FEW_CHUNKS:
            return positions == 1 and (not dq or chunks == 1)
        if dq:
            return rows < 32 or (block_k == 64 and warps == 8 and stages == 3)
        if positions == 1:
            return not (warps == 4 and block_k == 32 and stages == 2)
        return block_k == 64 if positions == 2 else warps == 8

    def fits(c) -> bool:
        rows = c.kwargs["POSITIONS"] * g_pad
        return (rows <= _TILE_MAX_ROWS and block_slc // 4 <= c.kwargs["BLOCK_K"] <= block_slc
                and (c.num_stages - 1) * block_bytes + 2 * rows * heads * elem <= _SHARED_MEMORY_BYTES)

    kept = [c for c in configs if fits(c) and builds(c)]
    return kept or [triton.Config({"POSITIONS": 1, "BLOCK_K": min(block_slc, 64)}, num_warps=8, num_stages=1)]


def _prune_fwd_tiles(configs, named_args, **kwargs):
    return _tile_prune(configs, named_args, kwargs, dq=False)


def _prune_dq_tiles(configs, named_args, **kwargs):
    return _tile_prune(configs, named_args, kwargs, dq=True)


@triton.jit
def _rebase_tile(cu_ptr, q_ptr, k_ptr, v_ptr, idx_ptr, lse_ptr, HQ, HKV, DK, DV, N_SLOTS: tl.constexpr):
    """A packed tile program's sequence (first token, length) and the q, k, v, block_idx and lse pointers
    it shares between forward and dq, rebased to that first token."""
    bos, T = _seq_start(cu_ptr)
    return (bos, T, q_ptr + bos * HQ * DK, k_ptr + bos * HKV * DK, v_ptr + bos * HKV * DV,
            idx_ptr + bos * HKV * N_SLOTS, lse_ptr + bos * HQ)


@triton.jit
def _tile_setup(idx_ptr, T, HQ, HKV, G, N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, N_PAD: tl.constexpr,
                POSITIONS: tl.constexpr, VARLEN: tl.constexpr):
    """Program (t0, g, b) of the (T / POSITIONS, Hkv, B) grid: each row's position and int64 row of
    [B*T*Hq], which rows exist, every row's block_idx row [ROWS, N_PAD] (-1 padded), each entry's flat
    slot number in the tile (position-major), `_kv_rows` of key 0 of (b, g), and the tile's last position.
    VARLEN: program_id(2) is a sequence whose pointers the kernel has rebased (`_seq_start`), so b = 0."""
    ROWS: tl.constexpr = POSITIONS * G_PAD
    t0 = tl.program_id(0).to(tl.int64) * POSITIONS
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    if VARLEN:
        b = b * 0
    r = tl.arange(0, ROWS)
    pos = t0 + r // G_PAD
    head = r % G_PAD
    row_ok = (pos < T) & (head < G)
    row = (b * T + pos) * HQ + g * G + head
    slots = tl.arange(0, N_PAD)
    idx_ptrs = idx_ptr + ((b * T + pos) * HKV + g)[:, None] * N_SLOTS + slots[None, :]
    idx_rows = tl.load(idx_ptrs, mask=(pos < T)[:, None] & (slots < N_SLOTS)[None, :], other=-1)
    flat = (r // G_PAD)[:, None] * N_SLOTS + slots[None, :]
    t_last = tl.minimum(t0 + POSITIONS, T) - 1
    return t0, g, b, pos, row, row_ok, idx_rows, flat, _kv_rows(b, g, 0, T, HKV), t_last


@triton.jit(do_not_specialize=TUNING_ARGS)
def _selected_fwd_tile_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, o_ptr, lse_ptr, gate_ptr, cu_ptr,
    T, HQ, HKV, G, DK, DV, qk_scale_log2, SEQ_BUCKET, ROWS_BUCKET,
    N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_SLC: tl.constexpr, N_PAD: tl.constexpr, UPCAST: tl.constexpr,
    GATED: tl.constexpr, ACCUMULATE: tl.constexpr, VARLEN: tl.constexpr, POSITIONS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """v2 forward: POSITIONS positions x the G heads of one KV group over the union of their blocks.
    GATED / ACCUMULATE / gate_ptr as in `_selected_fwd_kernel`.

    VARLEN (packed batch, docs/varlen.md): program_id(2) is sequence s of cu_ptr (int32 [N+1]); every
    token-indexed pointer is rebased to its first token, T becomes its length L_s (block numbers in
    idx are local) and tiles at or past L_s return at once. Dense launches pass any pointer as cu_ptr."""
    ROWS: tl.constexpr = POSITIONS * G_PAD
    if VARLEN:
        bos, T, q_ptr, k_ptr, v_ptr, idx_ptr, lse_ptr = _rebase_tile(cu_ptr, q_ptr, k_ptr, v_ptr, idx_ptr, lse_ptr,
                                                                     HQ, HKV, DK, DV, N_SLOTS)
        if tl.program_id(0) * POSITIONS >= T:
            return
        o_ptr += bos * HQ * DV
        gate_ptr += bos * HQ * 3  # gates [1, total, Hq, 3]
    t0, g, b, pos, row, row_ok, idx_rows, flat, kv_base, t_last = _tile_setup(
        idx_ptr, T, HQ, HKV, G, N_SLOTS, G_PAD, N_PAD, POSITIONS, VARLEN)
    q_a, q_b = _load_split_cols(q_ptr, row, row_ok, DK, DK_A, DK_B, UPCAST)
    cols_a = tl.arange(0, DK_A)
    cols_b = DK_A + tl.arange(0, DK_B)
    dv_offs = tl.arange(0, DV_PAD)
    dv_ok = dv_offs < DV

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, DV_PAD], dtype=tl.float32)
    # Inline body, no jit helpers (see `_selected_fwd_kernel`): the runtime loop is what the pipeliner
    # prefetches across. Flat slot it = (position p of the tile, slot s).
    for it in range(0, POSITIONS * N_SLOTS):
        t_p = t0 + it // N_SLOTS
        j = tl.load(idx_ptr + ((b * T + t_p) * HKV + g) * N_SLOTS + it % N_SLOTS, mask=t_p < T, other=-1)
        hit = idx_rows == j
        first = tl.sum(tl.sum((hit & (flat < it)).to(tl.int32), axis=1), axis=0) == 0
        chosen = tl.sum(hit.to(tl.int32), axis=1) > 0  # rows whose position selected j
        live_row = row_ok & chosen & first & (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= pos)
        used = first & (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= t_last)
        for c in tl.static_range(BLOCK_SLC // BLOCK_K):
            key = j.to(tl.int64) * BLOCK_SLC + c * BLOCK_K + tl.arange(0, BLOCK_K)
            key_ok = used & (key <= t_last)
            kv_row = kv_base + key * HKV
            k_a = tl.load(k_ptr + kv_row[:, None] * DK + cols_a[None, :],
                          mask=key_ok[:, None] & (cols_a < DK)[None, :], other=0.0)
            k_b = tl.load(k_ptr + kv_row[:, None] * DK + cols_b[None, :],
                          mask=key_ok[:, None] & (cols_b < DK)[None, :], other=0.0)
            v = tl.load(v_ptr + kv_row[:, None] * DV + dv_offs[None, :],
                        mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
            if UPCAST:
                k_a = k_a.to(tl.float32)
                k_b = k_b.to(tl.float32)
                v = v.to(tl.float32)
            s = (tl.dot(q_a, tl.trans(k_a)) + tl.dot(q_b, tl.trans(k_b))) * qk_scale_log2
            live = live_row[:, None] & key_ok[None, :] & (key[None, :] <= pos[:, None])
            s = tl.where(live, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new > float("-inf"), m_new, 0.0)
            p = tl.exp2(s - m_use[:, None])
            alpha = tl.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

    has_key = l_i > 0.0
    o = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    if GATED:
        o = _gated_epilogue(o, o_ptr, gate_ptr, row, row_ok, dv_offs, dv_ok, DV, 3, ACCUMULATE)  # 3: _NUM_GATES
    _store_rows(o_ptr, row, row_ok, o, DV, DV_PAD)
    tl.store(lse_ptr + row, lse, mask=row_ok)


_TILE_KEY = ["G_PAD", "DK_A", "DK_B", "DV_PAD", "BLOCK_SLC", "VARLEN"]
_selected_fwd_tile_tuned = autotune(
    configs=_tile_configs((1, 2, 4)), key=_TILE_KEY, prune_configs_by={"early_config_prune": _prune_fwd_tiles},
)(_selected_fwd_tile_kernel)
_selected_fwd_tile_accumulate_tuned = autotune(  # restores o around each timed run, as v1's
    configs=_tile_configs((1, 2, 4)), key=_TILE_KEY, prune_configs_by={"early_config_prune": _prune_fwd_tiles},
    restore_value=["o_ptr"],
)(_selected_fwd_tile_kernel)


@triton.jit(do_not_specialize=TUNING_ARGS)
def _selected_dq_tile_kernel(
    q_ptr, k_ptr, v_ptr, idx_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dq_add_ptr, cu_ptr,
    T, HQ, HKV, G, DK, DV, qk_scale_log2, scale, SEQ_BUCKET, ROWS_BUCKET,
    N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_SLC: tl.constexpr, N_PAD: tl.constexpr, UPCAST: tl.constexpr, ADD_DQ: tl.constexpr,
    VARLEN: tl.constexpr, POSITIONS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """v2 dq: the forward's tile and union loop (dq tries POSITIONS <= 2: its masked-row MMA work grows
    with POSITIONS and would exceed the L2 time at 4). ADD_DQ as in `_selected_dq_kernel`; VARLEN as in
    `_selected_fwd_tile_kernel`."""
    ROWS: tl.constexpr = POSITIONS * G_PAD
    if VARLEN:
        bos, T, q_ptr, k_ptr, v_ptr, idx_ptr, lse_ptr = _rebase_tile(cu_ptr, q_ptr, k_ptr, v_ptr, idx_ptr, lse_ptr,
                                                                     HQ, HKV, DK, DV, N_SLOTS)
        if tl.program_id(0) * POSITIONS >= T:
            return
        do_ptr += bos * HQ * DV
        delta_ptr += bos * HQ
        dq_ptr += bos * HQ * DK
        dq_add_ptr += bos * HQ * DK
    t0, g, b, pos, row, row_ok, idx_rows, flat, kv_base, t_last = _tile_setup(
        idx_ptr, T, HQ, HKV, G, N_SLOTS, G_PAD, N_PAD, POSITIONS, VARLEN)
    q_a, q_b = _load_split_cols(q_ptr, row, row_ok, DK, DK_A, DK_B, UPCAST)
    cols_a = tl.arange(0, DK_A)
    cols_b = DK_A + tl.arange(0, DK_B)
    dv_offs = tl.arange(0, DV_PAD)
    dv_ok = dv_offs < DV
    do = _load_cols(do_ptr, row, row_ok, dv_offs, dv_ok, DV, UPCAST)
    lse2, delta = _load_lse2_delta(lse_ptr, delta_ptr, row, row_ok)
    dq_a = tl.zeros([ROWS, DK_A], dtype=tl.float32)
    dq_b = tl.zeros([ROWS, DK_B], dtype=tl.float32)

    for it in range(0, POSITIONS * N_SLOTS):
        t_p = t0 + it // N_SLOTS
        j = tl.load(idx_ptr + ((b * T + t_p) * HKV + g) * N_SLOTS + it % N_SLOTS, mask=t_p < T, other=-1)
        hit = idx_rows == j
        first = tl.sum(tl.sum((hit & (flat < it)).to(tl.int32), axis=1), axis=0) == 0
        chosen = tl.sum(hit.to(tl.int32), axis=1) > 0
        live_row = row_ok & chosen & first & (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= pos)
        used = first & (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= t_last)
        for c in tl.static_range(BLOCK_SLC // BLOCK_K):
            key = j.to(tl.int64) * BLOCK_SLC + c * BLOCK_K + tl.arange(0, BLOCK_K)
            key_ok = used & (key <= t_last)
            kv_row = kv_base + key * HKV
            k_a = tl.load(k_ptr + kv_row[:, None] * DK + cols_a[None, :],
                          mask=key_ok[:, None] & (cols_a < DK)[None, :], other=0.0)
            k_b = tl.load(k_ptr + kv_row[:, None] * DK + cols_b[None, :],
                          mask=key_ok[:, None] & (cols_b < DK)[None, :], other=0.0)
            v = tl.load(v_ptr + kv_row[:, None] * DV + dv_offs[None, :],
                        mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
            if UPCAST:
                k_a = k_a.to(tl.float32)
                k_b = k_b.to(tl.float32)
                v = v.to(tl.float32)
            s = (tl.dot(q_a, tl.trans(k_a)) + tl.dot(q_b, tl.trans(k_b))) * qk_scale_log2
            live = live_row[:, None] & key_ok[None, :] & (key[None, :] <= pos[:, None])
            p = tl.where(live, tl.exp2(s - lse2[:, None]), 0.0)
            ds = (p * (tl.dot(do, tl.trans(v)) - delta[:, None])).to(k_a.dtype)
            dq_a += tl.dot(ds, k_a)
            dq_b += tl.dot(ds, k_b)

    dq_a = dq_a * scale
    dq_b = dq_b * scale
    if ADD_DQ:
        add_a, add_b = _load_split_cols(dq_add_ptr, row, row_ok, DK, DK_A, DK_B, False)
        dq_a += add_a
        dq_b += add_b
    tl.store(dq_ptr + row[:, None] * DK + cols_a[None, :], dq_a.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols_a < DK)[None, :])
    tl.store(dq_ptr + row[:, None] * DK + cols_b[None, :], dq_b.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols_b < DK)[None, :])


_DQ_TILE_KEY = [*_TILE_KEY, "ADD_DQ"]
_selected_dq_tile_accumulate_tuned = autotune(  # restores dq: see _selected_dq_accumulate_tuned
    configs=_tile_configs((1, 2)), key=_DQ_TILE_KEY, prune_configs_by={"early_config_prune": _prune_dq_tiles},
    restore_value=["dq_ptr"],
)(_selected_dq_tile_kernel)
_selected_dq_tile_kernel = autotune(
    configs=_tile_configs((1, 2)), key=_DQ_TILE_KEY, prune_configs_by={"early_config_prune": _prune_dq_tiles},
)(_selected_dq_tile_kernel)


# ---------------------------------------------------------------- python wrappers
def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_idx: torch.Tensor, block_slc: int, scale: float
) -> int:
    """Check shapes, dtypes and block parameters; return G."""
    group = check_heads(q, k, v)
    b, t, _, dk = q.shape
    hkv = k.shape[2]
    if tuple(k.shape) != (b, t, hkv, dk):
        raise ValueError(f"k must be [B, T, Hkv, Dk] = [{b}, {t}, {hkv}, {dk}], got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (b, t, hkv):
        raise ValueError(f"v must be [B, T, Hkv, Dv] with B, T, Hkv = {b}, {t}, {hkv}, got {tuple(v.shape)}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q.dtype={q.dtype} unsupported (use one of {_DTYPES})")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device or block_idx.device != q.device:
        raise ValueError("q, k, v and block_idx must be on one device")
    if isinstance(block_slc, bool) or block_slc not in SUPPORTED_BLOCK_SLC:
        raise ValueError(
            f"block_slc={block_slc!r} unsupported by the Triton kernels (use one of {SUPPORTED_BLOCK_SLC})"
        )
    if block_idx.dim() != 4 or tuple(block_idx.shape[:3]) != (b, t, hkv):
        raise ValueError(f"block_idx must be [B, T, Hkv, n] = [{b}, {t}, {hkv}, n], got {tuple(block_idx.shape)}")
    n = block_idx.shape[-1]
    if not 1 <= n <= MAX_N_SLC:
        raise ValueError(f"n_slc={n} (block_idx.shape[-1]) unsupported by the Triton kernels (1..{MAX_N_SLC})")
    if block_idx.dtype.is_floating_point or block_idx.dtype.is_complex or block_idx.dtype == torch.bool:
        raise ValueError(f"block_idx.dtype={block_idx.dtype} must be an integer type (int32)")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale!r} must be a positive finite float")
    return group


def _launch_dims(q: torch.Tensor, v: torch.Tensor, group: int, block_slc: int, n: int) -> dict:
    """Constexpr tile sizes: heads padded to >= 16 rows (tl.dot), head dims to powers of two."""
    return dict(
        G_PAD=max(16, next_pow2(group)),
        DK_PAD=max(16, next_pow2(q.shape[-1])),
        DV_PAD=max(16, next_pow2(v.shape[-1])),
        BLOCK_SLC=block_slc,
        N_PAD=max(2, next_pow2(n)),
        UPCAST=interpreting() and q.dtype == torch.bfloat16,
    )


def _tile_dims(q: torch.Tensor, v: torch.Tensor, group: int, block_slc: int, n: int) -> dict:
    """`_launch_dims` of the v2 tile kernels: Dk as two exact column chunks instead of one padded tile."""
    dims = _launch_dims(q, v, group, block_slc, n)
    dims.pop("DK_PAD")
    dims["DK_A"], dims["DK_B"] = split_head_dim(q.shape[-1])
    return dims


def _tile_grid(t: int, hkv: int, b: int):
    return lambda meta: (triton.cdiv(t, meta["POSITIONS"]), hkv, b)


def _tile_interp_meta(group: int, block_slc: int, positions: int) -> dict:
    """Interpreter sizes of the v2 tiles: several positions per tile (the union path), <= 64 rows."""
    return {"POSITIONS": max(1, min(positions, 64 // max(16, next_pow2(group)))), "BLOCK_K": min(block_slc, 64)}


def _check_packing(packing: Packing | None, q: torch.Tensor) -> None:
    """The packing of q [1, total_T, ...]; the query-centric grids run one row of axis 2 per sequence."""
    if packing is not None:
        packing.check(q.shape[1], q.shape[0], q.device)
        packing.check_grid("selected")


def selected_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_idx: torch.Tensor, block_slc: int, scale: float,
    *, out: torch.Tensor | None = None, gates: torch.Tensor | None = None, gate_index: int = 0,
    accumulate: bool = False, variant: str = "v2", small_g: str = "auto", packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected attention forward: (o [B,T,Hq,Dv] in q.dtype, lse [B,T,Hq] fp32, natural log).

    packing (docs/varlen.md): a packed batch, q/k/v [1, total_T, H, D], block_idx
    [1, total_T, Hkv, n] holding block numbers local to each row's sequence; o, lse (and out, gates)
    keep the dense layouts with B = 1. v2 only (variant="v1" raises).

    small_g (kernels/variants.py `slc_small_g`): "auto" (default) runs the KV-block-outer kernels of
    selected_small_g.py when G < 16 (then `variant` does not apply), "padded" never, "small_g" always.

    variant "v2" (default): tiles of 1-4 positions over the union of their selections (blocks they
    share load once); "v1": one position per program (kernels/variants.py).

    A row with no usable key gets o = 0 and lse = -inf (the log of an empty sum).

    Fused gated epilogue (no-grad NSA forward, so the branch output is never materialised): with
    `out` [B,T,Hq,Dv] and `gates` [B,T,Hq,3] (contiguous, fp16/bf16/fp32) the kernel writes
    out = (out if accumulate else 0) + gates[..., gate_index] * o, in fp32 then out's dtype, and
    returns (out, lse). Each element of out is written by one program, so there is no race.
    """
    check_variant("variant", variant)
    group = _validate(q, k, v, block_idx, block_slc, scale)
    check_gated(q, (*q.shape[:3], v.shape[-1]), out, gates, gate_index, accumulate)
    refuse_v1(packing, variant=variant)
    _check_packing(packing, q)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    idx = block_idx.to(torch.int32).contiguous()
    if runs_small_g(small_g, group):
        return selected_small_g.small_g_fwd(q, k, v, idx, block_slc, scale, group, out=out, gates=gates,
                                            gate_index=gate_index, accumulate=accumulate, packing=packing)
    b, t, hq, dk = q.shape
    hkv, dv, n = k.shape[2], v.shape[-1], idx.shape[-1]
    gated = out is not None
    o = out if gated else torch.empty(b, t, hq, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, t, hq, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    # Ungated launches get lse as a never-read stand-in for the gate column (GATED=False drops it).
    gate_column = gates[..., gate_index] if gated else lse
    if variant == "v2":
        kernel = _selected_fwd_tile_accumulate_tuned if gated and accumulate else _selected_fwd_tile_tuned
        # packed: one grid row per sequence, its tile axis over the longest (cu is read, never t)
        seq_t, seqs, cu = (t, b, idx) if packing is None else (packing.max_len, packing.num_seqs, packing.cu)
        tiles.launcher(kernel, _tile_grid(seq_t, hkv, seqs), _tile_interp_meta(group, block_slc, 4))(
            q, k, v, idx, o, lse, gate_column, cu,
            t, hq, hkv, group, dk, dv, float(scale) * _LOG2E, **tuning_buckets(seq_t, seqs * hq),
            N_SLOTS=n, **_tile_dims(q, v, group, block_slc, n), GATED=gated, ACCUMULATE=gated and accumulate,
            VARLEN=packing is not None,
        )
        return o, lse
    kernel = _selected_fwd_accumulate_tuned if gated and accumulate else _selected_fwd_tuned
    tiles.launcher(kernel, (t, hkv, b), {"BLOCK_K": min(block_slc, 64)})(
        q, k, v, idx, o, lse, gate_column,
        t, hq, hkv, group, dk, dv, float(scale) * _LOG2E, **tuning_buckets(t, b * hq),
        N_SLOTS=n, **_launch_dims(q, v, group, block_slc, n), GATED=gated, ACCUMULATE=gated and accumulate,
    )
    return o, lse


def invert_selection(
    block_idx: torch.Tensor, block_slc: int, num_blocks: int, packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block query lists (CSR) from block_idx [B,T,Hkv,n], all on the device, no host sync.

    Returns (offsets [B*Hkv*num_blocks + 1], queries int32 [E]). The queries that selected block j
    of (b, KV head g) are queries[offsets[s]:offsets[s+1]], s = (b*Hkv + g)*num_blocks + j, in
    ascending t (a stable sort keeps the layout deterministic). Unused slots (module doc) are
    dropped; E = B*T*Hkv*n bounds the entries and the tail past offsets[-1] is unused. offsets
    are int32 unless E needs int64.

    packing (B = 1): block numbers are local to each row's sequence, num_blocks = packing.num_slc_blocks(l')
    and list s = g * num_blocks + vb holds the packed rows that selected global block vb = slc_cu[s] + j.
    """
    _, t, hkv, n = block_idx.shape
    offsets, order, _, index_dtype = tiles.used_slot_lists(block_idx, block_slc, num_blocks, packing)
    queries = ((order // (hkv * n)) % t).to(torch.int32)
    return offsets.to(index_dtype), queries


def selected_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, do: torch.Tensor,
    block_idx: torch.Tensor, block_slc: int, scale: float, deterministic: bool = True, *, dq_variant: str = "v2",
    dq_out: torch.Tensor | None = None, dq_add: torch.Tensor | None = None, small_g: str = "auto",
    packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selected attention backward: (dq, dk, dv) in the input dtype; dk/dv summed over each group.

    packing: a packed batch as in `selected_fwd` (dq_variant "v2" only). dk/dv programs then run per
    global block (`Packing.slc_block_seq`), one row of lists per (KV head, sequence, local block).

    small_g as in `selected_fwd`: the block-outer path computes dq from the dk/dv kernel's dS tiles
    (partials summed in slot order) instead of a query-centric dq kernel; `dq_variant` then does not apply.

    dk/dv are block-centric: a program per (key chunk of block j, list segment, b * Hkv) walks
    the queries that selected j. Lists are cut into `tiles.segment_len` segments so block 0's list
    (every query selects block 0) does not leave one program per (b, KV head) walking all T.
    deterministic=True (default): a one-segment list is stored directly; the segments of longer
    lists write fp32 partials that a second kernel sums in a fixed order: bit-reproducible.
    deterministic=False: segments add into fp32 dk/dv with atomics (one pass, no partials;
    summation order, hence the last bits, may vary run to run).
    dq_variant "v2" (default): dq by the forward's position tiles; "v1": one position per program.
    dq_out / dq_add (`_common.check_dq_chain`): dq is written to dq_out (any float dtype) as this
    branch's dq plus dq_add (fp32; may be dq_out itself), so NSA sums its branches' dq in the kernels.
    """
    check_variant("dq_variant", dq_variant)
    group = _validate(q, k, v, block_idx, block_slc, scale)
    refuse_v1(packing, dq_variant=dq_variant)
    _check_packing(packing, q)
    b, t, hq, dk_dim = q.shape
    hkv, dv_dim = k.shape[2], v.shape[-1]
    if tuple(o.shape) != (b, t, hq, dv_dim) or tuple(do.shape) != (b, t, hq, dv_dim):
        raise ValueError(
            f"o and do must be [B, T, Hq, Dv] = {(b, t, hq, dv_dim)}, got {tuple(o.shape)}, {tuple(do.shape)}"
        )
    if tuple(lse.shape) != (b, t, hq):
        raise ValueError(f"lse must be [B, T, Hq] = {(b, t, hq)}, got {tuple(lse.shape)}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, do = o.to(q.dtype).contiguous(), do.to(q.dtype).contiguous()  # tl.dot wants one dtype
    lse = lse.to(torch.float32).contiguous()
    idx = block_idx.to(torch.int32).contiguous()
    n = idx.shape[-1]
    dq_out = check_dq_chain(q, dq_out, dq_add)
    if runs_small_g(small_g, group):
        return selected_small_g.small_g_bwd(q, k, v, o, lse, do, idx, block_slc, scale, group, deterministic,
                                            dq_out, dq_add, packing=packing)
    dq = dq_out if dq_out is not None else torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    add_dq = dq_add is not None
    dims = _launch_dims(q, v, group, block_slc, n)
    delta = tiles.row_delta(o, do)
    qk_scale_log2 = float(scale) * _LOG2E

    in_place = add_dq and same_memory(dq_add, dq)
    dq_args = (q, k, v, idx, do, lse, delta, dq, dq_add if add_dq else dq,
               t, hq, hkv, group, dk_dim, dv_dim, qk_scale_log2, float(scale))
    if dq_variant == "v2":
        kernel = _selected_dq_tile_accumulate_tuned if in_place else _selected_dq_tile_kernel
        seq_t, seqs, cu = (t, b, idx) if packing is None else (packing.max_len, packing.num_seqs, packing.cu)
        tiles.launcher(kernel, _tile_grid(seq_t, hkv, seqs), _tile_interp_meta(group, block_slc, 2))(
            *dq_args[:9], cu, *dq_args[9:], **tuning_buckets(seq_t, seqs * hq), N_SLOTS=n,
            **_tile_dims(q, v, group, block_slc, n), ADD_DQ=add_dq, VARLEN=packing is not None,
        )
    else:
        kernel = _selected_dq_accumulate_tuned if in_place else _selected_dq_kernel
        tiles.launcher(kernel, (t, hkv, b), {"BLOCK_K": min(block_slc, 64)})(
            *dq_args, **tuning_buckets(t, b * hq), N_SLOTS=n, **dims, ADD_DQ=add_dq,
        )

    num_blocks = -(-t // block_slc) if packing is None else packing.num_slc_blocks(block_slc)
    offsets, queries = invert_selection(idx, block_slc, num_blocks, packing)
    segment = tiles.segment_len(n, block_slc)
    seq_t = t if packing is None else packing.max_len
    segments = -(-seq_t // segment)  # a list holds at most T (packed: max_s L_s) queries
    tables = (offsets, offsets, offsets) if packing is None else (
        packing.cu, packing.slc_block_seq(block_slc), packing.slc_offsets(block_slc))
    dkdv_args = dict(
        G_IN=next_pow2(group), DK_PAD=dims["DK_PAD"], DV_PAD=dims["DV_PAD"], BLOCK_SLC=block_slc,
        UPCAST=dims["UPCAST"], VARLEN=packing is not None, **tuning_buckets(seq_t, b * hq),
    )

    def grid(meta: dict) -> tuple[int, int, int]:
        return (num_blocks * (block_slc // meta["BLOCK_N"]), segments, b * hkv)

    interp_meta = {"BLOCK_N": min(block_slc, 64), "BLOCK_M": 64}
    if deterministic:
        slots, num_slots = tiles.partial_slots(offsets, segment, idx.numel())
        dk_part = torch.empty(num_slots, block_slc, dk_dim, dtype=torch.float32, device=q.device)
        dv_part = torch.empty(num_slots, block_slc, dv_dim, dtype=torch.float32, device=q.device)
        tiles.launcher(_dkdv_kernel, grid, interp_meta)(
            q, k, v, do, lse, delta, offsets, queries, slots, dk, dv, dk_part, dv_part, *tables,
            t, hq, hkv, group, dk_dim, dv_dim, num_blocks, segment, qk_scale_log2, float(scale),
            ATOMIC=False, **dkdv_args,
        )
        if segments > 1:
            reduce_block = min(block_slc, 32)
            _dkdv_reduce_kernel[(num_blocks * (block_slc // reduce_block), b * hkv)](
                offsets, slots, dk_part, dv_part, dk, dv, *tables, t, hkv, dk_dim, dv_dim, num_blocks, segment,
                BLOCK_SLC=block_slc, DK_PAD=dims["DK_PAD"], DV_PAD=dims["DV_PAD"], BLOCK_N=reduce_block,
                **tiles.reduce_launch(packing),
            )
    else:
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        tiles.launcher(_dkdv_atomic_kernel, grid, interp_meta)(
            q, k, v, do, lse, delta, offsets, queries, offsets, dk, dv, dk, dv, *tables,
            t, hq, hkv, group, dk_dim, dv_dim, num_blocks, segment, qk_scale_log2, float(scale),
            ATOMIC=True, **dkdv_args,
        )
        dk, dv = dk.to(k.dtype), dv.to(v.dtype)
    return dq, dk, dv
