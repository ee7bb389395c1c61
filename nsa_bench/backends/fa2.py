"""`fa2`: CUDA FlashAttention-2 — the `flash_attn` package when importable, else PyTorch SDPA pinned to
its FlashAttention-2 kernel (never unpinned SDPA, which may silently pick cuDNN). Column `impl` says which.
FA2 needs Dk == Dv: when they differ, V is zero-padded to Dk and the row's message says so.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from nsa_bench.backends import Backend, Unsupported, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point


def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _impl_name() -> str:
    if _has_flash_attn():
        import flash_attn

        return f"flash_attn-{flash_attn.__version__}"
    return "sdpa-flash"


@functools.cache
def _sdpa_flash_takes_gqa() -> bool:
    """Whether this torch's flash SDPA kernel accepts fewer KV heads (enable_gqa) on this device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(1, 1, 16, 64, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
    except RuntimeError:
        return False
    return True


def _pad_v(v: torch.Tensor, head_dim: int) -> torch.Tensor:
    return v if v.shape[-1] == head_dim else F.pad(v, (0, head_dim - v.shape[-1]))


def _kv_repeats(inputs: Inputs) -> int:
    """1, or G where this torch's flash SDPA cannot do GQA itself and KV heads must be repeated."""
    group = inputs.point.group_size
    if _has_flash_attn() or group == 1 or inputs.q.device.type != "cuda" or _sdpa_flash_takes_gqa():
        return 1
    return group


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """SDPA pinned to the FlashAttention backend on BTHD tensors."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
            enable_gqa=q.shape[2] != k.shape[2],
        )
    return out.transpose(1, 2)


def _attention(causal: bool) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if _has_flash_attn():
        from flash_attn import flash_attn_func

        return lambda q, k, v: flash_attn_func(q, k, v, causal=causal)
    return lambda q, k, v: _sdpa_flash(q, k, v, causal)


def padding(point: Point) -> str:
    """What fa2 pads at `point` ("" when it runs the true shapes)."""
    dqk, dv = point.head_dim_qk, point.head_dim_v
    return f"V zero-padded from {dv} to {dqk} (FA2 needs Dk == Dv)" if dv != dqk else ""


def _build(point: Point, inputs: Inputs) -> Workload:
    dqk, dv = point.head_dim_qk, point.head_dim_v
    if dqk > 256:
        raise Unsupported(f"FlashAttention-2 supports head dims up to 256, got {dqk}")
    repeats = _kv_repeats(inputs)
    kv_note = (f"KV heads repeated x{repeats} (this torch's flash SDPA has no GQA): "
               f"{'outside the timed call' if point.mode == 'decode' else 'inside the timed call'}") if repeats > 1 else ""
    pad_note = padding(point)
    note = "; ".join(n for n in (pad_note, kv_note) if n)
    impl = _impl_name() + ("(kv-expanded)" if kv_note else "")
    if point.mode == "decode":
        if repeats > 1:
            inputs = replace(inputs, k=inputs.k.repeat_interleave(repeats, 2), v=inputs.v.repeat_interleave(repeats, 2))
        return _decode(inputs, impl, note)
    attend = _attention(causal=True)

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, 2), v.repeat_interleave(repeats, 2)
        return attend(q, k, _pad_v(v, dqk))[..., :dv]

    return autograd_workload(inputs, forward, impl, grad_gates=False, note=note)


def _decode(inputs: Inputs, impl: str, note: str) -> Workload:
    dqk, dv = inputs.point.head_dim_qk, inputs.point.head_dim_v
    k_cache, v_cache = inputs.k, _pad_v(inputs.v, dqk)  # padding outside the timed region
    q = inputs.q[:, None]  # [B, 1, Hq, Dk]
    if _has_flash_attn():
        from flash_attn import flash_attn_with_kvcache

        def run() -> torch.Tensor:
            return flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=inputs.cache_seqlens)[:, 0, :, :dv]
    else:
        # every sequence holds the whole cache in the sweep, so one query over all keys is exact
        def run() -> torch.Tensor:
            return _sdpa_flash(q, k_cache, v_cache, causal=False)[:, 0, :, :dv]

    return Workload(run=run, impl=impl, result=lambda: (run(),), note=note)


BACKEND = Backend(
    name="fa2",
    family="dense",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="CUDA FlashAttention-2 (flash_attn, else SDPA pinned to its flash kernel)",
    availability=cuda_required,
    build=_build,
    impl_hint=_impl_name,
    pads=padding,
)
