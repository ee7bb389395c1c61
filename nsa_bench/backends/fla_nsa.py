"""`fla-nsa`: flash-linear-attention's NSA (`pip install fla-core`, `fla.ops.nsa`) — a peer Triton NSA.

fla implements NSA with one block size for compression, compressed attention and selection
(non-overlapping mean-pooled blocks, l = d = l'), so it equals NSA_SPEC.md only at such points;
its kernels tile a KV head's G query heads together (G a power of two >= 16), its top-k keeps
next_pow2(n) blocks in a tile of l' (so n must be a power of two and l' >= 2n), and its head dims
must fit one 256-wide tile. Anything else is an `unsupported` row naming the constraint.

The compressed and selected branches are `fla.ops.nsa.parallel_nsa`; the sliding window is
`fla.ops.attn.parallel_attn(window_size=w)` (fla's own Triton kernel, which takes Dk != Dv),
because parallel_nsa's window path needs flash-attn, whose FA2 cannot do Dk != Dv (paper: 192/128).
Given `inputs.block_idx` (the correctness check's shared selection), fla uses it instead of its own.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from typing import Any, Callable

import torch

from nsa_bench.backends import Backend, Unsupported, Workload, cuda_required
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.inputs import Inputs
from nsa_bench.spec import Point

INSTALL_HINT = "pip install fla-core"
_MODULES = ("fla.ops.nsa", "fla.ops.attn")
_MAX_HEAD_DIM = 256


def _import_fla() -> tuple[Any, Any]:
    """(fla.ops.nsa, fla.ops.attn); fla warns at import when flash-attn is absent, which we do not use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(importlib.import_module(name) for name in _MODULES)  # type: ignore[return-value]


def fla_importable() -> bool:
    try:
        _import_fla()
    except Exception:  # ImportError, or a broken install (e.g. an incompatible triton)
        return False
    return True


def availability() -> str | None:
    """None when fla's NSA can run here; else what to install (or that a GPU is needed)."""
    if not fla_importable():
        return INSTALL_HINT
    return cuda_required()


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def constraint_failure(point: Point) -> str | None:
    """Why fla's NSA cannot compute NSA_SPEC.md at `point` (None when it can)."""
    l, d, lsel, n = point.block_cmp, point.stride_cmp, point.block_slc, point.n_slc
    if point.mode == "decode":
        return "fla-nsa: decode is not benchmarked (fla's parallel_nsa has no KV-cache decode path)"
    if not (_is_pow2(point.group_size) and point.group_size >= 16):
        return f"fla-nsa needs group_size (G) a power of two >= 16, got {point.group_size}"
    if not (l == d == lsel):
        return (f"fla-nsa needs block_cmp = stride_cmp = block_slc (non-overlapping compression), "
                f"got l={l}, d={d}, l'={lsel}")
    if not (_is_pow2(lsel) and lsel >= 16):
        return f"fla-nsa needs block_slc a power of two >= 16, got {lsel}"
    if not _is_pow2(n):
        return f"fla-nsa needs n_slc a power of two (its top-k keeps next_pow2(n) blocks), got {n}"
    if lsel < 2 * n:
        return f"fla-nsa needs block_slc >= 2 * n_slc (its top-k tile), got l'={lsel}, n={n}"
    for name in ("head_dim_qk", "head_dim_v"):
        value = getattr(point, name)
        if value > _MAX_HEAD_DIM:
            return f"fla-nsa needs {name} <= {_MAX_HEAD_DIM}, got {value}"
    return None


def impl_name() -> str:
    try:
        return f"fla-core-{importlib.metadata.version('fla-core')}"
    except importlib.metadata.PackageNotFoundError:
        return "fla-core"


Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_forward(point: Point, block_idx: torch.Tensor | None) -> Forward:
    """forward(q, k, v, gates) -> o with fla's kernels; `block_idx` (or None: fla's own top-k) fixes selection."""
    nsa_ops, attn_ops = _import_fla()
    cfg = point.cfg
    scale = point.head_dim_qk ** -0.5
    fixed = None if block_idx is None else block_idx.to(torch.int32).contiguous()

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fla warns each call that a given block_indices overrides its own
            o = nsa_ops.parallel_nsa(q, k, v, g_cmp=gates[..., 0], g_slc=gates[..., 1], g_swa=None,
                                     block_indices=fixed, block_counts=cfg.n_slc, block_size=cfg.block_slc,
                                     window_size=0, scale=scale)
        o_win = attn_ops.parallel_attn(q, k, v, scale=scale, window_size=cfg.window)
        return torch.addcmul(o, o_win, gates[..., 2:3])

    return forward


def _build(point: Point, inputs: Inputs) -> Workload:
    why_not = constraint_failure(point)
    if why_not:
        raise Unsupported(why_not)
    if not fla_importable():
        raise Unsupported(INSTALL_HINT)
    note = "window branch by fla.ops.attn.parallel_attn"
    if inputs.block_idx is None:
        note += "; selection by fla's own top-k (timed)"
    return autograd_workload(inputs, make_forward(point, inputs.block_idx), impl_name(), grad_gates=True, note=note)


BACKEND = Backend(
    name="fla-nsa",
    family="nsa",
    modes=("fwd", "bwd", "fwdbwd", "layer-fwd", "layer-bwd"),
    description="flash-linear-attention's Triton NSA (fla-core; needs l = d = l', G a power of two >= 16)",
    availability=availability,
    build=_build,
    impl_hint=impl_name,
    supports=constraint_failure,
)
