"""Correctness check of a backend's output against the float64 reference (NSA_SPEC.md tolerances).

NSA backends are compared with one shared `block_idx` (chosen by the reference in float64), because
near-equal block scores can legitimately select different blocks in low precision.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from nsa_bench import reference
from nsa_bench import selection as selection_rule
from nsa_bench.inputs import Inputs
from nsa_bench.layer import layer_fn
from nsa_bench.spec import Point

# ||out - ref|| / ||ref||; float32 allows tf32 dots on a GPU.
TOLERANCE = {"float32": 2e-3, "float16": 1e-2, "bfloat16": 1e-2}


def check_point(point: Point, check_seqlen: int) -> Point:
    """The reduced point a backend is checked at: at most `check_seqlen` tokens, batch at most 2."""
    return point.with_seqlen(min(point.seqlen, check_seqlen), batch=min(point.batch, 2))


def selection_violation(block_idx: torch.Tensor, inputs: Inputs) -> str | None:
    """Why a backend's own selection on `inputs` breaks NSA_SPEC's validity rule against the float64
    reference's block scores (None when it is valid)."""
    point = inputs.point
    q, k, v = (t.detach().double() for t in (inputs.q, inputs.k, inputs.v))
    cu = inputs.cu_seqlens  # packed points: block numbers local to each document
    k_cmp, _ = reference.compress_kv(k, v, point.cfg, cu)
    scores = reference.block_scores(q, k_cmp, point.cfg, cu_seqlens=cu)
    return selection_rule.violation(block_idx, scores, point.cfg, selection_rule.SCORE_TOLERANCE[point.dtype], cu)


def shared_selection(inputs: Inputs) -> Inputs:
    """Inputs with block_idx fixed by the float64 reference (forward and backward modes)."""
    if inputs.point.mode == "decode":
        return inputs
    q, k, v = (t.detach().double() for t in (inputs.q, inputs.k, inputs.v))
    cu = inputs.cu_seqlens  # packed points: block numbers local to each document
    k_cmp, _ = reference.compress_kv(k, v, inputs.point.cfg, cu)
    return inputs.with_block_idx(reference.select_blocks(q, k_cmp, inputs.point.cfg, cu_seqlens=cu))


def _dense_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    """One query per sequence over its whole cache: the last row of causal attention."""
    outs = []
    for b in range(q.shape[0]):
        length = int(seqlens[b])
        hkv = k.shape[2]
        qg = q[b].reshape(hkv, q.shape[1] // hkv, q.shape[2])
        logits = torch.einsum("hgd,thd->hgt", qg, k[b, :length]) * q.shape[-1] ** -0.5
        o = torch.einsum("hgt,thd->hgd", torch.softmax(logits, dim=-1), v[b, :length])
        outs.append(o.reshape(q.shape[1], v.shape[-1]))
    return torch.stack(outs)


def expected(family: str, inputs: Inputs) -> tuple[torch.Tensor, ...]:
    """What a backend of `family` must produce on `inputs` (computed in float64)."""
    point, cfg = inputs.point, inputs.point.cfg
    if point.is_layer:
        return expected_layer(family, inputs)
    x = inputs.cast(torch.float64)
    if point.mode == "decode":
        if family == "nsa":
            return (reference.nsa_decode(x.q, x.k, x.v, x.gates, x.cache_seqlens, cfg),)
        return (_dense_decode(x.q, x.k, x.v, x.cache_seqlens),)
    leaves = [t.detach().requires_grad_(point.mode != "fwd") for t in (x.q, x.k, x.v, x.gates)]
    if family == "nsa":
        out = reference.nsa_attention(*leaves, cfg, block_idx=x.block_idx, cu_seqlens=x.cu_seqlens)
    else:
        out = reference.causal_attention(*leaves[:3], cu_seqlens=x.cu_seqlens)
    if point.mode == "fwd":
        return (out.detach(),)
    out.backward(x.do)
    tracked = leaves if family == "nsa" else leaves[:3]
    return tuple(t.grad for t in tracked)


def expected_layer(family: str, inputs: Inputs) -> tuple[torch.Tensor, ...]:
    """What a backend of `family` must give in a layer mode, in float64: (y,) for layer-fwd; the grads of
    x and of every weight the layer uses (layer_fn's order) for layer-bwd."""
    point = inputs.point
    x = inputs.cast(torch.float64)
    gated = family == "nsa"
    backward = point.mode == "layer-bwd"
    leaves = [t.detach().requires_grad_(backward) for t in (x.layer.x, *x.layer.weights(gated))]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Any) -> torch.Tensor:
        if gated:
            return reference.nsa_attention(q, k, v, gates, point.cfg, block_idx=x.block_idx, cu_seqlens=x.cu_seqlens)
        return reference.causal_attention(q, k, v, cu_seqlens=x.cu_seqlens)

    y = layer_fn(point, attend, gated)(*leaves)
    if not backward:
        return (y.detach(),)
    y.backward(x.do)
    return tuple(leaf.grad for leaf in leaves)


def max_rel_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """Largest ||got - want|| / ||want|| over the tensors (inf on a shape mismatch or NaN)."""
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        if g is None or tuple(g.shape) != tuple(w.shape):
            return float("inf")
        g64 = g.detach().to(device=w.device, dtype=torch.float64)
        denom = torch.linalg.vector_norm(w).item()
        err = torch.linalg.vector_norm(g64 - w).item() / (denom if denom > 0 else 1.0)
        if err != err:  # NaN
            return float("inf")
        worst = max(worst, err)
    return worst
