"""NSA's compressed branch in Triton: mean compression, compressed attention, block scoring + top-n.

Everything here is group-centric: one program owns a tile of query positions times all G query
heads of one KV group (rows = positions * G_PAD), so each compressed K/V tile is loaded once per
group. No function builds a [T, Tc] or [T, Nslc] tensor: selection scores live in registers, tile
by tile, next to a running top-n per query, and only `block_idx` reaches memory.

Queries that see no compressed block (t < l - 1) get o = 0 and lse = +inf. +inf (not the
mathematically "empty" -inf) is chosen so that every consumer computing p = exp(s - lse) gets
exactly 0 for such a row without special cases: the backward and the block scoring both do.

Packed batches (docs/varlen.md): every wrapper takes a `Packing` (kernels/packing.py: cu_seqlens read once)
with tensors [1, total_T, H, D] and k_cmp/v_cmp [1, sum_s Tc_s, Hkv, D]. The grid's batch axis becomes the sequence
s; with the constexpr VARLEN a program loads its sequence's token offset and length from cu_seqlens
and its compressed offset and count from `cmp_cu` (varlen offsets of the compressed blocks), returns
at once when its tile starts past them, and otherwise runs the dense code with T = L_s, Tc = Tc_s
and every pointer rebased (`_sequence`). Positions and block numbers are local to the sequence.
Without cu_seqlens (VARLEN=False) the kernels compile and launch as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    TUNING_ARGS, autotune, check_gated, check_heads, check_kernel_config, interpreter_config, interpreting, next_pow2,
    small_sizes, tuning_buckets,
)
from ._common import check_dq_chain, split_head_dim as _split_head_dim
from .config import NSAConfig
from .packing import Packing, num_cmp as _num_cmp, refuse_v1
from .variants import check_variant

__all__ = ["compress_fwd", "compress_bwd", "compressed_fwd", "compressed_lse", "compressed_bwd", "select_blocks"]

_LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------ launch configurations
def _configs(tiles: tuple[tuple[int, int, int], ...]) -> list[triton.Config]:
    """(BLOCK_M rows = positions x G_PAD, BLOCK_N compressed blocks, warps) -> the GPU's configs."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=2) for m, n, w in tiles]


# What every tuned kernel here runs under the CPU interpreter (kernels/overrides.py can change that).
_INTERPRETER = triton.Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=1)


# Tiles that compile for sm_90 without register spills both at the paper shape (G=16, Dk=192,
# Dv=128, bf16) and at G=1, Dk=Dv=64 (fp16), checked with ptxas/cuobjdump from Triton's wheel.
# Larger tiles spill there (q, do and fp32 accumulators of 192 + 128 columns stay in registers).
# Exception: the forward's (32, 16, 4) spills 8 B with wide heads and an output; `_prune_fwd_rows`
# drops it there (it is the cheapest tile for narrow heads and for select_blocks' lse-only pass).
_FWD_TILES = ((64, 32, 4), (64, 16, 4), (64, 16, 8), (128, 16, 8), (32, 64, 8), (32, 32, 8), (32, 16, 4))
_DQ_TILES = ((32, 16, 8), (32, 32, 8), (32, 64, 8))
# v2: tiles of 4-16 positions, so the visible k_cmp/v_cmp pass L2 2-8x less often per query.
# Compiled for sm_90 at the paper shape and at G=1, 64/64 without spills (256x32 and 128-row 4-warp
# forward tiles spill at the paper shape and are left out).
_FWD_TILES_V2 = (*_FWD_TILES, (128, 32, 8), (128, 64, 8), (256, 16, 8), (64, 64, 8), (64, 64, 4))
_DQ_TILES_V2 = (*_DQ_TILES, (64, 16, 8), (64, 32, 8), (64, 64, 8), (128, 16, 8), (128, 32, 8), (128, 64, 8),
                (64, 32, 4))
_DKV_TILES = ((32, 16, 4), (64, 16, 8))


_WIDE_HEADS = 256  # DK_A + DK_B + BLOCK_DV beyond this (paper: 128 + 64 + 128) is "wide"


def _prune_rows(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """A tile holds whole positions (all G_PAD heads): drop BLOCK_M < G_PAD; fall back to BLOCK_M = G_PAD."""
    g_pad = kwargs.get("G_PAD", named_args.get("G_PAD", 1))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] >= g_pad]
    return kept or [triton.Config({"BLOCK_M": g_pad, "BLOCK_N": 16}, num_warps=8, num_stages=2)]


