"""NSA forward and backward from the branch kernels, and per-stage callables for the benchmark.

The forward saves each branch's output and log-sum-exp (never attention matrices); the backward
runs the gated-sum backward once, then each branch's backward on its share of the gradient. The
selection is a constant of the backward pass (NSA_SPEC section 8). Compression is its own autograd
function, so k_cmp/v_cmp passed by the caller get their gradients and computed ones flow into k and v.

Packed batches (`cu_seqlens`, docs/varlen.md): every branch kernel takes the offsets and runs each
sequence alone inside one launch (programs rebased to their sequence's first token); the gated sum is
row-wise and needs none. Only the v2 kernels take them (a v1 variant refuses with a ValueError). The
public functions here read the offsets once per call into a `Packing` (kernels/packing.py), the one form
every kernel wrapper takes; a caller timing many calls may build it once and pass it as cu_seqlens.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from . import compressed, flash, selected
from ._common import check_heads, check_kernel_config
from .config import NSAConfig
from .gated_sum import gated_sum_bwd, gated_sum_fwd
from .packing import Packing
from .variants import KernelVariants

__all__ = ["compress_kv", "select_blocks", "nsa_attention", "nsa_attention_variants", "forward_stages",
           "backward_stages"]
DEFAULT_VARIANTS = KernelVariants()


def _scale(scale: float | None, head_dim: int) -> float:
    return head_dim**-0.5 if scale is None else float(scale)


class _Compress(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, block_cmp: int, stride_cmp: int, packing: Packing | None) -> torch.Tensor:
        ctx.shape = (x.shape[1], block_cmp, stride_cmp)
        ctx.packing = packing
        return compressed.compress_fwd(x.contiguous(), block_cmp, stride_cmp, packing=packing)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        seqlen, block_cmp, stride_cmp = ctx.shape
        dx = compressed.compress_bwd(grad.contiguous(), seqlen, block_cmp, stride_cmp, packing=ctx.packing)
        return dx, None, None, None


def _packing(x: torch.Tensor, cu_seqlens: torch.Tensor | Packing | None, cfg: NSAConfig,
             name: str = "q") -> Packing | None:
    """cu_seqlens validated for `x` [1, total_T, ...] (a ValueError naming it otherwise) and read once: the
    Packing every kernel of the call takes, so none reads or copies the offsets again (kernels/packing.py).
    The one place this module turns a raw cu_seqlens into a Packing: only public functions call it."""
    if cu_seqlens is None:
        return None
    if x.dim() < 2:
        raise ValueError(f"{name} must be [1, total_T, H, D] with cu_seqlens, got {tuple(x.shape)}")
    return Packing.of(cu_seqlens, x.shape[1], x.shape[0], x.device, cfg.block_cmp, cfg.stride_cmp, cfg.block_slc)


def compress_kv(k: torch.Tensor, v: torch.Tensor, cfg: NSAConfig,
                cu_seqlens: torch.Tensor | Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 1: mean-compressed k_cmp [B,Tc,Hkv,Dk] and v_cmp [B,Tc,Hkv,Dv] (differentiable).
    Packed (cu_seqlens): each sequence's blocks concatenated, [1, sum_s Tc_s, Hkv, D] (docs/varlen.md)."""
    check_kernel_config(cfg)
    packing = _packing(k, cu_seqlens, cfg, "k")
    return (_Compress.apply(k, cfg.block_cmp, cfg.stride_cmp, packing),
            _Compress.apply(v, cfg.block_cmp, cfg.stride_cmp, packing))


def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, cfg: NSAConfig, scale: float | None = None,
                  cu_seqlens: torch.Tensor | Packing | None = None) -> torch.Tensor:
    """Section 3: block_idx [B,T,Hkv,n] int32 (-1 padded), scored and ranked on the GPU.
    Packed (cu_seqlens): [1, total_T, Hkv, n], block numbers local to each row's sequence."""
    check_kernel_config(cfg)
    return compressed.select_blocks(q.contiguous(), k_cmp.contiguous(), cfg, _scale(scale, q.shape[-1]),
                                    packing=_packing(q, cu_seqlens, cfg))


