"""One attention layer of a model around any backend's attention (modes `layer-fwd`, `layer-bwd`).

x [B, T, d_model] -> q/k/v projections (gated attention, i.e. NSA: and its gate MLP) -> attention ->
output projection -> y [B, T, d_model]. Every backend runs the same projections (plain GEMMs in the
point's dtype); only the attention call differs, so a layer speedup is what one layer of a model gains.
The gate MLP is one linear layer d_model -> 3 * Hq with a sigmoid, giving the gates [B, T, Hq, 3] that
NSA_SPEC section 6 takes (the form public NSA layers use). Weights are [in, out]: a projection is `x @ w`.

Stages (timed one by one, as the per-branch rows of the attention modes): `qkv_proj`, `gate_mlp` (NSA),
`attention`, `out_proj`; in `layer-bwd` each is that piece's backward alone, fed a fixed upstream
gradient. The cost model's matching stages are `cost.layer_cost`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from nsa_bench import cost, reference
from nsa_bench.backends import Workload
from nsa_bench.inputs import TORCH_DTYPES, Inputs
from nsa_bench.spec import Point

# attention(q, k, v, gates or None) -> o [B, T, Hq, Dv]: what a backend gives autograd_workload
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


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


# ------------------------------------------------------------------ the layer's pieces
def project_qkv(point: Point, x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                w_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, t = x.shape[:2]
    return ((x @ w_q).view(b, t, point.q_heads, point.head_dim_qk),
            (x @ w_k).view(b, t, point.kv_heads, point.head_dim_qk),
            (x @ w_v).view(b, t, point.kv_heads, point.head_dim_v))


def gate_mlp(point: Point, x: torch.Tensor, w_g: torch.Tensor) -> torch.Tensor:
    b, t = x.shape[:2]
    return torch.sigmoid(x @ w_g).view(b, t, point.q_heads, 3)


def out_proj(o: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    b, t = o.shape[:2]
    return o.reshape(b, t, -1) @ w_o


def layer_fn(point: Point, attend: Attention, gated: bool) -> Callable[..., torch.Tensor]:
    """layer(x, w_q, w_k, w_v, [w_g,] w_o) -> y: the whole layer around `attend`."""
    def layer(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
              *rest: torch.Tensor) -> torch.Tensor:
        w_g, w_o = rest if gated else (None, rest[0])
        q, k, v = project_qkv(point, x, w_q, w_k, w_v)
        gates = gate_mlp(point, x, w_g) if gated else None
        return out_proj(attend(q, k, v, gates), w_o)

    return layer


# ------------------------------------------------------------------ inputs
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


# ------------------------------------------------------------------ the float64 reference
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


# ------------------------------------------------------------------ the workload
def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return fn()

    return call


def layer_workload(inputs: Inputs, attend: Attention, impl: str, gated: bool, note: str = "") -> Workload:
    """The Workload of a layer mode around a backend's `attend` (gated: NSA, with its gate MLP)."""
    point, weights = inputs.point, inputs.layer
    if weights is None:
        raise ValueError(f"{point.mode} needs layer inputs (make_inputs builds them for layer modes)")
    layer = layer_fn(point, attend, gated)
    gates = inputs.gates if gated else None
    stage_costs = {"attention": cost.layer_attention_stages(point.mode, nsa=gated)}
    note = "; ".join(n for n in (note, "projections: torch GEMMs (x @ W)") if n)
    if point.mode == "layer-fwd":
        used = (weights.x, *weights.weights(gated))
        with torch.no_grad():
            o = attend(inputs.q, inputs.k, inputs.v, gates)  # the out_proj stage's input
        stages: dict[str, Callable[[], Any]] = {
            "qkv_proj": _no_grad(lambda: project_qkv(point, weights.x, weights.w_q, weights.w_k, weights.w_v))}
        if gated:
            stages["gate_mlp"] = _no_grad(lambda: gate_mlp(point, weights.x, weights.w_g))
        stages["attention"] = _no_grad(lambda: attend(inputs.q, inputs.k, inputs.v, gates))
        stages["out_proj"] = _no_grad(lambda: out_proj(o, weights.w_o))
        run = _no_grad(lambda: layer(*used))
        return Workload(run=run, impl=impl, result=lambda: (run(),), stages=stages, stage_costs=stage_costs, note=note)
    return _backward_workload(inputs, attend, layer, impl, gated, stage_costs, note)


def _backward_workload(inputs: Inputs, attend: Attention, layer: Callable[..., torch.Tensor], impl: str, gated: bool,
                       stage_costs: dict[str, tuple[str, ...]], note: str) -> Workload:
    """layer-bwd: the whole layer's backward (forward outside the timed region), and each piece's backward
    alone on its own graph, fed fixed upstream gradients (dy for out_proj, random ones inside)."""
    point, weights, dy = inputs.point, inputs.layer, inputs.do
    assert weights is not None and dy is not None

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().requires_grad_(True)

    main = [leaf(t) for t in (weights.x, *weights.weights(gated))]
    y = layer(*main)
    gen = torch.Generator(device=dy.device).manual_seed(point.seqlen)

    def upstream(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=torch.float32).to(like.dtype)

    # attention alone: its graph from the projected q/k/v/gates to o
    attn_in = [leaf(t) for t in (inputs.q, inputs.k, inputs.v)] + ([leaf(inputs.gates)] if gated else [])
    o = attend(*attn_in[:3], attn_in[3] if gated else None)
    d_o = upstream(o)
    # out_proj alone
    o_leaf, w_o = leaf(o), leaf(weights.w_o)
    y_out = out_proj(o_leaf, w_o)
    # q/k/v projections alone, and the gate MLP alone
    x_qkv, w_q, w_k, w_v = (leaf(t) for t in (weights.x, weights.w_q, weights.w_k, weights.w_v))
    qkv = project_qkv(point, x_qkv, w_q, w_k, w_v)
    d_qkv = tuple(upstream(t) for t in qkv)
    tracked = [*main, *attn_in, o_leaf, w_o, x_qkv, w_q, w_k, w_v]
    stages: dict[str, Callable[[], Any]] = {
        "qkv_proj": lambda: torch.autograd.backward(qkv, d_qkv, retain_graph=True)}
    if gated:
        x_g, w_g = leaf(weights.x), leaf(weights.w_g)
        g = gate_mlp(point, x_g, w_g)
        d_g = upstream(g)
        tracked += [x_g, w_g]
        stages["gate_mlp"] = lambda: g.backward(d_g, retain_graph=True)
    stages["attention"] = lambda: o.backward(d_o, retain_graph=True)
    stages["out_proj"] = lambda: y_out.backward(dy, retain_graph=True)

    def clear() -> None:
        for t in tracked:
            t.grad = None

    def run() -> None:
        y.backward(dy, retain_graph=True)

    def result() -> tuple[torch.Tensor, ...]:
        clear()
        run()
        return tuple(t.grad for t in main)

    return Workload(run=run, impl=impl, result=result, before_each=clear, stages=stages, stage_costs=stage_costs,
                    note=note)

