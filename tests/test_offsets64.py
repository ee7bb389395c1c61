"""Offsets past 2^31 elements: the kernels' pointer arithmetic is int64 where it must be.

A 1M-token point cannot run in the interpreter, but its offsets can: tensors are allocated with
torch.empty (virtual memory: untouched pages cost nothing and read as zeros), only the rows the
checked programs read are filled, and `run_only` makes the interpreter run just the programs that
compute the checked rows, whose outputs are compared with the float64 reference. Offsets that
wrapped in int32 would read and write far outside those rows (garbage, or a crash).

The forward kernels run on contiguous [2, 1M, 16, 192] queries (the checked rows, of sequence 1, lie past
3.2e9 elements; those of o past 2^31), the decode and dense decode kernels on caches whose batch
stride is 2^31 + 4096 elements.
"""
from __future__ import annotations

import pytest
import torch

from nsa_bench import reference
from nsa_kernels import compressed, decode, flash, gated_sum, selected
from nsa_kernels.config import NSAConfig

pytestmark = pytest.mark.interpreter

CFG = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16, window=512)  # the paper's
B, T = 2, 1 << 20  # sequence 1 of q [2, T, 16, 192] starts at 3.2e9 elements, of o [2, T, 16, 128] at 2^31
HQ, DK, DV = 16, 192, 128
SCALE = DK**-0.5
FILLED = 1024  # rows of sequence 1 filled with random values (the rest reads as zeros)
P = 63  # the position checked: sequence 1, past the first compressed blocks
EDGE = 64  # gated sum: 16-row programs of sequence 1 run (positions < 64)


def _last_first_tiles(tiles: int):
    """Tiles issued last-first (compressed, flash): the `tiles` first tiles of the last (batch, head)."""
    return lambda x, y, z, nx, ny, nz: x >= nx - tiles and y == ny - 1 and z == nz - 1


def _selected_tile(positions: int):
    """selected.py's (T / positions, Hkv, B) grid: the program of position P of the last batch."""
    return lambda x, y, z, nx, ny, nz: x == P // positions and y == ny - 1 and z == nz - 1


