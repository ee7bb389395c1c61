"""Seeded random inputs for one point (never zeros: zeros hide indexing bugs): dense, layer and packed.

Packed points (`--doc-lens`): forward, backward and layer modes turn the B rows of T tokens into one
sequence [1, B*T, ...] (values unchanged, a free reshape) with `cu_seqlens` over the point's documents
(nsa_bench.doclens), so a packed point and its dense twin see the same numbers and differ only in where
attention may look. Packed decode: the documents are the decode batch (docs/varlen.md, section 7):
caches [N, max L_i, Hkv, D] holding document i in row i, cache_seqlens = the lengths, and N fresh random
query tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from nsa_kernels import varlen
from nsa_bench.doclens import NONE
from nsa_bench.layer import gate_mlp, project_qkv
from nsa_bench.spec import LAYER_MODES, Point

_DECODE_QUERY_SEED = 1_000_003  # offset of a packed decode's queries' seed from the tensors' seed

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class LayerInputs:
    """x [B, T, d_model] and the weights: w_q [d_model, Hq*Dk], w_k [d_model, Hkv*Dk], w_v [d_model, Hkv*Dv],
    w_g [d_model, Hq*3] (used by gated attention only), w_o [Hq*Dv, d_model]."""

    x: torch.Tensor
    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    w_g: torch.Tensor
    w_o: torch.Tensor

    def weights(self, gated: bool) -> tuple[torch.Tensor, ...]:
        """The weights a layer uses, in `layer_fn`'s argument order."""
        return (self.w_q, self.w_k, self.w_v, self.w_g, self.w_o) if gated else (self.w_q, self.w_k, self.w_v, self.w_o)

    def cast(self, dtype: torch.dtype) -> "LayerInputs":
        return LayerInputs(*(t.detach().to(dtype) for t in (self.x, self.w_q, self.w_k, self.w_v, self.w_g, self.w_o)))


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
    layer: LayerInputs | None = None
    cu_seqlens: torch.Tensor | None = None  # packed points (_packed_inputs): tensors are [1, B*T, ...]

    def cast(self, dtype: torch.dtype) -> "Inputs":
        """Same values in another float dtype (indices untouched), detached, no grad."""
        def conv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(dtype)

        layer = None if self.layer is None else self.layer.cast(dtype)
        return replace(self, q=conv(self.q), k=conv(self.k), v=conv(self.v), gates=conv(self.gates), do=conv(self.do),
                       layer=layer)

    def with_block_idx(self, block_idx: torch.Tensor) -> "Inputs":
        return replace(self, block_idx=block_idx)


def input_shapes(point: Point) -> dict[str, tuple[int, ...]]:
    """The shape of each float input of `point` (decode: one query per sequence over full caches)."""
    b, t, hkv, hq = point.batch, point.seqlen, point.kv_heads, point.q_heads
    if point.mode in LAYER_MODES:  # x, the weights and (layer-bwd) dy; q/k/v/gates are their projections
        d, dk, dv = point.d_model, point.head_dim_qk, point.head_dim_v
        shapes = {"x": (b, t, d), "w_q": (d, hq * dk), "w_k": (d, hkv * dk), "w_v": (d, hkv * dv),
                  "w_g": (d, hq * 3), "w_o": (hq * dv, d)}
        return {**shapes, "dy": (b, t, d)} if point.mode == "layer-bwd" else shapes
    shapes = {"k": (b, t, hkv, point.head_dim_qk), "v": (b, t, hkv, point.head_dim_v)}
    if point.mode == "decode":
        return {**shapes, "q": (b, hq, point.head_dim_qk), "gates": (b, hq, 3)}
    shapes.update(q=(b, t, hq, point.head_dim_qk), gates=(b, t, hq, 3))
    if point.mode in ("bwd", "fwdbwd"):
        shapes["do"] = (b, t, hq, point.head_dim_v)
    return shapes


def input_samples(point: Point) -> int:
    """Random numbers drawn for `point`'s inputs (what input generation costs)."""
    return sum(math.prod(shape) for shape in input_shapes(point).values())


