"""The pieces both selected-attention modules use: selected.py (group-centric, padded groups) and
selected_small_g.py (KV-block-outer, small groups). Living here, rather than in selected.py, keeps the
import one way: selected.py dispatches to selected_small_g.py, which must not import it back.

- jit tile helpers: row tiles of row-major [*, D] tensors, key rows of a selection block (packed batches
  included), the fused gated epilogue;
- the two kernels both backwards launch: delta = rowsum(o * do) and the fp32 dk/dv partials' reduce;
- host code: the interpreter-aware launcher and the selection inverted into per-block query lists
  (segments, partial slots), for dense and packed batches (a `Packing`: global selection blocks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreter_config, next_pow2
from .packing import Packing


# ---------------------------------------------------------------- tile helpers
@triton.jit
def _row_tile(ptr, row, row_ok, D, D_PAD: tl.constexpr):
    """Pointers to rows `row` (int64) of a row-major [*, D] tensor, D_PAD columns, and the mask of real ones."""
    cols = tl.arange(0, D_PAD)
    return ptr + row[:, None] * D + cols[None, :], row_ok[:, None] & (cols < D)[None, :]


@triton.jit
def _load_cols(ptr, row, row_ok, cols, col_ok, D, UPCAST: tl.constexpr):
    """Columns `cols` (valid where col_ok) of rows `row` of a row-major [*, D] tensor, 0 where masked;
    fp32 if UPCAST. For kernels that keep the column offsets and masks for their own loops."""
    x = tl.load(ptr + row[:, None] * D + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_rows(ptr, row, row_ok, D, D_PAD: tl.constexpr, UPCAST: tl.constexpr):
    """Rows of a row-major [*, D] tensor, zero-filled past D and in masked rows; fp32 if UPCAST."""
    cols = tl.arange(0, D_PAD)
    return _load_cols(ptr, row, row_ok, cols, cols < D, D, UPCAST)


@triton.jit
def _store_rows(ptr, row, row_ok, x, D, D_PAD: tl.constexpr):
    """Store x [rows, D_PAD] into rows `row` of a row-major [*, D] tensor in its dtype."""
    ptrs, mask = _row_tile(ptr, row, row_ok, D, D_PAD)
    tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kv_rows(b, g, pos, T, HKV):
    """Rows of keys `pos` of (batch b, KV head g) in the [B*T*HKV] row space of k and v."""
    return b * T * HKV + g + pos * HKV


@triton.jit
def _seq_start(cu_ptr):
    """Packed batches: (first token as int64, length) of sequence program_id(2) from cu_seqlens."""
    seq = tl.program_id(2)
    bos = tl.load(cu_ptr + seq)
    return bos.to(tl.int64), tl.load(cu_ptr + seq + 1) - bos


@triton.jit
def _load_split_cols(ptr, row, row_ok, D, D_A: tl.constexpr, D_B: tl.constexpr, UPCAST: tl.constexpr):
    """Columns [0, D_A) and [D_A, D_A + D_B) of rows `row` of a row-major [*, D] tensor (0 past D)."""
    cols_a = tl.arange(0, D_A)
    cols_b = D_A + tl.arange(0, D_B)
    return (_load_cols(ptr, row, row_ok, cols_a, cols_a < D, D, UPCAST),
            _load_cols(ptr, row, row_ok, cols_b, cols_b < D, D, UPCAST))


@triton.jit
def _block_keys(j, key, T, cu_ptr, block_seq_ptr, slc_cu_ptr, BLOCK_SLC: tl.constexpr, VARLEN: tl.constexpr):
    """Token positions (int64) of offsets `key` inside selection block j, and which exist.

    Dense: block j of the sequence, T tokens. VARLEN (packed batch): j numbers the (sequence s, local
    block) pairs of the whole batch, j = slc_cu[s] + local (`PackedBatch`); block_seq_ptr[j] = s, and
    the positions are packed rows cu[s] + local * l' + key, which exist below cu[s + 1]."""
    if VARLEN:
        seq = tl.load(block_seq_ptr + j)
        bos = tl.load(cu_ptr + seq).to(tl.int64)
        eos = tl.load(cu_ptr + seq + 1).to(tl.int64)
        local = j - tl.load(slc_cu_ptr + seq).to(tl.int64)
        pos = bos + local * BLOCK_SLC + key
        pos_ok = pos < eos
    else:
        pos = j * BLOCK_SLC + key
        pos_ok = pos < T
    return pos, pos_ok


