"""`flex-nsa`: NSA as a user would prototype it with PyTorch FlexAttention — three flex_attention calls.

- compressed branch over mean-pooled k_cmp/v_cmp, mask `i*d + l - 1 <= t`;
- selected branch over k/v with a block mask built from `block_idx` (key `p` allowed iff block `p // l'`
  is selected for the query's KV head and `p <= t`);
- sliding window, mask `t - w < p <= t`; then the gated sum.

The block masks (and, when the inputs carry no `block_idx`, the selection itself, by the reference in
the input dtype) are built in `build`, outside the timed region: the timed operation is compression,
the three attention calls and the gated sum. Masks are built directly from block-level states
(`BlockMask.from_kv_blocks`), never by evaluating a T x T mask, so they scale to 64k tokens.
On a GPU flex_attention is compiled (torch.compile; compilation happens in the warm-up); on the CPU
it runs eagerly, which is slow but exact and is what the tests use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from nsa_bench import reference
from nsa_bench.backends import Backend, Unsupported, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point
from nsa_kernels.config import NSAConfig

BLOCK = 128  # flex's sparse block size (queries and keys)
SKIP, PARTIAL, FULL = 0, 1, 2  # block states: not visited, visited with mask_mod, visited without


def flex_module() -> Any | None:
    """torch.nn.attention.flex_attention, or None on a torch without it."""
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError:
        return None
    return module if hasattr(module, "BlockMask") and hasattr(module.BlockMask, "from_kv_blocks") else None


def availability() -> str | None:
    if flex_module() is None:
        return f"needs torch >= 2.5 with torch.nn.attention.flex_attention (this is torch {torch.__version__})"
    return cuda_required()


# ------------------------------------------------------------------ block states
def _bounds(num_blocks: int, length: int, block: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index of each block (the last block clipped to `length`)."""
    lo = torch.arange(num_blocks, device=device) * block
    return lo, torch.clamp(lo + block, max=length) - 1


def _inside(num_blocks: int, length: int, block: int, device: torch.device) -> torch.Tensor:
    """Blocks lying wholly inside [0, length): only those may be FULL."""
    return (torch.arange(num_blocks, device=device) + 1) * block <= length


