"""`fa2-triton`: our Triton FlashAttention-2 (kernels/flash.py) — the paper's like-for-like baseline.

Packed points (--doc-lens, Inputs.cu_seqlens): one launch per kernel over the whole packed batch, the
kernels' own varlen path (flash_attention(cu_seqlens=...), as flash_attn_varlen_func). The lengths are
read on the host once, outside the timed region, and passed as the max_seqlen hint with a device copy
of cu_seqlens, so the timed call reads nothing back. Packed decode is a decode batch of the documents
(cache_seqlens), which flash_attention_decode takes as it is.
"""
from __future__ import annotations

import torch

from nsa_bench.backends import Backend, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point
from nsa_kernels import varlen


def _packing(inputs: Inputs) -> tuple[dict, str]:
    """flash_attention's keywords for the packed batch of `inputs` (none when dense) and the row's note."""
    if inputs.cu_seqlens is None:
        return {}, ""
    spans = varlen.spans(inputs.cu_seqlens, inputs.q.shape[1], inputs.q.shape[0])
    longest = max((end - start for start, end in spans), default=0)
    cu = inputs.cu_seqlens.to(device=inputs.q.device, dtype=torch.int32)
    return {"cu_seqlens": cu, "max_seqlen": longest}, f"varlen: cu_seqlens over {len(spans)} documents, one launch"


def _build(point: Point, inputs: Inputs) -> Workload:
    import nsa_kernels

    if point.mode == "decode":
        def run() -> torch.Tensor:
            return nsa_kernels.flash_attention_decode(inputs.q, inputs.k, inputs.v, inputs.cache_seqlens)

        return Workload(run=run, impl="triton", result=lambda: (run(),))

    packed, note = _packing(inputs)

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return nsa_kernels.flash_attention(q, k, v, causal=True, **packed)

    return autograd_workload(inputs, forward, "triton", grad_gates=False, note=note)


BACKEND = Backend(
    name="fa2-triton",
    family="dense",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="our Triton FlashAttention-2 (causal, GQA, Dk != Dv without padding, packed batches)",
    availability=cuda_required,
    build=_build,
    impl_hint=lambda: "triton",
    launch_probes="dense",
    varlen=True,  # cu_seqlens in the kernels; packed decode is a decode batch of the documents
)