def _prune_fwd_rows(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """`_prune_rows`, and with wide heads and an output (q of 192 columns plus a 128-column fp32
    accumulator) no 4-warp 32-row tile: ptxas builds it at 128 registers and spills on sm_90,
    while the 8-warp 32-row tiles and the 4-warp 64-row tiles do not."""
    kept = _prune_rows(configs, named_args, **kwargs)
    wide = kwargs.get("DK_A", 0) + kwargs.get("DK_B", 0) + kwargs.get("BLOCK_DV", 0) > _WIDE_HEADS
    if not (wide and kwargs.get("WITH_OUTPUT", True)):
        return kept
    return [c for c in kept if not (c.kwargs["BLOCK_M"] <= 32 and c.num_warps < 8)] or kept


def _prune_dq_rows(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """`_prune_rows`, and with wide heads at a small group (G_PAD < 16) no 4-warp tile: the v2 64x32
    4-warp dq tile spills 16 B on sm_90 at G = 4 with Dk=192, Dv=128 (the compile check's G=4 case),
    while the 8-warp tiles do not; the packed (VARLEN) build there drops the 128x64 tile too."""
    kept = _prune_rows(configs, named_args, **kwargs)
    wide = kwargs.get("DK_A", 0) + kwargs.get("DK_B", 0) + kwargs.get("BLOCK_DV", 0) > _WIDE_HEADS
    if not (wide and kwargs.get("G_PAD", named_args.get("G_PAD", 16)) < 16):
        return kept
    kept = [c for c in kept if c.num_warps >= 8] or kept
    if kwargs.get("VARLEN"):  # the packed build's sequence offsets: 128x64 (252 regs dense) spills 88 B at G=4
        kept = [c for c in kept if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) != (128, 64)] or kept
    return kept


# ------------------------------------------------------------------ validation
def _check_block_params(block_cmp: int, stride_cmp: int) -> None:
    for name, value in (("block_cmp", block_cmp), ("stride_cmp", stride_cmp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if block_cmp % stride_cmp:
        raise ValueError(f"stride_cmp={stride_cmp} must divide block_cmp={block_cmp}")


def _check_tensor(name: str, x: torch.Tensor, dims: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != dims:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a {dims}-d tensor, got {shape}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name} dtype {x.dtype} unsupported (float16, bfloat16 or float32)")


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale!r}")
    return float(scale)


def _check_attention_inputs(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, cfg: NSAConfig) -> int:
    """Shapes, dtypes and kernel limits shared by the compressed-attention entry points; returns G."""
    if not isinstance(cfg, NSAConfig):
        raise ValueError(f"cfg must be an NSAConfig, got {type(cfg).__name__}")
    check_kernel_config(cfg)
    for name, x in (("q", q), ("k_cmp", k_cmp), ("v_cmp", v_cmp)):
        _check_tensor(name, x, 4)
    group = check_heads(q, k_cmp, v_cmp)
    if not (q.dtype == k_cmp.dtype == v_cmp.dtype):
        raise ValueError(f"q, k_cmp, v_cmp dtypes differ: {q.dtype}, {k_cmp.dtype}, {v_cmp.dtype}")
    if not (q.device == k_cmp.device == v_cmp.device):
        raise ValueError("q, k_cmp, v_cmp must be on one device")
    if k_cmp.shape[:3] != v_cmp.shape[:3]:
        raise ValueError(f"k_cmp {tuple(k_cmp.shape)} and v_cmp {tuple(v_cmp.shape)} disagree on [B, Tc, Hkv]")
    if q.shape[0] != k_cmp.shape[0]:
        raise ValueError(f"batch of q ({q.shape[0]}) and k_cmp ({k_cmp.shape[0]}) differ")
    if q.shape[-1] != k_cmp.shape[-1]:
        raise ValueError(f"Dk of q ({q.shape[-1]}) and k_cmp ({k_cmp.shape[-1]}) differ")
    return group


def _check_packed_attention(packing: Packing | None, q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig,
                            **variants: str) -> None:
    """The packed batch of an attention wrapper (None: dense): v2 variants only, q [1, total_T, ...],
    k_cmp holding sum_s Tc_s blocks."""
    if packing is None:
        return
    refuse_v1(packing, **variants)
    _check_packed(packing, q.shape[1], q.shape[0], q.device, k_cmp.shape[2])
    _check_packed_cmp("k_cmp", k_cmp, packing, cfg.block_cmp, cfg.stride_cmp)


def _check_like(name: str, x: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {got}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {x.dtype}")


# ------------------------------------------------------------------ packed batches (cu_seqlens)
def _check_packed(packing: Packing, total: int, batch: int, device: torch.device, heads: int) -> None:
    """The packing of tensors [batch, total, heads, ...]; sequences x heads share grid axis 1."""
    packing.check(total, batch, device)
    packing.check_grid("compressed", heads)


def _check_packed_cmp(name: str, x: torch.Tensor, packing: Packing, block_cmp: int, stride_cmp: int) -> None:
    total_cmp = packing.num_cmp_blocks(block_cmp, stride_cmp)
    if x.shape[1] != total_cmp:
        raise ValueError(f"{name} holds {x.shape[1]} compressed blocks but cu_seqlens' sequences have "
                         f"{total_cmp} (sum of Tc per sequence, docs/varlen.md)")


def _offsets(packing: Packing | None, block_cmp: int, stride_cmp: int) -> tuple[torch.Tensor | None, ...]:
    """(CU, CMP_CU) kernel arguments: None on the dense path (VARLEN=False never reads them)."""
    return (None, None) if packing is None else (packing.cu, packing.cmp_offsets(block_cmp, stride_cmp))


def _extents(packing: Packing | None, batch: int, seqlen: int, tc: int, block_cmp: int,
             stride_cmp: int) -> tuple[int, int, int]:
    """(grid rows, tokens, compressed blocks) the grids span: B, T, Tc dense; N, the longest sequence and the
    most blocks of one sequence packed (each program loads its own sequence's)."""
    if packing is None:
        return batch, seqlen, tc
    return packing.num_seqs, packing.max_len, packing.max_cmp_blocks(block_cmp, stride_cmp)


@triton.jit
def _sequence(CU, CMP_CU, s, T, Tc, VARLEN: tl.constexpr):
    """(token base, length, compressed base, compressed count) of grid row s (int64 bases).

    Dense: batch row s of [B, T] / [B, Tc] (bases s*T, s*Tc). VARLEN: sequence s of a packed batch,
    from cu_seqlens and the compressed offsets (4 scalar loads).
    """
    if VARLEN:
        start = tl.load(CU + s)
        cmp_start = tl.load(CMP_CU + s)
        seqlen = tl.load(CU + s + 1) - start
        num_cmp = tl.load(CMP_CU + s + 1) - cmp_start
        return start.to(tl.int64), seqlen, cmp_start.to(tl.int64), num_cmp
    else:
        return s * T, T, s * Tc, Tc


# ------------------------------------------------------------------ section 1: mean compression
@triton.jit
def _batch_head(H):
    """(b as int64, head) of this program: grid axis 1 runs over B * H."""
    pid_bh = tl.program_id(1)
    return (pid_bh // H).to(tl.int64), pid_bh % H


@triton.jit
def _bh_tile(H, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """(b, h, token offsets, column offsets) of a program of the (tokens, B*H, columns) grid."""
    b, h = _batch_head(H)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    return b, h, offs, offs_d


@triton.jit
def _token_ptrs(X, base, tok, h, H, offs_d, D: tl.constexpr):
    """Pointers to x[base + tok, h, offs_d] of a contiguous [*, H, D] tensor (base int64: b*N dense)."""
    return X + ((base + tok) * H + h)[:, None] * D + offs_d[None, :]


@triton.jit
def _compress_fwd_kernel(
    X, XC, T, Tc, H, CU, CMP_CU,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    BLOCK_C: tl.constexpr, VARLEN: tl.constexpr,
):
    b, h, offs_c, offs_d = _bh_tile(H, BLOCK_C, BLOCK_D)
    tok0, T, cmp0, Tc = _sequence(CU, CMP_CU, b, T, Tc, VARLEN)
    if VARLEN:
        if tl.program_id(0) * BLOCK_C >= Tc:  # past this sequence's blocks
            return
    c_ok = offs_c < Tc
    mask = c_ok[:, None] & (offs_d < D)[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
    for r in range(BLOCK_CMP):
        tok = offs_c * STRIDE_CMP + r
        acc += tl.load(_token_ptrs(X, tok0, tok, h, H, offs_d, D), mask=mask, other=0.0).to(tl.float32)
    out = acc * (1.0 / BLOCK_CMP)
    tl.store(_token_ptrs(XC, cmp0, offs_c, h, H, offs_d, D), out.to(XC.dtype.element_ty), mask=mask)


@triton.jit
def _compress_bwd_kernel(
    DXC, DX, T, Tc, H, CU, CMP_CU,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    BLOCK_T: tl.constexpr, VARLEN: tl.constexpr,
):
    """dx[t] = sum over the blocks i containing t of dx_cmp[i] / l; those are i = t//d - m, m < l/d."""
    b, h, offs_t, offs_d = _bh_tile(H, BLOCK_T, BLOCK_D)
    tok0, T, cmp0, Tc = _sequence(CU, CMP_CU, b, T, Tc, VARLEN)
    if VARLEN:
        if tl.program_id(0) * BLOCK_T >= T:  # past this sequence's tokens
            return
    t_ok = offs_t < T
    d_ok = (offs_d < D)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for m in range(BLOCK_CMP // STRIDE_CMP):
        blk = offs_t // STRIDE_CMP - m
        ok = t_ok & (blk >= 0) & (blk < Tc)
        acc += tl.load(_token_ptrs(DXC, cmp0, blk, h, H, offs_d, D), mask=ok[:, None] & d_ok, other=0.0).to(tl.float32)
    out = acc * (1.0 / BLOCK_CMP)
    tl.store(_token_ptrs(DX, tok0, offs_t, h, H, offs_d, D), out.to(DX.dtype.element_ty), mask=t_ok[:, None] & d_ok)


def compress_fwd(x: torch.Tensor, block_cmp: int, stride_cmp: int, packing: Packing | None = None) -> torch.Tensor:
    """Mean of x [B,T,H,D] over each block [i*d, i*d + l): [B,Tc,H,D] in x's dtype (fp32 sums).

    Packed (a `Packing`, x [1, total_T, H, D]): each sequence's own blocks, concatenated:
    [1, sum_s Tc_s, H, D] (reference.compress_kv's packed layout).
    """
    _check_tensor("x", x, 4)
    _check_block_params(block_cmp, stride_cmp)
    b, t, h, d = x.shape
    if packing is not None:
        _check_packed(packing, t, b, x.device, h)
    tc = _num_cmp(t, block_cmp, stride_cmp) if packing is None else packing.num_cmp_blocks(block_cmp, stride_cmp)
    out = x.new_empty(b, tc, h, d)
    if tc == 0 or b * h * d == 0:
        return out
    x = x.contiguous()
    block_c = 16 if small_sizes() else 32
    block_d = min(next_pow2(d), 64)
    rows, _, tiles = _extents(packing, b, t, tc, block_cmp, stride_cmp)
    grid = (triton.cdiv(tiles, block_c), rows * h, triton.cdiv(d, block_d))
    _compress_fwd_kernel[grid](
        x, out, t, tc, h, *_offsets(packing, block_cmp, stride_cmp), D=d, BLOCK_D=block_d, BLOCK_CMP=block_cmp,
        STRIDE_CMP=stride_cmp, BLOCK_C=block_c, VARLEN=packing is not None, num_warps=4,
    )
    return out


def compress_bwd(dx_cmp: torch.Tensor, seqlen: int, block_cmp: int, stride_cmp: int,
                 packing: Packing | None = None) -> torch.Tensor:
    """Gradient of compress_fwd: dx [B,seqlen,H,D], each token summing dx_cmp / l over its blocks.

    Packed (a `Packing`): dx_cmp [1, sum_s Tc_s, H, D], seqlen = total_T, dx [1, total_T, H, D].
    """
    _check_tensor("dx_cmp", dx_cmp, 4)
    _check_block_params(block_cmp, stride_cmp)
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 0:
        raise ValueError(f"seqlen must be a non-negative int, got {seqlen!r}")
    b, tc, h, d = dx_cmp.shape
    if packing is None:
        expected = _num_cmp(seqlen, block_cmp, stride_cmp)
        if tc != expected:
            raise ValueError(f"dx_cmp has Tc={tc} blocks but seqlen={seqlen} gives {expected}")
    else:
        _check_packed(packing, seqlen, b, dx_cmp.device, h)
        _check_packed_cmp("dx_cmp", dx_cmp, packing, block_cmp, stride_cmp)
    if tc == 0 or b * h * d == 0:
        return dx_cmp.new_zeros(b, seqlen, h, d)
    dx = dx_cmp.new_empty(b, seqlen, h, d)  # the kernel writes every token (0 past the last block)
    dx_cmp = dx_cmp.contiguous()
    block_t, block_d = 32, min(next_pow2(d), 64)
    rows, tiles, _ = _extents(packing, b, seqlen, tc, block_cmp, stride_cmp)
    grid = (triton.cdiv(tiles, block_t), rows * h, triton.cdiv(d, block_d))
    _compress_bwd_kernel[grid](
        dx_cmp, dx, seqlen, tc, h, *_offsets(packing, block_cmp, stride_cmp), D=d, BLOCK_D=block_d,
        BLOCK_CMP=block_cmp, STRIDE_CMP=stride_cmp, BLOCK_T=block_t, VARLEN=packing is not None, num_warps=4,
    )
    return dx


# ------------------------------------------------------------------ shared tile helpers
@triton.jit
def _num_visible(t, Tc, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr):
    """Compressed blocks seen by position t: i with i*d + l - 1 <= t (t may be negative-safe)."""
    n = tl.maximum(t - BLOCK_CMP + 1 + STRIDE_CMP, 0) // STRIDE_CMP
    return tl.minimum(n, Tc)


@triton.jit
def _query_tile(T, Tc, Hkv, CU, CMP_CU, BLOCK_T: tl.constexpr, VARLEN: tl.constexpr):
    """(token base, T, compressed base, Tc, hkv, first and last position) of this program's BLOCK_T
    positions of one KV group; T and Tc are its sequence's (`_sequence`), the bases int64.

    Programs are issued last tile first: later positions see more blocks, so they start early.
    A VARLEN caller returns when t_first >= T (a tile past its sequence).
    """
    pid_t = tl.num_programs(0) - 1 - tl.program_id(0)
    b, hkv = _batch_head(Hkv)
    tok0, T, cmp0, Tc = _sequence(CU, CMP_CU, b, T, Tc, VARLEN)
    t_first = pid_t * BLOCK_T
    return tok0, T, cmp0, Tc, hkv, t_first, tl.minimum(t_first + BLOCK_T, T) - 1


@triton.jit
def _group_rows(t0, tok0, hkv, T, Hkv, G: tl.constexpr, G_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Rows of a group-centric tile from position t0: (position, head-in-group) pairs, position-major.

    Returns each row's position, its int64 row index into [*, Hq] (the sequence starts at token
    tok0: b*T dense), and whether it is real.
    """
    rows = tl.arange(0, BLOCK_M)
    pos = t0 + rows // G_PAD
    grp = rows % G_PAD
    row_ok = (pos < T) & (grp < G)
    return pos, (tok0 + pos) * (Hkv * G) + hkv * G + grp, row_ok


@triton.jit
def _kv_tile(n0, cmp0, hkv, Tc, Hkv, BLOCK_N: tl.constexpr):
    """Compressed blocks [n0, n0 + BLOCK_N) of KV head hkv: (offsets, which exist, int64 rows into
    [*, Hkv]; the sequence's blocks start at cmp0: b*Tc dense)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    return offs_n, offs_n < Tc, (cmp0 + offs_n) * Hkv + hkv


@triton.jit
def _sees(pos, blk, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr):
    """Whether position pos sees compressed block blk (its last token blk*d + l - 1 <= pos); broadcasts."""
    return blk * STRIDE_CMP + BLOCK_CMP - 1 <= pos


@triton.jit
def _block_ranges(t_first, t_last, Tc, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_N: tl.constexpr):
    """(end of the whole BLOCK_N tiles every row of [t_first, t_last] sees, end of what any row sees)."""
    n_all = _num_visible(t_first, Tc, BLOCK_CMP, STRIDE_CMP)
    n_any = _num_visible(t_last, Tc, BLOCK_CMP, STRIDE_CMP)
    return (n_all // BLOCK_N) * BLOCK_N, n_any


@triton.jit
def _load_cols(X, row, row_ok, D: tl.constexpr, COL0: tl.constexpr, WIDTH: tl.constexpr, UPCAST: tl.constexpr):
    """Columns [COL0, COL0 + WIDTH) of rows `row` (int64) of a row-major [*, D] tensor, zero-filled."""
    cols = COL0 + tl.arange(0, WIDTH)
    x = tl.load(X + row[:, None] * D + cols[None, :], mask=row_ok[:, None] & (cols < D)[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_cols(X, row, row_ok, x, D: tl.constexpr, COL0: tl.constexpr, WIDTH: tl.constexpr):
    cols = COL0 + tl.arange(0, WIDTH)
    tl.store(X + row[:, None] * D + cols[None, :], x.to(X.dtype.element_ty), mask=row_ok[:, None] & (cols < D)[None, :])


@triton.jit
def _load_split(X, row, row_ok, D: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr, UPCAST: tl.constexpr):
    """Rows of a [*, D] tensor as the two column chunks of `_split_head_dim`."""
    return _load_cols(X, row, row_ok, D, 0, D_A, UPCAST), _load_cols(X, row, row_ok, D, D_A, D_B, UPCAST)


@triton.jit
def _store_split(X, row, row_ok, x_a, x_b, D: tl.constexpr, D_A: tl.constexpr, D_B: tl.constexpr):
    """Inverse of `_load_split`, casting to X's dtype."""
    _store_cols(X, row, row_ok, x_a, D, 0, D_A)
    _store_cols(X, row, row_ok, x_b, D, D_A, D_B)


@triton.jit
def _dot_t(x_a, x_b, y_a, y_b):
    """x @ y^T for x and y split into the same two column chunks."""
    return tl.dot(x_a, tl.trans(y_a)) + tl.dot(x_b, tl.trans(y_b))


@triton.jit
def _load_lse2(LSE, row, row_ok):
    """lse in the exp2 domain; +inf for padding rows, so their exp2(s - lse2) is 0."""
    return tl.load(LSE + row, mask=row_ok, other=float("inf")) * 1.4426950408889634


@triton.jit
def _load_grad_rows(DO, LSE, DELTA, row, row_ok, DV: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    """What the backward needs per query row besides q: (do, lse2, delta)."""
    do = _load_cols(DO, row, row_ok, DV, 0, BLOCK_DV, UPCAST)
    return do, _load_lse2(LSE, row, row_ok), tl.load(DELTA + row, mask=row_ok, other=0.0)


# ------------------------------------------------------------------ section 2: compressed attention forward
@triton.jit
def _fwd_step(
    acc, m_i, l_i, n0, q_a, q_b, K, V, cmp0, hkv, pos, Tc, Hkv, qk_scale,
    DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, WITH_OUTPUT: tl.constexpr, UPCAST: tl.constexpr,
):
    """One online-softmax step over compressed blocks [n0, n0 + BLOCK_N)."""
    offs_n, n_ok, kv_row = _kv_tile(n0, cmp0, hkv, Tc, Hkv, BLOCK_N)
    k_a, k_b = _load_split(K, kv_row, n_ok, DK, DK_A, DK_B, UPCAST)
    qk = _dot_t(q_a, q_b, k_a, k_b) * qk_scale
    if MASKED:
        visible = _sees(pos[:, None], offs_n[None, :], BLOCK_CMP, STRIDE_CMP) & n_ok[None, :]
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing seen yet stays 0
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = m_new
    p = tl.math.exp2(qk - m_ref[:, None])
    alpha = tl.math.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    if WITH_OUTPUT:
        v = _load_cols(V, kv_row, n_ok, DV, 0, BLOCK_DV, UPCAST)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _fwd_tile(
    acc, m_i, l_i, q_a, q_b, K, V, cmp0, hkv, pos, lo, hi, Tc, Hkv, qk_scale,
    DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, WITH_OUTPUT: tl.constexpr, UPCAST: tl.constexpr,
):
    """Online-softmax sweep over compressed blocks [lo, hi); MASKED applies the per-row visibility."""
    for n0 in range(lo, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, n0, q_a, q_b, K, V, cmp0, hkv, pos, Tc, Hkv, qk_scale, DK, DV,
                                  DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_N, MASKED, WITH_OUTPUT, UPCAST)
    return acc, m_i, l_i


@triton.jit
def _gated_epilogue(o, O, GATES, row, row_ok, DV: tl.constexpr, BLOCK_DV: tl.constexpr, ACCUMULATE: tl.constexpr):
    """gates[row] * o (GATES points at the branch's column of a contiguous [.., 3] tensor), plus
    what O's rows already hold when ACCUMULATE; fp32. Padding rows load 0 and are never stored."""
    gate = tl.load(GATES + row * 3, mask=row_ok, other=0.0).to(tl.float32)
    result = gate[:, None] * o
    if ACCUMULATE:
        result += _load_cols(O, row, row_ok, DV, 0, BLOCK_DV, True)
    return result


@triton.jit(do_not_specialize=TUNING_ARGS)
def _cmp_fwd_kernel(
    Q, K, V, O, LSE, GATES, T, Tc, Hkv, qk_scale, SEQ_BUCKET, ROWS_BUCKET, CU, CMP_CU,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr,
    STRIDE_CMP: tl.constexpr, WITH_OUTPUT: tl.constexpr, UPCAST: tl.constexpr,
    GATED: tl.constexpr, ACCUMULATE: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """GATED: O is the final NSA output and gets gates[row, gate_index] * o (added to its contents
    when ACCUMULATE) instead of o; without it the compiled code is the plain branch forward."""
    tok0, T, cmp0, Tc, hkv, t_first, t_last = _query_tile(T, Tc, Hkv, CU, CMP_CU, BLOCK_M // G_PAD, VARLEN)
    if VARLEN:
        if t_first >= T:
            return
    pos, row, row_ok = _group_rows(t_first, tok0, hkv, T, Hkv, G, G_PAD, BLOCK_M)
    q_a, q_b = _load_split(Q, row, row_ok, DK, DK_A, DK_B, UPCAST)
    n_unmasked, n_any = _block_ranges(t_first, t_last, Tc, BLOCK_CMP, STRIDE_CMP, BLOCK_N)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _fwd_tile(
        acc, m_i, l_i, q_a, q_b, K, V, cmp0, hkv, pos, 0, n_unmasked, Tc, Hkv, qk_scale,
        DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_N, False, WITH_OUTPUT, UPCAST,
    )
    acc, m_i, l_i = _fwd_tile(
        acc, m_i, l_i, q_a, q_b, K, V, cmp0, hkv, pos, n_unmasked, n_any, Tc, Hkv, qk_scale,
        DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_N, True, WITH_OUTPUT, UPCAST,
    )
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("inf"))
    tl.store(LSE + row, lse, mask=row_ok)
    if WITH_OUTPUT:
        o = acc / l_safe[:, None]
        if GATED:
            o = _gated_epilogue(o, O, GATES, row, row_ok, DV, BLOCK_DV, ACCUMULATE)
        _store_cols(O, row, row_ok, o, DV, 0, BLOCK_DV)


def _fwd_autotune(restore_value: list[str] | None = None, tiles: tuple = _FWD_TILES):
    """The forward's tuner. restore_value names outputs an accumulating launch reads back: the tuner
    saves them before and restores them after each timed run, so tuning does not add into them twice."""
    return autotune(
        configs=_configs(tiles),
        key=["G_PAD", "DK_A", "DK_B", "BLOCK_DV", "BLOCK_CMP", "STRIDE_CMP", "WITH_OUTPUT", "VARLEN"],
        interpreter=_INTERPRETER, prune_configs_by={"early_config_prune": _prune_fwd_rows},
        restore_value=restore_value,
    )


_cmp_fwd_tuned = _fwd_autotune()(_cmp_fwd_kernel)
# Accumulating launches read O: a separate tuner restores it around each timed run (it clones O once
# per new key; the default path keeps the tuner without that copy).
_cmp_fwd_tuned_accumulate = _fwd_autotune(restore_value=["O"])(_cmp_fwd_kernel)
_cmp_fwd_v2_tuned = _fwd_autotune(tiles=_FWD_TILES_V2)(_cmp_fwd_kernel)
_cmp_fwd_v2_tuned_accumulate = _fwd_autotune(restore_value=["O"], tiles=_FWD_TILES_V2)(_cmp_fwd_kernel)


@dataclass(frozen=True)
class _Gated:
    """Where the fused epilogue writes: out [B,T,Hq,Dv], the gate column gate_index of gates [B,T,Hq,3]."""

    out: torch.Tensor
    gates: torch.Tensor
    gate_index: int
    accumulate: bool


def _launch_fwd(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, cfg: NSAConfig, group: int,
                scale: float, with_output: bool, gated: _Gated | None = None,
                variant: str = "v2", packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """packing: a packed batch (checked by the caller; v2 only): grid (tiles of its longest sequence, N * Hkv)."""
    b, t, hq, dk = q.shape
    tc, hkv, dv = k_cmp.shape[1], k_cmp.shape[2], v_cmp.shape[-1]
    if tc == 0 or b * t * hq == 0:  # nothing visible anywhere: the kernel would only write these
        lse = torch.full((b, t, hq), float("inf"), dtype=torch.float32, device=q.device)
        if gated is not None:
            if not gated.accumulate:
                gated.out.zero_()  # o = 0 everywhere, so the gated contribution is 0
            return gated.out, lse
        return (q.new_zeros(b, t, hq, dv) if with_output else q.new_empty(0)), lse
    if gated is not None:
        o = gated.out  # every row is written (or read and written): no memset
    else:
        o = q.new_empty(b, t, hq, dv) if with_output else q.new_empty(0)  # every row is written: no memset
    lse = torch.empty(b, t, hq, dtype=torch.float32, device=q.device)
    g_pad = next_pow2(group)
    dk_a, dk_b = _split_head_dim(dk)
    # the grid's (positions, rows) and the T / Tc the kernel gets (dense; packed: per sequence, loaded)
    grid_b, grid_t, arg_tc = _extents(packing, b, t, tc, cfg.block_cmp, cfg.stride_cmp)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(grid_t, meta["BLOCK_M"] // g_pad), grid_b * hkv)

    # Ungated launches get lse as a never-read stand-in for GATES (GATED=False drops every use).
    gate_column = gated.gates[..., gated.gate_index] if gated is not None else lse
    accumulate = gated is not None and gated.accumulate
    if variant == "v2":
        kernel = _cmp_fwd_v2_tuned_accumulate if accumulate else _cmp_fwd_v2_tuned
    else:
        kernel = _cmp_fwd_tuned_accumulate if accumulate else _cmp_fwd_tuned
    cu, cmp_cu = _offsets(packing, cfg.block_cmp, cfg.stride_cmp)
    kernel[grid](
        q, k_cmp, v_cmp, o if with_output else lse, lse, gate_column, grid_t, arg_tc, hkv, scale * _LOG2E,
        **tuning_buckets(grid_t, grid_b * hq), CU=cu, CMP_CU=cmp_cu,
        G=group, G_PAD=g_pad, DK=dk, DV=dv, DK_A=dk_a, DK_B=dk_b, BLOCK_DV=next_pow2(dv),
        BLOCK_CMP=cfg.block_cmp, STRIDE_CMP=cfg.stride_cmp, WITH_OUTPUT=with_output,
        UPCAST=interpreting() and q.dtype == torch.bfloat16, GATED=gated is not None, ACCUMULATE=accumulate,
        VARLEN=packing is not None,
    )
    return o, lse


def compressed_fwd(
    q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, cfg: NSAConfig, scale: float, *,
    out: torch.Tensor | None = None, gates: torch.Tensor | None = None, gate_index: int = 0,
    accumulate: bool = False, variant: str = "v2", packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch "cmp": (o [B,T,Hq,Dv] in q.dtype, lse [B,T,Hq] fp32); no visible block: o = 0, lse = +inf.

    variant "v2" (default) also tries tiles of 8-16 positions; "v1" the tiles before the redesign.

    Packed (a `Packing`, v2 only): q [1, total_T, Hq, Dk], k_cmp/v_cmp [1, sum_s Tc_s, Hkv, D]
    (compress_fwd's packed layout); each query sees its own sequence's blocks at local positions.

    Fused gated epilogue (no-grad NSA forward, so the branch output is never materialised): with
    `out` [B,T,Hq,Dv] and `gates` [B,T,Hq,3] (contiguous, any supported dtype) the kernel writes
    out = (out if accumulate else 0) + gates[..., gate_index] * o, in fp32 then out's dtype, and
    returns (out, lse); lse is unchanged.
    """
    check_variant("variant", variant)
    group = _check_attention_inputs(q, k_cmp, v_cmp, cfg)
    scale = _check_scale(scale)
    _check_packed_attention(packing, q, k_cmp, cfg, variant=variant)
    gated_on = check_gated(q, (*q.shape[:3], v_cmp.shape[-1]), out, gates, gate_index, accumulate)
    gated = _Gated(out, gates, gate_index, accumulate) if gated_on else None
    q, k_cmp, v_cmp = q.contiguous(), k_cmp.contiguous(), v_cmp.contiguous()
    return _launch_fwd(q, k_cmp, v_cmp, cfg, group, scale, with_output=True, gated=gated, variant=variant,
                       packing=packing)


def compressed_lse(q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float, *, variant: str = "v2",
                   packing: Packing | None = None) -> torch.Tensor:
    """The compressed branch's lse alone, fp32 [B,T,Hq] (+inf where no block is visible): the pass
    `select_blocks` makes when it is given no lse (the compressed forward built without its output)."""
    check_variant("variant", variant)
    group = _check_attention_inputs(q, k_cmp, k_cmp, cfg)
    scale = _check_scale(scale)
    _check_packed_attention(packing, q, k_cmp, cfg, variant=variant)
    q, k_cmp = q.contiguous(), k_cmp.contiguous()
    return _launch_fwd(q, k_cmp, k_cmp, cfg, group, scale, with_output=False, variant=variant, packing=packing)[1]


# ------------------------------------------------------------------ section 3: block scores + top-n selection
@triton.jit
def _overlap(cmp_rel, slc_rel, PER_CMP: tl.constexpr, PER_SLC: tl.constexpr):
    """d-chunks shared by compressed block a (chunks [a, a+l/d)) and selection block j ([j*l'/d, (j+1)*l'/d))."""
    lo = tl.maximum(cmp_rel, slc_rel * PER_SLC)
    hi = tl.minimum(cmp_rel + PER_CMP, (slc_rel + 1) * PER_SLC)
    return tl.maximum(hi - lo, 0)


@triton.jit
def _dot_split(p, w):
    """p @ w for p in [0, 1] (fp32) and small-integer w: fp16 hi + lo halves keep ~22 bits on tensor cores."""
    p_hi = p.to(tl.float16)
    p_lo = (p - p_hi.to(tl.float32)).to(tl.float16)
    return tl.dot(p_hi, w) + tl.dot(p_lo, w)


@triton.jit
def _merge_top(top, cand, WIDTH: tl.constexpr):
    """Top WIDTH keys of top ∪ cand per row; `top` [R, W] is sorted descending and so is the result.

    A stable merge by ranks (ties: top first, then lower column) makes the ranks a permutation, so
    slot s of the result is simply the element of rank s. Only compares, sums and selects: cheap on
    the GPU for W <= 64 and fast under the interpreter (tl.sort's xor reductions are not).
    """
    slot = tl.arange(0, WIDTH)
    top_i = top[:, :, None]  # [R, W, 1]
    cand_k = cand[:, None, :]  # [R, 1, W]
    rank_top = slot[None, :] + tl.sum((cand_k > top_i).to(tl.int32), axis=2)
    cand_other = cand[:, :, None]  # [R, W, 1]: the k' that may come before k
    lower_col = (slot[:, None] < slot[None, :])[None, :, :]
    earlier = (cand_other > cand_k) | ((cand_other == cand_k) & lower_col)
    rank_cand = tl.sum((top_i >= cand_k).to(tl.int32), axis=1) + tl.sum(earlier.to(tl.int32), axis=1)
    dest = slot[None, None, :]
    merged = tl.sum(tl.where(rank_top[:, :, None] == dest, top_i, 0), axis=1)
    return merged + tl.sum(tl.where(rank_cand[:, :, None] == dest, cand_other, 0), axis=1)


@triton.jit
def _select_step(
    top, carry, j0, q_a, q_b, K, cmp0, hkv, lse2, pos, current, pos_ok, w_here, w_next, n_any, Tc, Hkv, qk_scale,
    DK: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    PER_SLC: tl.constexpr, SLC_PER_TILE: tl.constexpr, G_PAD: tl.constexpr, WIDTH: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr,
):
    """Score selection blocks [j0, j0 + SLC_PER_TILE) and merge them into the running top-WIDTH."""
    col = tl.arange(0, WIDTH)[None, :]
    offs_n, n_ok, kv_row = _kv_tile(j0 * PER_SLC, cmp0, hkv, Tc, Hkv, BLOCK_N)
    k_a, k_b = _load_split(K, kv_row, offs_n < n_any, DK, DK_A, DK_B, UPCAST)
    qk = _dot_t(q_a, q_b, k_a, k_b) * qk_scale
    visible = _sees(pos[:, None], offs_n[None, :], BLOCK_CMP, STRIDE_CMP) & n_ok[None, :]
    p = tl.where(visible, tl.math.exp2(qk - lse2[:, None]), 0.0)
    per_head = _dot_split(p, w_here) + carry
    carry = _dot_split(p, w_next)
    score = tl.sum(tl.reshape(per_head, [BLOCK_T, G_PAD, WIDTH]), axis=1)  # Eq. 10: sum over the group

    j = j0 + col
    candidate = (col < SLC_PER_TILE) & (j <= current) & pos_ok
    forced = (j == 0) | (j == current) | (j == current - 1)
    score = tl.where(forced, float("inf"), tl.where(score > 0.0, score, 0.0))
    key = (score.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (0x7FFFFFFF - j).to(tl.int64)
    key = tl.where(candidate, key, -1)
    top = _merge_top(top, key, WIDTH)
    return top, carry


@triton.jit(do_not_specialize=TUNING_ARGS)
def _select_kernel(
    Q, K, LSE, IDX, T, Tc, Hkv, qk_scale, SEQ_BUCKET, ROWS_BUCKET, CU, CMP_CU,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_SLC: tl.constexpr, N_SLC: tl.constexpr,
    WIDTH: tl.constexpr, UPCAST: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Scores selection blocks tile by tile and keeps a running top-WIDTH per query position.

    Tile k covers compressed blocks [k*BLOCK_N, (k+1)*BLOCK_N), aligned to selection blocks
    [k*SLC_PER_TILE, (k+1)*SLC_PER_TILE). A compressed block near the tile's end also overlaps the
    next tile's first selection blocks; that part is carried to the next iteration (`carry`), so
    each selection block's score is complete when its tile is merged into the top-n.
    Keys pack (score bits << 32 | 2^31-1-j): one int64 order = larger score, then lower j.
    VARLEN: positions, candidates and block numbers are local to the program's sequence.
    """
    BLOCK_T: tl.constexpr = BLOCK_M // G_PAD
    PER_SLC: tl.constexpr = BLOCK_SLC // STRIDE_CMP
    PER_CMP: tl.constexpr = BLOCK_CMP // STRIDE_CMP
    SLC_PER_TILE: tl.constexpr = BLOCK_N // PER_SLC
    tok0, T, cmp0, Tc, hkv, t_first, t_last = _query_tile(T, Tc, Hkv, CU, CMP_CU, BLOCK_T, VARLEN)
    if VARLEN:
        if t_first >= T:
            return
    pos, row, row_ok = _group_rows(t_first, tok0, hkv, T, Hkv, G, G_PAD, BLOCK_M)
    q_a, q_b = _load_split(Q, row, row_ok, DK, DK_A, DK_B, UPCAST)
    lse2 = _load_lse2(LSE, row, row_ok)

    cmp_rel = tl.arange(0, BLOCK_N)[:, None]
    col = tl.arange(0, WIDTH)[None, :]
    in_tile = col < SLC_PER_TILE
    w_here = tl.where(in_tile, _overlap(cmp_rel, col, PER_CMP, PER_SLC), 0).to(tl.float16)
    w_next = tl.where(in_tile, _overlap(cmp_rel, col + SLC_PER_TILE, PER_CMP, PER_SLC), 0).to(tl.float16)

    n_any = _num_visible(t_last, Tc, BLOCK_CMP, STRIDE_CMP)
    n_candidates = t_last // BLOCK_SLC + 1
    pos_t = t_first + tl.arange(0, BLOCK_T)
    current = (pos_t // BLOCK_SLC)[:, None]
    pos_ok = (pos_t < T)[:, None]

    top = tl.full([BLOCK_T, WIDTH], -1, dtype=tl.int64)
    carry = tl.zeros([BLOCK_M, WIDTH], dtype=tl.float32)
    for j0 in range(0, n_candidates, SLC_PER_TILE):
        top, carry = _select_step(
            top, carry, j0, q_a, q_b, K, cmp0, hkv, lse2, pos, current, pos_ok, w_here, w_next, n_any, Tc, Hkv,
            qk_scale, DK, DK_A, DK_B, BLOCK_CMP, STRIDE_CMP, PER_SLC, SLC_PER_TILE, G_PAD, WIDTH, BLOCK_T,
            BLOCK_N, UPCAST,
        )

    chosen = tl.where(top >= 0, 0x7FFFFFFF - (top & 0x7FFFFFFF), -1).to(tl.int32)
    out_row = (tok0 + pos_t) * Hkv + hkv
    tl.store(IDX + out_row[:, None] * N_SLC + col, chosen, mask=pos_ok & (col < N_SLC))


def _select_tiles(cfg: NSAConfig, g_pad: int) -> tuple[int, int, int]:
    """(BLOCK_M rows, BLOCK_N compressed blocks per step, WIDTH of the running top-n) for selection.

    BLOCK_N is a whole number of selection blocks and at most 64, and keeps a step's selection
    blocks (BLOCK_N / (l'/d)) within max(16, n) so the [rows, WIDTH, WIDTH] merge stays in
    registers. Under the interpreter BLOCK_N is small so tests cross several steps (the carry).
    """
    per_slc = cfg.block_slc // cfg.stride_cmp
    top = max(16, next_pow2(cfg.n_slc))
    block_n = max(per_slc, 16) if small_sizes() else max(per_slc, min(64, per_slc * top))
    width = max(top, block_n // per_slc)
    block_m = max(g_pad, 16, min(64, 1024 // width))
    return block_m, block_n, width


# Scoring v2: autotuned rows x warps (v1 runs the fixed 64-row, 4-warp tile of `_select_tiles`). 128 rows
# at 4 warps spill on sm_90 at G=1 and at l'=256; the 8-warp 128-row tile is the paper shape's lightest.
_SELECT_TILES_V2 = ((64, 4), (64, 8), (128, 8))


def _prune_select(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Whole positions per tile (BLOCK_M >= G_PAD); fallback BLOCK_M = G_PAD at 8 warps."""
    g_pad = kwargs.get("G_PAD", 1)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] >= g_pad]
    return kept or [triton.Config({"BLOCK_M": g_pad}, num_warps=8, num_stages=2)]


_select_tuned = autotune(
    configs=[triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=2) for m, w in _SELECT_TILES_V2],
    key=["G_PAD", "DK_A", "DK_B", "BLOCK_CMP", "STRIDE_CMP", "BLOCK_SLC", "N_SLC", "WIDTH", "BLOCK_N", "VARLEN"],
    prune_configs_by={"early_config_prune": _prune_select},
)(_select_kernel)  # no interpreter config: there `select_blocks` launches v1's fixed tile itself


def select_blocks(
    q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float, lse: torch.Tensor | None = None, *,
    variant: str = "v2", packing: Packing | None = None,
) -> torch.Tensor:
    """NSA_SPEC section 3: block_idx int32 [B,T,Hkv,n], -1 padded, forced blocks first then by score.

    `lse` is the compressed branch's lse when the caller already has it (else one lse-only pass
    computes it). No host synchronisation; extra memory is at most that lse (B*T*Hq fp32).
    variant "v2" (default) autotunes the scoring tile (up to 8 positions); "v1" runs the fixed 4-position
    tile; the lse-only pass uses the compressed forward of the same variant.

    Packed (a `Packing`, v2 only): q [1, total_T, Hq, Dk], k_cmp [1, sum_s Tc_s, Hkv, Dk], lse [1, total_T, Hq];
    block_idx [1, total_T, Hkv, n] holds LOCAL block numbers (block 0 = the sequence's first
    selection block), chosen by section 3 with T = L_s.
    """
    check_variant("variant", variant)
    group = _check_attention_inputs(q, k_cmp, k_cmp, cfg)
    scale = _check_scale(scale)
    _check_packed_attention(packing, q, k_cmp, cfg, variant=variant)
    b, t, hq, dk = q.shape
    tc, hkv = k_cmp.shape[1], k_cmp.shape[2]
    q, k_cmp = q.contiguous(), k_cmp.contiguous()
    if lse is None:
        lse = compressed_lse(q, k_cmp, cfg, scale, variant=variant, packing=packing)
    else:
        _check_like("lse", lse, (b, t, hq), torch.float32)
        if lse.device != q.device:
            raise ValueError("lse must be on q's device")
        lse = lse.contiguous()
    block_idx = torch.empty(b, t, hkv, cfg.n_slc, dtype=torch.int32, device=q.device)
    if b * t * hkv == 0:
        return block_idx
    g_pad = next_pow2(group)
    dk_a, dk_b = _split_head_dim(dk)
    block_m, block_n, width = _select_tiles(cfg, g_pad)
    grid_b, grid_t, arg_tc = _extents(packing, b, t, tc, cfg.block_cmp, cfg.stride_cmp)
    args = (q, k_cmp if tc > 0 else q, lse, block_idx, grid_t, arg_tc, hkv, scale * _LOG2E,
            *tuning_buckets(grid_t, grid_b * hq).values(), *_offsets(packing, cfg.block_cmp, cfg.stride_cmp))
    consts = dict(G=group, G_PAD=g_pad, DK=dk, DK_A=dk_a, DK_B=dk_b, BLOCK_CMP=cfg.block_cmp,
                  STRIDE_CMP=cfg.stride_cmp, BLOCK_SLC=cfg.block_slc, N_SLC=cfg.n_slc, WIDTH=width,
                  UPCAST=interpreting() and q.dtype == torch.bfloat16, VARLEN=packing is not None, BLOCK_N=block_n)
    if variant == "v1" or interpreter_config(_select_tuned):  # the interpreter runs one config: v1's tile
        _select_kernel[(triton.cdiv(grid_t, block_m // g_pad), grid_b * hkv)](
            *args, **consts, BLOCK_M=block_m, num_warps=4, num_stages=2,
        )
    else:
        _select_tuned[lambda meta: (triton.cdiv(grid_t, meta["BLOCK_M"] // g_pad), grid_b * hkv)](*args, **consts)
    return block_idx


# ------------------------------------------------------------------ section 2: compressed attention backward
@triton.jit
def _delta_kernel(O, DO, DELTA, ROWS, DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr):
    """delta = rowsum(o * do), the softmax-backward correction, one fp32 per (b, t, head)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs = tl.arange(0, BLOCK_DV)
    mask = (rows < ROWS)[:, None] & (offs < DV)[None, :]
    o = tl.load(O + rows[:, None] * DV + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * DV + offs[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < ROWS)


@triton.jit
def _dq_step(
    dq_a, dq_b, n0, q_a, q_b, do, lse2, delta, K, V, cmp0, hkv, pos, Tc, Hkv, qk_scale,
    DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, UPCAST: tl.constexpr,
):
    """dq contribution of compressed blocks [n0, n0 + BLOCK_N) (unscaled: the caller applies scale)."""
    offs_n, n_ok, kv_row = _kv_tile(n0, cmp0, hkv, Tc, Hkv, BLOCK_N)
    k_a, k_b = _load_split(K, kv_row, n_ok, DK, DK_A, DK_B, UPCAST)
    v = _load_cols(V, kv_row, n_ok, DV, 0, BLOCK_DV, UPCAST)
    qk = _dot_t(q_a, q_b, k_a, k_b)
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if MASKED:
        visible = _sees(pos[:, None], offs_n[None, :], BLOCK_CMP, STRIDE_CMP) & n_ok[None, :]
        p = tl.where(visible, p, 0.0)
    ds = (p * (tl.dot(do, tl.trans(v)) - delta[:, None])).to(k_a.dtype)
    return dq_a + tl.dot(ds, k_a), dq_b + tl.dot(ds, k_b)


@triton.jit
def _dq_tile(
    dq_a, dq_b, q_a, q_b, do, lse2, delta, K, V, cmp0, hkv, pos, lo, hi, Tc, Hkv, qk_scale,
    DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr, UPCAST: tl.constexpr,
):
    for n0 in range(lo, hi, BLOCK_N):
        dq_a, dq_b = _dq_step(dq_a, dq_b, n0, q_a, q_b, do, lse2, delta, K, V, cmp0, hkv, pos, Tc, Hkv, qk_scale,
                              DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_N, MASKED, UPCAST)
    return dq_a, dq_b


@triton.jit(do_not_specialize=TUNING_ARGS)
def _cmp_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, T, Tc, Hkv, qk_scale, scale, SEQ_BUCKET, ROWS_BUCKET, CU, CMP_CU,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr,
    STRIDE_CMP: tl.constexpr, UPCAST: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tok0, T, cmp0, Tc, hkv, t_first, t_last = _query_tile(T, Tc, Hkv, CU, CMP_CU, BLOCK_M // G_PAD, VARLEN)
    if VARLEN:
        if t_first >= T:
            return
    pos, row, row_ok = _group_rows(t_first, tok0, hkv, T, Hkv, G, G_PAD, BLOCK_M)
    q_a, q_b = _load_split(Q, row, row_ok, DK, DK_A, DK_B, UPCAST)
    do, lse2, delta = _load_grad_rows(DO, LSE, DELTA, row, row_ok, DV, BLOCK_DV, UPCAST)
    n_unmasked, n_any = _block_ranges(t_first, t_last, Tc, BLOCK_CMP, STRIDE_CMP, BLOCK_N)
    dq_a = tl.zeros([BLOCK_M, DK_A], dtype=tl.float32)
    dq_b = tl.zeros([BLOCK_M, DK_B], dtype=tl.float32)
    dq_a, dq_b = _dq_tile(dq_a, dq_b, q_a, q_b, do, lse2, delta, K, V, cmp0, hkv, pos, 0, n_unmasked, Tc, Hkv,
                          qk_scale, DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_N, False, UPCAST)
    dq_a, dq_b = _dq_tile(dq_a, dq_b, q_a, q_b, do, lse2, delta, K, V, cmp0, hkv, pos, n_unmasked, n_any, Tc, Hkv,
                          qk_scale, DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_N, True, UPCAST)
    _store_split(DQ, row, row_ok, dq_a * scale, dq_b * scale, DK, DK_A, DK_B)


@triton.jit
def _dkv_step(
    dk_a, dk_b, dv, t0, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, T, Hkv, qk_scale,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr,
    DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
):
    """dk/dv contribution of query rows at positions [t0, t0 + BLOCK_M // G_PAD) x the G heads."""
    pos, row, row_ok = _group_rows(t0, tok0, hkv, T, Hkv, G, G_PAD, BLOCK_M)
    q_a, q_b = _load_split(Q, row, row_ok, DK, DK_A, DK_B, UPCAST)
    do, lse2, delta = _load_grad_rows(DO, LSE, DELTA, row, row_ok, DV, BLOCK_DV, UPCAST)
    qk_t = _dot_t(k_a, k_b, q_a, q_b)  # [BLOCK_N, BLOCK_M]
    p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
    if MASKED:
        visible = _sees(pos[None, :], offs_n[:, None], BLOCK_CMP, STRIDE_CMP)
        p_t = tl.where(visible, p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do)
    ds_t = (p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])).to(q_a.dtype)
    return dk_a + tl.dot(ds_t, q_a), dk_b + tl.dot(ds_t, q_b), dv


@triton.jit
def _dkv_tile(
    dk_a, dk_b, dv, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, lo, hi, T, Hkv, qk_scale,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr,
    DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
):
    """Accumulate dk/dv of one compressed tile over query rows (positions x G heads) from lo to hi."""
    BLOCK_T: tl.constexpr = BLOCK_M // G_PAD
    for t0 in range(lo, hi, BLOCK_T):
        dk_a, dk_b, dv = _dkv_step(dk_a, dk_b, dv, t0, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, T, Hkv,
                                   qk_scale, G, G_PAD, DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP,
                                   BLOCK_M, MASKED, UPCAST)
    return dk_a, dk_b, dv


@autotune(
    configs=_configs(_DKV_TILES), key=["G_PAD", "DK_A", "DK_B", "BLOCK_DV", "BLOCK_CMP", "STRIDE_CMP"],
    interpreter=_INTERPRETER, prune_configs_by={"early_config_prune": _prune_rows},
)
@triton.jit(do_not_specialize=TUNING_ARGS)
def _cmp_bwd_dkv_kernel(
    Q, K, V, DO, LSE, DELTA, DKC, DVC, T, Tc, Hkv, qk_scale, scale, SEQ_BUCKET, ROWS_BUCKET,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr,
    STRIDE_CMP: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One compressed tile x one KV group; loops over the positions that see it (t >= i*d + l - 1)."""
    BLOCK_T: tl.constexpr = BLOCK_M // G_PAD
    b, hkv = _batch_head(Hkv)
    n_first = tl.program_id(0) * BLOCK_N
    offs_n, n_ok, kv_row = _kv_tile(n_first, b * Tc, hkv, Tc, Hkv, BLOCK_N)
    k_a, k_b = _load_split(K, kv_row, n_ok, DK, DK_A, DK_B, UPCAST)
    v = _load_cols(V, kv_row, n_ok, DV, 0, BLOCK_DV, UPCAST)

    t_start = n_first * STRIDE_CMP + BLOCK_CMP - 1  # first position that sees the tile's first block
    t_full = (n_first + BLOCK_N - 1) * STRIDE_CMP + BLOCK_CMP - 1  # first that sees all of them
    masked_steps = (tl.maximum(tl.minimum(t_full, T) - t_start, 0) + BLOCK_T - 1) // BLOCK_T
    t_mid = t_start + masked_steps * BLOCK_T
    dk_a = tl.zeros([BLOCK_N, DK_A], dtype=tl.float32)
    dk_b = tl.zeros([BLOCK_N, DK_B], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    tok0 = b * T
    dk_a, dk_b, dv = _dkv_tile(dk_a, dk_b, dv, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, t_start, t_mid, T,
                               Hkv, qk_scale, G, G_PAD, DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_M,
                               True, UPCAST)
    dk_a, dk_b, dv = _dkv_tile(dk_a, dk_b, dv, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, t_mid, T, T, Hkv,
                               qk_scale, G, G_PAD, DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_M, False,
                               UPCAST)
    _store_split(DKC, kv_row, n_ok, dk_a * scale, dk_b * scale, DK, DK_A, DK_B)
    _store_cols(DVC, kv_row, n_ok, dv, DV, 0, BLOCK_DV)


# ------------------------------------------------------------------ dK/dV v2: (key tile x query chunk) programs
# (rows = positions x G_PAD, compressed blocks per key tile, warps). Key tiles of 32-128 blocks cut the
# q/do re-reads of v1's 16-block tiles 2-8x; the chunk axis keeps every SM busy and the L2 warm.
# Read off sm_90 compiles (ptxas is not monotonic here): with wide heads (192/128) the dk/dv accumulators
# and the resident k/v tiles take 170-252 registers at these tiles and spill at 64x64, 128x64, 64x128,
# 32x128 and at 4 warps beyond 32x32; narrow heads (G=1, 64/64) spill at 64x32 and at 4 warps instead.
_DKV_CHUNK_WIDE = ((32, 64, 8), (16, 64, 8), (64, 32, 8), (32, 32, 8))
_DKV_CHUNK_NARROW = ((32, 64, 8), (16, 64, 8), (64, 64, 8), (32, 128, 8), (32, 32, 8))
_DKV_CHUNK_TILES = tuple(dict.fromkeys(_DKV_CHUNK_WIDE + _DKV_CHUNK_NARROW))
_DKV_TARGET_CHUNKS = 32  # query chunks at long T: enough (tile, chunk) programs for 132 SMs
_DKV_PARTIAL_BUDGET = 1 << 30  # bytes of fp32 partials at most; fewer chunks beyond (e.g. 1M tokens)
_DKV_MIN_CHUNK = 256  # positions
_DKV_MIN_CHUNK_SMALL = 32  # `small_sizes()` (the interpreter): small, so tests cross chunks


def _dkv_chunks(seqlen: int, tc: int, rows_kv: int, dk: int, dv: int) -> tuple[int, int]:
    """(positions per query chunk, chunks): a power of two >= the minimum chunk, the partials within budget."""
    per_chunk = rows_kv * (dk + dv) * 4
    chunks = max(1, min(_DKV_TARGET_CHUNKS, _DKV_PARTIAL_BUDGET // max(per_chunk, 1)))
    least = _DKV_MIN_CHUNK_SMALL if small_sizes() else _DKV_MIN_CHUNK
    chunk = max(least, next_pow2(triton.cdiv(seqlen, chunks)))
    return chunk, triton.cdiv(seqlen, chunk)


def _prune_dkv_chunk(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The chunked dK/dV tiles that build without spills for this head width, then `_prune_rows`."""
    wide = kwargs.get("DK_A", 0) + kwargs.get("DK_B", 0) + kwargs.get("BLOCK_DV", 0) > _WIDE_HEADS
    allowed = _DKV_CHUNK_WIDE if wide else _DKV_CHUNK_NARROW
    kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) in allowed]
    return _prune_rows(kept or configs, named_args, **kwargs)


@triton.jit
def _dkv_chunk_step(
    dk_a, dk_b, dv, t0, lo, hi, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, T, Hkv, qk_scale,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr,
    DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
):
    """`_dkv_step` for rows at positions [t0, t0 + BLOCK_M // G_PAD) that lie in this chunk's [lo, hi)."""
    pos, row, row_ok = _group_rows(t0, tok0, hkv, T, Hkv, G, G_PAD, BLOCK_M)
    row_ok = row_ok & (pos >= lo) & (pos < hi)
    q_a, q_b = _load_split(Q, row, row_ok, DK, DK_A, DK_B, UPCAST)
    do, lse2, delta = _load_grad_rows(DO, LSE, DELTA, row, row_ok, DV, BLOCK_DV, UPCAST)
    qk_t = _dot_t(k_a, k_b, q_a, q_b)  # [BLOCK_N, BLOCK_M]
    p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])  # rows out of the chunk have lse2 = +inf: p = 0
    if MASKED:
        visible = _sees(pos[None, :], offs_n[:, None], BLOCK_CMP, STRIDE_CMP)
        p_t = tl.where(visible, p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do)
    ds_t = (p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])).to(q_a.dtype)
    return dk_a + tl.dot(ds_t, q_a), dk_b + tl.dot(ds_t, q_b), dv


@triton.jit
def _dkv_chunk_tile(
    dk_a, dk_b, dv, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, start, end, lo, hi, T, Hkv, qk_scale,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr,
    DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, UPCAST: tl.constexpr,
):
    BLOCK_T: tl.constexpr = BLOCK_M // G_PAD
    for t0 in range(start, end, BLOCK_T):
        dk_a, dk_b, dv = _dkv_chunk_step(dk_a, dk_b, dv, t0, lo, hi, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n,
                                         T, Hkv, qk_scale, G, G_PAD, DK, DV, DK_A, DK_B, BLOCK_DV, BLOCK_CMP,
                                         STRIDE_CMP, BLOCK_M, MASKED, UPCAST)
    return dk_a, dk_b, dv


@autotune(
    configs=_configs(_DKV_CHUNK_TILES),
    key=["G_PAD", "DK_A", "DK_B", "BLOCK_DV", "BLOCK_CMP", "STRIDE_CMP", "PARTIAL", "VARLEN"],
    interpreter=_INTERPRETER, prune_configs_by={"early_config_prune": _prune_dkv_chunk},
)
@triton.jit(do_not_specialize=TUNING_ARGS)
def _cmp_bwd_dkv_chunk_kernel(
    Q, K, V, DO, LSE, DELTA, DKC, DVC, T, Tc, Hkv, ROWS_KV, CHUNK, qk_scale, scale, SEQ_BUCKET, ROWS_BUCKET,
    CU, CMP_CU,
    G: tl.constexpr, G_PAD: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
    DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_CMP: tl.constexpr,
    STRIDE_CMP: tl.constexpr, UPCAST: tl.constexpr, PARTIAL: tl.constexpr, VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (key tile of BLOCK_N compressed blocks, query chunk of CHUNK positions) of one KV group.

    Program ids run key tile fastest, so the tiles of one chunk run together and share its q/do rows
    in L2. PARTIAL: the fp32 tile goes to slot `chunk` of DKC/DVC ([chunks, ROWS_KV, D], unscaled) for
    `_cmp_dkv_reduce_kernel`; otherwise (one chunk) it is stored as dk_cmp/dv_cmp directly.
    VARLEN: T and Tc are the longest sequence's (the grid's); each program runs on its sequence's.
    """
    BLOCK_T: tl.constexpr = BLOCK_M // G_PAD
    b, hkv = _batch_head(Hkv)
    n_tiles = tl.cdiv(Tc, BLOCK_N)
    tile = tl.program_id(0) % n_tiles
    chunk = tl.program_id(0) // n_tiles
    n_first = tile * BLOCK_N
    if VARLEN:
        tok0, T, cmp0, Tc = _sequence(CU, CMP_CU, b, T, Tc, VARLEN)
        if n_first >= Tc:  # a key tile past the sequence's blocks (a chunk past its end fails lo < chunk_hi)
            return
    t_start = n_first * STRIDE_CMP + BLOCK_CMP - 1  # first position that sees the tile's first block
    t_full = (n_first + BLOCK_N - 1) * STRIDE_CMP + BLOCK_CMP - 1  # first that sees all of them
    chunk_lo = chunk * CHUNK
    chunk_hi = tl.minimum(chunk_lo + CHUNK, T)
    lo = tl.maximum(chunk_lo, t_start)
    if lo < chunk_hi:  # else no position of the chunk sees the tile: nothing to write or read
        if not VARLEN:  # the dense bases where the dense kernel always computed them
            tok0, _, cmp0, _ = _sequence(CU, CMP_CU, b, T, Tc, VARLEN)
        offs_n, n_ok, kv_row = _kv_tile(n_first, cmp0, hkv, Tc, Hkv, BLOCK_N)
        k_a, k_b = _load_split(K, kv_row, n_ok, DK, DK_A, DK_B, UPCAST)
        v = _load_cols(V, kv_row, n_ok, DV, 0, BLOCK_DV, UPCAST)
        masked_steps = (tl.maximum(tl.minimum(t_full, chunk_hi) - lo, 0) + BLOCK_T - 1) // BLOCK_T
        mid = lo + masked_steps * BLOCK_T
        dk_a = tl.zeros([BLOCK_N, DK_A], dtype=tl.float32)
        dk_b = tl.zeros([BLOCK_N, DK_B], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        dk_a, dk_b, dv = _dkv_chunk_tile(dk_a, dk_b, dv, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, lo, mid,
                                         lo, chunk_hi, T, Hkv, qk_scale, G, G_PAD, DK, DV, DK_A, DK_B, BLOCK_DV,
                                         BLOCK_CMP, STRIDE_CMP, BLOCK_M, True, UPCAST)
        dk_a, dk_b, dv = _dkv_chunk_tile(dk_a, dk_b, dv, k_a, k_b, v, Q, DO, LSE, DELTA, tok0, hkv, offs_n, mid,
                                         chunk_hi, lo, chunk_hi, T, Hkv, qk_scale, G, G_PAD, DK, DV, DK_A, DK_B,
                                         BLOCK_DV, BLOCK_CMP, STRIDE_CMP, BLOCK_M, False, UPCAST)
        if PARTIAL:
            part_row = kv_row + chunk * ROWS_KV
            _store_split(DKC, part_row, n_ok, dk_a, dk_b, DK, DK_A, DK_B)
            _store_cols(DVC, part_row, n_ok, dv, DV, 0, BLOCK_DV)
        else:
            _store_split(DKC, kv_row, n_ok, dk_a * scale, dk_b * scale, DK, DK_A, DK_B)
            _store_cols(DVC, kv_row, n_ok, dv, DV, 0, BLOCK_DV)


@triton.jit
def _cmp_dkv_reduce_kernel(
    DKP, DVP, DKC, DVC, Tc, Hkv, ROWS_KV, CHUNK, NUM_CHUNKS, scale, CU, CMP_CU,
    DK: tl.constexpr, DV: tl.constexpr, DK_A: tl.constexpr, DK_B: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_CMP: tl.constexpr, STRIDE_CMP: tl.constexpr, BLOCK_R: tl.constexpr, VARLEN: tl.constexpr,
):
    """dk_cmp/dv_cmp of BLOCK_R blocks: their partials summed in chunk order (bit-reproducible).

    Block i's partials exist from chunk (i*d + l - 1) // CHUNK on: the first chunk holding a position
    that sees it, whose program for i's key tile always runs. VARLEN: the sequence's own blocks and
    chunks (cdiv(L_s, CHUNK) of them); Tc and NUM_CHUNKS are the grid's.
    """
    b, hkv = _batch_head(Hkv)
    _, seqlen, cmp0, Tc = _sequence(CU, CMP_CU, b, 0, Tc, VARLEN)
    if VARLEN:  # a tile past the sequence's blocks has no n_ok: no iteration, no store
        num_chunks = tl.cdiv(seqlen, CHUNK)
        # rebase the scalar pointers, so the per-row offsets stay local (int32, < the 1 GiB of partials)
        DKP += cmp0 * Hkv * DK
        DVP += cmp0 * Hkv * DV
        DKC += cmp0 * Hkv * DK
        DVC += cmp0 * Hkv * DV
        cmp0 = 0
    else:
        num_chunks = NUM_CHUNKS
    offs_n, n_ok, kv_row = _kv_tile(tl.program_id(0) * BLOCK_R, cmp0, hkv, Tc, Hkv, BLOCK_R)
    first = (offs_n * STRIDE_CMP + BLOCK_CMP - 1) // CHUNK
    dk_a = tl.zeros([BLOCK_R, DK_A], dtype=tl.float32)
    dk_b = tl.zeros([BLOCK_R, DK_B], dtype=tl.float32)
    dv = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    for c in range(tl.min(tl.where(n_ok, first, num_chunks), 0), num_chunks):
        use = n_ok & (first <= c)
        part_row = kv_row + c * ROWS_KV  # < 2^31: the partials are capped at 1 GiB
        part_a, part_b = _load_split(DKP, part_row, use, DK, DK_A, DK_B, False)
        dk_a += part_a
        dk_b += part_b
        dv += _load_cols(DVP, part_row, use, DV, 0, BLOCK_DV, False)
    _store_split(DKC, kv_row, n_ok, dk_a * scale, dk_b * scale, DK, DK_A, DK_B)
    _store_cols(DVC, kv_row, n_ok, dv, DV, 0, BLOCK_DV)


def _launch_dkv_v2(q, k_cmp, v_cmp, do, lse, delta, dk_cmp, dv_cmp, qk_scale: float, scale: float, common: dict,
                   packing: Packing | None = None):
    """dk_cmp/dv_cmp by the chunked v2 kernels: one launch when one chunk covers T, else partials + reduce.

    Packed: the grid's key tiles cover the most blocks of one sequence, its chunks the longest sequence;
    the partials hold every sequence's blocks ([chunks, sum_s Tc_s * Hkv, D]).
    """
    b, t = q.shape[:2]
    tc, hkv, dk, dv = k_cmp.shape[1], k_cmp.shape[2], k_cmp.shape[-1], v_cmp.shape[-1]
    rows_kv = b * tc * hkv
    block_cmp, stride_cmp = common["BLOCK_CMP"], common["STRIDE_CMP"]
    grid_b, arg_t, arg_tc = _extents(packing, b, t, tc, block_cmp, stride_cmp)
    cu, cmp_cu = _offsets(packing, block_cmp, stride_cmp)
    chunk, chunks = _dkv_chunks(arg_t, arg_tc, rows_kv, dk, dv)
    partial = chunks > 1
    if partial:
        dk_out = torch.empty(chunks, rows_kv, dk, dtype=torch.float32, device=q.device)
        dv_out = torch.empty(chunks, rows_kv, dv, dtype=torch.float32, device=q.device)
    else:
        dk_out, dv_out = dk_cmp, dv_cmp
    _cmp_bwd_dkv_chunk_kernel[lambda meta: (triton.cdiv(arg_tc, meta["BLOCK_N"]) * chunks, grid_b * hkv)](
        q, k_cmp, v_cmp, do, lse, delta, dk_out, dv_out, arg_t, arg_tc, hkv, rows_kv, chunk, qk_scale, scale,
        CU=cu, CMP_CU=cmp_cu, PARTIAL=partial, **common,
    )
    if partial:
        block_r = 16
        _cmp_dkv_reduce_kernel[(triton.cdiv(arg_tc, block_r), grid_b * hkv)](
            dk_out, dv_out, dk_cmp, dv_cmp, arg_tc, hkv, rows_kv, chunk, chunks, scale, cu, cmp_cu, DK=dk, DV=dv,
            DK_A=common["DK_A"], DK_B=common["DK_B"], BLOCK_DV=common["BLOCK_DV"], BLOCK_CMP=common["BLOCK_CMP"],
            STRIDE_CMP=common["STRIDE_CMP"], BLOCK_R=block_r, VARLEN=packing is not None, num_warps=4,
        )


_DQ_KEY = ["G_PAD", "DK_A", "DK_B", "BLOCK_DV", "BLOCK_CMP", "STRIDE_CMP", "VARLEN"]
_cmp_bwd_dq_v2_kernel = autotune(
    configs=_configs(_DQ_TILES_V2), key=_DQ_KEY, interpreter=_INTERPRETER,
    prune_configs_by={"early_config_prune": _prune_dq_rows},
)(_cmp_bwd_dq_kernel)
_cmp_bwd_dq_kernel = autotune(
    configs=_configs(_DQ_TILES), key=_DQ_KEY, interpreter=_INTERPRETER,
    prune_configs_by={"early_config_prune": _prune_rows},
)(_cmp_bwd_dq_kernel)


def compressed_bwd(
    q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    do: torch.Tensor, cfg: NSAConfig, scale: float, *, dkv_variant: str = "v2", dq_variant: str = "v2",
    dq_out: torch.Tensor | None = None, packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of compressed_fwd: (dq, dk_cmp, dv_cmp) in the input dtypes; dk/dv summed over G heads.

    Deterministic (no atomics): dq per query tile; dk_cmp/dv_cmp per compressed tile, and in
    dkv_variant "v2" (default) per (compressed tile, query chunk) with the chunks' fp32 partials
    summed in a fixed order. "v1" is the single-axis 16-block-tile kernel (kernels/variants.py).
    dq_variant "v2" (default) also tries dq tiles of 4-8 positions; "v1" only v1's 2-position tiles.
    dq_out: where dq goes (q's shape, contiguous, any float dtype; NSA passes its fp32 accumulator).
    Packed (a `Packing`, both variants v2): compressed_fwd's packed layouts; dq [1, total_T, Hq, Dk],
    dk_cmp/dv_cmp [1, sum_s Tc_s, Hkv, D], each sequence's gradients from its own rows only.
    """
    check_variant("dkv_variant", dkv_variant)
    check_variant("dq_variant", dq_variant)
    check_dq_chain(q, dq_out, None)
    group = _check_attention_inputs(q, k_cmp, v_cmp, cfg)
    scale = _check_scale(scale)
    _check_packed_attention(packing, q, k_cmp, cfg, dkv_variant=dkv_variant, dq_variant=dq_variant)
    b, t, hq, dk = q.shape
    tc, hkv, dv = k_cmp.shape[1], k_cmp.shape[2], v_cmp.shape[-1]
    _check_like("o", o, (b, t, hq, dv))
    _check_like("do", do, (b, t, hq, dv))
    _check_like("lse", lse, (b, t, hq), torch.float32)
    q, k_cmp, v_cmp = q.contiguous(), k_cmp.contiguous(), v_cmp.contiguous()
    o, do, lse = o.contiguous(), do.contiguous().to(q.dtype), lse.contiguous()
    if tc == 0 or b * t * hq == 0:
        dq = dq_out.zero_() if dq_out is not None else torch.zeros_like(q)
        return dq, torch.zeros_like(k_cmp), torch.zeros_like(v_cmp)
    rows = b * t * hq
    delta = torch.empty(b, t, hq, dtype=torch.float32, device=q.device)
    block_r = 32 if small_sizes() else 64
    _delta_kernel[(triton.cdiv(rows, block_r),)](o, do, delta, rows, DV=dv, BLOCK_DV=next_pow2(dv), BLOCK_R=block_r)

    g_pad = next_pow2(group)
    dk_a, dk_b = _split_head_dim(dk)
    common = dict(
        G=group, G_PAD=g_pad, DK=dk, DV=dv, DK_A=dk_a, DK_B=dk_b, BLOCK_DV=next_pow2(dv),
        BLOCK_CMP=cfg.block_cmp, STRIDE_CMP=cfg.stride_cmp, UPCAST=interpreting() and q.dtype == torch.bfloat16,
        VARLEN=packing is not None,
    )
    grid_b, grid_t, arg_tc = _extents(packing, b, t, tc, cfg.block_cmp, cfg.stride_cmp)
    common.update(tuning_buckets(grid_t, grid_b * hq))
    cu, cmp_cu = _offsets(packing, cfg.block_cmp, cfg.stride_cmp)
    dq = dq_out if dq_out is not None else torch.empty_like(q)
    dq_kernel = _cmp_bwd_dq_v2_kernel if dq_variant == "v2" else _cmp_bwd_dq_kernel
    dq_kernel[lambda meta: (triton.cdiv(grid_t, meta["BLOCK_M"] // g_pad), grid_b * hkv)](
        q, k_cmp, v_cmp, do, lse, delta, dq, grid_t, arg_tc, hkv, scale * _LOG2E, scale, CU=cu, CMP_CU=cmp_cu,
        **common,
    )
    dk_cmp = torch.empty_like(k_cmp)
    dv_cmp = torch.empty_like(v_cmp)
    if dkv_variant == "v1":
        dense = {name: value for name, value in common.items() if name != "VARLEN"}  # v1: no packed form
        _cmp_bwd_dkv_kernel[lambda meta: (triton.cdiv(tc, meta["BLOCK_N"]), b * hkv)](
            q, k_cmp, v_cmp, do, lse, delta, dk_cmp, dv_cmp, t, tc, hkv, scale * _LOG2E, scale, **dense,
        )
    else:
        _launch_dkv_v2(q, k_cmp, v_cmp, do, lse, delta, dk_cmp, dv_cmp, scale * _LOG2E, scale, common, packing)
    return dq, dk_cmp, dv_cmp
