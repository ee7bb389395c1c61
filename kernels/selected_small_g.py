"""Selected attention for small GQA groups (G < 16): KV-block-outer, forward and backward.

The padded kernels (selected.py) run one (position, KV head) per program with the group padded to 16
MMA rows, so at G = 4 each selected block (40 KB at the paper shape) passes L2 once per position for
only 4 heads. Here the selection is inverted on the device into per-block query lists (as the dk/dv
backward already does) and a program per (key chunk of block j, list segment, batch x KV head) loads
its keys once and runs tiles of gathered rows: BLOCK_M / G_IN queries x G_IN heads fill the MMA rows.
docs/tuning-notes.md (its section on small GQA groups) has the traffic model; this is its path C.

- Forward: each (query entry, key chunk) writes a partial (o normalised, in q's dtype; lse fp32) to
  its own slot; `_merge_kernel` combines the n x CHUNKS partials of each (query, head) in slot order
  (deterministic, no atomics) and applies the fused gated epilogue when asked.
- Backward: one block-outer kernel computes dk/dv (as selected.py's `_selected_dkdv_body`) and, from
  the same dS tile, the dq partial dS K of every (query entry, key chunk); `_dq_reduce_kernel` sums
  them in slot order and adds dq_add (NSA's dq chain). dk/dv of long lists go through fp32 partials
  and `_selected_tiles._dkdv_reduce_kernel` (as in selected.py), or atomics when deterministic=False.
The tile helpers and kernels both paths use live in `_selected_tiles.py`: selected.py dispatches here,
so this module never imports it.

Slot semantics are selected.py's: a slot is used iff 0 <= j <= t // l' and j does not repeat an
earlier slot of the row. Entries are named by their flat index in the row-sorted block_idx
[B, T, Hkv, n], which is also the index of their partial slots.

Packed batches (a `Packing`, docs/varlen.md): the block-outer kernels run
per global block (sequence, local block) with packed rows in the lists (VARLEN: `_block_keys`);
the merge and the dq reduce run per (tile, KV head, sequence) with their pointers rebased to it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _selected_tiles as tiles
from ._common import TUNING_ARGS, autotune, interpreting, next_pow2, split_head_dim, tuning_buckets
from ._selected_tiles import (
    _block_keys, _dkdv_reduce_kernel, _gated_epilogue, _kv_rows, _load_rows, _load_split_cols, _row_tile, _seq_start,
    _store_rows,
)
from .packing import Packing

__all__ = ["small_g_fwd", "small_g_bwd", "invert_entries", "key_chunk"]

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_MERGE_ROWS = 64  # (position, head) rows per merge / dq-reduce program: memory-bound, not tuned
_MERGE_WARPS = 8  # 64 rows x Dk 192 fp32 (dq reduce) at 4 warps uses 255 registers and spills


# ---------------------------------------------------------------- configs
def _configs() -> list[triton.Config]:
    """BLOCK_M gathered (query, head) rows per step; under the interpreter `tiles.launcher` pins one."""
    return [
        triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
        for bm in (16, 32, 64, 128) for w in (4, 8) for s in (1, 2)
    ]


_INTERP_META = {"BLOCK_M": 32}
_WIDE_HEADS = 256  # DK_A + DK_B + DV_PAD beyond this (the paper's 128 + 64 + 128) is "wide"


def _rows(c: triton.Config, g_in: int) -> int:
    return max(c.kwargs["BLOCK_M"], g_in)


def _prune_fwd(configs, named_args, **kwargs):
    """Forward tiles of at most 128 rows, 64 with wide heads (the q tile and the [rows, Dv] fp32
    output are live beside the block's keys); 128-row tiles only with 8 warps."""
    g_in = kwargs.get("G_IN", 1)
    wide = kwargs.get("DK_A", 0) + kwargs.get("DK_B", 0) + kwargs.get("DV_PAD", 0) > _WIDE_HEADS
    kept = [c for c in configs
            if _rows(c, g_in) <= (64 if wide else 128) and not (_rows(c, g_in) == 128 and c.num_warps < 8)]
    return kept or [min(configs, key=lambda c: (_rows(c, g_in), -c.num_warps))]


def _prune_bwd(configs, named_args, **kwargs):
    """Backward: dk and dv accumulators [BLOCK_N, Dk + Dv] fp32 stay resident beside the dS tile and
    its dq partial. With wide heads keep 8 warps and at most 32 gathered rows, 32 only with one stage
    (sm_90 at the paper heads: 32 rows x 2 stages spills 16 B); else at most 64 rows."""
    g_in = kwargs.get("G_IN", 1)
    wide = kwargs.get("DK_A", 0) + kwargs.get("DK_B", 0) + kwargs.get("DV_PAD", 0) > _WIDE_HEADS

    def builds(c: triton.Config) -> bool:
        rows = _rows(c, g_in)
        if not wide:  # G=1, Dk=Dv=64: 32 rows x 4 warps x 2 stages spills 32 B on sm_90
            return rows <= 64 and not (rows >= 32 and c.num_warps == 4 and c.num_stages == 2)
        return c.num_warps == 8 and (rows <= 16 or (rows == 32 and c.num_stages == 1))

    kept = [c for c in configs if builds(c)]
    return kept or [min(configs, key=lambda c: (_rows(c, g_in), -c.num_warps, c.num_stages))]


def key_chunk(block_slc: int, dk: int, dv: int) -> int:
    """Keys per block-outer program (a launch constant: the partial slots depend on it): a whole
    block up to 64 keys, else 64-key chunks of it."""
    return min(block_slc, 64)


# ---------------------------------------------------------------- selection inverted, entries kept
def invert_entries(
    block_idx: torch.Tensor, block_slc: int, num_blocks: int, packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-block lists of entries (CSR), on the device, no host sync: (offsets [B*Hkv*num_blocks + 1],
    entries [E], the row-sorted block_idx int32). An entry is the flat index (b, t, g, s) of a used
    slot in the sorted block_idx, so its query is (e // (Hkv * n)) % T and its partials live at e.
    Lists are in ascending t (stable sort); as `selected.invert_selection` otherwise (packed included):
    both bucket with `_selected_tiles.used_slot_lists`."""
    offsets, order, blocks, index_dtype = tiles.used_slot_lists(block_idx, block_slc, num_blocks, packing)
    return offsets.to(index_dtype), order.to(index_dtype), blocks.to(torch.int32)


# ---------------------------------------------------------------- forward
@triton.jit(do_not_specialize=TUNING_ARGS)
def _block_outer_fwd_kernel(
    q_ptr, k_ptr, v_ptr, offsets_ptr, entries_ptr, o_part_ptr, lse_part_ptr, cu_ptr, block_seq_ptr, slc_cu_ptr,
    T, HQ, HKV, G, DK, DV, NUM_BLOCKS, SEGMENT, qk_scale_log2, SEQ_BUCKET, ROWS_BUCKET,
    N_SLOTS: tl.constexpr, G_IN: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_SLC: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Partials of BLOCK_N keys of block j for segment program_id(1) of j's entry list: per (entry,
    head) the softmax over these keys alone (o normalised, lse natural log; -inf and 0 if none is
    causal-visible), written to partial row (entry * CHUNKS + chunk) * G + head. VARLEN: j is a global
    block of the packed batch, T = total_T (`selected._block_keys`)."""
    CHUNKS: tl.constexpr = BLOCK_SLC // BLOCK_N
    ROWS: tl.constexpr = BLOCK_M if BLOCK_M > G_IN else G_IN
    QUERIES: tl.constexpr = ROWS // G_IN
    pid = tl.program_id(0)
    j = (pid // CHUNKS).to(tl.int64)
    chunk = (pid % CHUNKS).to(tl.int64)
    segment = tl.program_id(1).to(tl.int64)
    bg = tl.program_id(2).to(tl.int64)
    b = bg // HKV
    g = bg % HKV
    bucket = bg * NUM_BLOCKS + j
    list_end = tl.load(offsets_ptr + bucket + 1).to(tl.int64)
    begin = tl.load(offsets_ptr + bucket).to(tl.int64) + segment * SEGMENT
    end = tl.minimum(list_end, begin + SEGMENT)
    if begin < end:
        pos, pos_ok = _block_keys(j, chunk * BLOCK_N + tl.arange(0, BLOCK_N), T, cu_ptr, block_seq_ptr, slc_cu_ptr,
                                  BLOCK_SLC, VARLEN)
        kv_row = _kv_rows(b, g, pos, T, HKV)
        k_a, k_b = _load_split_cols(k_ptr, kv_row, pos_ok, DK, DK_A, DK_B, UPCAST)  # once per program
        v = _load_rows(v_ptr, kv_row, pos_ok, DV, DV_PAD, UPCAST)
        r = tl.arange(0, ROWS)
        r_query = r // G_IN
        r_head = r % G_IN
        head_ok = r_head < G
        cols_a = tl.arange(0, DK_A)
        cols_b = DK_A + tl.arange(0, DK_B)
        dv_offs = tl.arange(0, DV_PAD)
        dv_ok = dv_offs < DV
        # Inline body, no jit helpers (selected.py's `_selected_fwd_kernel` says why).
        for start in range(begin, end, QUERIES):
            entry = start + r_query
            row_ok = (entry < end) & head_ok
            e = tl.load(entries_ptr + entry, mask=row_ok, other=0).to(tl.int64)
            t = (e // (HKV * N_SLOTS)) % T
            q_row = (b * T + t) * HQ + g * G + r_head
            q_a = tl.load(q_ptr + q_row[:, None] * DK + cols_a[None, :],
                          mask=row_ok[:, None] & (cols_a < DK)[None, :], other=0.0)
            q_b = tl.load(q_ptr + q_row[:, None] * DK + cols_b[None, :],
                          mask=row_ok[:, None] & (cols_b < DK)[None, :], other=0.0)
            if UPCAST:
                q_a = q_a.to(tl.float32)
                q_b = q_b.to(tl.float32)
            s = (tl.dot(q_a, tl.trans(k_a)) + tl.dot(q_b, tl.trans(k_b))) * qk_scale_log2
            live = row_ok[:, None] & pos_ok[None, :] & (pos[None, :] <= t[:, None])
            s = tl.where(live, s, float("-inf"))
            m = tl.max(s, axis=1)
            m_use = tl.where(m > float("-inf"), m, 0.0)
            p = tl.exp2(s - m_use[:, None])
            l_i = tl.sum(p, axis=1)
            has_key = l_i > 0.0
            o = tl.dot(p.to(v.dtype), v) / tl.where(has_key, l_i, 1.0)[:, None]
            lse = tl.where(has_key, (m_use + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453,
                           float("-inf"))
            part = (e * CHUNKS + chunk) * G + r_head
            tl.store(o_part_ptr + part[:, None] * DV + dv_offs[None, :], o.to(o_part_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & dv_ok[None, :])
            tl.store(lse_part_ptr + part, lse, mask=row_ok)


_KEY = ["G_IN", "DK_A", "DK_B", "DV_PAD", "BLOCK_SLC", "BLOCK_N", "VARLEN"]
_block_outer_fwd_tuned = autotune(
    configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_fwd},
)(_block_outer_fwd_kernel)


@triton.jit
def _merge_kernel(
    sorted_ptr, o_part_ptr, lse_part_ptr, o_ptr, lse_ptr, gate_ptr, cu_ptr, T, HQ, HKV, G, DV,
    N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_SLC: tl.constexpr,
    CHUNKS: tl.constexpr, POSITIONS: tl.constexpr, GATED: tl.constexpr, ACCUMULATE: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """o and lse of POSITIONS positions x G heads from their partials, in slot then chunk order.
    VARLEN: program_id(2) is a sequence; pointers rebased to its first token, T = its length."""
    ROWS: tl.constexpr = POSITIONS * G_PAD
    if VARLEN:
        bos, T = _seq_start(cu_ptr)
        if tl.program_id(0) * POSITIONS >= T:
            return
        sorted_ptr += bos * HKV * N_SLOTS
        lse_part_ptr += bos * HKV * N_SLOTS * CHUNKS * G
        o_part_ptr += bos * HKV * N_SLOTS * CHUNKS * G * DV
        o_ptr += bos * HQ * DV
        lse_ptr += bos * HQ
        gate_ptr += bos * HQ * 3
    t0 = tl.program_id(0).to(tl.int64) * POSITIONS
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    if VARLEN:
        b = b * 0
    r = tl.arange(0, ROWS)
    pos = t0 + r // G_PAD
    head = r % G_PAD
    pos_ok = pos < T
    row_ok = pos_ok & (head < G)
    row = (b * T + pos) * HQ + g * G + head
    slot0 = ((b * T + pos) * HKV + g) * N_SLOTS
    dv_offs = tl.arange(0, DV_PAD)
    dv_ok = dv_offs < DV

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, DV_PAD], dtype=tl.float32)
    # one runtime loop over (slot, chunk): an unrolled chunk loop spills at l' = 256, n = 64
    for it in range(0, N_SLOTS * CHUNKS):
        s = it // CHUNKS
        j = tl.load(sorted_ptr + slot0 + s, mask=pos_ok, other=-1)
        j_prev = tl.load(sorted_ptr + slot0 + s - 1, mask=pos_ok & (s > 0), other=-1)
        used = row_ok & (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= pos) & (j != j_prev)
        part = (slot0 * CHUNKS + it) * G + head
        lse_p = tl.load(lse_part_ptr + part, mask=used, other=float("-inf")) * 1.4426950408889634
        o_p = tl.load(o_part_ptr + part[:, None] * DV + dv_offs[None, :],
                      mask=used[:, None] & dv_ok[None, :], other=0.0).to(tl.float32)
        m_new = tl.maximum(m_i, lse_p)
        m_use = tl.where(m_new > float("-inf"), m_new, 0.0)
        alpha = tl.exp2(m_i - m_use)
        w = tl.exp2(lse_p - m_use)
        acc = acc * alpha[:, None] + o_p * w[:, None]
        l_i = l_i * alpha + w
        m_i = m_new

    has_key = l_i > 0.0
    o = acc / tl.where(has_key, l_i, 1.0)[:, None]
    m_fin = tl.where(has_key, m_i, 0.0)
    lse = tl.where(has_key, (m_fin + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    if GATED:
        o = _gated_epilogue(o, o_ptr, gate_ptr, row, row_ok, dv_offs, dv_ok, DV, 3, ACCUMULATE)  # 3 gates
    _store_rows(o_ptr, row, row_ok, o, DV, DV_PAD)
    tl.store(lse_ptr + row, lse, mask=row_ok)


def _partial_dtype(q: torch.Tensor) -> torch.dtype:
    """Partials in q's dtype (bf16/fp16: 2^-9 / 2^-11 relative per partial, inside the 1e-2
    tolerance, half the bytes of fp32), fp32 for fp32 inputs (tuning notes, small GQA groups)."""
    return q.dtype


def _merge_grid(t: int, hkv: int, b: int, group: int) -> tuple[tuple[int, int, int], int, int]:
    g_pad = next_pow2(group)
    positions = max(1, _MERGE_ROWS // g_pad)
    return (triton.cdiv(t, positions), hkv, b), g_pad, positions


def _dims(q: torch.Tensor, v: torch.Tensor, group: int, block_slc: int, n: int,
          packing: Packing | None = None) -> dict:
    dk_a, dk_b = split_head_dim(q.shape[-1])
    return dict(
        N_SLOTS=n, G_IN=next_pow2(group), DK_A=dk_a, DK_B=dk_b, DV_PAD=max(16, next_pow2(v.shape[-1])),
        BLOCK_SLC=block_slc, BLOCK_N=key_chunk(block_slc, q.shape[-1], v.shape[-1]),
        UPCAST=interpreting() and q.dtype == torch.bfloat16, VARLEN=packing is not None,
    )


def _packed_args(t: int, b: int, block_slc: int, idx: torch.Tensor, packing: Packing | None):
    """(blocks of the block-outer grid, the query grids' tile extent, their batch extent, the kernels'
    (cu, block_seq, slc_cu) pointers): dense (ceil(T / l'), T, B, stand-ins never read), or packed
    (sum_s ceil(L_s / l'), max_s L_s, N, the `Packing`'s tables)."""
    if packing is None:
        return -(-t // block_slc), t, b, (idx, idx, idx)
    tables = (packing.cu, packing.slc_block_seq(block_slc), packing.slc_offsets(block_slc))
    return packing.num_slc_blocks(block_slc), packing.max_len, packing.num_seqs, tables


def small_g_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, block_slc: int, scale: float, group: int,
    *, out: torch.Tensor | None = None, gates: torch.Tensor | None = None, gate_index: int = 0,
    accumulate: bool = False, packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selected.selected_fwd` by the block-outer path; inputs already validated and contiguous,
    idx int32. Same outputs and gated epilogue (applied in the merge). packing: a packed batch, checked."""
    b, t, hq, dk = q.shape
    hkv, dv, n = k.shape[2], v.shape[-1], idx.shape[-1]
    gated = out is not None
    o = out if gated else torch.empty(b, t, hq, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, t, hq, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    dims = _dims(q, v, group, block_slc, n, packing)
    chunks = block_slc // dims["BLOCK_N"]
    num_blocks, seq_t, seqs, tables = _packed_args(t, b, block_slc, idx, packing)
    offsets, entries, sorted_idx = invert_entries(idx, block_slc, num_blocks, packing)
    parts = idx.numel() * chunks * group
    o_part = torch.empty(parts, dv, dtype=_partial_dtype(q), device=q.device)
    lse_part = torch.empty(parts, dtype=torch.float32, device=q.device)
    segment = tiles.segment_len(n, block_slc)
    grid = (num_blocks * chunks, -(-seq_t // segment), b * hkv)
    tiles.launcher(_block_outer_fwd_tuned, grid, _INTERP_META)(
        q, k, v, offsets, entries, o_part, lse_part, *tables,
        t, hq, hkv, group, dk, dv, num_blocks, segment, float(scale) * _LOG2E, **tuning_buckets(seq_t, b * hq),
        **dims,
    )
    merge_grid, g_pad, positions = _merge_grid(seq_t, hkv, seqs, group)
    gate_column = gates[..., gate_index] if gated else lse  # never read ungated
    _merge_kernel[merge_grid](
        sorted_idx, o_part, lse_part, o, lse, gate_column, tables[0], t, hq, hkv, group, dv,
        N_SLOTS=n, G_PAD=g_pad, DV_PAD=dims["DV_PAD"], BLOCK_SLC=block_slc, CHUNKS=chunks, POSITIONS=positions,
        GATED=gated, ACCUMULATE=gated and accumulate, VARLEN=packing is not None, num_warps=_MERGE_WARPS,
    )
    return o, lse


@triton.jit
def _store_split(ptr, row, row_ok, x_a, x_b, D, D_A: tl.constexpr, D_B: tl.constexpr):
    """Store column chunks x_a [rows, D_A] and x_b [rows, D_B] into rows `row` of a row-major [*, D] tensor."""
    cols_a = tl.arange(0, D_A)
    cols_b = D_A + tl.arange(0, D_B)
    tl.store(ptr + row[:, None] * D + cols_a[None, :], x_a.to(ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols_a < D)[None, :])
    tl.store(ptr + row[:, None] * D + cols_b[None, :], x_b.to(ptr.dtype.element_ty),
             mask=row_ok[:, None] & (cols_b < D)[None, :])


# ---------------------------------------------------------------- backward
@triton.jit(do_not_specialize=TUNING_ARGS)
def _block_outer_bwd_body(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, offsets_ptr, entries_ptr, slots_ptr,
    dk_ptr, dv_ptr, dk_part_ptr, dv_part_ptr, dq_part_ptr, cu_ptr, block_seq_ptr, slc_cu_ptr,
    T, HQ, HKV, G, DK, DV, NUM_BLOCKS, SEGMENT, qk_scale_log2, scale, SEQ_BUCKET, ROWS_BUCKET,
    N_SLOTS: tl.constexpr, G_IN: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_SLC: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, ATOMIC: tl.constexpr,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dk/dv of BLOCK_N keys of block j from segment program_id(1) of j's entry list (stores as
    selected.py's `_selected_dkdv_body`), and each entry's dq partial dS K (unscaled) of these keys,
    written to dq partial row (entry * CHUNKS + chunk) * G + head."""
    CHUNKS: tl.constexpr = BLOCK_SLC // BLOCK_N
    ROWS: tl.constexpr = BLOCK_M if BLOCK_M > G_IN else G_IN
    QUERIES: tl.constexpr = ROWS // G_IN
    pid = tl.program_id(0)
    j = (pid // CHUNKS).to(tl.int64)
    chunk = (pid % CHUNKS).to(tl.int64)
    segment = tl.program_id(1).to(tl.int64)
    bg = tl.program_id(2).to(tl.int64)
    b = bg // HKV
    g = bg % HKV
    bucket = bg * NUM_BLOCKS + j
    list_begin = tl.load(offsets_ptr + bucket).to(tl.int64)
    list_end = tl.load(offsets_ptr + bucket + 1).to(tl.int64)
    begin = list_begin + segment * SEGMENT
    end = tl.minimum(list_end, begin + SEGMENT)
    if ATOMIC:
        active = begin < end
    else:
        active = (begin < end) | (segment == 0)  # segment 0 writes the zeros of unselected keys

    if active:
        key = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
        pos, pos_ok = _block_keys(j, key, T, cu_ptr, block_seq_ptr, slc_cu_ptr, BLOCK_SLC, VARLEN)
        kv_row = _kv_rows(b, g, pos, T, HKV)
        k_a, k_b = _load_split_cols(k_ptr, kv_row, pos_ok, DK, DK_A, DK_B, UPCAST)
        v = _load_rows(v_ptr, kv_row, pos_ok, DV, DV_PAD, UPCAST)
        r = tl.arange(0, ROWS)
        r_query = r // G_IN
        r_head = r % G_IN
        head_ok = r_head < G
        cols_a = tl.arange(0, DK_A)
        cols_b = DK_A + tl.arange(0, DK_B)
        ok_a = cols_a < DK
        ok_b = cols_b < DK
        dv_offs = tl.arange(0, DV_PAD)
        dv_ok = dv_offs < DV
        dk_a = tl.zeros([BLOCK_N, DK_A], dtype=tl.float32)
        dk_b = tl.zeros([BLOCK_N, DK_B], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, DV_PAD], dtype=tl.float32)
        for start in range(begin, end, QUERIES):
            entry = start + r_query
            row_ok = (entry < end) & head_ok
            e = tl.load(entries_ptr + entry, mask=row_ok, other=0).to(tl.int64)
            t = (e // (HKV * N_SLOTS)) % T
            q_row = (b * T + t) * HQ + g * G + r_head
            q_a = tl.load(q_ptr + q_row[:, None] * DK + cols_a[None, :], mask=row_ok[:, None] & ok_a[None, :],
                          other=0.0)
            q_b = tl.load(q_ptr + q_row[:, None] * DK + cols_b[None, :], mask=row_ok[:, None] & ok_b[None, :],
                          other=0.0)
            do = tl.load(do_ptr + q_row[:, None] * DV + dv_offs[None, :], mask=row_ok[:, None] & dv_ok[None, :],
                         other=0.0)
            if UPCAST:
                q_a = q_a.to(tl.float32)
                q_b = q_b.to(tl.float32)
                do = do.to(tl.float32)
            lse2 = tl.load(lse_ptr + q_row, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(delta_ptr + q_row, mask=row_ok, other=0.0)
            s = (tl.dot(q_a, tl.trans(k_a)) + tl.dot(q_b, tl.trans(k_b))) * qk_scale_log2
            live = row_ok[:, None] & pos_ok[None, :] & (pos[None, :] <= t[:, None])
            p = tl.where(live, tl.exp2(s - lse2[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            ds = (p * (tl.dot(do, tl.trans(v)) - delta[:, None])).to(q_a.dtype)
            dk_a += tl.dot(tl.trans(ds), q_a)
            dk_b += tl.dot(tl.trans(ds), q_b)
            part = (e * CHUNKS + chunk) * G + r_head
            dq_a = tl.dot(ds, k_a)
            dq_b = tl.dot(ds, k_b)
            tl.store(dq_part_ptr + part[:, None] * DK + cols_a[None, :], dq_a.to(dq_part_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & ok_a[None, :])
            tl.store(dq_part_ptr + part[:, None] * DK + cols_b[None, :], dq_b.to(dq_part_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & ok_b[None, :])
        dk_a = dk_a * scale
        dk_b = dk_b * scale

        if ATOMIC:
            tl.atomic_add(dk_ptr + kv_row[:, None] * DK + cols_a[None, :], dk_a,
                          mask=pos_ok[:, None] & ok_a[None, :], sem="relaxed")
            tl.atomic_add(dk_ptr + kv_row[:, None] * DK + cols_b[None, :], dk_b,
                          mask=pos_ok[:, None] & ok_b[None, :], sem="relaxed")
            dv_where, dv_mask = _row_tile(dv_ptr, kv_row, pos_ok, DV, DV_PAD)
            tl.atomic_add(dv_where, dv, mask=dv_mask, sem="relaxed")
        else:
            if list_end - list_begin <= SEGMENT:
                _store_split(dk_ptr, kv_row, pos_ok, dk_a, dk_b, DK, DK_A, DK_B)
                _store_rows(dv_ptr, kv_row, pos_ok, dv, DV, DV_PAD)
            else:  # fp32 partials of a multi-segment list, summed by selected._dkdv_reduce_kernel
                part_row = (tl.load(slots_ptr + bucket) + segment).to(tl.int64) * BLOCK_SLC + key
                _store_split(dk_part_ptr, part_row, pos_ok, dk_a, dk_b, DK, DK_A, DK_B)
                _store_rows(dv_part_ptr, part_row, pos_ok, dv, DV, DV_PAD)


_block_outer_bwd_kernel = autotune(
    configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_bwd},
)(_block_outer_bwd_body)
# the atomic variant adds into dk/dv (and rewrites the dq partials): tuning zeroes dk/dv between trials
_block_outer_bwd_atomic_kernel = autotune(
    configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune_bwd},
    reset_to_zero=["dk_ptr", "dv_ptr"],
)(_block_outer_bwd_body)


@triton.jit
def _dq_reduce_kernel(
    sorted_ptr, dq_part_ptr, dq_ptr, dq_add_ptr, cu_ptr, T, HQ, HKV, G, DK, scale,
    N_SLOTS: tl.constexpr, G_PAD: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr,
    BLOCK_SLC: tl.constexpr, CHUNKS: tl.constexpr, POSITIONS: tl.constexpr, ADD_DQ: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """dq of POSITIONS positions x G heads: their dq partials summed in slot then chunk order (fp32,
    deterministic), times scale, plus dq_add's fp32 rows when ADD_DQ (dq_add may be dq itself).
    VARLEN as in `_merge_kernel`."""
    ROWS: tl.constexpr = POSITIONS * G_PAD
    if VARLEN:
        bos, T = _seq_start(cu_ptr)
        if tl.program_id(0) * POSITIONS >= T:
            return
        sorted_ptr += bos * HKV * N_SLOTS
        dq_part_ptr += bos * HKV * N_SLOTS * CHUNKS * G * DK
        dq_ptr += bos * HQ * DK
        dq_add_ptr += bos * HQ * DK
    t0 = tl.program_id(0).to(tl.int64) * POSITIONS
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    if VARLEN:
        b = b * 0
    r = tl.arange(0, ROWS)
    pos = t0 + r // G_PAD
    head = r % G_PAD
    pos_ok = pos < T
    row_ok = pos_ok & (head < G)
    row = (b * T + pos) * HQ + g * G + head
    slot0 = ((b * T + pos) * HKV + g) * N_SLOTS
    cols_a = tl.arange(0, DK_A)
    cols_b = DK_A + tl.arange(0, DK_B)
    ok_a = cols_a < DK
    ok_b = cols_b < DK
    acc_a = tl.zeros([ROWS, DK_A], dtype=tl.float32)
    acc_b = tl.zeros([ROWS, DK_B], dtype=tl.float32)
    for it in range(0, N_SLOTS * CHUNKS):  # (slot, chunk) as in `_merge_kernel`
        s = it // CHUNKS
        j = tl.load(sorted_ptr + slot0 + s, mask=pos_ok, other=-1)
        j_prev = tl.load(sorted_ptr + slot0 + s - 1, mask=pos_ok & (s > 0), other=-1)
        used = row_ok & (j >= 0) & (j.to(tl.int64) * BLOCK_SLC <= pos) & (j != j_prev)
        part = (slot0 * CHUNKS + it) * G + head
        acc_a += tl.load(dq_part_ptr + part[:, None] * DK + cols_a[None, :], mask=used[:, None] & ok_a[None, :],
                         other=0.0).to(tl.float32)
        acc_b += tl.load(dq_part_ptr + part[:, None] * DK + cols_b[None, :], mask=used[:, None] & ok_b[None, :],
                         other=0.0).to(tl.float32)
    acc_a = acc_a * scale
    acc_b = acc_b * scale
    if ADD_DQ:
        add_a, add_b = _load_split_cols(dq_add_ptr, row, row_ok, DK, DK_A, DK_B, False)
        acc_a += add_a
        acc_b += add_b
    tl.store(dq_ptr + row[:, None] * DK + cols_a[None, :], acc_a.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & ok_a[None, :])
    tl.store(dq_ptr + row[:, None] * DK + cols_b[None, :], acc_b.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & ok_b[None, :])


def small_g_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, do: torch.Tensor,
    idx: torch.Tensor, block_slc: int, scale: float, group: int, deterministic: bool,
    dq_out: torch.Tensor | None, dq_add: torch.Tensor | None, packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`selected.selected_bwd` by the block-outer path; inputs validated, contiguous, o/do in q's
    dtype, lse fp32, idx int32, dq_out checked. deterministic=True: no atomics anywhere (dq partials
    and long lists' dk/dv partials summed in a fixed order); False: dk/dv by fp32 atomics."""
    b, t, hq, dk_dim = q.shape
    hkv, dv_dim, n = k.shape[2], v.shape[-1], idx.shape[-1]
    dq = dq_out if dq_out is not None else torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    dims = _dims(q, v, group, block_slc, n, packing)
    chunks = block_slc // dims["BLOCK_N"]
    delta = tiles.row_delta(o, do)
    num_blocks, seq_t, seqs, tables = _packed_args(t, b, block_slc, idx, packing)
    offsets, entries, sorted_idx = invert_entries(idx, block_slc, num_blocks, packing)
    dq_part = torch.empty(idx.numel() * chunks * group, dk_dim, dtype=_partial_dtype(q), device=q.device)
    segment = tiles.segment_len(n, block_slc)
    segments = -(-seq_t // segment)
    grid = (num_blocks * chunks, segments, b * hkv)
    qk_scale_log2 = float(scale) * _LOG2E
    common = (*tables, t, hq, hkv, group, dk_dim, dv_dim, num_blocks, segment, qk_scale_log2, float(scale))
    if deterministic:
        slots, num_slots = tiles.partial_slots(offsets, segment, idx.numel())
        dk_part = torch.empty(num_slots, block_slc, dk_dim, dtype=torch.float32, device=q.device)
        dv_part = torch.empty(num_slots, block_slc, dv_dim, dtype=torch.float32, device=q.device)
        tiles.launcher(_block_outer_bwd_kernel, grid, _INTERP_META)(
            q, k, v, do, lse, delta, offsets, entries, slots, dk, dv, dk_part, dv_part, dq_part,
            *common, **tuning_buckets(seq_t, b * hq), **dims, ATOMIC=False,
        )
        if segments > 1:
            reduce_block = min(block_slc, 32)
            dk_pad, dv_pad = max(16, next_pow2(dk_dim)), dims["DV_PAD"]
            _dkdv_reduce_kernel[(num_blocks * (block_slc // reduce_block), b * hkv)](
                offsets, slots, dk_part, dv_part, dk, dv, *tables, t, hkv, dk_dim, dv_dim, num_blocks, segment,
                BLOCK_SLC=block_slc, DK_PAD=dk_pad, DV_PAD=dv_pad, BLOCK_N=reduce_block,
                **tiles.reduce_launch(packing),
            )
    else:
        dk32 = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv32 = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        tiles.launcher(_block_outer_bwd_atomic_kernel, grid, _INTERP_META)(
            q, k, v, do, lse, delta, offsets, entries, offsets, dk32, dv32, dk32, dv32, dq_part,
            *common, **tuning_buckets(seq_t, b * hq), **dims, ATOMIC=True,
        )
        dk, dv = dk32.to(k.dtype), dv32.to(v.dtype)
    merge_grid, g_pad, positions = _merge_grid(seq_t, hkv, seqs, group)
    add_dq = dq_add is not None
    _dq_reduce_kernel[merge_grid](
        sorted_idx, dq_part, dq, dq_add if add_dq else dq, tables[0], t, hq, hkv, group, dk_dim, float(scale),
        N_SLOTS=n, G_PAD=g_pad, DK_A=dims["DK_A"], DK_B=dims["DK_B"], BLOCK_SLC=block_slc, CHUNKS=chunks,
        POSITIONS=positions, ADD_DQ=add_dq, VARLEN=packing is not None, num_warps=_MERGE_WARPS,
    )
    return dq, dk, dv
