"""Triton FlashAttention-2: causal/full attention with GQA, Dk != Dv and an optional sliding window.

One module serves two users: NSA's sliding-window branch (`window=w`) and the dense `fa2-triton`
baseline (`window=None`). Forward, FA2-style backward (preprocess, dk/dv, dq; deterministic, no
atomics) and split-KV decode. Tiles outside the causal/window band are skipped by loop bounds. In
the forward and dq kernels only tiles that straddle a band edge or the sequence end pay for masks;
dk/dv masks every tile, because one flat loop over (group head, query tile) is what keeps its sm_90
build free of register spills. Head dims need not be powers of two: tiles are padded in registers
with masked loads, never in memory.

Packed batches (`cu_seqlens`, docs/varlen.md; v2 only): the kernels take a `VARLEN` constexpr (off: the
dense kernels exactly as before, cu_seqlens a None constexpr). On, the grid is (tiles of the longest
sequence, heads, N sequences); each program loads its sequence's two offsets, exits at once if its tile
starts past the sequence's end, and uses bos = cu_seqlens[s] as its batch index, the host passing
batch strides equal to token strides (`_strider`): the rest is the dense kernel with T = L_s.
The wrappers take the packed batch as a `Packing` (kernels/packing.py), which `flash_attention` builds.
Decode takes no cu_seqlens (a packed decode is a decode batch with cache_seqlens).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

from ._common import (
    TUNING_ARGS, autotune, check_dq_chain, check_gated, check_heads, interpreting, next_pow2, same_memory,
    small_sizes, split_head_dim, tuning_buckets,
)
from .packing import Packing, refuse_v1
from .variants import check_variant

__all__ = ["attention_fwd", "attention_bwd", "flash_attention", "flash_attention_decode"]

LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DEFAULT_NUM_SMS = 132  # H100 SXM; used when no CUDA device is visible (interpreter)
_MAX_DECODE_SPLITS = 64
_MIN_SPLIT_TOKENS = 256  # below this a split's fixed cost outweighs the parallelism it buys


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration; tests pass it to bypass autotuning and pin tile shapes."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


# ---------------------------------------------------------------------------------- autotune configs
# Candidates were chosen by compiling for sm_90 (no GPU at hand) and keeping the shapes ptxas builds
# without register spills: "narrow" for padded head dims BLOCK_DK + BLOCK_DV <= 256 (e.g. 128/128),
# "wide" beyond (192/128 pads to 256/128, and 256/256). The autotuner then times what is left.
_WIDE_HEADS = 256


@dataclass(frozen=True)
class _Candidates:
    """Autotune configs plus which of them are meant for wide heads (read by the prune hook), the
    wide ones that spill with int64 row offsets (ROW64) and a 256-column padded Dk tile, and the one
    config the CPU interpreter runs."""

    configs: tuple
    wide: frozenset
    row64_spills: frozenset = frozenset()
    interpreter: triton.Config | None = None

    def prune(self, configs, named_args, **kwargs):
        if len(configs) == 1:
            return configs
        wide = kwargs["BLOCK_DK"] + kwargs.get("DK_B", 0) + kwargs["BLOCK_DV"] > _WIDE_HEADS
        kept = [c for c in configs if (c in self.wide) == wide]
        if kwargs.get("ROW64") and kwargs["BLOCK_DK"] >= 256:
            kept = [c for c in kept if c not in self.row64_spills] or kept
        return kept


def _candidates(narrow: list[TileConfig], wide: list[TileConfig], interp: TileConfig,
                row64_spills: tuple[TileConfig, ...] = ()) -> _Candidates:
    def config(c: TileConfig) -> triton.Config:
        return triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n}, num_warps=c.num_warps,
                             num_stages=c.num_stages)

    wide_configs = tuple(config(c) for c in wide)
    spills = frozenset(wide_configs[wide.index(c)] for c in row64_spills)
    return _Candidates(tuple(config(c) for c in narrow) + wide_configs, frozenset(wide_configs), spills,
                       interpreter=config(interp))


def _autotuned(kernel, candidates: _Candidates, restore_value: list[str] | None = None):
    """`kernel` autotuned over `candidates`, tuned once per head widths and masking mode.

    restore_value names outputs the kernel reads back (accumulation): the tuner saves them before
    and restores them after each timed run, so tuning does not add into them repeatedly.
    Packed launches tune apart from dense ones without a key of their own: Triton appends every tensor
    argument's dtype to the key, and only they pass a cu_seqlens tensor (dense: None), so the dense
    key is the one it was before varlen.
    """
    return autotune(
        configs=list(candidates.configs), key=["BLOCK_DK", "DK_B", "BLOCK_DV", "CAUSAL", "HAS_WINDOW"],
        interpreter=candidates.interpreter, prune_configs_by={"early_config_prune": candidates.prune},
        restore_value=restore_value,
    )(kernel)


_FWD = _candidates(
    narrow=[TileConfig(128, 64, 8, 3), TileConfig(128, 64, 8, 4), TileConfig(128, 32, 8, 3), TileConfig(64, 64, 4, 3)],
    wide=[TileConfig(64, 32, 8, 2), TileConfig(64, 32, 8, 3), TileConfig(64, 16, 4, 2), TileConfig(128, 16, 8, 2)],
    interp=TileConfig(32, 16),
)
# dk/dv: the KV tile (BLOCK_N) is resident, query tiles (BLOCK_M) stream past it.
_DKDV = _candidates(
    narrow=[TileConfig(32, 64, 8, 2), TileConfig(32, 64, 8, 3), TileConfig(32, 128, 8, 2), TileConfig(64, 64, 8, 2)],
    wide=[TileConfig(16, 32, 8, 2), TileConfig(32, 32, 8, 2), TileConfig(16, 32, 4, 2)],
    interp=TileConfig(16, 32),
    # sm_90 compile at T = 1M: BLOCK_DK=256 (v1's padded 192) with ROW64 spills 8 bytes
    row64_spills=(TileConfig(32, 32, 8, 2),),
)
# dq: the query tile (BLOCK_M) is resident, KV tiles (BLOCK_N) stream past it.
_DQ = _candidates(
    narrow=[TileConfig(128, 32, 8, 2), TileConfig(128, 32, 8, 3), TileConfig(64, 16, 4, 3), TileConfig(64, 32, 4, 3)],
    wide=[TileConfig(32, 32, 4, 2), TileConfig(32, 16, 4, 2), TileConfig(32, 16, 4, 3)],
    interp=TileConfig(32, 16),
)
_DECODE_CONFIGS = [
    triton.Config({"BLOCK_N": c.block_n}, num_warps=c.num_warps, num_stages=c.num_stages)
    for c in [  # block_m unused: G rows are BLOCK_G
        TileConfig(16, 32, 4, 2), TileConfig(16, 32, 4, 3), TileConfig(16, 32, 8, 2), TileConfig(16, 64, 8, 2),
    ]
]
_DECODE_INTERPRETER = triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=2)


# ---------------------------------------------------------------------------------- jit helpers
@triton.jit
def _load_tile(ptrs, rows, num_rows, cols, num_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """Load a [rows, cols] tile, masking only the edges that can be out of range."""
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=(rows[:, None] < num_rows) & (cols[None, :] < num_cols), other=0.0)
        else:
            x = tl.load(ptrs, mask=rows[:, None] < num_rows, other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=cols[None, :] < num_cols, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _row_offsets(rows, stride, ROW64: tl.constexpr):
    """rows * stride, in int64 only when a (batch, head) plane can pass 2^31 elements.

    Per-iteration int64 address math costs Hopper kernels hundreds of bytes of register spills, so
    the launcher picks int32 whenever T * stride_t fits (batch/head bases are always int64).
    """
    if ROW64:
        off = rows.to(tl.int64) * stride
    else:
        off = rows * stride
    return off


@triton.jit
def _load_row_pair(a_base, b_base, stride_a, stride_b, rows, num_rows, cols_a, cols_b,
                   NUM_A: tl.constexpr, NUM_B: tl.constexpr, CHECK_ROWS: tl.constexpr, PAD_A: tl.constexpr,
                   PAD_B: tl.constexpr, UPCAST: tl.constexpr, ROW64: tl.constexpr):
    """Two tiles that share their rows (k and v, or q and do): row i of each at base + rows[i] * stride.

    UPCAST turns them to fp32 for the interpreter, whose bf16 arithmetic is wrong.
    """
    a = _load_tile(a_base + _row_offsets(rows, stride_a, ROW64)[:, None] + cols_a[None, :], rows, num_rows,
                   cols_a, NUM_A, CHECK_ROWS, PAD_A)
    b = _load_tile(b_base + _row_offsets(rows, stride_b, ROW64)[:, None] + cols_b[None, :], rows, num_rows,
                   cols_b, NUM_B, CHECK_ROWS, PAD_B)
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return a, b


@triton.jit
def _load_cols_b(base, stride, rows, num_rows, cols_b, CHECK_ROWS: tl.constexpr, PAD_B: tl.constexpr,
                 DK: tl.constexpr, UPCAST: tl.constexpr, ROW64: tl.constexpr):
    """The second column chunk (columns cols_b, masked at DK when PAD_B) of rows `rows`: Dk split 128 + 64."""
    x = _load_tile(base + _row_offsets(rows, stride, ROW64)[:, None] + cols_b[None, :], rows, num_rows, cols_b, DK,
                   CHECK_ROWS, PAD_B)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _split_cols(offs_dk, BLOCK_DK: tl.constexpr, DK_B: tl.constexpr):
    """Column offsets of the second Dk chunk [BLOCK_DK, BLOCK_DK + DK_B); DK_B = 0 (no split): offs_dk,
    a stand-in that is never used."""
    if DK_B > 0:
        cols_b = BLOCK_DK + tl.arange(0, DK_B)
    else:
        cols_b = offs_dk
    return cols_b


@triton.jit
def _load_row_stats(lse_ptrs, delta_ptrs, rows, num_rows, CHECK_ROWS: tl.constexpr):
    """Per-row lse (turned to log2 units, as the kernels' exp2 wants) and delta of the backward."""
    if CHECK_ROWS:
        lse2 = tl.load(lse_ptrs, mask=rows < num_rows, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptrs, mask=rows < num_rows, other=0.0)
    else:
        lse2 = tl.load(lse_ptrs) * 1.4426950408889634
        delta = tl.load(delta_ptrs)
    return lse2, delta


@triton.jit
def _store_rows(base, stride, rows, num_rows, cols, num_cols, x):
    """Store x [rows, cols] at base + rows[i] * stride + cols[j] in base's dtype; every store is masked."""
    tl.store(base + rows[:, None] * stride + cols[None, :], x.to(base.dtype.element_ty),
             mask=(rows[:, None] < num_rows) & (cols[None, :] < num_cols))


@triton.jit
def _band_segment(segment: tl.constexpr, lo, clean_lo, clean_hi, hi):
    """[start, end) of one of the three runs of key tiles _key_range yields: 0 and 2 masked, 1 clean."""
    if segment == 0:
        start, end = lo, clean_lo
    elif segment == 1:
        start, end = clean_lo, clean_hi
    else:
        start, end = clean_hi, hi
    return start, end


@triton.jit
def _batch_and_head(num_heads, VARLEN: tl.constexpr):
    """(batch as int64, head) of a program: dense grid axis 1 is B x heads; VARLEN grids have the heads on
    axis 1 and the sequence (`batch`) on axis 2."""
    if VARLEN:
        batch = tl.program_id(2).to(tl.int64)
        head = tl.program_id(1)
    else:
        pid_bh = tl.program_id(1)
        batch = (pid_bh // num_heads).to(tl.int64)
        head = pid_bh % num_heads
    return batch, head


@triton.jit
def _query_tile_ids(num_q_heads, group, BLOCK_M: tl.constexpr, VARLEN: tl.constexpr):
    """(batch, head, kv_head, m0) of a program that owns one query tile of one query head.

    Programs launch heaviest causal tiles (last queries) first: better tail balance across SMs.
    Dense grid (tiles, B * Hq); VARLEN grid (tiles, Hq, N): `batch` is then the sequence index.
    """
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    batch, head = _batch_and_head(num_q_heads, VARLEN)
    kv_head = (head // group).to(tl.int64)
    return batch, head.to(tl.int64), kv_head, pid_m * BLOCK_M


@triton.jit
def _sequence(cu_seqlens, batch, seqlen, VARLEN: tl.constexpr):
    """(batch, seqlen) of the program's sequence. Dense: both unchanged. VARLEN (`batch` = sequence s
    of a packed batch): (bos, L_s) with bos = cu_seqlens[s] as int64. The host passes every packed
    tensor's batch stride equal to its token stride, so `batch * stride_b` = bos * stride_t rebases
    each token-indexed pointer to the sequence's first row; everything after is the dense kernel
    with T = L_s (positions, causality and window local to the sequence)."""
    if VARLEN:
        bos = tl.load(cu_seqlens + batch)
        seqlen = tl.load(cu_seqlens + batch + 1) - bos
        batch = bos.to(tl.int64)
    return batch, seqlen


@triton.jit
def _key_range(m0, seqlen, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles a query tile [m0, m0+BLOCK_M) needs: [lo, hi), of which [clean_lo, clean_hi) need no mask.

    All bounds except `hi` are multiples of BLOCK_N. A clean tile lies inside the sequence, fully in
    every row's past (causal) and fully inside every row's window.
    """
    full_tiles_end = (seqlen // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(seqlen, m0 + BLOCK_M)
        clean_hi = tl.minimum(((m0 + 1) // BLOCK_N) * BLOCK_N, full_tiles_end)
    else:
        hi = seqlen
        clean_hi = full_tiles_end
    if HAS_WINDOW:
        lo = (tl.maximum(m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
        clean_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - window, 0), BLOCK_N) * BLOCK_N
        clean_lo = tl.minimum(tl.maximum(clean_lo, lo), hi)
    else:
        lo = 0
        clean_lo = 0
    clean_hi = tl.minimum(tl.maximum(clean_hi, clean_lo), hi)
    return lo, clean_lo, clean_hi, hi


@triton.jit
def _query_range(n0, seqlen, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """Query tiles [lo, hi) that see some key of the tile [n0, n0+BLOCK_N); lo is a multiple of BLOCK_M."""
    if HAS_WINDOW:
        hi = tl.minimum(seqlen, n0 + BLOCK_N - 1 + window)
    else:
        hi = seqlen
    if CAUSAL:
        lo = (n0 // BLOCK_M) * BLOCK_M
    else:
        lo = 0
    return lo, hi


@triton.jit
def _band_mask(rows, cols, seqlen, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """allowed[i, j] for query rows[i], key cols[j]. Query rows past the end need no mask: never stored."""
    allowed = (cols[None, :] < seqlen) & (rows[:, None] >= 0)
    if CAUSAL:
        allowed = allowed & (cols[None, :] <= rows[:, None])
    if HAS_WINDOW:
        allowed = allowed & (cols[None, :] > rows[:, None] - window)
    return allowed


@triton.jit
def _band_mask_t(keys, rows, seqlen, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """_band_mask transposed, built directly: allowed[j, i] for key keys[j] and query rows[i]."""
    allowed = (keys[:, None] < seqlen) & (rows[None, :] < seqlen)
    if CAUSAL:
        allowed = allowed & (keys[:, None] <= rows[None, :])
    if HAS_WINDOW:
        allowed = allowed & (keys[:, None] > rows[None, :] - window)
    return allowed


# ---------------------------------------------------------------------------------- forward
@triton.jit
def _softmax_init(ROWS: tl.constexpr, COLS: tl.constexpr):
    """Empty online-softmax state (acc, l, m); m starts finite so a fully masked tile gives p = 0, not NaN."""
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    m_i = tl.full([ROWS], -1.0e30, dtype=tl.float32)
    return acc, l_i, m_i


@triton.jit
def _fwd_step(acc, l_i, m_i, q, q_b, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n, offs_dk, offs_dk_b,
              offs_dv, n0, seqlen, window, qk_scale,
              DK: tl.constexpr, DV: tl.constexpr, PAD_DK: tl.constexpr, PAD_DV: tl.constexpr,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr,
              ROW64: tl.constexpr, DK_B: tl.constexpr = 0, PAD_DK_B: tl.constexpr = False):
    """One key tile of the online softmax; m is kept in log2 units. DK_B > 0: q_b/offs_dk_b are the
    second Dk chunk (Dk = BLOCK_DK + DK_B, e.g. 128 + 64), its q.k added to the first's."""
    keys = n0 + offs_n
    k, v = _load_row_pair(k_base, v_base, stride_kt, stride_vt, keys, seqlen, offs_dk, offs_dv, DK, DV, MASKED,
                          PAD_DK, PAD_DV, UPCAST, ROW64)
    qk = tl.dot(q, tl.trans(k))
    if DK_B > 0:
        k_b = _load_cols_b(k_base, stride_kt, keys, seqlen, offs_dk_b, MASKED, PAD_DK_B, DK, UPCAST, ROW64)
        qk += tl.dot(q_b, tl.trans(k_b))
    qk = qk * qk_scale
    if MASKED:
        qk = tl.where(_band_mask(offs_m, keys, seqlen, window, CAUSAL, HAS_WINDOW), qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, q_b, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n, offs_dk, offs_dk_b,
               offs_dv, start, end, seqlen, window, qk_scale,
               DK: tl.constexpr, DV: tl.constexpr, PAD_DK: tl.constexpr, PAD_DV: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr,
               ROW64: tl.constexpr, BLOCK_N: tl.constexpr, DK_B: tl.constexpr, PAD_DK_B: tl.constexpr):
    """Online-softmax update of (acc, l, m) over key tiles [start, end)."""
    for n0 in range(start, end, BLOCK_N):
        n0 = tl.multiple_of(n0, BLOCK_N)
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, q_b, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                                  offs_dk, offs_dk_b, offs_dv, n0, seqlen, window, qk_scale, DK, DV, PAD_DK, PAD_DV,
                                  MASKED, CAUSAL, HAS_WINDOW, UPCAST, ROW64, DK_B, PAD_DK_B)
    return acc, l_i, m_i


@triton.jit
def _gated_epilogue(o_tile, o_ptrs, gate_ptrs, rows, num_rows, cols, num_cols, ACCUMULATE: tl.constexpr):
    """gate * o_tile, plus what o_ptrs already hold when ACCUMULATE; fp32, masked like the store."""
    gate = tl.load(gate_ptrs, mask=rows < num_rows, other=0.0).to(tl.float32)
    result = gate[:, None] * o_tile
    if ACCUMULATE:
        previous = tl.load(o_ptrs, mask=(rows[:, None] < num_rows) & (cols[None, :] < num_cols), other=0.0)
        result += previous.to(tl.float32)
    return result


@triton.jit(do_not_specialize=TUNING_ARGS)
def _fwd_kernel(
    q, k, v, o, lse, gates, cu_seqlens,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh, stride_lb, stride_lt, stride_lh, stride_gb, stride_gt, stride_gh,
    seqlen, num_q_heads, group, window, qk_scale, SEQ_BUCKET, ROWS_BUCKET,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr, ROW64: tl.constexpr,
    GATED: tl.constexpr, ACCUMULATE: tl.constexpr, DK_B: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One query tile of one head. GATED: o is the final NSA output and gets gates[t, h] * attention
    (added to o's contents when ACCUMULATE); `gates` already points at the branch's gate column.
    DK_B > 0: Dk runs as two column chunks BLOCK_DK + DK_B (192 = 128 + 64) instead of one padded tile.
    VARLEN: one sequence of a packed batch per grid row (`_sequence`); tiles past its end exit."""
    batch, head, kv_head, m0 = _query_tile_ids(num_q_heads, group, BLOCK_M, VARLEN)
    batch, seqlen = _sequence(cu_seqlens, batch, seqlen, VARLEN)
    if VARLEN:
        if m0 >= seqlen:
            return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    PAD_DK: tl.constexpr = BLOCK_DK > DK
    PAD_DV: tl.constexpr = BLOCK_DV != DV
    PAD_DK_B: tl.constexpr = BLOCK_DK + DK_B > DK
    offs_dk_b = _split_cols(offs_dk, BLOCK_DK, DK_B)

    q_base = q + batch * stride_qb + head * stride_qh + m0.to(tl.int64) * stride_qt
    q_ptrs = q_base + tl.arange(0, BLOCK_M)[:, None] * stride_qt + offs_dk[None, :]
    q_tile = _load_tile(q_ptrs, offs_m, seqlen, offs_dk, DK, True, PAD_DK)
    if UPCAST:
        q_tile = q_tile.to(tl.float32)
    if DK_B > 0:
        q_b = _load_cols_b(q_base, stride_qt, tl.arange(0, BLOCK_M), seqlen - m0, offs_dk_b, True, PAD_DK_B, DK,
                           UPCAST, False)
    else:
        q_b = q_tile
    k_base = k + batch * stride_kb + kv_head * stride_kh
    v_base = v + batch * stride_vb + kv_head * stride_vh

    acc, l_i, m_i = _softmax_init(BLOCK_M, BLOCK_DV)
    lo, clean_lo, clean_hi, hi = _key_range(m0, seqlen, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for segment in tl.static_range(3):
        start, end = _band_segment(segment, lo, clean_lo, clean_hi, hi)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q_tile, q_b, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                                   offs_dk, offs_dk_b, offs_dv, start, end, seqlen, window, qk_scale, DK, DV, PAD_DK,
                                   PAD_DV, segment != 1, CAUSAL, HAS_WINDOW, UPCAST, ROW64, BLOCK_N, DK_B, PAD_DK_B)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o_tile = acc / l_safe[:, None]
    o_base = o + batch * stride_ob + head * stride_oh + m0.to(tl.int64) * stride_ot
    if GATED:
        tile_rows = tl.arange(0, BLOCK_M)
        gate_ptrs = gates + batch * stride_gb + head * stride_gh + offs_m.to(tl.int64) * stride_gt
        o_tile = _gated_epilogue(o_tile, o_base + tile_rows[:, None] * stride_ot + offs_dv[None, :], gate_ptrs,
                                 tile_rows, seqlen - m0, offs_dv, DV, ACCUMULATE)
    _store_rows(o_base, stride_ot, tl.arange(0, BLOCK_M), seqlen - m0, offs_dv, DV, o_tile)
    lse_ptrs = lse + batch * stride_lb + head * stride_lh + offs_m.to(tl.int64) * stride_lt
    tl.store(lse_ptrs, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, mask=offs_m < seqlen)


_fwd_tuned = _autotuned(_fwd_kernel, _FWD)
# Accumulating launches read `o`: a separate tuner restores it around each timed run. (Tuning then
# clones `o` once per new key; the default path keeps the tuner without that copy.)
_fwd_tuned_accumulate = _autotuned(_fwd_kernel, _FWD, restore_value=["o"])


# ---------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_preprocess_kernel(
    o, do, delta, cu_seqlens, stride_ob, stride_ot, stride_oh, stride_db, stride_dt, stride_dh,
    stride_lb, stride_lt, stride_lh, seqlen, num_q_heads,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, VARLEN: tl.constexpr,
):
    """delta[b, t, h] = sum_d o * do: the softmax-Jacobian term both backward kernels need.
    VARLEN: grid (tiles, Hq, N), one sequence per grid row, as `_fwd_kernel`."""
    pid_m = tl.program_id(0)
    if VARLEN:
        batch = tl.program_id(2).to(tl.int64)
        head = tl.program_id(1).to(tl.int64)
    else:
        pid_bh = tl.program_id(1)
        batch = (pid_bh // num_q_heads).to(tl.int64)
        head = (pid_bh % num_q_heads).to(tl.int64)
    batch, seqlen = _sequence(cu_seqlens, batch, seqlen, VARLEN)
    if VARLEN:
        if pid_m * BLOCK_M >= seqlen:
            return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < seqlen) & (offs_dv[None, :] < DV)
    rows64 = rows.to(tl.int64)
    o_tile = tl.load(o + batch * stride_ob + head * stride_oh + rows64[:, None] * stride_ot + offs_dv[None, :],
                     mask=mask, other=0.0).to(tl.float32)
    do_tile = tl.load(do + batch * stride_db + head * stride_dh + rows64[:, None] * stride_dt + offs_dv[None, :],
                      mask=mask, other=0.0).to(tl.float32)
    tl.store(delta + batch * stride_lb + head * stride_lh + rows64 * stride_lt, tl.sum(o_tile * do_tile, 1),
             mask=rows < seqlen)


@triton.jit
def _dkdv_step(dk, dk_b, dv, k_tile, k_b, v_tile, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
               stride_lt, keys, offs_m, offs_dk, offs_dk_b, offs_dv, m0, seqlen, window, qk_scale,
               DK: tl.constexpr, DV: tl.constexpr, PAD_DK: tl.constexpr, PAD_DV: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr,
               ROW64: tl.constexpr, DK_B: tl.constexpr, PAD_DK_B: tl.constexpr):
    """dk (unscaled) and dv contributions of one query tile to one KV tile; DK_B > 0: dk_b/k_b are the
    second Dk chunk (dk_b is passed through untouched otherwise)."""
    rows = m0 + offs_m
    q_tile, do_tile = _load_row_pair(q_base, do_base, stride_qt, stride_dot, rows, seqlen, offs_dk, offs_dv, DK, DV,
                                     MASKED, PAD_DK, PAD_DV, UPCAST, ROW64)
    lse2, delta = _load_row_stats(lse_base + _row_offsets(rows, stride_lt, ROW64),
                                  delta_base + _row_offsets(rows, stride_lt, ROW64), rows, seqlen, MASKED)
    # Transposed orientation [BLOCK_N, BLOCK_M]: rows are this program's keys.
    qk_t = tl.dot(k_tile, tl.trans(q_tile))
    if DK_B > 0:
        q_b = _load_cols_b(q_base, stride_qt, rows, seqlen, offs_dk_b, MASKED, PAD_DK_B, DK, UPCAST, ROW64)
        qk_t += tl.dot(k_b, tl.trans(q_b))
    p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
    if MASKED:
        p_t = tl.where(_band_mask_t(keys, rows, seqlen, window, CAUSAL, HAS_WINDOW), p_t, 0.0)
    dv += tl.dot(p_t.to(do_tile.dtype), do_tile)
    dp_t = tl.dot(v_tile, tl.trans(do_tile))
    ds_t = (p_t * (dp_t - delta[None, :])).to(q_tile.dtype)
    dk += tl.dot(ds_t, q_tile)
    if DK_B > 0:
        dk_b += tl.dot(ds_t, q_b)
    return dk, dk_b, dv


@triton.jit(do_not_specialize=TUNING_ARGS)
def _bwd_dkdv_kernel(
    q, k, v, do, lse, delta, dk, dv, cu_seqlens,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh, stride_lb, stride_lt, stride_lh,
    stride_dkb, stride_dkt, stride_dkh, stride_dvb, stride_dvt, stride_dvh,
    seqlen, num_kv_heads, group, window, qk_scale, scale, SEQ_BUCKET, ROWS_BUCKET,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr, ROW64: tl.constexpr,
    DK_B: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One KV tile of one KV head; sums over the G query heads of its group, so no atomics.
    DK_B > 0: Dk as two column chunks (see `_fwd_kernel`). VARLEN: grid (tiles, Hkv, N), as `_fwd_kernel`."""
    pid_n = tl.program_id(0)
    batch, kv_head = _batch_and_head(num_kv_heads, VARLEN)
    n0 = pid_n * BLOCK_N
    batch, seqlen = _sequence(cu_seqlens, batch, seqlen, VARLEN)
    if VARLEN:
        if n0 >= seqlen:
            return
    keys = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    PAD_DK: tl.constexpr = BLOCK_DK > DK
    PAD_DV: tl.constexpr = BLOCK_DV != DV
    PAD_DK_B: tl.constexpr = BLOCK_DK + DK_B > DK
    offs_dk_b = _split_cols(offs_dk, BLOCK_DK, DK_B)
    local_n = tl.arange(0, BLOCK_N)

    # Tile-local row offsets (int32) from int64 tile bases.
    k_tile_base = k + batch * stride_kb + kv_head.to(tl.int64) * stride_kh + n0.to(tl.int64) * stride_kt
    k_tile, v_tile = _load_row_pair(
        k_tile_base, v + batch * stride_vb + kv_head.to(tl.int64) * stride_vh + n0.to(tl.int64) * stride_vt,
        stride_kt, stride_vt, local_n, seqlen - n0, offs_dk, offs_dv, DK, DV, True, PAD_DK, PAD_DV, UPCAST, False)
    if DK_B > 0:
        k_b = _load_cols_b(k_tile_base, stride_kt, local_n, seqlen - n0, offs_dk_b, True, PAD_DK_B, DK, UPCAST, False)
        dk_b_acc = tl.zeros([BLOCK_N, DK_B], dtype=tl.float32)
    else:
        k_b = k_tile
        dk_b_acc = tl.zeros([16, 16], dtype=tl.float32)  # stand-in, passed through untouched
    dk_acc = tl.zeros([BLOCK_N, BLOCK_DK], dtype=tl.float32)
    dv_acc = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    lo, hi = _query_range(n0, seqlen, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    group_head = (kv_head * group).to(tl.int64)
    q_group = q + batch * stride_qb + group_head * stride_qh
    do_group = do + batch * stride_dob + group_head * stride_doh
    lse_group = lse + batch * stride_lb + group_head * stride_lh
    delta_group = delta + batch * stride_lb + group_head * stride_lh
    # One flat loop over (query head of the group, query tile), every tile masked: nesting a head loop
    # around clean/edge tile loops made Hopper builds spill hundreds of bytes of registers.
    num_tiles = tl.cdiv(hi - lo, BLOCK_M)
    for it in range(0, num_tiles * group):
        g = it // num_tiles
        dk_acc, dk_b_acc, dv_acc = _dkdv_step(
            dk_acc, dk_b_acc, dv_acc, k_tile, k_b, v_tile, q_group + g * stride_qh, do_group + g * stride_doh,
            lse_group + g * stride_lh, delta_group + g * stride_lh, stride_qt, stride_dot, stride_lt, keys,
            offs_m, offs_dk, offs_dk_b, offs_dv, lo + (it - g * num_tiles) * BLOCK_M, seqlen, window, qk_scale,
            DK, DV, PAD_DK, PAD_DV, True, CAUSAL, HAS_WINDOW, UPCAST, ROW64, DK_B, PAD_DK_B)
    dk_tile_out = dk + batch * stride_dkb + kv_head.to(tl.int64) * stride_dkh + n0.to(tl.int64) * stride_dkt
    _store_rows(dk_tile_out, stride_dkt, local_n, seqlen - n0, offs_dk, DK, dk_acc * scale)
    if DK_B > 0:
        _store_rows(dk_tile_out, stride_dkt, local_n, seqlen - n0, offs_dk_b, DK, dk_b_acc * scale)
    _store_rows(dv + batch * stride_dvb + kv_head.to(tl.int64) * stride_dvh + n0.to(tl.int64) * stride_dvt,
                stride_dvt, local_n, seqlen - n0, offs_dv, DV, dv_acc)


@triton.jit
def _dq_tiles(dq, dq_b, q_tile, q_b, do_tile, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
              offs_dk, offs_dk_b, offs_dv, start, end, seqlen, window, qk_scale,
              DK: tl.constexpr, DV: tl.constexpr, PAD_DK: tl.constexpr, PAD_DV: tl.constexpr,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr,
              ROW64: tl.constexpr, BLOCK_N: tl.constexpr, DK_B: tl.constexpr, PAD_DK_B: tl.constexpr):
    """Accumulate dq (unscaled) of one query tile over key tiles [start, end); dq_b: the second Dk chunk."""
    for n0 in range(start, end, BLOCK_N):
        n0 = tl.multiple_of(n0, BLOCK_N)
        dq, dq_b = _dq_step(dq, dq_b, q_tile, q_b, do_tile, lse2, delta, k_base, v_base, stride_kt, stride_vt,
                            offs_m, offs_n, offs_dk, offs_dk_b, offs_dv, n0, seqlen, window, qk_scale, DK, DV,
                            PAD_DK, PAD_DV, MASKED, CAUSAL, HAS_WINDOW, UPCAST, ROW64, DK_B, PAD_DK_B)
    return dq, dq_b


@triton.jit
def _dq_step(dq, dq_b, q_tile, q_b, do_tile, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
             offs_dk, offs_dk_b, offs_dv, n0, seqlen, window, qk_scale,
             DK: tl.constexpr, DV: tl.constexpr, PAD_DK: tl.constexpr, PAD_DV: tl.constexpr,
             MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr,
             ROW64: tl.constexpr, DK_B: tl.constexpr, PAD_DK_B: tl.constexpr):
    """dq contribution of one key tile (DK_B > 0: also of the second Dk chunk; dq_b untouched otherwise)."""
    keys = n0 + offs_n
    k_tile, v_tile = _load_row_pair(k_base, v_base, stride_kt, stride_vt, keys, seqlen, offs_dk, offs_dv, DK, DV,
                                    MASKED, PAD_DK, PAD_DV, UPCAST, ROW64)
    qk = tl.dot(q_tile, tl.trans(k_tile))
    if DK_B > 0:
        k_b = _load_cols_b(k_base, stride_kt, keys, seqlen, offs_dk_b, MASKED, PAD_DK_B, DK, UPCAST, ROW64)
        qk += tl.dot(q_b, tl.trans(k_b))
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(_band_mask(offs_m, keys, seqlen, window, CAUSAL, HAS_WINDOW), p, 0.0)
    dp = tl.dot(do_tile, tl.trans(v_tile))
    ds = (p * (dp - delta[:, None])).to(k_tile.dtype)
    dq += tl.dot(ds, k_tile)
    if DK_B > 0:
        dq_b += tl.dot(ds, k_b)
    return dq, dq_b


@triton.jit
def _dq_epilogue(dq_acc, dq, dq_add, stride_dqt, stride_at, local_m, num_rows, cols, DK: tl.constexpr,
                 ADD_DQ: tl.constexpr):
    """Store one Dk chunk of a dq tile (already scaled), plus dq_add's rows when ADD_DQ."""
    if ADD_DQ:
        dq_acc += tl.load(dq_add + local_m[:, None] * stride_at + cols[None, :],
                          mask=(local_m[:, None] < num_rows) & (cols[None, :] < DK), other=0.0)
    _store_rows(dq, stride_dqt, local_m, num_rows, cols, DK, dq_acc)


@triton.jit(do_not_specialize=TUNING_ARGS)
def _bwd_dq_kernel(
    q, k, v, do, lse, delta, dq, dq_add, cu_seqlens,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_dob, stride_dot, stride_doh, stride_lb, stride_lt, stride_lh,
    stride_dqb, stride_dqt, stride_dqh, stride_ab, stride_at, stride_ah,
    seqlen, num_q_heads, group, window, qk_scale, scale, SEQ_BUCKET, ROWS_BUCKET,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, UPCAST: tl.constexpr, ROW64: tl.constexpr,
    ADD_DQ: tl.constexpr, DK_B: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """ADD_DQ: dq_add's fp32 rows (NSA's other branches' dq) are added to this tile's dq before the store.
    DK_B > 0: Dk as two column chunks (see `_fwd_kernel`). VARLEN: as `_fwd_kernel`."""
    batch, head, kv_head, m0 = _query_tile_ids(num_q_heads, group, BLOCK_M, VARLEN)
    batch, seqlen = _sequence(cu_seqlens, batch, seqlen, VARLEN)
    if VARLEN:
        if m0 >= seqlen:
            return
    local_m = tl.arange(0, BLOCK_M)
    offs_m = m0 + local_m
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    PAD_DK: tl.constexpr = BLOCK_DK > DK
    PAD_DV: tl.constexpr = BLOCK_DV != DV
    PAD_DK_B: tl.constexpr = BLOCK_DK + DK_B > DK
    offs_dk_b = _split_cols(offs_dk, BLOCK_DK, DK_B)
    row_off = m0.to(tl.int64)

    # Tile-local row offsets (int32) from int64 tile bases.
    q_tile_base = q + batch * stride_qb + head * stride_qh + row_off * stride_qt
    q_tile, do_tile = _load_row_pair(
        q_tile_base, do + batch * stride_dob + head * stride_doh + row_off * stride_dot,
        stride_qt, stride_dot, local_m, seqlen - m0, offs_dk, offs_dv, DK, DV, True, PAD_DK, PAD_DV, UPCAST, False)
    if DK_B > 0:
        q_b = _load_cols_b(q_tile_base, stride_qt, local_m, seqlen - m0, offs_dk_b, True, PAD_DK_B, DK, UPCAST, False)
        dq_b_acc = tl.zeros([BLOCK_M, DK_B], dtype=tl.float32)
    else:
        q_b = q_tile
        dq_b_acc = tl.zeros([16, 16], dtype=tl.float32)  # stand-in, passed through untouched
    stat_off = batch * stride_lb + head * stride_lh + offs_m.to(tl.int64) * stride_lt
    lse2, delta_rows = _load_row_stats(lse + stat_off, delta + stat_off, offs_m, seqlen, True)
    k_base = k + batch * stride_kb + kv_head * stride_kh
    v_base = v + batch * stride_vb + kv_head * stride_vh

    dq_acc = tl.zeros([BLOCK_M, BLOCK_DK], dtype=tl.float32)
    lo, clean_lo, clean_hi, hi = _key_range(m0, seqlen, window, CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for segment in tl.static_range(3):
        start, end = _band_segment(segment, lo, clean_lo, clean_hi, hi)
        dq_acc, dq_b_acc = _dq_tiles(dq_acc, dq_b_acc, q_tile, q_b, do_tile, lse2, delta_rows, k_base, v_base,
                                     stride_kt, stride_vt, offs_m, offs_n, offs_dk, offs_dk_b, offs_dv, start, end,
                                     seqlen, window, qk_scale, DK, DV, PAD_DK, PAD_DV, segment != 1, CAUSAL,
                                     HAS_WINDOW, UPCAST, ROW64, BLOCK_N, DK_B, PAD_DK_B)
    dq_tile = dq + batch * stride_dqb + head * stride_dqh + row_off * stride_dqt
    add_tile = dq_add + batch * stride_ab + head * stride_ah + row_off * stride_at
    _dq_epilogue(dq_acc * scale, dq_tile, add_tile, stride_dqt, stride_at, local_m, seqlen - m0, offs_dk, DK, ADD_DQ)
    if DK_B > 0:
        _dq_epilogue(dq_b_acc * scale, dq_tile, add_tile, stride_dqt, stride_at, local_m, seqlen - m0, offs_dk_b, DK,
                     ADD_DQ)


_dkdv_tuned = _autotuned(_bwd_dkdv_kernel, _DKDV)
_dq_tuned = _autotuned(_bwd_dq_kernel, _DQ)


# ---------------------------------------------------------------------------------- decode
@triton.jit(do_not_specialize=TUNING_ARGS)
def _decode_split_kernel(
    q, k, v, seqlens, o_part, lse_part,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ls,
    num_kv_heads, group, max_len, split_len, qk_scale, SEQ_BUCKET, ROWS_BUCKET,
    DK: tl.constexpr, DV: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_G: tl.constexpr, UPCAST: tl.constexpr, ROW64: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Partial attention of all G query heads of one KV head over one cache chunk (flash-decoding)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_kv_heads
    kv_head = (pid_bh % num_kv_heads).to(tl.int64)
    length = tl.minimum(tl.load(seqlens + batch), max_len)
    batch = batch.to(tl.int64)
    start = pid_s * split_len
    end = tl.minimum(start + split_len, length)

    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    heads = kv_head * group + offs_g
    g_ok = offs_g < group
    q_tile = tl.load(q + batch * stride_qb + heads[:, None] * stride_qh + offs_dk[None, :],
                     mask=g_ok[:, None] & (offs_dk[None, :] < DK), other=0.0)
    if UPCAST:
        q_tile = q_tile.to(tl.float32)
    k_base = k + batch * stride_kb + kv_head * stride_kh
    v_base = v + batch * stride_vb + kv_head * stride_vh

    acc, l_i, m_i = _softmax_init(BLOCK_G, BLOCK_DV)
    PAD_DK: tl.constexpr = BLOCK_DK != DK
    PAD_DV: tl.constexpr = BLOCK_DV != DV
    for n0 in range(start, end, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q_tile, q_tile, k_base, v_base, stride_kt, stride_vt, offs_g,
                                  offs_n, offs_dk, offs_dk, offs_dv, n0, end, 0, qk_scale, DK, DV, PAD_DK, PAD_DV,
                                  True, False, False, UPCAST, ROW64)  # decode: one padded Dk tile

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse2 = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    part_ptrs = (o_part + batch * stride_pb + heads[:, None] * stride_ph + pid_s.to(tl.int64) * stride_ps
                 + offs_dv[None, :])
    tl.store(part_ptrs, out, mask=g_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(lse_part + batch * stride_lb + heads * stride_lh + pid_s.to(tl.int64) * stride_ls, lse2, mask=g_ok)


@triton.jit
def _decode_combine_kernel(
    o_part, lse_part, out, stride_pb, stride_ph, stride_ps, stride_lb, stride_lh, stride_ls,
    stride_ob, stride_oh, num_q_heads, num_splits,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Merge the splits' normalised partials, weighting each by exp(its lse - the max lse)."""
    pid = tl.program_id(0)
    batch = (pid // num_q_heads).to(tl.int64)
    head = (pid % num_q_heads).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_dv = tl.arange(0, BLOCK_DV)
    split_ok = offs_s < num_splits
    lse_all = tl.load(lse_part + batch * stride_lb + head * stride_lh + offs_s * stride_ls, mask=split_ok,
                      other=float("-inf"))
    m = tl.max(lse_all, 0)
    weights = tl.math.exp2(lse_all - tl.where(m == float("-inf"), 0.0, m))  # empty splits (lse -inf) weigh 0
    parts = tl.load(o_part + batch * stride_pb + head * stride_ph + offs_s[:, None] * stride_ps + offs_dv[None, :],
                    mask=split_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    total = tl.sum(weights, 0)
    result = tl.sum(weights[:, None] * parts, 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out + batch * stride_ob + head * stride_oh + offs_dv, result.to(out.dtype.element_ty),
             mask=offs_dv < DV)


_decode_split_tuned = autotune(configs=_DECODE_CONFIGS, key=["BLOCK_DK", "BLOCK_DV", "BLOCK_G"],
                               interpreter=_DECODE_INTERPRETER)(_decode_split_kernel)


# ---------------------------------------------------------------------------------- validation
def _check_dtypes(**tensors: torch.Tensor) -> None:
    first_name, first = next(iter(tensors.items()))
    if first.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{first_name}.dtype={first.dtype} unsupported (use one of {_SUPPORTED_DTYPES})")
    for name, t in tensors.items():
        if t.dtype != first.dtype:
            raise ValueError(f"{name}.dtype={t.dtype} differs from {first_name}.dtype={first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device}, {first_name} on {first.device}")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """BTHD shape checks beyond check_heads; returns G."""
    group = check_heads(q, k, v)
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree in [B, T, Hkv]")
    if q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in [B, T]")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q Dk={q.shape[-1]} and k Dk={k.shape[-1]} differ")
    _check_dtypes(q=q, k=k, v=v)
    return group


def _check_mode(scale: float, window: int | None, causal: bool) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale!r} must be a positive finite float")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} must be an int >= 1 or None")
        if not causal:
            raise ValueError(f"window={window} requires causal=True (a sliding window looks only back)")


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    """Kernels index the head dim with stride 1; any other stride is made contiguous once."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _bthd(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _strider(packing: Packing | None) -> Callable[[torch.Tensor], tuple[int, int, int]]:
    """x's (batch, token, head) strides as the kernels take them. Packed: the batch stride is the token stride,
    so the kernels' `batch * stride_b` with batch = cu_seqlens[s] lands on sequence s's first row (`_sequence`)."""
    if packing is None:
        return _bthd
    return lambda x: (x.stride(1), x.stride(1), x.stride(2))


def _launch_grid(tiles: int, heads: int, batch: int, packing: Packing | None) -> tuple[int, ...]:
    """Dense: (tiles, B * heads), as before varlen; packed: (tiles, heads, N)."""
    return (tiles, batch * heads) if packing is None else (tiles, heads, packing.num_seqs)


def _check_packing(q: torch.Tensor, packing: Packing | None, variant: str) -> None:
    """A packed launch: v2 only, the packing of q [1, total_T, ...], sequences within CUDA's grid axis 2."""
    if packing is None:
        return
    refuse_v1(packing, variant=variant)
    packing.check(q.shape[1], q.shape[0], q.device)
    packing.check_grid("flash")


def _needs_row64(seqlen: int, *tensors: torch.Tensor) -> bool:
    """Whether row * stride_t can pass int32 inside one (batch, head) plane of any of `tensors`."""
    return any(seqlen * t.stride(1) + t.shape[-1] >= 2**31 for t in tensors)


def _dk_tiles(dk: int, variant: str) -> dict:
    """BLOCK_DK and DK_B: v2 runs a non-power-of-two Dk as two exact chunks (192 = 128 + 64), v1 (and
    any power-of-two Dk) as one tile padded to the next power of two."""
    check_variant("variant", variant)
    if variant == "v2" and dk > 16 and dk & (dk - 1):
        block_dk, dk_b = split_head_dim(dk)
        return {"BLOCK_DK": block_dk, "DK_B": dk_b}
    return {"BLOCK_DK": max(16, next_pow2(dk)), "DK_B": 0}


def _launch_args(tiles: TileConfig | None) -> dict:
    if tiles is None:
        return {}
    return {"BLOCK_M": tiles.block_m, "BLOCK_N": tiles.block_n, "num_warps": tiles.num_warps,
            "num_stages": tiles.num_stages}


# ---------------------------------------------------------------------------------- public API
def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None = None,
    causal: bool = True, *, tiles: TileConfig | None = None, out: torch.Tensor | None = None,
    gates: torch.Tensor | None = None, gate_index: int = 0, accumulate: bool = False, variant: str = "v2",
    packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """o [B,T,Hq,Dv] (q.dtype) and lse [B,T,Hq] (float32, natural log) of scaled-dot-product attention.

    variant "v2" (default): a non-power-of-two Dk as two exact column chunks; "v1": one padded tile.

    causal: query t sees keys <= t; window=w further limits it to keys >= t-w+1. causal=False is full
    attention. `tiles` pins one launch config (tests); None autotunes.

    Fused gated epilogue (no-grad NSA forward, so no branch output is materialised): with `out`
    [B,T,Hq,Dv] and `gates` [B,T,Hq,3] the kernel writes out = (out if accumulate else 0) +
    gates[..., gate_index] * o, in fp32 then out's dtype, and returns (out, lse).

    packing (docs/varlen.md; v2 only): a packed batch, every tensor [1, total_T, ...]; each sequence is
    attended alone, positions (causality, window) local to it. `flash_attention` builds it from cu_seqlens.
    """
    group = _check_qkv(q, k, v)
    _check_mode(scale, window, causal)
    batch, seqlen, num_q_heads, dk = q.shape
    dv = v.shape[-1]
    dk_tiles = _dk_tiles(dk, variant)
    _check_packing(q, packing, variant)
    check_gated(q, (batch, seqlen, num_q_heads, dv), out, gates, gate_index, accumulate)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    gated = out is not None
    o = out if gated else torch.empty(batch, seqlen, num_q_heads, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, seqlen, num_q_heads, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    # Ungated launches get lse as a never-read stand-in for `gates` (GATED=False drops every use).
    gate_column = gates[..., gate_index] if gated else lse
    strides = _strider(packing)
    gate_strides = strides(gates) if gated else (0, 0, 0)
    rows = seqlen if packing is None else packing.max_len  # T, or the longest packed sequence
    num_seqs = batch if packing is None else packing.num_seqs
    args = (
        q, k, v, o, lse, gate_column, None if packing is None else packing.cu, *strides(q), *strides(k),
        *strides(v), *strides(o), *strides(lse), *gate_strides,
        rows, num_q_heads, group, rows if window is None else min(window, rows), float(scale) * LOG2E,
        *tuning_buckets(rows, num_seqs * num_q_heads).values(),
    )
    consts = dict(DK=dk, DV=dv, **dk_tiles, BLOCK_DV=max(16, next_pow2(dv)),
                  CAUSAL=bool(causal), HAS_WINDOW=window is not None,
                  UPCAST=interpreting() and q.dtype == torch.bfloat16, ROW64=_needs_row64(rows, q, k, v),
                  GATED=gated, ACCUMULATE=gated and accumulate, VARLEN=packing is not None)

    def grid(meta):
        return _launch_grid(triton.cdiv(rows, meta["BLOCK_M"]), num_q_heads, batch, packing)

    if tiles is not None:
        kernel = _fwd_kernel
    else:
        kernel = _fwd_tuned_accumulate if consts["ACCUMULATE"] else _fwd_tuned
    kernel[grid](*args, **consts, **_launch_args(tiles))
    return o, lse


def attention_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, do: torch.Tensor,
    scale: float, window: int | None = None, causal: bool = True, *,
    tiles_dkdv: TileConfig | None = None, tiles_dq: TileConfig | None = None,
    dq_out: torch.Tensor | None = None, dq_add: torch.Tensor | None = None, variant: str = "v2",
    packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the input dtypes; dk/dv are summed over the G query heads of each KV head.
    variant and packing (a packed batch) as in `attention_fwd`.

    dq_out / dq_add (`_common.check_dq_chain`): dq is written to dq_out as this attention's dq plus
    dq_add (fp32), so NSA's window branch finishes the sum of its three branches' dq in its epilogue.
    """
    group = _check_qkv(q, k, v)
    _check_mode(scale, window, causal)
    expected_o = (*q.shape[:3], v.shape[-1])
    for name, t in (("o", o), ("do", do)):
        if tuple(t.shape) != expected_o:
            raise ValueError(f"{name} shape {tuple(t.shape)} must be {expected_o}")
    if tuple(lse.shape) != tuple(q.shape[:3]) or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 {tuple(q.shape[:3])}, got {lse.dtype} {tuple(lse.shape)}")
    q, k, v, o, do = (_unit_last(t) for t in (q, k, v, o, do))
    batch, seqlen, num_q_heads, dk = q.shape
    dk_tiles = _dk_tiles(dk, variant)
    _check_packing(q, packing, variant)
    rows = seqlen if packing is None else packing.max_len  # T, or the longest packed sequence
    num_seqs = batch if packing is None else packing.num_seqs
    cu, strides = None if packing is None else packing.cu, _strider(packing)
    num_kv_heads, dv = k.shape[2], v.shape[-1]
    dq = check_dq_chain(q, dq_out, dq_add)
    if dq is None:
        dq = torch.empty_like(q)
    if dq_add is not None and same_memory(dq_add, dq):
        raise ValueError("dq_add must not be dq_out here (the dq autotuner reruns the kernel)")
    dk_out = torch.empty_like(k)
    dv_out = torch.empty_like(v)
    if q.numel() == 0 or v.numel() == 0:
        if dq_add is not None:
            return dq.copy_(dq_add), dk_out.zero_(), dv_out.zero_()
        return dq.zero_(), dk_out.zero_(), dv_out.zero_()
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    block_dv = max(16, next_pow2(dv))
    prep_rows = max(16, 4096 // block_dv)  # o and do tiles stay at 64 fp32 registers per thread
    _bwd_preprocess_kernel[_launch_grid(triton.cdiv(rows, prep_rows), num_q_heads, batch, packing)](
        o, do, delta, cu, *strides(o), *strides(do), *strides(lse), rows, num_q_heads,
        DV=dv, BLOCK_DV=block_dv, BLOCK_M=prep_rows, VARLEN=packing is not None,
    )
    win = rows if window is None else min(window, rows)  # w >= T is plain causal; keeps int32 bounds safe
    qk_scale = float(scale) * LOG2E
    consts = dict(DK=dk, DV=dv, **dk_tiles, BLOCK_DV=block_dv, CAUSAL=bool(causal),
                  HAS_WINDOW=window is not None, UPCAST=interpreting() and q.dtype == torch.bfloat16,
                  ROW64=_needs_row64(rows, q, k, v, do), VARLEN=packing is not None)
    common = (*strides(q), *strides(k), *strides(v), *strides(do), *strides(lse))
    buckets = tuning_buckets(rows, num_seqs * num_q_heads).values()

    def grid_dkdv(meta):
        return _launch_grid(triton.cdiv(rows, meta["BLOCK_N"]), num_kv_heads, batch, packing)

    kernel = _dkdv_tuned if tiles_dkdv is None else _bwd_dkdv_kernel
    kernel[grid_dkdv](
        q, k, v, do, lse, delta, dk_out, dv_out, cu, *common, *strides(dk_out), *strides(dv_out),
        rows, num_kv_heads, group, win, qk_scale, float(scale), *buckets, **consts, **_launch_args(tiles_dkdv),
    )

    def grid_dq(meta):
        return _launch_grid(triton.cdiv(rows, meta["BLOCK_M"]), num_q_heads, batch, packing)

    kernel = _dq_tuned if tiles_dq is None else _bwd_dq_kernel
    add = dq_add if dq_add is not None else dq
    kernel[grid_dq](
        q, k, v, do, lse, delta, dq, add, cu, *common, *strides(dq), *strides(add),
        rows, num_q_heads, group, win, qk_scale, float(scale), *buckets, **consts, ADD_DQ=dq_add is not None,
        **_launch_args(tiles_dq),
    )
    return dq, dk_out, dv_out


class _FlashAttention(torch.autograd.Function):
    """Differentiable wrapper: the forward keeps (o, lse) so the backward never recomputes softmax stats."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, window: int | None, packing: Packing | None):
        o, lse = attention_fwd(q, k, v, scale, window, causal, packing=packing)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.window, ctx.packing = causal, scale, window, packing
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_bwd(q, k, v, o, lse, do.contiguous(), ctx.scale, ctx.window, ctx.causal,
                                   packing=ctx.packing)
        return dq, dk, dv, None, None, None, None


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None,
    window: int | None = None, *, cu_seqlens: torch.Tensor | Packing | None = None, max_seqlen: int | None = None,
) -> torch.Tensor:
    """FlashAttention-2 over BTHD tensors, differentiable in q, k, v; scale defaults to Dk**-0.5.

    cu_seqlens (int32 [N+1], docs/varlen.md, or a `Packing`): a packed batch [1, total_T, ...] of sequences
    attended alone (`attention_fwd`), as flash_attn_varlen_func with cu_seqlens_q = cu_seqlens_k; read once here
    for forward and backward. max_seqlen: an optional hint, the longest length; with a cu_seqlens on the GPU it
    is trusted and spares reading the lengths back (`Packing.of`), as flash-attn trusts its max_seqlen.
    """
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, Hq, Dk], got shape {tuple(q.shape)}")
    if cu_seqlens is None:
        if max_seqlen is not None:
            raise ValueError("max_seqlen is a hint for cu_seqlens, given without it")
        packing = None
    else:
        packing = Packing.of(cu_seqlens, q.shape[1], q.shape[0], q.device, max_seqlen=max_seqlen)
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _FlashAttention.apply(q, k, v, bool(causal), sc, window, packing)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_NUM_SMS


def _split_plan(programs: int, max_len: int, num_sms: int, num_splits: int | None) -> tuple[int, int]:
    """(splits, tokens per split): enough splits that `programs` x splits fills the SMs once."""
    if num_splits is None:
        num_splits = triton.cdiv(num_sms, max(1, programs))
        num_splits = min(num_splits, triton.cdiv(max_len, _MIN_SPLIT_TOKENS), _MAX_DECODE_SPLITS)
    elif num_splits < 1:
        raise ValueError(f"num_splits={num_splits} must be >= 1")
    num_splits = max(1, min(num_splits, max_len))
    unit = 16 if small_sizes() else 128  # split edges on tile edges: only each split's last tile is partial
    split_len = triton.cdiv(triton.cdiv(max_len, num_splits), unit) * unit
    return triton.cdiv(max_len, split_len), split_len


def flash_attention_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
    scale: float | None = None, *, num_splits: int | None = None,
) -> torch.Tensor:
    """One query token per sequence against its cache: o [B,Hq,Dv] = attention over k_cache[b, :L].

    Split-KV: partials over cache chunks, merged by lse. cache_seqlens values are checked only for
    CPU tensors; on a GPU that would cost a device sync per step (lengths are clamped to Tmax there).
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, Dk], got shape {tuple(q.shape)}")
    group = check_heads(q[:, None], k_cache, v_cache)
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must agree in [B, Tmax, Hkv]"
        )
    if q.shape[0] != k_cache.shape[0] or q.shape[-1] != k_cache.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} does not match k_cache {tuple(k_cache.shape)} in B or Dk")
    _check_dtypes(q=q, k_cache=k_cache, v_cache=v_cache)
    batch, num_q_heads, dk = q.shape
    max_len, num_kv_heads, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[-1]
    if cache_seqlens.shape != (batch,) or cache_seqlens.dtype != torch.int32:
        raise ValueError(
            f"cache_seqlens must be int32 [{batch}], got {cache_seqlens.dtype} {tuple(cache_seqlens.shape)}"
        )
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device}, q on {q.device}")
    if max_len < 1:
        raise ValueError(f"k_cache Tmax={max_len} must be >= 1")
    if cache_seqlens.device.type == "cpu" and batch > 0:
        low, high = int(cache_seqlens.min()), int(cache_seqlens.max())
        if low < 1 or high > max_len:
            raise ValueError(f"cache_seqlens values must lie in 1..{max_len}, got {low}..{high}")
    sc = dk**-0.5 if scale is None else float(scale)
    _check_mode(sc, None, True)
    q, k_cache, v_cache = _unit_last(q), _unit_last(k_cache), _unit_last(v_cache)
    out = torch.empty(batch, num_q_heads, dv, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    splits, split_len = _split_plan(batch * num_kv_heads, max_len, _num_sms(q.device), num_splits)
    o_part = torch.empty(batch, num_q_heads, splits, dv, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(batch, num_q_heads, splits, dtype=torch.float32, device=q.device)
    block_dk, block_dv = max(16, next_pow2(dk)), max(16, next_pow2(dv))
    _decode_split_tuned[(splits, batch * num_kv_heads)](
        q, k_cache, v_cache, cache_seqlens, o_part, lse_part,
        q.stride(0), q.stride(1), *_bthd(k_cache), *_bthd(v_cache), *o_part.stride()[:3], *lse_part.stride(),
        num_kv_heads, group, max_len, split_len, sc * LOG2E, **tuning_buckets(max_len, batch * num_q_heads),
        DK=dk, DV=dv, BLOCK_DK=block_dk, BLOCK_DV=block_dv, BLOCK_G=max(16, next_pow2(group)),
        UPCAST=interpreting() and q.dtype == torch.bfloat16, ROW64=_needs_row64(max_len, k_cache, v_cache),
    )
    _decode_combine_kernel[(batch * num_q_heads,)](
        o_part, lse_part, out, *o_part.stride()[:3], *lse_part.stride(), out.stride(0), out.stride(1),
        num_q_heads, splits, DV=dv, BLOCK_DV=block_dv, BLOCK_S=max(16, next_pow2(splits)), num_warps=8,
    )
    return out
