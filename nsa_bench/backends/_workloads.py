"""Turn a forward function into the Workload of each mode (shared by the backends).

Backward is timed alone: the forward runs once outside the timed region and each rep replays the
backward of the same graph (retain_graph), with grads cleared untimed before every rep. Layer modes
wrap the same forward in one model layer (nsa_bench.layer), so every autograd backend runs them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from nsa_bench.backends import Workload
from nsa_bench.inputs import Inputs

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
        from nsa_bench.layer import layer_workload

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
