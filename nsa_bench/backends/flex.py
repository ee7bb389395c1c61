"""`flex`: dense causal attention by PyTorch FlexAttention, compiled (torch.compile) on a GPU: the
dense kernel a user writing attention variants in PyTorch would compare against, with Dk != Dv.

The causal block mask is built from block states (no T x T mask), outside the timed region. Inductor's
flex kernel tiles each head dim at the next power of two (QK_HEAD_DIM_ROUNDED in
torch/_inductor/kernel/flex/common.py), so Dk = 192 runs as 256 with the extra lanes masked: the row says
so. Decode is one query over the whole cache without a mask (flex's decoding kernel). A shape the
compiler refuses becomes an `unsupported` row with the compiler's message (the first call of a build,
in the check and in the warm-up, is where compilation happens). On the CPU flex runs eagerly (tests).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from nsa_bench.backends import Backend, Unsupported, Workload
from nsa_bench.backends import flex_nsa
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point


def _pow2(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def padding(point: Point) -> str:
    """The padding flex's GPU kernel adds ("" when both head dims are powers of two)."""
    rounded = [(name, value, _pow2(value)) for name, value in (("Dk", point.head_dim_qk), ("Dv", point.head_dim_v))
               if _pow2(value) != value]
    if not rounded:
        return ""
    dims = ", ".join(f"{name} {value} -> {up}" for name, value, up in rounded)
    return f"head dims tiled at powers of two by flex's Triton kernel ({dims}, extra lanes masked)"


def _compile_failure(exc: BaseException) -> bool:
    """An error of torch's compiler (dynamo/inductor) or a not-implemented path: out of flex's scope."""
    return isinstance(exc, NotImplementedError) or type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _refusal(exc: BaseException, what: str) -> Unsupported:
    lines = str(exc).strip().splitlines()
    return Unsupported(f"flex_attention refuses {what}: {type(exc).__name__}: {lines[0] if lines else ''}")


def _refusal_guard(fn: Callable[[], Any], what: str) -> Callable[[], Any]:
    """fn, except that a compiler refusal on its first call raises Unsupported naming the shape."""
    called: list[bool] = []

    def call() -> Any:
        if called:
            return fn()
        try:
            out = fn()
        except Exception as exc:
            if not _compile_failure(exc):
                raise
            raise _refusal(exc, what) from exc
        called.append(True)
        return out

    return call


def causal_mask(seqlen: int, device: torch.device) -> Any:
    """The causal BlockMask over `seqlen` tokens (a window as long as the sequence is causal attention)."""
    def causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return kv <= q

    return flex_nsa.block_mask(flex_nsa.window_states(seqlen, seqlen, device=device), causal, seqlen, seqlen)


def availability() -> str | None:
    why = flex_nsa.availability()
    return f"{why} (flex_attention is compiled to Triton for CUDA; eager on the CPU is only for tests)" \
        if why == "needs a CUDA GPU" else why


def _build(point: Point, inputs: Inputs) -> Workload:
    if flex_nsa.flex_module() is None:
        raise Unsupported(flex_nsa.availability() or "flex_attention unavailable")
    device = inputs.q.device
    attend = flex_nsa.attention_fn(device)
    scale = point.head_dim_qk ** -0.5
    impl = f"flex_attention-{'compiled' if device.type == 'cuda' else 'eager'}"
    note = "; ".join(n for n in (padding(point) if device.type == "cuda" else "",
                                  "causal block mask built outside the timed region" if point.mode != "decode" else "")
                     if n)
    what = f"D={point.head_dim_qk}-{point.head_dim_v}, G={point.group_size}, {point.dtype}, {point.mode}"

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        return attend(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])

    if point.mode == "decode":
        q1 = inputs.q[:, :, None]  # [B, Hq, 1, Dk]
        k_cache, v_cache = inputs.k.transpose(1, 2), inputs.v.transpose(1, 2)

        # every sequence holds the whole cache in the sweep, so one query over all keys is exact
        def step() -> torch.Tensor:
            return run(q1, k_cache, v_cache, None)[:, :, 0]

        guarded = _refusal_guard(step, what)
        return Workload(run=guarded, impl=impl, result=lambda: (guarded(),), note=note)

    mask = causal_mask(point.seqlen, device)

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Any) -> torch.Tensor:
        return run(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask).transpose(1, 2)

    try:  # a layer-fwd or bwd build calls the attention once (compiling it) while building
        workload = autograd_workload(inputs, forward, impl, grad_gates=False, note=note)
    except Exception as exc:
        if not _compile_failure(exc):
            raise
        raise _refusal(exc, what) from exc
    return replace(workload, run=_refusal_guard(workload.run, what), result=_refusal_guard(workload.result, what))


BACKEND = Backend(
    name="flex",
    family="dense",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="dense causal FlexAttention (torch.compile'd flex_attention; Dk != Dv, GQA)",
    availability=availability,
    build=_build,
    impl_hint=lambda: "flex_attention-compiled",
    pads=padding,
)
