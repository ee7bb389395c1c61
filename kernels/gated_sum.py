"""The gated sum o = g0*o_cmp + g1*o_slc + g2*o_win (NSA_SPEC section 6), forward and backward.

One pass over the three branch outputs in each direction: the backward produces the three branch
gradients and dgates together, so the branch outputs are read once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import next_pow2

_BLOCK_ROWS = 16


@triton.jit
def _tile(rows, dim, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows (int64), their validity, the [rows, dim] mask and element offsets."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS).to(tl.int64)
    col = tl.arange(0, BLOCK_D)
    row_ok = row < rows
    mask = row_ok[:, None] & (col[None, :] < dim)
    return row, row_ok, mask, row[:, None] * dim + col[None, :]


@triton.jit
def _load_gates(gates, row, row_ok):
    g0 = tl.load(gates + row * 3 + 0, mask=row_ok, other=0.0).to(tl.float32)
    g1 = tl.load(gates + row * 3 + 1, mask=row_ok, other=0.0).to(tl.float32)
    g2 = tl.load(gates + row * 3 + 2, mask=row_ok, other=0.0).to(tl.float32)
    return g0, g1, g2


@triton.jit
def _gated_sum_fwd_kernel(
    gates, o_cmp, o_slc, o_win, out, rows, dim,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row, row_ok, mask, offs = _tile(rows, dim, BLOCK_ROWS, BLOCK_D)
    g0, g1, g2 = _load_gates(gates, row, row_ok)
    acc = g0[:, None] * tl.load(o_cmp + offs, mask=mask, other=0.0).to(tl.float32)
    acc += g1[:, None] * tl.load(o_slc + offs, mask=mask, other=0.0).to(tl.float32)
    acc += g2[:, None] * tl.load(o_win + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + offs, acc.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _gated_sum_bwd_kernel(
    gates, o_cmp, o_slc, o_win, do, d_gates, do_cmp, do_slc, do_win, rows, dim,
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row, row_ok, mask, offs = _tile(rows, dim, BLOCK_ROWS, BLOCK_D)
    grad = tl.load(do + offs, mask=mask, other=0.0).to(tl.float32)
    g0, g1, g2 = _load_gates(gates, row, row_ok)
    tl.store(do_cmp + offs, (g0[:, None] * grad).to(do_cmp.dtype.element_ty), mask=mask)
    tl.store(do_slc + offs, (g1[:, None] * grad).to(do_slc.dtype.element_ty), mask=mask)
    tl.store(do_win + offs, (g2[:, None] * grad).to(do_win.dtype.element_ty), mask=mask)
    dg0 = tl.sum(grad * tl.load(o_cmp + offs, mask=mask, other=0.0).to(tl.float32), axis=1)
    dg1 = tl.sum(grad * tl.load(o_slc + offs, mask=mask, other=0.0).to(tl.float32), axis=1)
    dg2 = tl.sum(grad * tl.load(o_win + offs, mask=mask, other=0.0).to(tl.float32), axis=1)
    tl.store(d_gates + row * 3 + 0, dg0.to(d_gates.dtype.element_ty), mask=row_ok)
    tl.store(d_gates + row * 3 + 1, dg1.to(d_gates.dtype.element_ty), mask=row_ok)
    tl.store(d_gates + row * 3 + 2, dg2.to(d_gates.dtype.element_ty), mask=row_ok)


def _launch_shape(o_cmp: torch.Tensor) -> tuple[int, int, tuple[int]]:
    dim = o_cmp.shape[-1]
    rows = o_cmp.numel() // dim
    return rows, dim, (triton.cdiv(rows, _BLOCK_ROWS),)


def gated_sum_fwd(gates: torch.Tensor, o_cmp: torch.Tensor, o_slc: torch.Tensor, o_win: torch.Tensor) -> torch.Tensor:
    """o = gates[...,0]*o_cmp + gates[...,1]*o_slc + gates[...,2]*o_win, in o_cmp's dtype."""
    gates, o_cmp, o_slc, o_win = (t.contiguous() for t in (gates, o_cmp, o_slc, o_win))
    out = torch.empty_like(o_cmp)
    rows, dim, grid = _launch_shape(o_cmp)
    _gated_sum_fwd_kernel[grid](gates, o_cmp, o_slc, o_win, out, rows, dim,
                                BLOCK_ROWS=_BLOCK_ROWS, BLOCK_D=next_pow2(max(dim, 16)))
    return out


def gated_sum_bwd(
    gates: torch.Tensor, o_cmp: torch.Tensor, o_slc: torch.Tensor, o_win: torch.Tensor, do: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dgates, do_cmp, do_slc, do_win) from the output gradient `do`."""
    gates, o_cmp, o_slc, o_win, do = (t.contiguous() for t in (gates, o_cmp, o_slc, o_win, do))
    d_gates = torch.empty_like(gates)
    do_cmp, do_slc, do_win = (torch.empty_like(o_cmp) for _ in range(3))
    rows, dim, grid = _launch_shape(o_cmp)
    _gated_sum_bwd_kernel[grid](gates, o_cmp, o_slc, o_win, do, d_gates, do_cmp, do_slc, do_win, rows, dim,
                                BLOCK_ROWS=_BLOCK_ROWS, BLOCK_D=next_pow2(max(dim, 16)))
    return d_gates, do_cmp, do_slc, do_win
