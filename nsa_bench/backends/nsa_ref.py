"""`nsa-ref`: the plain-PyTorch reference NSA, timed like any backend — a slow but exact baseline."""
from __future__ import annotations

from dataclasses import replace

import torch

from nsa_bench import reference
from nsa_bench.backends import Backend, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point


def _build(point: Point, inputs: Inputs) -> Workload:
    cfg = point.cfg
    if point.mode == "decode":
        def run() -> torch.Tensor:
            return reference.nsa_decode(inputs.q, inputs.k, inputs.v, inputs.gates, inputs.cache_seqlens, cfg)

        return Workload(run=run, impl="pytorch", result=lambda: (run(),))

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return reference.nsa_attention(q, k, v, gates, cfg, block_idx=inputs.block_idx, cu_seqlens=inputs.cu_seqlens)

    def selection() -> torch.Tensor:
        k_cmp, _ = reference.compress_kv(inputs.k, inputs.v, cfg, inputs.cu_seqlens)
        return reference.select_blocks(inputs.q, k_cmp, cfg, cu_seqlens=inputs.cu_seqlens)

    return replace(autograd_workload(inputs, forward, "pytorch", grad_gates=True), selection=selection)


BACKEND = Backend(
    name="nsa-ref",
    family="nsa",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="reference NSA in plain PyTorch (chunked; slow, exact)",
    availability=cuda_required,
    build=_build,
    impl_hint=lambda: "pytorch",
    varlen=True,  # cu_seqlens in every mode; packed decode is a decode batch of the documents
)
