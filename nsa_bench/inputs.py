"""Seeded random inputs for one point (never zeros: zeros hide indexing bugs)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from nsa_bench.spec import LAYER_MODES, Point

if TYPE_CHECKING:
    from nsa_bench.layer import LayerInputs

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Inputs:
    """Tensors for one point. Forward/backward: q [B,T,Hq,Dk], k/v [B,T,Hkv,D*], gates [B,T,Hq,3],
    do = the upstream gradient. Decode: q [B,Hq,Dk], gates [B,Hq,3], k/v are the caches and
    cache_seqlens [B] int32 (every sequence holds T tokens). `block_idx` optionally fixes NSA's selection
    so a kernel and the reference are compared on the same blocks. Layer modes: `layer` holds x and the
    projection weights, q/k/v/gates are the attention inputs those projections give, `do` is dy [B,T,d_model]."""

    point: Point
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: torch.Tensor
    do: torch.Tensor | None = None
    cache_seqlens: torch.Tensor | None = None
    block_idx: torch.Tensor | None = None
    layer: "LayerInputs | None" = None
    cu_seqlens: torch.Tensor | None = None  # packed points (nsa_bench.packed_inputs): tensors are [1, B*T, ...]

    def cast(self, dtype: torch.dtype) -> "Inputs":
        """Same values in another float dtype (indices untouched), detached, no grad."""
        def conv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(dtype)

        layer = None if self.layer is None else self.layer.cast(dtype)
        return replace(self, q=conv(self.q), k=conv(self.k), v=conv(self.v), gates=conv(self.gates), do=conv(self.do),
                       layer=layer)

    def with_block_idx(self, block_idx: torch.Tensor) -> "Inputs":
        return replace(self, block_idx=block_idx)


def make_inputs(point: Point, device: torch.device | str, seed: int) -> Inputs:
    """Random inputs for `point` on `device` in the point's dtype, reproducible from `seed`."""
    if point.packed:  # documents packed into each row: the dense point's tensors as one varlen batch
        from nsa_bench.packed_inputs import packed_inputs

        return packed_inputs(point, device, seed)
    if point.mode in LAYER_MODES:
        from nsa_bench.layer import make_layer_inputs

        return make_layer_inputs(point, device, seed)
    dtype = TORCH_DTYPES[point.dtype]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, t, hkv, hq = point.batch, point.seqlen, point.kv_heads, point.q_heads

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    k = randn(b, t, hkv, point.head_dim_qk)
    v = randn(b, t, hkv, point.head_dim_v)
    if point.mode == "decode":
        q = randn(b, hq, point.head_dim_qk)
        gates = rand(b, hq, 3)
        seqlens = torch.full((b,), t, dtype=torch.int32, device=device)
        return Inputs(point, q, k, v, gates, cache_seqlens=seqlens)
    q = randn(b, t, hq, point.head_dim_qk)
    gates = rand(b, t, hq, 3)
    do = randn(b, t, hq, point.head_dim_v) if point.mode in ("bwd", "fwdbwd") else None
    return Inputs(point, q, k, v, gates, do=do)
