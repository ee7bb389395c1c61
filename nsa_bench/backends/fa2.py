"""`fa2`: CUDA FlashAttention-2 — the `flash_attn` package when importable, else PyTorch SDPA pinned to
its FlashAttention-2 kernel (never unpinned SDPA, which may silently pick cuDNN). Column `impl` says which.
FA2 needs Dk == Dv: when they differ, V is zero-padded to Dk and the row's message says so.

Packed points (--doc-lens, Inputs.cu_seqlens): `flash_attn_varlen_func` when flash_attn is importable;
otherwise the pinned SDPA flash kernel once per document (impl `...(per-seq)`): a block-diagonal mask is
not an option there, since SDPA's flash kernel takes no attn_mask and a mask would hand the call to
another kernel. Packed decode (documents of different lengths): flash_attn_with_kvcache's cache_seqlens,
or SDPA per sequence over its own cache length.
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
from nsa_kernels import varlen


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


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _varlen_attention(cu_seqlens: torch.Tensor) -> tuple[Attend, str, str]:
    """(causal attention over the packed documents of cu_seqlens, impl suffix, note). Lengths are read on
    the host here, once, outside the timed region."""
    spans = varlen.spans(cu_seqlens, int(cu_seqlens[-1]))
    if _has_flash_attn():
        from flash_attn import flash_attn_varlen_func

        longest = max((e - s for s, e in spans), default=0)
        cu = cu_seqlens.to(torch.int32)

        def packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, longest, longest, causal=True)[None]

        return packed, "", f"varlen: flash_attn_varlen_func over {len(spans)} documents"

    def per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([_sdpa_flash(q[:, s:e], k[:, s:e], v[:, s:e], True) for s, e in spans if e > s], dim=1)

    return per_sequence, "(per-seq)", (f"varlen: SDPA's flash kernel once per document ({len(spans)} launches; "
                                      "it takes no block mask)")


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
    attend, packed_impl, packed_note = _attention(causal=True), "", ""
    if inputs.cu_seqlens is not None:
        attend, packed_impl, packed_note = _varlen_attention(inputs.cu_seqlens)
    note = "; ".join(n for n in (pad_note, kv_note, packed_note) if n)
    impl = _impl_name() + ("(kv-expanded)" if kv_note else "") + packed_impl
    if point.mode == "decode":
        if repeats > 1:
            inputs = replace(inputs, k=inputs.k.repeat_interleave(repeats, 2), v=inputs.v.repeat_interleave(repeats, 2))
        return _decode(inputs, impl, note)

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
    elif all(n == k_cache.shape[1] for n in inputs.cache_seqlens.tolist()):
        # every sequence holds the whole cache (a dense sweep), so one query over all keys is exact
        def run() -> torch.Tensor:
            return _sdpa_flash(q, k_cache, v_cache, causal=False)[:, 0, :, :dv]
    else:  # packed decode: documents of different lengths, each over its own cache prefix
        lengths = inputs.cache_seqlens.tolist()
        note = "; ".join(n for n in (note, f"decode: SDPA's flash kernel once per sequence ({len(lengths)} launches)") if n)
        impl += "(per-seq)"

        def run() -> torch.Tensor:
            return torch.cat([_sdpa_flash(q[i : i + 1], k_cache[i : i + 1, :n], v_cache[i : i + 1, :n], causal=False)
                              for i, n in enumerate(lengths)])[:, 0, :, :dv]

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
    varlen=True,
)