class _NSA(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor,
                k_cmp: torch.Tensor, v_cmp: torch.Tensor, block_idx: torch.Tensor | None, cfg: NSAConfig,
                scale: float, variants: KernelVariants, packing: Packing | None) -> torch.Tensor:
        o_cmp, lse_cmp = compressed.compressed_fwd(q, k_cmp, v_cmp, cfg, scale, variant=variants.cmp_fwd,
                                                   packing=packing)
        if block_idx is None:
            block_idx = compressed.select_blocks(q, k_cmp, cfg, scale, lse=lse_cmp, variant=variants.select,
                                                 packing=packing)
        o_slc, lse_slc = selected.selected_fwd(q, k, v, block_idx, cfg.block_slc, scale, variant=variants.slc_fwd,
                                               small_g=variants.slc_small_g, packing=packing)
        o_win, lse_win = flash.attention_fwd(q, k, v, scale, window=cfg.window, variant=variants.win, packing=packing)
        ctx.save_for_backward(q, k, v, gates, k_cmp, v_cmp, block_idx, o_cmp, lse_cmp, o_slc, lse_slc, o_win, lse_win)
        ctx.cfg, ctx.scale, ctx.variants, ctx.packing = cfg, scale, variants, packing
        return gated_sum_fwd(gates, o_cmp, o_slc, o_win)

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, gates, k_cmp, v_cmp, block_idx, o_cmp, lse_cmp, o_slc, lse_slc, o_win, lse_win = ctx.saved_tensors
        cfg, scale, variants, packing = ctx.cfg, ctx.scale, ctx.variants, ctx.packing
        d_gates, do_cmp, do_slc, do_win = gated_sum_bwd(gates, o_cmp, o_slc, o_win, do.contiguous())
        if variants.dq_sum == "v2":  # one fp32 dq accumulator through the three dq kernels (tuning notes)
            dq_sum = torch.empty(q.shape, dtype=torch.float32, device=q.device)
            _, dk_cmp, dv_cmp = compressed.compressed_bwd(q, k_cmp, v_cmp, o_cmp, lse_cmp, do_cmp, cfg, scale,
                                                          dkv_variant=variants.cmp_dkv, dq_variant=variants.cmp_dq,
                                                          dq_out=dq_sum, packing=packing)
            _, dk, dv = selected.selected_bwd(q, k, v, o_slc, lse_slc, do_slc, block_idx, cfg.block_slc, scale,
                                              dq_variant=variants.slc_dq, dq_out=dq_sum, dq_add=dq_sum,
                                              small_g=variants.slc_small_g, packing=packing)
            dq, dk_win, dv_win = flash.attention_bwd(q, k, v, o_win, lse_win, do_win, scale, window=cfg.window,
                                                     variant=variants.win, dq_add=dq_sum, packing=packing)
        else:
            dq, dk_cmp, dv_cmp = compressed.compressed_bwd(q, k_cmp, v_cmp, o_cmp, lse_cmp, do_cmp, cfg, scale,
                                                           dkv_variant=variants.cmp_dkv, dq_variant=variants.cmp_dq,
                                                           packing=packing)
            dq_slc, dk, dv = selected.selected_bwd(q, k, v, o_slc, lse_slc, do_slc, block_idx, cfg.block_slc,
                                                   scale, dq_variant=variants.slc_dq, small_g=variants.slc_small_g,
                                                   packing=packing)
            dq_win, dk_win, dv_win = flash.attention_bwd(q, k, v, o_win, lse_win, do_win, scale, window=cfg.window,
                                                         variant=variants.win, packing=packing)
            dq = (dq.float() + dq_slc.float() + dq_win.float()).to(q.dtype)
        dk = (dk.float() + dk_win.float()).to(k.dtype)
        dv = (dv.float() + dv_win.float()).to(v.dtype)
        return dq, dk, dv, d_gates, dk_cmp, dv_cmp, None, None, None, None, None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig,
                  packed: bool = False, variants: KernelVariants = DEFAULT_VARIANTS) -> None:
    check_kernel_config(cfg)
    check_heads(q, k, v)
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"inconsistent shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if tuple(gates.shape) != (*q.shape[:3], 3):
        raise ValueError(f"gates must be [B, T, Hq, 3] = {(*q.shape[:3], 3)}, got {tuple(gates.shape)}")
    refusal = variants.packed_refusal() if packed else None
    if refusal:
        raise ValueError(refusal)