@triton.jit
def _gated_epilogue(o, o_ptr, gate_ptr, row, head_ok, dv_offs, dv_ok, DV, NUM_GATES: tl.constexpr,
                    ACCUMULATE: tl.constexpr):
    """gates[row, branch] * o in fp32, plus what o_ptr's rows already hold when ACCUMULATE.
    `gate_ptr` points at the branch's column of the contiguous [rows, NUM_GATES] gates."""
    gate = tl.load(gate_ptr + row * NUM_GATES, mask=head_ok, other=0.0).to(tl.float32)
    o = o * gate[:, None]
    if ACCUMULATE:
        o += _load_cols(o_ptr, row, head_ok, dv_offs, dv_ok, DV, True)
    return o


# ---------------------------------------------------------------- kernels both backwards launch
@triton.jit
def _delta_kernel(o_ptr, do_ptr, delta_ptr, ROWS, DV, BLOCK_R: tl.constexpr, DV_PAD: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_ok = rows < ROWS
    o = _load_rows(o_ptr, rows, rows_ok, DV, DV_PAD, True)
    do = _load_rows(do_ptr, rows, rows_ok, DV, DV_PAD, True)
    tl.store(delta_ptr + rows, tl.sum(o * do, axis=1), mask=rows_ok)


@triton.jit
def _dkdv_reduce_kernel(
    offsets_ptr, slots_ptr, dk_part_ptr, dv_part_ptr, dk_ptr, dv_ptr, cu_ptr, block_seq_ptr, slc_cu_ptr,
    T, HKV, DK, DV, NUM_BLOCKS, SEGMENT,
    BLOCK_SLC: tl.constexpr, DK_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, VARLEN: tl.constexpr,
):
    """dk/dv of the keys of a multi-segment list: its fp32 partials summed in segment order.
    VARLEN: global block numbers, as in `_selected_dkdv_body`."""
    CHUNKS: tl.constexpr = BLOCK_SLC // BLOCK_N
    pid = tl.program_id(0)
    j = (pid // CHUNKS).to(tl.int64)
    chunk = (pid % CHUNKS).to(tl.int64)
    bg = tl.program_id(1).to(tl.int64)
    b = bg // HKV
    g = bg % HKV
    bucket = bg * NUM_BLOCKS + j
    count = tl.load(offsets_ptr + bucket + 1) - tl.load(offsets_ptr + bucket)
    segments = (count + SEGMENT - 1) // SEGMENT
    if segments > 1:
        key = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
        pos, pos_ok = _block_keys(j, key, T, cu_ptr, block_seq_ptr, slc_cu_ptr, BLOCK_SLC, VARLEN)
        first = tl.load(slots_ptr + bucket).to(tl.int64)
        dk = tl.zeros([BLOCK_N, DK_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, DV_PAD], dtype=tl.float32)
        for s in range(0, segments):
            part_row = (first + s) * BLOCK_SLC + key
            dk += _load_rows(dk_part_ptr, part_row, pos_ok, DK, DK_PAD, False)
            dv += _load_rows(dv_part_ptr, part_row, pos_ok, DV, DV_PAD, False)
        kv_row = _kv_rows(b, g, pos, T, HKV)
        _store_rows(dk_ptr, kv_row, pos_ok, dk, DK, DK_PAD)
        _store_rows(dv_ptr, kv_row, pos_ok, dv, DV, DV_PAD)


# ---------------------------------------------------------------- host code
def launcher(kernel, grid, interp_meta: dict):
    """The autotuned kernel on a GPU; under the interpreter the bare kernel with `interp_meta`
    sizes that keep the interpreted loops short, unless a caller pinned its config or tunes on the CPU
    (kernels/overrides.py: then the autotuner runs it, as on a GPU)."""
    if interpreter_config(kernel):
        fixed_grid = grid(interp_meta) if callable(grid) else grid
        return lambda *args, **kwargs: kernel.fn[fixed_grid](*args, **kwargs, **interp_meta)
    return kernel[grid]


def used_slot_lists(
    block_idx: torch.Tensor, block_slc: int, num_blocks: int, packing: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """The bucketing both inversions share (selected.py's and selected_small_g's): block_idx sorted
    per row (int64), the stable order of its flat slots by (b, KV head, block) with unused slots last
    (int64), the CSR offsets (int64) and the index dtype (int32 unless the entries need int64).
    packing: buckets by (KV head, global block slc_cu[s] + j) and positions local to each row's sequence."""
    b, t, hkv, n = block_idx.shape
    device = block_idx.device
    blocks = torch.sort(block_idx.to(torch.int64), dim=-1).values
    repeat = torch.zeros_like(blocks, dtype=torch.bool)
    repeat[..., 1:] = blocks[..., 1:] == blocks[..., :-1]
    head = torch.arange(hkv, device=device, dtype=torch.int64).view(1, 1, hkv, 1)
    num_buckets = b * hkv * num_blocks
    if packing is None:
        pos = torch.arange(t, device=device, dtype=torch.int64).view(1, t, 1, 1)
        batch = torch.arange(b, device=device, dtype=torch.int64).view(b, 1, 1, 1)
        base = (batch * hkv + head) * num_blocks
    else:  # on the device, no host sync: each row's sequence by a search over cu_seqlens
        rows = torch.arange(t, device=device, dtype=torch.int64)
        cu = packing.cu.to(torch.int64)
        seq = torch.searchsorted(cu[1:].contiguous(), rows, right=True)
        pos = (rows - cu[seq]).view(1, t, 1, 1)
        base = head * num_blocks + packing.slc_offsets(block_slc).to(torch.int64)[seq].view(1, t, 1, 1)
    used = (blocks >= 0) & (blocks * block_slc <= pos) & ~repeat
    bucket = torch.where(used, base + blocks, num_buckets).reshape(-1)
    key_dtype = torch.int32 if num_buckets < 2**31 - 1 else torch.int64
    order = torch.argsort(bucket.to(key_dtype), stable=True)
    counts = torch.zeros(num_buckets + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, bucket, torch.ones_like(bucket))
    offsets = torch.zeros(num_buckets + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(counts[:num_buckets], dim=0)
    index_dtype = torch.int32 if bucket.numel() < 2**31 - 1 else torch.int64
    return offsets, order, blocks, index_dtype


def segment_len(n_slc: int, block_slc: int) -> int:
    """Queries per dk/dv program: four average lists (a list averages n * l' queries), so only
    long lists such as block 0's (every query selects it) are split."""
    return max(256, 4 * n_slc * block_slc)


def partial_slots(offsets: torch.Tensor, segment: int, entries: int) -> tuple[torch.Tensor, int]:
    """First fp32 partial slot of every list longer than one segment (exclusive cumsum on the
    device), and a host-side bound on the slots: such lists hold more than `segment` entries
    each, so their segments number at most 2 * entries / segment in all."""
    counts = (offsets[1:] - offsets[:-1]).to(torch.int64)
    parts = (counts + segment - 1) // segment
    parts = torch.where(parts > 1, parts, torch.zeros_like(parts))
    slots = torch.cumsum(parts, dim=0) - parts
    return slots, max(1, 2 * entries // segment)


def reduce_launch(packing: Packing | None) -> dict:
    """VARLEN and warps of a `_dkdv_reduce_kernel` launch: packed ones take 8 warps (at 4, sm_90 at
    Dk = 192 caps it at 168 registers and the block-table lookups spill 24 B; dense ones keep 4)."""
    return {"VARLEN": False} if packing is None else {"VARLEN": True, "num_warps": 8}


def row_delta(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """FlashAttention-2 preprocess: delta = rowsum(o * do) in fp32, [B,T,Hq]."""
    rows = o.numel() // o.shape[-1]
    delta = torch.empty(o.shape[:-1], dtype=torch.float32, device=o.device)
    block_r = 16
    _delta_kernel[(triton.cdiv(rows, block_r),)](
        o, do, delta, rows, o.shape[-1], BLOCK_R=block_r, DV_PAD=max(16, next_pow2(o.shape[-1])),
    )
    return delta