def _states(needed: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    return torch.where(full, FULL, torch.where(needed, PARTIAL, SKIP)).to(torch.int8)


def cmp_states(seqlen: int, num_cmp: int, cfg: NSAConfig, block: int = BLOCK,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """[NQB, NKB] states of the compressed branch: query t sees compressed key i iff i*d + l - 1 <= t."""
    device = torch.device(device)
    nqb, nkb = -(-seqlen // block), -(-num_cmp // block)
    q_lo, q_hi = _bounds(nqb, seqlen, block, device)
    k_lo, k_hi = _bounds(nkb, num_cmp, block, device)
    last = lambda t: torch.div(t - cfg.block_cmp + 1, cfg.stride_cmp, rounding_mode="floor")  # noqa: E731
    needed = k_lo[None, :] <= last(q_hi)[:, None]
    full = (k_hi[None, :] <= last(q_lo)[:, None]) & _inside(nqb, seqlen, block, device)[:, None] \
        & _inside(nkb, num_cmp, block, device)[None, :]
    return _states(needed, full)


def window_states(seqlen: int, window: int, block: int = BLOCK, device: torch.device | str = "cpu") -> torch.Tensor:
    """[NQB, NKB] states of the window branch: query t sees key p iff t - w < p <= t."""
    device = torch.device(device)
    nb = -(-seqlen // block)
    lo, hi = _bounds(nb, seqlen, block, device)
    inside = _inside(nb, seqlen, block, device)
    needed = (lo[None, :] <= hi[:, None]) & (hi[None, :] > lo[:, None] - window)
    full = (hi[None, :] <= lo[:, None]) & (lo[None, :] > hi[:, None] - window) & inside[:, None] & inside[None, :]
    return _states(needed, full)


def selection_table(block_idx: torch.Tensor, num_slc: int, rows: int) -> torch.Tensor:
    """[B, Hkv, rows, num_slc] bool: block j is selected for (query, KV head); -1 entries ignored.

    `rows` >= T pads the query axis with False, so mask_mod may be evaluated on padded positions.
    """
    b, t, hkv, _ = block_idx.shape
    idx = block_idx.long()
    table = torch.zeros(b, t, hkv, num_slc + 1, dtype=torch.bool, device=block_idx.device)
    table.scatter_(-1, torch.where(idx >= 0, idx, num_slc), True)  # -1 goes to a spare column
    table = table[..., :num_slc].permute(0, 2, 1, 3)
    if rows > t:
        table = torch.cat([table, table.new_zeros(b, hkv, rows - t, num_slc)], dim=2)
    return table.contiguous()


def selected_states(table: torch.Tensor, seqlen: int, block_slc: int, block: int = BLOCK) -> torch.Tensor:
    """[B, Hkv, NQB, NKB] states of the selected branch from a selection table (see selection_table)."""
    b, hkv, _, num_slc = table.shape
    nb = -(-seqlen // block)
    padded = nb * block
    rows = table[:, :, :seqlen]
    if padded > seqlen:
        pad = rows.new_zeros(b, hkv, padded - seqlen, num_slc)
        any_rows = torch.cat([rows, pad], dim=2)
        all_rows = torch.cat([rows, ~pad], dim=2)
    else:
        any_rows = all_rows = rows
    union = any_rows.view(b, hkv, nb, block, num_slc).any(dim=3)  # [B, Hkv, NQB, Nslc]
    common = all_rows.view(b, hkv, nb, block, num_slc).all(dim=3)

    def per_key_block(by_slc: torch.Tensor, reduce_all: bool) -> torch.Tensor:
        tokens = by_slc.repeat_interleave(block_slc, dim=-1)[..., :padded]
        if tokens.shape[-1] < padded:
            tokens = torch.cat([tokens, tokens.new_zeros(*tokens.shape[:-1], padded - tokens.shape[-1])], dim=-1)
        tokens = tokens.view(b, hkv, nb, nb, block)
        return tokens.all(dim=-1) if reduce_all else tokens.any(dim=-1)

    q_lo, q_hi = _bounds(nb, seqlen, block, table.device)
    inside = _inside(nb, seqlen, block, table.device)
    causal_any = q_lo[None, :] <= q_hi[:, None]  # some key of the block is in some query's past
    causal_all = (q_hi[None, :] <= q_lo[:, None]) & inside[:, None] & inside[None, :]
    needed = per_key_block(union, reduce_all=False) & causal_any
    full = per_key_block(common, reduce_all=True) & causal_all
    return _states(needed, full)


def block_mask(states: torch.Tensor, mask_mod: Callable[..., torch.Tensor], q_len: int, kv_len: int,
               block: int = BLOCK) -> Any:
    """A BlockMask from block states [..., NQB, NKB] (leading dims padded to [B, H])."""
    flex = flex_module()
    while states.dim() < 4:
        states = states.unsqueeze(0)

    def listing(which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = which.sum(dim=-1, dtype=torch.int32)
        order = torch.argsort((~which).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return count, order.contiguous()

    partial_count, partial_idx = listing(states == PARTIAL)
    full_count, full_idx = listing(states == FULL)
    return flex.BlockMask.from_kv_blocks(partial_count, partial_idx, full_count, full_idx, BLOCK_SIZE=block,
                                         mask_mod=mask_mod, seq_lengths=(q_len, kv_len))


# ------------------------------------------------------------------ the three masks
@dataclass(frozen=True)
class Masks:
    """Block masks of one point (cmp is None when no compressed block exists, T < l)."""

    cmp: Any | None
    slc: Any
    win: Any


def build_masks(point: Point, block_idx: torch.Tensor, device: torch.device | str) -> Masks:
    """The three branches' block masks for `point` and a selection `block_idx` [B, T, Hkv, n]."""
    cfg, seqlen, group = point.cfg, point.seqlen, point.group_size
    num_cmp = cfg.num_cmp_blocks(seqlen)
    padded = -(-seqlen // BLOCK) * BLOCK
    l, d, lsel, w = cfg.block_cmp, cfg.stride_cmp, cfg.block_slc, cfg.window
    table = selection_table(block_idx.to(device), -(-padded // lsel), padded)

    def cmp_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return kv * d + (l - 1) <= q

    def slc_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (kv <= q) & table[b, h // group, q, kv // lsel]

    def win_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (kv <= q) & (q - kv < w)

    cmp = None
    if num_cmp:
        cmp = block_mask(cmp_states(seqlen, num_cmp, cfg, device=device), cmp_mod, seqlen, num_cmp)
    slc_states = selected_states(table, seqlen, lsel).repeat_interleave(group, dim=1)
    return Masks(cmp=cmp, slc=block_mask(slc_states, slc_mod, seqlen, seqlen),
                 win=block_mask(window_states(seqlen, w, device=device), win_mod, seqlen, seqlen))


# ------------------------------------------------------------------ the operation
def attention_fn(device: torch.device) -> Callable[..., torch.Tensor]:
    """flex_attention compiled for a GPU (its fast path; dynamo caches the compiled code), eager on the CPU."""
    flex = flex_module()
    if device.type == "cuda":
        # each build captures new masks; a fresh cache keeps a long sweep under dynamo's recompile limit
        # (past it dynamo silently falls back to eager flex, which materializes T x T scores)
        torch.compiler.reset()
        return torch.compile(flex.flex_attention, dynamic=False)
    return flex.flex_attention


def make_branches(point: Point, masks: Masks, device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    """Branch functions on BTHD tensors: cmp(q, k_cmp, v_cmp), slc(q, k, v), win(q, k, v) -> [B,T,Hq,Dv]."""
    attend = attention_fn(device)
    scale = point.head_dim_qk ** -0.5

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, scale=scale,
                     enable_gqa=q.shape[2] != k.shape[2])
        return out.transpose(1, 2)

    def cmp(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor) -> torch.Tensor:
        if masks.cmp is None:  # no compressed block yet: o_cmp = 0 (NSA_SPEC section 2)
            return q.new_zeros(*q.shape[:3], v_cmp.shape[-1])
        return run(q, k_cmp, v_cmp, masks.cmp)

    return {"cmp": cmp, "slc": lambda q, k, v: run(q, k, v, masks.slc),
            "win": lambda q, k, v: run(q, k, v, masks.win)}


def compress(x: torch.Tensor, cfg: NSAConfig) -> torch.Tensor:
    """Mean over each compressed block [i*d, i*d + l) (NSA_SPEC section 1), differentiable."""
    if x.shape[1] < cfg.block_cmp:
        return x.new_zeros(x.shape[0], 0, *x.shape[2:])
    return x.unfold(1, cfg.block_cmp, cfg.stride_cmp).mean(dim=-1)


def _selection(point: Point, inputs: Inputs) -> torch.Tensor:
    if inputs.block_idx is not None:
        return inputs.block_idx
    with torch.no_grad():
        k_cmp, _ = reference.compress_kv(inputs.k, inputs.v, point.cfg)
        return reference.select_blocks(inputs.q, k_cmp, point.cfg)


def _build(point: Point, inputs: Inputs) -> Workload:
    if flex_module() is None:
        raise Unsupported(availability() or "flex_attention unavailable")
    if point.mode == "decode":
        raise Unsupported("flex-nsa: decode is not benchmarked")
    cfg = point.cfg
    device = inputs.q.device
    block_idx = _selection(point, inputs)
    masks = build_masks(point, block_idx, device)
    branch = make_branches(point, masks, device)

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        k_cmp, v_cmp = compress(k, cfg), compress(v, cfg)
        o_cmp = branch["cmp"](q, k_cmp, v_cmp)
        o_slc = branch["slc"](q, k, v)
        o_win = branch["win"](q, k, v)
        return gates[..., 0:1] * o_cmp + gates[..., 1:2] * o_slc + gates[..., 2:3] * o_win

    stages: dict[str, Callable[[], Any]] = {}
    if point.mode == "fwd":
        q, k, v = inputs.q, inputs.k, inputs.v
        with torch.no_grad():
            k_cmp, v_cmp = compress(k, cfg), compress(v, cfg)

        def staged(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
            def call() -> torch.Tensor:
                with torch.no_grad():
                    return fn()
            return call

        stages = {"cmp_attn": staged(lambda: branch["cmp"](q, k_cmp, v_cmp)),
                  "slc_attn": staged(lambda: branch["slc"](q, k, v)),
                  "win_attn": staged(lambda: branch["win"](q, k, v))}
    impl = f"flex_attention-{'compiled' if device.type == 'cuda' else 'eager'}"
    note = "block masks" + (" built" if inputs.block_idx is not None else " and selection built") + \
        " outside the timed region"
    return autograd_workload(inputs, forward, impl, grad_gates=True, note=note, stages=stages)


BACKEND = Backend(
    name="flex-nsa",
    family="nsa",
    modes=("fwd", "bwd", "fwdbwd", "layer-fwd", "layer-bwd"),
    description="NSA prototyped with PyTorch FlexAttention (3 flex_attention calls + gated sum)",
    availability=availability,
    build=_build,
    impl_hint=lambda: "flex_attention-compiled",
)
