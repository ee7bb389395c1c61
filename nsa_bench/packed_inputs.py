"""Inputs of a packed point (`--doc-lens`): the dense point's tensors as one varlen batch.

Forward, backward and layer modes: the B rows of T tokens become one sequence [1, B*T, ...] (values
unchanged, a free reshape) with `cu_seqlens` over the point's documents (nsa_bench.doclens), so a
packed point and its dense twin see the same numbers and differ only in where attention may look.
Decode: the documents are the decode batch (docs/varlen.md, section 7): caches [N, max L_i, Hkv, D]
holding document i in row i, cache_seqlens = the lengths, and N fresh random query tokens.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from nsa_bench.doclens import NONE
from nsa_bench.inputs import TORCH_DTYPES, Inputs, make_inputs
from nsa_bench.spec import Point
from nsa_kernels import varlen

_DECODE_QUERY_SEED = 1_000_003  # offset of the decode queries' seed from the tensors' seed


def _flat(x: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T, ...] -> [1, B*T, ...]."""
    return None if x is None else x.reshape(1, x.shape[0] * x.shape[1], *x.shape[2:])


def packed_inputs(point: Point, device: torch.device | str, seed: int) -> Inputs:
    """Random inputs of a packed point, reproducible from `seed` (the lengths from point.doc_lens)."""
    lengths = point.documents()
    dense = make_inputs(replace(point, doc_lens=NONE), device, seed)
    cu_seqlens = varlen.cu_seqlens_of(lengths, device)
    k, v = _flat(dense.k), _flat(dense.v)
    if point.mode == "decode":
        gen = torch.Generator(device="cpu").manual_seed(seed + _DECODE_QUERY_SEED)
        dtype, n = TORCH_DTYPES[point.dtype], len(lengths)
        q = torch.randn(n, point.q_heads, point.head_dim_qk, generator=gen).to(device=device, dtype=dtype)
        gates = torch.rand(n, point.q_heads, 3, generator=gen).to(device=device, dtype=dtype)
        seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
        return Inputs(point, q, varlen.pad_packed(k, cu_seqlens), varlen.pad_packed(v, cu_seqlens), gates,
                      cache_seqlens=seqlens)
    layer = dense.layer
    if layer is not None:
        layer = replace(layer, x=_flat(layer.x))
    return Inputs(point, _flat(dense.q), k, v, _flat(dense.gates), do=_flat(dense.do), layer=layer,
                  cu_seqlens=cu_seqlens)