def _check_cmp(k_cmp: torch.Tensor, k: torch.Tensor, cfg: NSAConfig, packing: Packing | None) -> None:
    """A caller's k_cmp holds the blocks compress_kv would give: Tc(T) rows, or sum_s Tc_s when packed."""
    want = cfg.num_cmp_blocks(k.shape[1]) if packing is None else sum(packing.cmp_counts(cfg.block_cmp, cfg.stride_cmp))
    if k_cmp.dim() != 4 or k_cmp.shape[1] != want:
        layout = "sum of Tc per sequence" if packing is not None else "Tc"
        raise ValueError(f"k_cmp must hold {want} compressed blocks ({layout}) in dim 1, got {tuple(k_cmp.shape)}")


def nsa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig,
    scale: float | None = None, block_idx: torch.Tensor | None = None,
    k_cmp: torch.Tensor | None = None, v_cmp: torch.Tensor | None = None, cu_seqlens: torch.Tensor | Packing | None = None,
) -> torch.Tensor:
    """Sections 1-6 and 8: o [B,T,Hq,Dv], differentiable in q, k, v, gates (and k_cmp/v_cmp when given).
    Packed (cu_seqlens int32 [N+1], tensors [1, total_T, ...]): each sequence alone (docs/varlen.md)."""
    return nsa_attention_variants(q, k, v, gates, cfg, DEFAULT_VARIANTS, scale, block_idx, k_cmp, v_cmp, cu_seqlens)


def nsa_attention_variants(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig,
    variants: KernelVariants, scale: float | None = None, block_idx: torch.Tensor | None = None,
    k_cmp: torch.Tensor | None = None, v_cmp: torch.Tensor | None = None, cu_seqlens: torch.Tensor | Packing | None = None,
) -> torch.Tensor:
    """`nsa_attention` with the kernel variants chosen (kernels/variants.py): what the benchmark times."""
    if not isinstance(variants, KernelVariants):
        raise ValueError(f"variants must be a KernelVariants, got {type(variants).__name__}")
    _check_inputs(q, k, v, gates, cfg, cu_seqlens is not None, variants)
    if (k_cmp is None) != (v_cmp is None):
        raise ValueError("pass both k_cmp and v_cmp, or neither")
    q, k, v, gates = (t.contiguous() for t in (q, k, v, gates))
    packing = _packing(q, cu_seqlens, cfg)
    if k_cmp is None:
        k_cmp, v_cmp = compress_kv(k, v, cfg, packing)
    elif packing is not None:
        _check_cmp(k_cmp, k, cfg, packing)
    if block_idx is not None:
        block_idx = block_idx.to(torch.int32).contiguous()
    k_cmp, v_cmp, sc = k_cmp.contiguous(), v_cmp.contiguous(), _scale(scale, q.shape[-1])
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, gates, k_cmp, v_cmp)):
        return _NSA.apply(q, k, v, gates, k_cmp, v_cmp, block_idx, cfg, sc, variants, packing)
    return _forward_gated_in_place(q, k, v, gates, k_cmp, v_cmp, block_idx, cfg, sc, variants, packing)


