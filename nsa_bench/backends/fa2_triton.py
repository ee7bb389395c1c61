"""`fa2-triton`: our Triton FlashAttention-2 (kernels/flash.py) — the paper's like-for-like baseline."""
from __future__ import annotations

import torch

from nsa_bench.backends import Backend, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point


def _build(point: Point, inputs: Inputs) -> Workload:
    import nsa_kernels

    if point.mode == "decode":
        def run() -> torch.Tensor:
            return nsa_kernels.flash_attention_decode(inputs.q, inputs.k, inputs.v, inputs.cache_seqlens)

        return Workload(run=run, impl="triton", result=lambda: (run(),))

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return nsa_kernels.flash_attention(q, k, v, causal=True)

    return autograd_workload(inputs, forward, "triton", grad_gates=False)


BACKEND = Backend(
    name="fa2-triton",
    family="dense",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="our Triton FlashAttention-2 (causal, GQA, Dk != Dv without padding)",
    availability=cuda_required,
    build=_build,
    impl_hint=lambda: "triton",
    no_varlen="fa2-triton: packed batches (--doc-lens) unsupported: the Triton kernels take no cu_seqlens yet (varlen kernels are the next step of issue 17)",
)
