"""Plain-PyTorch NSA, exactly as NSA_SPEC.md defines it: the yardstick for every kernel.

Any dtype (float64 included) and any device. Every forward function also takes `cu_seqlens` (int32
[N+1], flash-attn's varlen convention) with tensors [1, total_T, H, D]: a packed batch whose
sequences are computed one by one, each exactly as a batch of one (docs/varlen.md); that per-sequence
loop is the definition of varlen NSA, so nothing can cross a sequence boundary. Work is done in query chunks whose size keeps
each chunk's score tensor under a fixed element budget, so memory grows with T, not T^2, and
the reference can run at a few thousand tokens on a GPU. Internally it computes in at least
float32 and returns the input dtype. With autograd on, each chunk is checkpointed so the
backward does not keep every chunk's probabilities alive.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nsa_kernels import varlen
from nsa_kernels.config import NSAConfig

__all__ = [
    "NSAConfig",
    "compress_kv",
    "select_blocks",
    "nsa_attention",
    "nsa_decode",
    "compressed_attention",
    "selected_attention",
    "window_attention",
    "block_scores",
    "decode_block_scores",
    "select_from_scores",
    "causal_attention",
]

# Elements of one chunk's [B, C, Hq, keys] score tensor; 2^24 float64 = 128 MiB.
_CHUNK_ELEMENTS = 1 << 24


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scale(scale: float | None, head_dim: int) -> float:
    return head_dim**-0.5 if scale is None else float(scale)


def _chunk_size(batch: int, heads: int, keys: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, batch * heads * max(keys, 1)))


def _gqa(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, C, Hq, D] -> [B, C, Hkv, G, D]: head h reads KV head h // G."""
    b, c, hq, d = q.shape
    if hq % kv_heads:
        raise ValueError(f"query heads {hq} must be a multiple of KV heads {kv_heads}")
    return q.reshape(b, c, kv_heads, hq // kv_heads, d)


def _masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q [B,C,Hq,Dk] over keys k/v [B,S,Hkv,*] where `allowed` [B|1,C,Hkv|1,1,S].

    Returns (o [B,C,Hq,Dv], p [B,C,Hkv,G,S]). A row with no allowed key gives o = 0 and p = 0.
    """
    qg = _gqa(q, k.shape[2])
    if k.shape[1] == 0:  # no keys at all (e.g. no compressed block yet)
        p = qg.new_zeros(*qg.shape[:-1], 0)
        # zero output that stays connected to q, so autograd yields zero (not missing) gradients
        return q.new_zeros(*q.shape[:-1], v.shape[-1]) + 0 * q.sum(), p
    logits = torch.einsum("bchgd,bshd->bchgs", qg, k) * scale
    logits = logits.masked_fill(~allowed, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    p = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    o = torch.einsum("bchgs,bshd->bchgd", p, v)
    return o.reshape(q.shape[0], q.shape[1], q.shape[2], v.shape[-1]), p


def _by_chunks(
    rows: Callable[[int, int], torch.Tensor], seqlen: int, chunk: int, grad: bool
) -> torch.Tensor:
    """Concatenate rows(t0, t1) over query chunks along dim 1, checkpointing when grads flow."""
    parts = []
    for t0 in range(0, seqlen, chunk):
        t1 = min(seqlen, t0 + chunk)
        if grad:
            parts.append(checkpoint(rows, t0, t1, use_reentrant=False))
        else:
            parts.append(rows(t0, t1))
    return torch.cat(parts, dim=1)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _per_sequence(
    cu_seqlens: torch.Tensor, q: torch.Tensor, piece: Callable[[int, int, int], torch.Tensor],
    empty: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """piece(i, start, end) of every non-empty sequence of a packed batch, concatenated along dim 1."""
    parts = [piece(i, s, e) for i, (s, e) in enumerate(varlen.spans(cu_seqlens, q.shape[1], q.shape[0])) if e > s]
    return torch.cat(parts, dim=1) if parts else empty()


def _cmp_slices(cu_seqlens: torch.Tensor, cfg: NSAConfig, k_cmp: torch.Tensor) -> list[slice]:
    """The slice of each sequence's compressed blocks in a packed k_cmp (checks its length)."""
    return [slice(s, e) for s, e in varlen.cmp_spans(cu_seqlens, cfg, k_cmp.shape[1])]


# ---------------------------------------------------------------- section 1: compression
def compress_kv(
    k: torch.Tensor, v: torch.Tensor, cfg: NSAConfig, cu_seqlens: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over each compressed block [i*d, i*d + l): k_cmp [B,Tc,Hkv,Dk], v_cmp [B,Tc,Hkv,Dv].

    Packed (cu_seqlens): each sequence's blocks, local to it, concatenated: [1, sum_i Tc(L_i), Hkv, D]
    (offsets `varlen.cmp_cu_seqlens`); a sequence shorter than l adds none.
    """
    if cu_seqlens is None:
        return _compress(k, cfg), _compress(v, cfg)
    parts = varlen.spans(cu_seqlens, k.shape[1], k.shape[0])

    def packed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_compress(x[:, s:e], cfg) for s, e in parts] or [x.new_zeros(1, 0, *x.shape[2:])], dim=1)

    return packed(k), packed(v)


def _compress(x: torch.Tensor, cfg: NSAConfig) -> torch.Tensor:
    b, t, h, d = x.shape
    tc = cfg.num_cmp_blocks(t)
    if tc == 0:
        return x.new_zeros(b, 0, h, d)
    # unfold over T: [B, Tc, H, D, l]
    return x.unfold(1, cfg.block_cmp, cfg.stride_cmp).mean(dim=-1)


# ---------------------------------------------------------------- section 2: compressed attention
def _cmp_rows(
    q: torch.Tensor, pos: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, cfg: NSAConfig, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compressed attention for query rows at positions `pos` [C]: (o, p [B,C,Hkv,G,Tc])."""
    tc = k_cmp.shape[1]
    ends = torch.arange(tc, device=q.device) * cfg.stride_cmp + cfg.block_cmp - 1
    allowed = (ends[None, :] <= pos[:, None])[None, :, None, None, :]
    return _masked_attention(q, k_cmp, v_cmp, allowed, scale)


def compressed_attention(
    q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Branch "cmp": o_cmp [B,T,Hq,Dv]; a query that sees no compressed block gets 0.

    Packed (cu_seqlens): k_cmp/v_cmp in compress_kv's packed layout; each query sees its own sequence's blocks.
    """
    if cu_seqlens is not None:
        cmp = _cmp_slices(cu_seqlens, cfg, k_cmp)
        return _per_sequence(
            cu_seqlens, q, lambda i, s, e: compressed_attention(q[:, s:e], k_cmp[:, cmp[i]], v_cmp[:, cmp[i]], cfg, scale),
            lambda: q.new_zeros(1, 0, q.shape[2], v_cmp.shape[-1]))

    def rows(qc, pos, kw, vw, sc, t0, t1):
        return _cmp_rows(qc, pos, kw, vw, cfg, sc)[0]

    return _over_rows(q, k_cmp, v_cmp, scale, k_cmp.shape[1], rows)


def _over_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, keys_per_row: int,
    rows: Callable[..., torch.Tensor], max_chunk: int | None = None,
) -> torch.Tensor:
    """A branch over all query rows: `rows(q_chunk, positions, k, v, scale, t0, t1)` per chunk, in the
    working dtype, chunked so each chunk's scores stay within the element budget."""
    sc = _scale(scale, q.shape[-1])
    wd = _work_dtype(q.dtype)
    qw, kw, vw = q.to(wd), k.to(wd), v.to(wd)
    b, t, hq, _ = q.shape
    pos_all = torch.arange(t, device=q.device)
    chunk = _chunk_size(b, hq, keys_per_row)
    if max_chunk is not None:
        chunk = max(1, min(chunk, max_chunk))

    def part(t0: int, t1: int) -> torch.Tensor:
        return rows(qw[:, t0:t1], pos_all[t0:t1], kw, vw, sc, t0, t1)

    return _by_chunks(part, t, chunk, _needs_grad(q, k, v)).to(q.dtype)


# ---------------------------------------------------------------- section 3: scores and selection
def _scores_from_probs(p: torch.Tensor, cfg: NSAConfig, num_slc: int) -> torch.Tensor:
    """Group scores S [B,C,Hkv,num_slc] from p_cmp [B,C,Hkv,G,Tc] (overlap-weighted Eq. 9, Eq. 10).

    s_j = sum_{m<l'/d} sum_{n<l/d} p[(l'/d) j + m - n]: a moving sum over l/d compressed blocks,
    then a sum over each selection block's l'/d stride chunks.
    """
    per_slc = cfg.block_slc // cfg.stride_cmp
    per_cmp = cfg.block_cmp // cfg.stride_cmp
    grouped = p.sum(dim=3)  # [B,C,Hkv,Tc]
    tc = grouped.shape[-1]
    span = num_slc * per_slc
    if tc >= span:
        grouped = grouped[..., :span]
    else:
        grouped = F.pad(grouped, (0, span - tc))
    padded = F.pad(grouped, (per_cmp - 1, 0))
    moving = padded.unfold(-1, per_cmp, 1).sum(dim=-1)  # [..., span]
    return moving.reshape(*moving.shape[:-1], num_slc, per_slc).sum(dim=-1)


def _select_rows(scores: torch.Tensor, pos: torch.Tensor, cfg: NSAConfig) -> torch.Tensor:
    """Top-n selection for rows at `pos` from group scores [B,C,Hkv,Nslc] -> int32 [B,C,Hkv,n]."""
    num_slc = scores.shape[-1]
    j = torch.arange(num_slc, device=scores.device)
    current = (pos // cfg.block_slc)[:, None]  # [C,1]
    candidate = j[None, :] <= current
    forced = (j[None, :] == 0) | (j[None, :] == current) | (j[None, :] == current - 1)
    ranked = scores.to(torch.float64)
    ranked = torch.where(forced[None, :, None, :] & candidate[None, :, None, :], float("inf"), ranked)
    ranked = torch.where(candidate[None, :, None, :], ranked, float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True)  # ties: lower j first
    take = min(cfg.n_slc, num_slc)
    idx = order.indices[..., :take]
    valid = order.values[..., :take] != float("-inf")
    idx = torch.where(valid, idx, torch.full_like(idx, -1)).to(torch.int32)
    if take < cfg.n_slc:
        idx = F.pad(idx, (0, cfg.n_slc - take), value=-1)
    return idx


def block_scores(
    q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group block scores S [B,T,Hkv,ceil(T/l')] (float64) — what selection ranks.

    Packed (cu_seqlens): [1, total_T, Hkv, max_i ceil(L_i/l')], column j = the sequence's own block j;
    columns past a sequence's last block hold -inf (no such block).
    """
    if cu_seqlens is None:
        return _scores_and_selection(q, k_cmp, cfg, scale)[0]
    cmp = _cmp_slices(cu_seqlens, cfg, k_cmp)
    width = max([cfg.num_slc_blocks(n) for n in varlen.seqlens(cu_seqlens)] or [0])

    def piece(i: int, s: int, e: int) -> torch.Tensor:
        scores = _scores_and_selection(q[:, s:e], k_cmp[:, cmp[i]], cfg, scale)[0]
        return F.pad(scores, (0, width - scores.shape[-1]), value=float("-inf"))

    return _per_sequence(cu_seqlens, q, piece, lambda: q.new_zeros(1, 0, k_cmp.shape[2], width, dtype=torch.float64))


def select_from_scores(scores: torch.Tensor, cfg: NSAConfig, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Selection from group scores [B,T,Hkv,Nslc] for rows at positions 0..T-1 (packed: local positions)."""
    if cu_seqlens is not None:
        def piece(i: int, s: int, e: int) -> torch.Tensor:
            local = scores[:, s:e, :, : cfg.num_slc_blocks(e - s)]
            return _select_rows(local, torch.arange(e - s, device=scores.device), cfg)

        return _per_sequence(cu_seqlens, scores, piece,
                             lambda: torch.zeros(1, 0, scores.shape[2], cfg.n_slc, dtype=torch.int32, device=scores.device))
    pos = torch.arange(scores.shape[1], device=scores.device)
    return _select_rows(scores, pos, cfg)


def _scores_and_selection(
    q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    sc = _scale(scale, q.shape[-1])
    b, t, hq, _ = q.shape
    num_slc = cfg.num_slc_blocks(t)
    qw, kw = q.detach().to(torch.float64), k_cmp.detach().to(torch.float64)
    vw = kw.new_zeros(*kw.shape[:3], 1)  # values unused: only p_cmp is needed
    chunk = _chunk_size(b, hq, max(k_cmp.shape[1], num_slc))
    scores, idx = [], []
    for t0 in range(0, t, chunk):
        t1 = min(t, t0 + chunk)
        pos = torch.arange(t0, t1, device=q.device)
        _, p = _cmp_rows(qw[:, t0:t1], pos, kw, vw, cfg, sc)
        s = _scores_from_probs(p, cfg, num_slc)
        scores.append(s)
        idx.append(_select_rows(s, pos, cfg))
    return torch.cat(scores, dim=1), torch.cat(idx, dim=1)


@torch.no_grad()
def select_blocks(
    q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Section 3: block_idx [B,T,Hkv,n] int32, -1 padded. Scores are computed in float64.

    Packed (cu_seqlens): [1, total_T, Hkv, n], block numbers local to each query's own sequence.
    """
    if cu_seqlens is not None:
        cmp = _cmp_slices(cu_seqlens, cfg, k_cmp)
        return _per_sequence(
            cu_seqlens, q, lambda i, s, e: _scores_and_selection(q[:, s:e], k_cmp[:, cmp[i]], cfg, scale)[1],
            lambda: torch.zeros(1, 0, k_cmp.shape[2], cfg.n_slc, dtype=torch.int32, device=q.device))
    return _scores_and_selection(q, k_cmp, cfg, scale)[1]


# ---------------------------------------------------------------- section 4: selected attention
def _slc_rows(
    q: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_idx: torch.Tensor,
    cfg: NSAConfig, scale: float,
) -> torch.Tensor:
    """Selected attention for rows at `pos`; block_idx [B,C,Hkv,n] (-1 = none)."""
    s = int(pos.max().item()) + 1
    num_slc = cfg.num_slc_blocks(s)
    key_block = torch.arange(s, device=q.device) // cfg.block_slc  # [S]
    # chosen[b,c,h,s] = key s's block is among the row's selected blocks; -1 lands in a spare slot
    idx = block_idx.long()
    idx = torch.where((idx >= 0) & (idx < num_slc), idx, torch.full_like(idx, num_slc))
    picked = torch.zeros(*idx.shape[:-1], num_slc + 1, dtype=torch.bool, device=q.device)
    picked.scatter_(-1, idx, True)
    chosen = picked[..., key_block]  # [B,C,Hkv,S]
    causal = torch.arange(s, device=q.device)[None, :] <= pos[:, None]  # [C,S]
    allowed = (chosen & causal[None, :, None, :])[:, :, :, None, :]
    return _masked_attention(q, k[:, :s], v[:, :s], allowed, scale)[0]


def selected_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_idx: torch.Tensor, cfg: NSAConfig,
    scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Branch "slc": each query attends to keys p <= t in its group's selected blocks.

    Packed (cu_seqlens): block_idx [1, total_T, Hkv, n] numbers blocks within each query's sequence.
    """
    if cu_seqlens is not None:
        _check_packed_block_idx(block_idx, k)
        return _per_sequence(
            cu_seqlens, q,
            lambda i, s, e: selected_attention(q[:, s:e], k[:, s:e], v[:, s:e], block_idx[:, s:e], cfg, scale),
            lambda: q.new_zeros(1, 0, q.shape[2], v.shape[-1]))

    def rows(qc, pos, kw, vw, sc, t0, t1):
        return _slc_rows(qc, pos, kw, vw, block_idx[:, t0:t1], cfg, sc)

    return _over_rows(q, k, v, scale, 2 * q.shape[1], rows)


# ---------------------------------------------------------------- section 5: sliding window
def _win_rows(
    q: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float
) -> torch.Tensor:
    """Window attention for rows at `pos` (ascending): keys max(0, t-w+1) .. t."""
    lo = max(0, int(pos.min().item()) - window + 1)
    hi = int(pos.max().item()) + 1
    keys = torch.arange(lo, hi, device=q.device)
    allowed = (keys[None, :] <= pos[:, None]) & (keys[None, :] > pos[:, None] - window)
    return _masked_attention(q, k[:, lo:hi], v[:, lo:hi], allowed[None, :, None, None, :], scale)[0]


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: NSAConfig | int, scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Branch "win": query t attends to keys max(0, t-w+1) .. t. `cfg` may be a bare window size.

    Packed (cu_seqlens): t and the window are positions within the query's own sequence.
    """
    if cu_seqlens is not None:
        return _per_sequence(cu_seqlens, q, lambda i, s, e: window_attention(q[:, s:e], k[:, s:e], v[:, s:e], cfg, scale),
                             lambda: q.new_zeros(1, 0, q.shape[2], v.shape[-1]))
    window = cfg if isinstance(cfg, int) else cfg.window

    def rows(qc, pos, kw, vw, sc, t0, t1):
        return _win_rows(qc, pos, kw, vw, window, sc)

    # a chunk of C rows reads C + w - 1 keys: cap C near w so the key span stays about 2w
    return _over_rows(q, k, v, scale, 2 * (min(q.shape[1], window) + 64), rows, max_chunk=max(window, 64))


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense causal attention (GQA, Dk != Dv allowed): the FlashAttention-2 baseline's semantics.

    Packed (cu_seqlens): causal within each sequence, as flash_attn_varlen_func(causal=True).
    """
    if cu_seqlens is not None:
        return _per_sequence(cu_seqlens, q, lambda i, s, e: causal_attention(q[:, s:e], k[:, s:e], v[:, s:e], scale),
                             lambda: q.new_zeros(1, 0, q.shape[2], v.shape[-1]))
    return window_attention(q, k, v, max(1, q.shape[1]), scale)


# ---------------------------------------------------------------- section 6: output
def nsa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig,
    scale: float | None = None, block_idx: torch.Tensor | None = None,
    k_cmp: torch.Tensor | None = None, v_cmp: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sections 1-6: o [B,T,Hq,Dv] = g0*o_cmp + g1*o_slc + g2*o_win; differentiable (section 8).

    Packed (cu_seqlens, int32 [N+1]; tensors [1, total_T, H, D]): every sequence alone, as a batch of
    one; block_idx, k_cmp and v_cmp, when given, in the packed layouts of select_blocks and compress_kv.
    """
    _check_shapes(q, k, v, gates)
    if (k_cmp is None) != (v_cmp is None):
        raise ValueError("pass both k_cmp and v_cmp, or neither")
    if cu_seqlens is not None:
        varlen.spans(cu_seqlens, q.shape[1], q.shape[0])
        if block_idx is not None:
            _check_packed_block_idx(block_idx, k)
    if k_cmp is None:
        k_cmp, v_cmp = compress_kv(k, v, cfg, cu_seqlens)
    if block_idx is None:
        block_idx = select_blocks(q, k_cmp, cfg, scale, cu_seqlens)
    o_cmp = compressed_attention(q, k_cmp, v_cmp, cfg, scale, cu_seqlens)
    o_slc = selected_attention(q, k, v, block_idx, cfg, scale, cu_seqlens)
    o_win = window_attention(q, k, v, cfg, scale, cu_seqlens)
    g = gates.to(o_cmp.dtype)
    return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win


def decode_block_scores(
    q: torch.Tensor, k_cache: torch.Tensor, cache_seqlens: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
) -> list[torch.Tensor]:
    """Each sequence's group block scores S [Hkv, ceil(L/l')] (float64) at its decode row t = L-1 (q [B,Hq,Dk]):
    what `nsa_decode`'s selection ranks, for judging a kernel's selection by NSA_SPEC's validity rule."""
    sc = _scale(scale, q.shape[-1])
    out = []
    for b in range(q.shape[0]):
        length = int(cache_seqlens[b])
        kb = k_cache[b : b + 1, :length].to(torch.float64)
        kc = _compress(kb, cfg)
        pos = torch.tensor([length - 1], device=q.device)
        _, p = _cmp_rows(q[b : b + 1, None].to(torch.float64), pos, kc, kc[..., :1], cfg, sc)
        out.append(_scores_from_probs(p, cfg, cfg.num_slc_blocks(length))[0, 0])
    return out


def _check_packed_block_idx(block_idx: torch.Tensor, k: torch.Tensor) -> None:
    if block_idx.dim() != 4 or tuple(block_idx.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(f"block_idx must be [1, total_T, Hkv, n] = [{', '.join(map(str, k.shape[:3]))}, n] "
                         f"in a packed batch, got {tuple(block_idx.shape)}")


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, T, H, D]")
    if k.shape[:3] != v.shape[:3] or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"inconsistent shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"Hq={q.shape[2]} must be a multiple of Hkv={k.shape[2]}")
    if tuple(gates.shape) != (*q.shape[:3], 3):
        raise ValueError(f"gates must be [B, T, Hq, 3], got {tuple(gates.shape)}")


# ---------------------------------------------------------------- section 7: decode
def nsa_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, gates: torch.Tensor,
    cache_seqlens: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
    k_cmp_cache: torch.Tensor | None = None, v_cmp_cache: torch.Tensor | None = None,
    block_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new token per sequence: row L-1 of the forward over k_cache[b, :L]. Returns [B,Hq,Dv].

    Decode has no cu_seqlens: N packed sequences decode as a batch of N, with caches
    `varlen.pad_packed(k, cu_seqlens)` ([N, max L_i, Hkv, D]), cache_seqlens = their lengths and q the
    new tokens; the output for sequence i equals the packed forward's row cu_seqlens[i+1] - 1.
    `block_idx` [B, Hkv, n]: a selection to attend instead of the reference's own, read as a set (as
    nsa_attention's): how a kernel's output is checked on the blocks it chose.
    """
    if (k_cmp_cache is None) != (v_cmp_cache is None):
        raise ValueError("pass both k_cmp_cache and v_cmp_cache, or neither")
    sc = _scale(scale, q.shape[-1])
    wd = _work_dtype(q.dtype)
    outs = []
    for b in range(q.shape[0]):
        length = int(cache_seqlens[b])
        if length < 1 or length > k_cache.shape[1]:
            raise ValueError(f"cache_seqlens[{b}]={length} outside 1..{k_cache.shape[1]}")
        qb = q[b : b + 1, None].to(wd)  # [1,1,Hq,Dk]
        kb, vb = k_cache[b : b + 1, :length].to(wd), v_cache[b : b + 1, :length].to(wd)
        if k_cmp_cache is None:
            kc, vc = compress_kv(kb, vb, cfg)
        else:
            tc = cfg.num_cmp_blocks(length)
            kc, vc = k_cmp_cache[b : b + 1, :tc].to(wd), v_cmp_cache[b : b + 1, :tc].to(wd)
        pos = torch.tensor([length - 1], device=q.device)
        o_cmp, _ = _cmp_rows(qb, pos, kc, vc, cfg, sc)
        if block_idx is None:
            _, p = _cmp_rows(qb.double(), pos, kc.double(), vc.double(), cfg, sc)
            idx = _select_rows(_scores_from_probs(p, cfg, cfg.num_slc_blocks(length)), pos, cfg)
        else:
            idx = block_idx[b : b + 1, None].to(q.device)
        o_slc = _slc_rows(qb, pos, kb, vb, idx, cfg, sc)
        o_win = _win_rows(qb, pos, kb, vb, cfg.window, sc)
        g = gates[b : b + 1, None].to(wd)
        outs.append(g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win)
    return torch.cat(outs, dim=0)[:, 0].to(q.dtype)