def _forward_gated_in_place(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, k_cmp: torch.Tensor,
    v_cmp: torch.Tensor, block_idx: torch.Tensor | None, cfg: NSAConfig, scale: float,
    variants: KernelVariants, packing: Packing | None = None,
) -> torch.Tensor:
    """Inference forward: each branch kernel adds its gated output straight into `o`.

    Nothing is saved for a backward, so the three [B,T,Hq,Dv] branch outputs are never materialised:
    beyond inputs and output the forward holds only k_cmp/v_cmp, block_idx and three lse vectors.
    """
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    _, lse_cmp = compressed.compressed_fwd(q, k_cmp, v_cmp, cfg, scale, out=out, gates=gates, gate_index=0,
                                          variant=variants.cmp_fwd, packing=packing)
    if block_idx is None:
        block_idx = compressed.select_blocks(q, k_cmp, cfg, scale, lse=lse_cmp, variant=variants.select,
                                             packing=packing)
    selected.selected_fwd(q, k, v, block_idx, cfg.block_slc, scale, out=out, gates=gates, gate_index=1,
                          accumulate=True, variant=variants.slc_fwd,
                          small_g=variants.slc_small_g, packing=packing)
    flash.attention_fwd(q, k, v, scale, window=cfg.window, out=out, gates=gates, gate_index=2, accumulate=True,
                        variant=variants.win, packing=packing)
    return out


def _forward_parts(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: NSAConfig, scale: float, block_idx: torch.Tensor | None,
    variants: KernelVariants, packing: Packing | None = None,
) -> dict[str, torch.Tensor]:
    """Every intermediate of one forward pass, computed once for the per-stage callables."""
    with torch.no_grad():
        k_cmp = compressed.compress_fwd(k, cfg.block_cmp, cfg.stride_cmp, packing=packing)
        v_cmp = compressed.compress_fwd(v, cfg.block_cmp, cfg.stride_cmp, packing=packing)
        o_cmp, lse_cmp = compressed.compressed_fwd(q, k_cmp, v_cmp, cfg, scale, variant=variants.cmp_fwd,
                                                   packing=packing)
        if block_idx is None:
            block_idx = compressed.select_blocks(q, k_cmp, cfg, scale, lse=lse_cmp, variant=variants.select,
                                                 packing=packing)
        idx = block_idx
        o_slc, lse_slc = selected.selected_fwd(q, k, v, idx, cfg.block_slc, scale, variant=variants.slc_fwd,
                                               small_g=variants.slc_small_g, packing=packing)
        o_win, lse_win = flash.attention_fwd(q, k, v, scale, window=cfg.window, variant=variants.win, packing=packing)
    return {"k_cmp": k_cmp, "v_cmp": v_cmp, "o_cmp": o_cmp, "lse_cmp": lse_cmp, "idx": idx, "o_slc": o_slc,
            "lse_slc": lse_slc, "o_win": o_win, "lse_win": lse_win}


def forward_stages(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, cfg: NSAConfig,
    scale: float | None = None, block_idx: torch.Tensor | None = None, variants: KernelVariants = DEFAULT_VARIANTS,
    cu_seqlens: torch.Tensor | Packing | None = None,
) -> dict[str, Callable[[], Any]]:
    """Each stage of the inference forward (`_forward_gated_in_place`, what a fwd point times) as a
    self-contained callable over precomputed inputs, launching what that forward launches: the branches add
    their gated outputs into one buffer, so each stage runs the autotuner (and config) of the total.
    `gated_sum` is the training forward's sum, which the inference forward fuses into the branch kernels."""
    _check_inputs(q, k, v, gates, cfg, cu_seqlens is not None, variants)
    sc, packing = _scale(scale, q.shape[-1]), _packing(q, cu_seqlens, cfg)
    f = _forward_parts(q, k, v, cfg, sc, block_idx, variants, packing)
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)  # the branches add into it
    return {
        "compress": lambda: (compressed.compress_fwd(k, cfg.block_cmp, cfg.stride_cmp, packing=packing),
                             compressed.compress_fwd(v, cfg.block_cmp, cfg.stride_cmp, packing=packing)),
        "cmp_attn": lambda: compressed.compressed_fwd(q, f["k_cmp"], f["v_cmp"], cfg, sc, out=out, gates=gates,
                                                      gate_index=0, variant=variants.cmp_fwd, packing=packing),
        "select": lambda: compressed.select_blocks(q, f["k_cmp"], cfg, sc, lse=f["lse_cmp"],
                                                   variant=variants.select, packing=packing),
        "slc_attn": lambda: selected.selected_fwd(q, k, v, f["idx"], cfg.block_slc, sc, out=out, gates=gates,
                                                  gate_index=1, accumulate=True, variant=variants.slc_fwd,
                                                  small_g=variants.slc_small_g, packing=packing),
        "win_attn": lambda: flash.attention_fwd(q, k, v, sc, window=cfg.window, out=out, gates=gates, gate_index=2,
                                                accumulate=True, variant=variants.win, packing=packing),
        "gated_sum": lambda: gated_sum_fwd(gates, f["o_cmp"], f["o_slc"], f["o_win"]),
    }


