"""`cudnn`: PyTorch SDPA pinned to `SDPBackend.CUDNN_ATTENTION` (cuDNN's fused flash attention), the
dense kernel a Hopper user gets from PyTorch, and one that runs Dk = 192 / Dv = 128 without padding V.

What cuDNN SDPA accepts depends on the torch build, the cuDNN version and the GPU (PyTorch's
`can_use_cudnn_attention` in aten/src/ATen/native/transformers/cuda/sdp_utils.cpp): float16/bfloat16
only; head dims multiples of 8, at most 128 in general, 192/128 on sm90/sm100 with cuDNN >= 9.11 and up
to 256 with newer cuDNN; backward there only for (<=128, <=128), (192, 128) and (256, 256); a key length
above 1 (one query, i.e. decode, is allowed); fewer KV heads than query heads (GQA, `enable_gqa`) in
recent versions. Rather than trust that table, every shape is probed once per process on a tiny input
(as fa2 probes GQA): a refusal becomes an `unsupported` row quoting the reasons torch gave. When cuDNN
refuses GQA but takes the shape with equal heads, KV heads are repeated inside the timed call and the
row says so. The static limits above that hold for every version are checked before any probe, so a
predicted run lists them too.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from nsa_bench.backends import Backend, Unsupported, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import TORCH_DTYPES, Inputs
from nsa_bench.spec import Point

_MAX_HEAD_DIM = 256  # no cuDNN version goes beyond this
_PROBE_SEQLEN = 256


def cudnn_version() -> str:
    """cuDNN's runtime version as text (e.g. "9.10.2"), "" when torch has none."""
    try:
        number = torch.backends.cudnn.version()
    except Exception:  # a CPU build can raise instead of returning None
        return ""
    if not number:
        return ""
    major, rest = (number // 10000, number % 10000) if number >= 90000 else (number // 1000, number % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def impl_name() -> str:
    version = cudnn_version()
    return f"sdpa-cudnn-{version}" if version else "sdpa-cudnn"


def availability() -> str | None:
    from torch.nn.attention import SDPBackend

    if not hasattr(SDPBackend, "CUDNN_ATTENTION"):
        return f"this torch {torch.__version__} has no SDPBackend.CUDNN_ATTENTION (torch >= 2.5 needed)"
    missing_gpu = cuda_required()
    if missing_gpu:
        return f"{missing_gpu} (cuDNN SDPA runs on sm80..sm121)"
    if not torch.backends.cudnn.is_available():
        return f"this torch {torch.__version__} was built without cuDNN"
    return None


def supports(point: Point) -> str | None:
    """The limits every cuDNN version has (finer ones are probed on the GPU)."""
    if point.dtype == "float32":
        return "cuDNN SDPA takes float16/bfloat16 only, got float32"
    for name in ("head_dim_qk", "head_dim_v"):
        value = getattr(point, name)
        if value % 8:
            return f"cuDNN SDPA needs {name} a multiple of 8, got {value}"
        if value > _MAX_HEAD_DIM:
            return f"cuDNN SDPA needs {name} <= {_MAX_HEAD_DIM}, got {value}"
    if point.mode == "decode" and point.seqlen < 2:
        return f"cuDNN SDPA needs a key length above 1, got a decode cache of {point.seqlen}"
    return None


def _kind(mode: str) -> str:
    """What a mode asks of the kernel: fwd (no grad), bwd (forward + backward), decode (one query)."""
    return {"fwd": "fwd", "layer-fwd": "fwd", "decode": "decode"}.get(mode, "bwd")


@contextlib.contextmanager
def _pinned() -> Iterator[None]:
    """SDPA restricted to cuDNN: it either runs cuDNN's kernel or raises (never a silent fallback)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        yield


def sdpa_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Pinned SDPA on BTHD tensors (GQA when k has fewer heads than q)."""
    with _pinned():
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


# ------------------------------------------------------------------ the once-per-process probe
@dataclass(frozen=True)
class Probe:
    """How cuDNN SDPA takes a shape here: natively, with KV heads repeated, or not at all (reason)."""

    runs: bool
    repeat_kv: bool = False
    reason: str = ""


def reasons(caught: list[warnings.WarningMessage], error: BaseException | None) -> str:
    """What torch said about cuDNN when it refused: the warnings after its "cuDNN attention kernel not
    used because" line (torch lists every disabled backend's reasons, cuDNN's last), else the error."""
    texts = [str(w.message).split("(Triggered internally")[0].strip() for w in caught]
    start = next((i for i, t in enumerate(texts) if "cuDNN attention kernel not used" in t), None)
    said = texts[start + 1:] if start is not None else [t for t in texts if "cudnn" in t.lower()]
    said = [t for t in said if t and "kernel not used because" not in t]
    if said:
        return "; ".join(dict.fromkeys(said))
    if error is None:
        return ""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _attempt(dqk: int, dv: int, group: int, kind: str, dtype: str, repeat: bool) -> str | None:
    """Run the shape once on a tiny input; None when cuDNN took it, else why not."""
    hq, hkv = group, 1
    heads = hq if repeat else hkv
    torch_dtype = TORCH_DTYPES[dtype]
    q_len = 1 if kind == "decode" else _PROBE_SEQLEN
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(torch_dtype)

    q = randn(1, q_len, hq, dqk).requires_grad_(kind == "bwd")
    k = randn(1, _PROBE_SEQLEN, heads, dqk).requires_grad_(kind == "bwd")
    v = randn(1, _PROBE_SEQLEN, heads, dv).requires_grad_(kind == "bwd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.set_grad_enabled(kind == "bwd"):
                out = sdpa_cudnn(q, k, v, causal=kind != "decode")
            if kind == "bwd":
                out.backward(torch.ones_like(out))
            torch.cuda.synchronize()
        except Exception as exc:  # whatever the probe raises becomes the reason, never a crash
            return reasons(caught, exc) or type(exc).__name__
    if not torch.isfinite(out).all():
        return "the probe's output is not finite"
    return None


@functools.cache
def probe(dqk: int, dv: int, group: int, kind: str, dtype: str) -> Probe:
    """Whether (and how) cuDNN SDPA runs this shape on this GPU: once per process per shape."""
    why = _attempt(dqk, dv, group, kind, dtype, repeat=False)
    if why is None:
        return Probe(True)
    if group > 1 and _attempt(dqk, dv, group, kind, dtype, repeat=True) is None:
        return Probe(True, repeat_kv=True, reason=why)
    return Probe(False, reason=why)


# ------------------------------------------------------------------ the workload
def plan(point: Point, device_type: str) -> tuple[int, str]:
    """(KV-head repeats, note) cuDNN SDPA runs `point` with here; Unsupported (with torch's reasons) when it
    refuses the shape. Only a CUDA device is probed (elsewhere the caller supplies a stand-in kernel)."""
    why_not = supports(point)
    if why_not:
        raise Unsupported(why_not)
    if device_type != "cuda":
        return 1, ""
    dqk, dv, group, kind = point.head_dim_qk, point.head_dim_v, point.group_size, _kind(point.mode)
    found = probe(dqk, dv, group, kind, point.dtype)
    if not found.runs:
        raise Unsupported(f"cuDNN SDPA ({impl_name()}) refuses D={dqk}-{dv}, G={group}, {point.dtype}, {kind}: "
                          f"{found.reason}")
    if not found.repeat_kv:
        return 1, ""
    where = "outside the timed call" if kind == "decode" else "inside the timed call"
    return group, f"KV heads repeated x{group} (this cuDNN SDPA refused GQA: {found.reason}): {where}"


def _build(point: Point, inputs: Inputs) -> Workload:
    repeats, note = plan(point, inputs.q.device.type)
    impl = impl_name() + ("(kv-expanded)" if repeats > 1 else "")
    if point.mode == "decode":
        if repeats > 1:
            inputs = replace(inputs, k=inputs.k.repeat_interleave(repeats, 2), v=inputs.v.repeat_interleave(repeats, 2))
        q1, k_cache, v_cache = inputs.q[:, None], inputs.k, inputs.v

        # every sequence holds the whole cache in the sweep, so one query over all keys is exact
        def run() -> torch.Tensor:
            return sdpa_cudnn(q1, k_cache, v_cache, causal=False)[:, 0]

        return Workload(run=run, impl=impl, result=lambda: (run(),), note=note)

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: Any) -> torch.Tensor:
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, 2), v.repeat_interleave(repeats, 2)
        return sdpa_cudnn(q, k, v, causal=True)

    return autograd_workload(inputs, forward, impl, grad_gates=False, note=note)


BACKEND = Backend(
    name="cudnn",
    family="dense",
    modes=("fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"),
    description="cuDNN attention: PyTorch SDPA pinned to SDPBackend.CUDNN_ATTENTION (true Dk != Dv, GQA)",
    availability=availability,
    build=_build,
    impl_hint=impl_name,
    supports=supports,
)
