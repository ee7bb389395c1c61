"""`nsa-triton`: our Triton NSA kernels (kernels/), with each stage timed for the per-branch breakdown.

Which implementation of each redesigned kernel runs comes from NSA_KERNEL_VARIANT (read when a point is
built: "v1", "v2" = the default, or per-kernel overrides such as "v2,cmp_dkv=v1"; kernels/README.md);
rows record it in `impl` as "triton:<label>", e.g. "triton:v2" or "triton:v2+cmp_dkv=v1"; forward and
backward rows at G < 16 read "triton:v2+slc_small_g=small_g" when the small-group selected kernels ran.

Packed points (--doc-lens): one launch per kernel over all documents (cu_seqlens, docs/varlen.md); a
variant with a v1 kernel cannot pack, and such points are `unsupported` rows saying so.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from nsa_bench.backends import Backend, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point

# kernel stage -> the cost-model stages it performs
STAGE_COSTS = {
    "fwd": {"select": ("scoring", "topn")},
    "bwd": {},
    "decode": {},
}


def _variants():
    """The kernel variants NSA_KERNEL_VARIANT names (a bad value is a ValueError naming the variable)."""
    from nsa_kernels.variants import KernelVariants

    return KernelVariants.from_env()


def _impl() -> str:
    """What `nsa-bench env` shows: the impl rows would record, or why NSA_KERNEL_VARIANT is unusable."""
    try:
        return f"triton:{_variants().label}"
    except ValueError as exc:
        return f"triton (unusable: {exc})"


def _build(point: Point, inputs: Inputs) -> Workload:
    import nsa_kernels
    from nsa_kernels import nsa

    cfg = point.cfg
    variants = _variants()
    impl = f"triton:{variants.impl_label(point.group_size)}"  # which selected path runs at this G
    if point.mode == "decode":
        from nsa_kernels import decode

        k_cmp, v_cmp = nsa_kernels.compress_kv(inputs.k, inputs.v, cfg)  # kept current by the cache in serving

        def run() -> torch.Tensor:
            return decode.nsa_decode_with_selection(inputs.q, inputs.k, inputs.v, inputs.gates, inputs.cache_seqlens,
                                                    cfg, k_cmp_cache=k_cmp, v_cmp_cache=v_cmp,
                                                    variant=variants.decode)[0]

        return Workload(run=run, impl=f"triton:{variants.label}", result=lambda: (run(),))  # no slc_small_g

    cu = None  # packed points: the documents' offsets, read once here, outside the timed loop (kernels/packing.py)
    if inputs.cu_seqlens is not None:
        from nsa_kernels.packing import Packing

        cu = Packing.of(inputs.cu_seqlens, inputs.q.shape[1], inputs.q.shape[0], inputs.q.device, cfg.block_cmp,
                        cfg.stride_cmp, cfg.block_slc)

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return nsa.nsa_attention_variants(q, k, v, gates, cfg, variants, block_idx=inputs.block_idx, cu_seqlens=cu)

    if point.mode == "fwd":
        stages = nsa.forward_stages(inputs.q, inputs.k, inputs.v, inputs.gates, cfg, block_idx=inputs.block_idx,
                                    variants=variants, cu_seqlens=cu)
    elif point.mode == "bwd":
        stages = nsa.backward_stages(inputs.q, inputs.k, inputs.v, inputs.gates, inputs.do, cfg,
                                     block_idx=inputs.block_idx, variants=variants, cu_seqlens=cu)
    else:
        stages = {}

    def selection() -> torch.Tensor:  # the kernels' own compression and selection, checked on the device
        with torch.no_grad():
            k_cmp, _ = nsa_kernels.compress_kv(inputs.k, inputs.v, cfg, cu)
            return nsa_kernels.select_blocks(inputs.q, k_cmp, cfg, cu_seqlens=cu)

    workload = autograd_workload(inputs, forward, impl, grad_gates=True, stages=stages,
                                 stage_costs=STAGE_COSTS.get(point.mode, {}))
    return replace(workload, selection=selection)


def _supports(point: Point) -> str | None:
    """Packed points need every packing kernel in v2 (NSA_KERNEL_VARIANT); a bad variable is the build's error."""
    if not point.packed or point.mode == "decode":
        return None
    try:
        refusal = _variants().packed_refusal()
    except ValueError:
        return None
    return f"nsa-triton ({refusal})" if refusal else None


BACKEND = Backend(
    name="nsa-triton",
    family="nsa",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="our Triton NSA kernels (compression, cmp attention + scoring, top-n, selected, window, gated sum)",
    availability=cuda_required,
    build=_build,
    impl_hint=_impl,
    staged_modes=("fwd", "bwd"),
    supports=_supports,
    launch_probes="nsa",
    varlen=True,  # cu_seqlens through every kernel; packed decode is a decode batch of the documents
)