def backward_stages(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, do: torch.Tensor, cfg: NSAConfig,
    scale: float | None = None, block_idx: torch.Tensor | None = None, variants: KernelVariants = DEFAULT_VARIANTS,
    cu_seqlens: torch.Tensor | Packing | None = None,
) -> dict[str, Callable[[], Any]]:
    """Each backward stage as a self-contained callable over a precomputed forward (per-stage timing)."""
    _check_inputs(q, k, v, gates, cfg, cu_seqlens is not None, variants)
    sc, packing = _scale(scale, q.shape[-1]), _packing(q, cu_seqlens, cfg)
    f = _forward_parts(q, k, v, cfg, sc, block_idx, variants, packing)
    with torch.no_grad():
        _, do_cmp, do_slc, do_win = gated_sum_bwd(gates, f["o_cmp"], f["o_slc"], f["o_win"], do)
        _, dk_cmp, dv_cmp = compressed.compressed_bwd(q, f["k_cmp"], f["v_cmp"], f["o_cmp"], f["lse_cmp"], do_cmp,
                                                      cfg, sc, dkv_variant=variants.cmp_dkv, dq_variant=variants.cmp_dq,
                                                      packing=packing)
    seqlen = k.shape[1]
    # dq_sum v2: each stage moves the fp32 accumulator as the backward does (the cmp stage writes it, the
    # slc stage adds into it in place, the window stage reads it), so each runs the backward's autotuner
    # and config (in place is a tuner of its own); repeated reps only grow the sum.
    chain = variants.dq_sum == "v2"
    acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if chain else None
    return {
        "gated_sum": lambda: gated_sum_bwd(gates, f["o_cmp"], f["o_slc"], f["o_win"], do),
        "cmp_attn": lambda: compressed.compressed_bwd(q, f["k_cmp"], f["v_cmp"], f["o_cmp"], f["lse_cmp"], do_cmp,
                                                      cfg, sc, dkv_variant=variants.cmp_dkv, dq_variant=variants.cmp_dq,
                                                      dq_out=acc, packing=packing),
        "compress": lambda: (compressed.compress_bwd(dk_cmp, seqlen, cfg.block_cmp, cfg.stride_cmp, packing=packing),
                             compressed.compress_bwd(dv_cmp, seqlen, cfg.block_cmp, cfg.stride_cmp, packing=packing)),
        "slc_attn": lambda: selected.selected_bwd(q, k, v, f["o_slc"], f["lse_slc"], do_slc, f["idx"], cfg.block_slc,
                                                  sc, dq_variant=variants.slc_dq, dq_out=acc, dq_add=acc,
                                                  small_g=variants.slc_small_g, packing=packing),
        "win_attn": lambda: flash.attention_bwd(q, k, v, f["o_win"], f["lse_win"], do_win, sc, window=cfg.window,
                                                variant=variants.win, dq_add=acc, packing=packing),
    }