def _big(*shape: int, seed: int = 0, filled: int = FILLED, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """A virtual [B, T, H, D] tensor whose first `filled` rows of the last batch are random."""
    x = torch.empty(*shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    x[-1, :filled] = torch.randn(filled, *shape[2:], generator=gen).to(dtype)
    return x


def _close(out: torch.Tensor, ref: torch.Tensor, tol: float = 2e-3) -> None:
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < tol, err


def _q() -> torch.Tensor:
    q = _big(B, T, HQ, DK)
    assert q.stride(0) * (B - 1) > 2**31
    return q


def _row(x: torch.Tensor) -> torch.Tensor:
    """Row P of the last batch, as a float64 [1, 1, H, D] tensor."""
    return x[-1:, P : P + 1].double()


POS = torch.tensor([P])


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_compressed_attention_and_selection_past_2_31(run_only, variant):
    run_only(_last_first_tiles(P // 4 + 1))  # interpreter tiles: 4 positions x 16 heads
    q = _q()
    tc = CFG.num_cmp_blocks(T)
    # zeros, not torch.empty: tile loads read blocks past the visible ones (masked to p = 0, but 0 x NaN
    # garbage is NaN), and reused memory is not guaranteed to read as zeros
    k_cmp, v_cmp = torch.zeros(B, tc, 1, DK, dtype=torch.float16), torch.zeros(B, tc, 1, DV, dtype=torch.float16)
    gen = torch.Generator().manual_seed(1)
    k_cmp[-1, :8], v_cmp[-1, :8] = (torch.randn(8, 1, d, generator=gen).half() for d in (DK, DV))
    o, lse = compressed.compressed_fwd(q, k_cmp, v_cmp, CFG, SCALE, variant=variant)
    ref_o, p = reference._cmp_rows(_row(q), POS, k_cmp[-1:, :8].double(), v_cmp[-1:, :8].double(), CFG, SCALE)
    _close(o[-1:, P : P + 1], ref_o)
    block_idx = compressed.select_blocks(q, k_cmp, CFG, SCALE, lse=lse, variant=variant)
    want = reference._select_rows(reference._scores_from_probs(p, CFG, CFG.num_slc_blocks(P + 1)), POS, CFG)
    assert block_idx[-1, P, 0].tolist() == want[0, 0, 0].tolist()


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_selected_attention_past_2_31(run_only, variant):
    run_only(_selected_tile(1 if variant == "v1" else selected._tile_interp_meta(HQ, CFG.block_slc, 4)["POSITIONS"]))
    q = _q()
    k, v = _big(B, T, 1, DK, seed=2), _big(B, T, 1, DV, seed=3)
    block_idx = torch.full((B, T, 1, CFG.n_slc), -1, dtype=torch.int32)
    block_idx[-1, P, 0, :3] = torch.tensor([0, 5, 0], dtype=torch.int32)  # block 5 lies past P: unused
    o, _ = selected.selected_fwd(q, k, v, block_idx, CFG.block_slc, SCALE, variant=variant)
    ref = reference._slc_rows(_row(q), POS, k[-1:].double()[:, :FILLED], v[-1:].double()[:, :FILLED],
                              block_idx[-1:, P : P + 1], CFG, SCALE)
    _close(o[-1:, P : P + 1], ref)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_window_attention_past_2_31(run_only, variant):
    """The batch base passes 2^31 here; rows within one (batch, head) plane do not, so flash's ROW64
    per-row int64 (chosen at this size, asserted below) is checked by the sm_90 compile only."""
    run_only(_last_first_tiles(P // 32 + 1))  # interpreter tiles: 32 positions
    q = _q()
    k, v = _big(B, T, 1, DK, seed=5), _big(B, T, 1, DV, seed=6)
    assert flash._needs_row64(T, q, k, v)
    o, _ = flash.attention_fwd(q, k, v, SCALE, window=CFG.window, variant=variant)
    ref = reference._win_rows(_row(q), POS, k[-1:].double(), v[-1:].double(), CFG.window, SCALE)
    _close(o[-1:, P : P + 1, -1], ref[:, :, -1])  # grid axis 1 is B x Hq: only the last head ran


def test_gated_sum_past_2_31(run_only):
    run_only(lambda x, y, z, nx, ny, nz: T <= x < T + EDGE)  # 16-row programs: sequence 1, positions < 64
    branches = [_big(B, T, HQ, DV, seed=s, filled=EDGE) for s in (7, 8, 9)]
    assert branches[0].stride(0) * (B - 1) >= 2**31
    gates = _big(B, T, HQ, 3, seed=10, filled=EDGE)
    out = gated_sum.gated_sum_fwd(gates, *branches)
    g = _row(gates)
    _close(out[-1:, P : P + 1], sum(g[..., i : i + 1] * _row(branches[i]) for i in range(3)), tol=1e-3)


def _far_apart_caches(batch: int, tmax: int, kv_heads: int, dk: int, dv: int):
    """k/v caches [B, Tmax, Hkv, D] whose batch stride is 2^31 + 4096 elements (virtual memory)."""
    stride_b = 2**31 + 4096
    storage = torch.empty(stride_b * (batch - 1) + tmax * kv_heads * (dk + dv), dtype=torch.float32)
    k = storage.as_strided((batch, tmax, kv_heads, dk), (stride_b, kv_heads * dk, dk, 1))
    v = storage.as_strided((batch, tmax, kv_heads, dv), (stride_b, kv_heads * dv, dv, 1), tmax * kv_heads * dk)
    gen = torch.Generator().manual_seed(11)
    k.copy_(torch.randn(k.shape, generator=gen))
    v.copy_(torch.randn(v.shape, generator=gen))
    return k, v


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_decode_with_batch_stride_past_2_31(variant):
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=4, window=40)
    k, v = _far_apart_caches(2, 150, 2, 32, 16)
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(2, 4, 32, generator=gen)
    gates = torch.rand(2, 4, 3, generator=gen) + 0.1
    seqlens = torch.tensor([150, 97], dtype=torch.int32)
    out, _ = decode.nsa_decode_with_selection(q, k, v, gates, seqlens, cfg, variant=variant)
    ref = reference.nsa_decode(q.double(), k.contiguous().double(), v.contiguous().double(), gates.double(),
                               seqlens, cfg)
    _close(out, ref, tol=1e-4)


def test_dense_decode_with_batch_stride_past_2_31():
    k, v = _far_apart_caches(2, 150, 2, 32, 16)
    q = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(13))
    seqlens = torch.tensor([150, 97], dtype=torch.int32)
    out = flash.flash_attention_decode(q, k, v, seqlens)
    _close(out, flash.flash_attention_decode(q, k.contiguous(), v.contiguous(), seqlens), tol=1e-6)
