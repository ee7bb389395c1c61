"""Turn a forward function into the Workload of each mode (shared by the backends).

Backward is timed alone: the forward runs once outside the timed region and each rep replays the
backward of the same graph (retain_graph), with grads cleared untimed before every rep. Layer modes
wrap the same forward in one model layer (nsa_bench.layer's math), so every autograd backend runs them.

Layer stages (timed one by one, as the per-branch rows of the attention modes): `qkv_proj`, `gate_mlp`
(NSA), `attention`, `out_proj`; in `layer-bwd` each is that piece's backward alone, fed a fixed upstream
gradient. The cost model's matching stages are `cost.layer_cost`'s.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from nsa_bench import cost
from nsa_bench.backends import Workload
from nsa_bench.inputs import Inputs
from nsa_bench.layer import Attention, gate_mlp, layer_fn, out_proj, project_qkv

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def autograd_workload(
    inputs: Inputs, forward: Forward, impl: str, grad_gates: bool, note: str = "",
    stages: Mapping[str, Callable[[], Any]] | None = None,
    stage_costs: Mapping[str, tuple[str, ...]] | None = None,
) -> Workload:
    """fwd / bwd / fwdbwd / layer-fwd / layer-bwd workload for `forward(q, k, v, gates) -> o` on `inputs`.

    `grad_gates` marks gated (NSA) attention: its gates get gradients, and its layer has the gate MLP.
    """
    mode = inputs.point.mode
    if inputs.point.is_layer:
        return layer_workload(inputs, forward, impl, gated=grad_gates, note=note)
    extras = {"stages": dict(stages or {}), "stage_costs": dict(stage_costs or {}), "note": note}
    if mode == "fwd":
        def run_fwd() -> torch.Tensor:
            with torch.no_grad():
                return forward(inputs.q, inputs.k, inputs.v, inputs.gates)

        return Workload(run=run_fwd, impl=impl, result=lambda: (run_fwd(),), **extras)

    leaves = [t.detach().requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v, inputs.gates)]
    if not grad_gates:
        leaves[3].requires_grad_(False)
    tracked: Sequence[torch.Tensor] = leaves if grad_gates else leaves[:3]

    def clear() -> None:
        for leaf in tracked:
            leaf.grad = None

    def grads() -> tuple[torch.Tensor, ...]:
        return tuple(leaf.grad for leaf in tracked)

    if mode == "fwdbwd":
        def run_fwdbwd() -> None:
            forward(*leaves).backward(inputs.do)

        def result_fwdbwd() -> tuple[torch.Tensor, ...]:
            clear()
            run_fwdbwd()
            return grads()

        return Workload(run=run_fwdbwd, impl=impl, result=result_fwdbwd, before_each=clear, **extras)

    out = forward(*leaves)

    def run_bwd() -> None:
        out.backward(inputs.do, retain_graph=True)

    def result_bwd() -> tuple[torch.Tensor, ...]:
        clear()
        run_bwd()
        return grads()

    return Workload(run=run_bwd, impl=impl, result=result_bwd, before_each=clear, **extras)


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