def make_inputs(point: Point, device: torch.device | str, seed: int) -> Inputs:
    """Random inputs for `point`, drawn on `device` itself from a generator seeded with `seed`: the same
    seed on the same device gives the same inputs, and no GPU time waits on host-side random numbers.

    Draws in float32 (every device's generator has it) in a fixed order, then casts to the point's dtype.
    """
    if point.packed:  # documents packed into each row: the dense point's tensors as one varlen batch
        return _packed_inputs(point, device, seed)
    if point.mode in LAYER_MODES:
        return make_layer_inputs(point, device, seed)
    dtype = TORCH_DTYPES[point.dtype]
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        sample = torch.rand if name == "gates" else torch.randn  # gates in [0, 1), like sigmoid outputs
        return sample(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    drawn = {name: draw(name, shape) for name, shape in input_shapes(point).items()}
    if point.mode == "decode":
        seqlens = torch.full((point.batch,), point.seqlen, dtype=torch.int32, device=device)
        return Inputs(point, drawn["q"], drawn["k"], drawn["v"], drawn["gates"], cache_seqlens=seqlens)
    return Inputs(point, drawn["q"], drawn["k"], drawn["v"], drawn["gates"], do=drawn.get("do"))


def make_layer_inputs(point: Point, device: torch.device | str, seed: int) -> Inputs:
    """Random x and weights (scaled by fan-in, so q, k, v have unit variance), made on `device`; the
    attention inputs q/k/v/gates are their projections (what the layer's attention will see)."""
    if not point.is_layer or point.d_model < 1:
        raise ValueError(f"make_layer_inputs needs a layer mode with d_model >= 1, got {point.mode} d_model={point.d_model}")
    dtype = TORCH_DTYPES[point.dtype]
    gen = torch.Generator(device=device).manual_seed(seed)
    b, t, d = point.batch, point.seqlen, point.d_model

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)

    hq, hkv, dk, dv = point.q_heads, point.kv_heads, point.head_dim_qk, point.head_dim_v
    layer = LayerInputs(x=randn(b, t, d), w_q=randn(d, hq * dk, scale=d ** -0.5), w_k=randn(d, hkv * dk, scale=d ** -0.5),
                        w_v=randn(d, hkv * dv, scale=d ** -0.5), w_g=randn(d, hq * 3, scale=d ** -0.5),
                        w_o=randn(hq * dv, d, scale=(hq * dv) ** -0.5))
    dy = randn(b, t, d) if point.mode == "layer-bwd" else None
    with torch.no_grad():
        q, k, v = project_qkv(point, layer.x, layer.w_q, layer.w_k, layer.w_v)
        gates = gate_mlp(point, layer.x, layer.w_g)
    return Inputs(point, q, k, v, gates, do=dy, layer=layer)


def _flat(x: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T, ...] -> [1, B*T, ...]."""
    return None if x is None else x.reshape(1, x.shape[0] * x.shape[1], *x.shape[2:])


def _packed_inputs(point: Point, device: torch.device | str, seed: int) -> Inputs:
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


def empty_inputs(point: Point, device: torch.device | str = "meta", with_block_idx: bool = False) -> Inputs:
    """Inputs of `point`'s shapes without values (on `meta`: no memory), for recording kernel launches.
    A packed point gets packed_inputs' layout, its cu_seqlens real and on the CPU (the kernels' wrappers
    read the lengths on the host)."""
    if point.packed:
        return _empty_packed(point, device, with_block_idx)
    dtype = TORCH_DTYPES[point.dtype]
    made = {name: torch.empty(shape, device=device, dtype=dtype) for name, shape in input_shapes(point).items()}
    block_idx = None
    if with_block_idx and point.mode != "decode":
        block_idx = torch.empty(point.batch, point.seqlen, point.kv_heads, point.n_slc, dtype=torch.int32,
                                device=device)
    seqlens = torch.empty(point.batch, dtype=torch.int32, device=device) if point.mode == "decode" else None
    return Inputs(point, made["q"], made["k"], made["v"], made["gates"], do=made.get("do"), cache_seqlens=seqlens,
                  block_idx=block_idx)


def _empty_packed(point: Point, device: torch.device | str, with_block_idx: bool) -> Inputs:
    lengths = point.documents()
    dtype = TORCH_DTYPES[point.dtype]
    if point.mode == "decode":
        n, longest = len(lengths), max(lengths)
        caches = {name: torch.empty(n, longest, point.kv_heads, dim, device=device, dtype=dtype)
                  for name, dim in (("k", point.head_dim_qk), ("v", point.head_dim_v))}
        return Inputs(point, torch.empty(n, point.q_heads, point.head_dim_qk, device=device, dtype=dtype),
                      caches["k"], caches["v"], torch.empty(n, point.q_heads, 3, device=device, dtype=dtype),
                      cache_seqlens=torch.empty(n, dtype=torch.int32, device=device))

    dense = empty_inputs(replace(point, doc_lens=NONE), device, with_block_idx)  # attention modes only
    return Inputs(point, _flat(dense.q), _flat(dense.k), _flat(dense.v), _flat(dense.gates), do=_flat(dense.do),
                  block_idx=_flat(dense.block_idx), cu_seqlens=varlen.cu_seqlens_of(lengths))
