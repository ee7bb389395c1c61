"""`fa3`: FlashAttention-3 (`flash_attn_interface`, built from flash-attention's hopper/ folder), the
fastest dense attention on Hopper: about 1.7x FA2 there (PAPER.md), with native Dk = 192 / Dv = 128.

It is not on PyPI as a wheel for every torch, so without the module the backend is unavailable and says
what to install. What a given build accepts (head-dim pairs, GQA, backward at 192/128, the GPU) is
probed once per process on a tiny input per shape and mode; a refusal is an `unsupported` row with
FA3's message. The call's return value differs across FA3 versions (out, or (out, lse)): both are taken.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from types import ModuleType
from typing import Any

import torch

from nsa_bench.backends import Backend, Unsupported, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import TORCH_DTYPES, Inputs
from nsa_bench.spec import Point

MODULE = "flash_attn_interface"
INSTALL_HINT = ("flash_attn_interface (FlashAttention-3) is not installed: build it from flash-attention's "
                "hopper/ folder (cd hopper && python setup.py install); it needs a Hopper GPU")
_DISTRIBUTIONS = ("flash_attn_3", "flash-attn-3", "flashattn-hopper", "flash_attn_interface")
_MAX_HEAD_DIM = 256
_PROBE_SEQLEN = 256


def load() -> ModuleType:
    """flash_attn_interface, imported (ImportError when absent or broken)."""
    return importlib.import_module(MODULE)


def availability() -> str | None:
    if importlib.util.find_spec(MODULE) is None:
        return INSTALL_HINT
    try:
        load()
    except Exception as exc:  # a build against another torch/CUDA fails at import
        return f"{MODULE} fails to import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return cuda_required()


def impl_name() -> str:
    for name in _DISTRIBUTIONS:
        try:
            return f"flash_attn_3-{importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "flash_attn_3"


def supports(point: Point) -> str | None:
    """FA3's limits that hold for every build (finer ones are probed on the GPU)."""
    if point.dtype == "float32":
        return "FlashAttention-3 takes float16/bfloat16 (and fp8) only, got float32"
    for name in ("head_dim_qk", "head_dim_v"):
        value = getattr(point, name)
        if value % 8:
            return f"FlashAttention-3 needs {name} a multiple of 8, got {value}"
        if value > _MAX_HEAD_DIM:
            return f"FlashAttention-3 needs {name} <= {_MAX_HEAD_DIM}, got {value}"
    return None


def _output(result: Any) -> torch.Tensor:
    """out from FA3's return value, whichever version: out, or (out, lse, ...)."""
    return result[0] if isinstance(result, (tuple, list)) else result


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """FA3 on BTHD tensors (GQA when k has fewer heads than q, Dk != Dv as the build allows)."""
    return _output(load().flash_attn_func(q, k, v, causal=causal))


def decode(q1: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    """One query per sequence over its KV cache: q1 [B, Hq, Dk] -> [B, Hq, Dv]."""
    return _output(load().flash_attn_with_kvcache(q1[:, None], k_cache, v_cache, cache_seqlens=seqlens))[:, 0]


def _kind(mode: str) -> str:
    return {"fwd": "fwd", "layer-fwd": "fwd", "decode": "decode"}.get(mode, "bwd")


@functools.cache
def probe(dqk: int, dv: int, group: int, kind: str, dtype: str) -> str | None:
    """None when this FA3 build runs the shape on this GPU, else its error: once per process per shape."""
    torch_dtype = TORCH_DTYPES[dtype]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(torch_dtype)

    try:
        k, v = randn(1, _PROBE_SEQLEN, 1, dqk), randn(1, _PROBE_SEQLEN, 1, dv)
        if kind == "decode":
            seqlens = torch.full((1,), _PROBE_SEQLEN, dtype=torch.int32, device="cuda")
            out = decode(randn(1, group, dqk), k, v, seqlens)
        else:
            leaves = [t.requires_grad_(kind == "bwd") for t in (randn(1, _PROBE_SEQLEN, group, dqk), k, v)]
            with torch.set_grad_enabled(kind == "bwd"):
                out = attention(*leaves)
            if kind == "bwd":
                out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
    except Exception as exc:  # whatever FA3 raises becomes the reason, never a crash
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return None if torch.isfinite(out).all() else "the probe's output is not finite"


def check_runs(point: Point, device_type: str) -> None:
    """Unsupported unless this FA3 build takes `point` (static limits; on a CUDA device, the probe)."""
    why_not = supports(point)
    if why_not:
        raise Unsupported(why_not)
    try:
        load()
    except Exception:
        raise Unsupported(availability() or INSTALL_HINT) from None
    if device_type != "cuda":
        return
    kind = _kind(point.mode)
    refused = probe(point.head_dim_qk, point.head_dim_v, point.group_size, kind, point.dtype)
    if refused:
        raise Unsupported(f"{impl_name()} refuses D={point.head_dim_qk}-{point.head_dim_v}, G={point.group_size}, "
                          f"{point.dtype}, {kind}: {refused}")


def _build(point: Point, inputs: Inputs) -> Workload:
    check_runs(point, inputs.q.device.type)
    impl = impl_name()
    if point.mode == "decode":
        def run() -> torch.Tensor:
            return decode(inputs.q, inputs.k, inputs.v, inputs.cache_seqlens)

        return Workload(run=run, impl=impl, result=lambda: (run(),))

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Any) -> torch.Tensor:
        return attention(q, k, v, causal=True)

    return autograd_workload(inputs, forward, impl, grad_gates=False)


BACKEND = Backend(
    name="fa3",
    family="dense",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="FlashAttention-3 (flash_attn_interface, Hopper; true Dk != Dv, GQA)",
    availability=availability,
    build=_build,
    impl_hint=impl_name,
    supports=supports,
)
