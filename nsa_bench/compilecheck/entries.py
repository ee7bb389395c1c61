"""The host code of each compile entry point: a public entry of the kernels run at a case's shape on `meta`
tensors (shapes and dtypes only: no memory, so T = 64k costs nothing), under the recorder (recorder.py).

An entry is a key of ENTRIES, or "package.module:NAME" for host code defined outside this module: that
module's `compile_entry(NAME)` returns it (the benchmark records its backends' own workloads that way,
nsa_bench/precompile.py), so what a sweep will launch is recorded by the same machinery as the check.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any, Callable

import torch

import nsa_kernels
from nsa_bench.compilecheck import selftest
from nsa_bench.compilecheck.case import Case
from nsa_bench.compilecheck.recorder import Launch, record_launches
from nsa_kernels import decode, flash, nsa, selected, varlen
from nsa_kernels.config import NSAConfig
from nsa_kernels.packing import Packing
from nsa_kernels.variants import KernelVariants


def _meta(*shape: int, dtype: Any, grad: bool = False) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=grad)


def _qkv(case: Case, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dt = getattr(torch, case.dtype)
    b, t, hkv, hq = case.batch, case.seqlen, case.kv_heads, case.kv_heads * case.group
    return (_meta(b, t, hq, case.dk, dtype=dt, grad=grad), _meta(b, t, hkv, case.dk, dtype=dt, grad=grad),
            _meta(b, t, hkv, case.dv, dtype=dt, grad=grad))


def doc_lengths(seqlen: int, cfg: NSAConfig) -> list[int]:
    """Documents packed into `seqlen` tokens: lengths 1, l - 1 and l' - 1, then halves of what is left, so
    boundaries fall inside compression and selection blocks (empty ones where `seqlen` runs out first)."""
    left, lengths = seqlen, []
    for length in (1, cfg.block_cmp - 1, cfg.block_slc - 1):
        lengths.append(min(length, left))
        left -= lengths[-1]
    while left > 0:
        lengths.append(max(left // 2 + 7, 1) if left > 64 else left)
        left -= lengths[-1]
    return lengths


def packed_cu_seqlens(case: Case) -> torch.Tensor:
    """cu_seqlens (CPU int32: the wrappers read lengths on the host) of `doc_lengths` at the case's shape."""
    return varlen.cu_seqlens_of(doc_lengths(case.seqlen, case.cfg))


# ------------------------------------------------------------------ NSA attention and selection
def _nsa_attention_launches(case: Case, variant: str | None, packed: bool = False) -> None:
    """Forward and backward through autograd (all three branches, the gated sum), then the in-place
    inference forward (the branch kernels' gated-accumulate epilogues). variant None: the public
    `nsa_attention` (default kernels); else every kernel in that variant (kernels/variants.py).
    packed: a packed batch (cu_seqlens, docs/varlen.md) of case.seqlen tokens: the VARLEN builds."""
    cu = packed_cu_seqlens(case) if packed else None

    def attend(*tensors: torch.Tensor) -> torch.Tensor:
        if variant is None:
            return nsa.nsa_attention(*tensors, case.cfg, cu_seqlens=cu)
        return nsa.nsa_attention_variants(*tensors, case.cfg, KernelVariants.all(variant), cu_seqlens=cu)

    q, k, v = _qkv(case, grad=True)
    gates = _meta(*q.shape[:3], 3, dtype=q.dtype, grad=True)
    out = attend(q, k, v, gates)
    out.backward(torch.empty_like(out))
    with torch.no_grad():  # the inference forward: each branch kernel adds its gated output in place
        attend(q.detach(), k.detach(), v.detach(), gates.detach())


def _run_nsa_attention(case: Case) -> None:
    _nsa_attention_launches(case, None)


def _run_nsa_attention_v1(case: Case) -> None:
    """The v1 kernels (NSA_KERNEL_VARIANT=v1), selectable until a GPU has timed both."""
    _nsa_attention_launches(case, "v1")


def _run_nsa_attention_varlen(case: Case) -> None:
    """Every kernel's VARLEN build (a packed batch), forward, backward and inference forward."""
    _nsa_attention_launches(case, None, packed=True)


def _run_select_blocks(case: Case) -> None:
    q, k, _ = _qkv(case)
    k_cmp = _meta(case.batch, case.cfg.num_cmp_blocks(case.seqlen), case.kv_heads, case.dk, dtype=q.dtype)
    nsa.select_blocks(q, k_cmp, case.cfg)


# ------------------------------------------------------------------ selected attention alone
def _selected_inputs(case: Case) -> tuple[torch.Tensor, ...]:
    """q, k, v, o, do, lse and block_idx of the selected branch at the case's shape."""
    q, k, v = _qkv(case)
    b, t, hq = q.shape[:3]
    o, do = _meta(b, t, hq, case.dv, dtype=q.dtype), _meta(b, t, hq, case.dv, dtype=q.dtype)
    lse = _meta(b, t, hq, dtype=torch.float32)
    block_idx = _meta(b, t, case.kv_heads, case.cfg.n_slc, dtype=torch.int32)
    return q, k, v, o, do, lse, block_idx


def _run_selected_bwd_atomic(case: Case) -> None:
    """The non-deterministic (atomic dk/dv) selected backward, which nsa_attention does not use."""
    q, k, v, o, do, lse, block_idx = _selected_inputs(case)
    selected.selected_bwd(q, k, v, o, lse, do, block_idx, case.cfg.block_slc, case.dk**-0.5, deterministic=False)


def _run_selected_small_g(case: Case) -> None:
    """The small-group selected path (selected_small_g.py, NSA_KERNEL_VARIANT slc_small_g): forward, the
    gated-accumulate forward, the backward with NSA's dq chain and the atomic backward."""
    q, k, v, o, do, lse, block_idx = _selected_inputs(case)
    b, t, hq = q.shape[:3]
    slc, scale = case.cfg.block_slc, case.dk**-0.5
    selected.selected_fwd(q, k, v, block_idx, slc, scale, small_g="small_g")
    selected.selected_fwd(q, k, v, block_idx, slc, scale, out=_meta(b, t, hq, case.dv, dtype=q.dtype),
                          gates=_meta(b, t, hq, 3, dtype=q.dtype), gate_index=1, accumulate=True, small_g="small_g")
    dq_sum = _meta(*q.shape, dtype=torch.float32)
    selected.selected_bwd(q, k, v, o, lse, do, block_idx, slc, scale, dq_out=dq_sum, dq_add=dq_sum, small_g="small_g")
    selected.selected_bwd(q, k, v, o, lse, do, block_idx, slc, scale, deterministic=False, small_g="small_g")


def _run_selected_kernels(case: Case) -> None:
    """Every selected launch at the default path for the case's G: forward, gated-accumulate forward, both
    backwards; at B = 1 also a packed batch (CPU cu_seqlens, q on meta) through the VARLEN builds."""
    q, k, v, o, do, lse, block_idx = _selected_inputs(case)
    b, t, hq = q.shape[:3]
    slc, scale = case.cfg.block_slc, case.dk**-0.5
    gates = _meta(b, t, hq, 3, dtype=q.dtype)
    selected.selected_fwd(q, k, v, block_idx, slc, scale)
    selected.selected_fwd(q, k, v, block_idx, slc, scale, out=o, gates=gates, gate_index=1, accumulate=True)
    for deterministic in (True, False):
        selected.selected_bwd(q, k, v, o, lse, do, block_idx, slc, scale, deterministic=deterministic)
    if b == 1:
        packing = Packing.of(torch.tensor([0, 17, 17, t // 2, t], dtype=torch.int32), t, 1, q.device)
        selected.selected_fwd(q, k, v, block_idx, slc, scale, out=o, gates=gates, gate_index=1, accumulate=True,
                              packing=packing)
        selected.selected_bwd(q, k, v, o, lse, do, block_idx, slc, scale, packing=packing)


# ------------------------------------------------------------------ dense attention (flash.py)
def _run_flash_attention(case: Case) -> None:
    """The dense causal fa2-triton baseline, forward and backward."""
    q, k, v = _qkv(case, grad=True)
    out = flash.flash_attention(q, k, v, causal=True)
    out.backward(torch.empty_like(out))


def _run_flash_attention_varlen(case: Case) -> None:
    """The fa2-triton baseline over a packed batch (cu_seqlens), forward and backward."""
    q, k, v = _qkv(case, grad=True)
    out = flash.flash_attention(q, k, v, causal=True, cu_seqlens=packed_cu_seqlens(case))
    out.backward(torch.empty_like(out))


def _window_kernels(case: Case, variant: str) -> None:
    """NSA's window branch kernels in one variant: forward, gated-accumulate forward, backward with a dq_add
    (preprocess, dk/dv, dq); in v2 at B = 1 also their packed builds; and split-KV decode."""
    q, k, v = _qkv(case)
    b, t, hq = q.shape[:3]
    scale, window = case.dk**-0.5, case.cfg.window
    o, lse = flash.attention_fwd(q, k, v, scale, window, variant=variant)
    gates, dq_add = _meta(b, t, hq, 3, dtype=q.dtype), _meta(*q.shape, dtype=torch.float32)
    flash.attention_fwd(q, k, v, scale, window, out=o, gates=gates, gate_index=2, accumulate=True, variant=variant)
    flash.attention_bwd(q, k, v, o, lse, o, scale, window, dq_add=dq_add, variant=variant)
    if variant == "v2" and b == 1:
        packing = Packing.of(packed_cu_seqlens(case), t, 1, q.device)
        flash.attention_fwd(q, k, v, scale, window, out=o, gates=gates, gate_index=2, accumulate=True,
                            packing=packing)
        flash.attention_bwd(q, k, v, o, lse, o, scale, window, dq_add=dq_add, packing=packing)
    q1, k_cache, v_cache, seqlens = _decode_inputs(case)
    flash.flash_attention_decode(q1, k_cache, v_cache, seqlens)


def _run_window_kernels(case: Case) -> None:
    _window_kernels(case, "v2")


def _run_window_kernels_v1(case: Case) -> None:
    _window_kernels(case, "v1")


# ------------------------------------------------------------------ decode
def _decode_inputs(case: Case) -> tuple[torch.Tensor, ...]:
    dt = getattr(torch, case.dtype)
    b, hq = case.batch, case.kv_heads * case.group
    q = _meta(b, hq, case.dk, dtype=dt)
    k = _meta(b, case.seqlen, case.kv_heads, case.dk, dtype=dt)
    v = _meta(b, case.seqlen, case.kv_heads, case.dv, dtype=dt)
    return q, k, v, _meta(b, dtype=torch.int32)


def _run_flash_attention_decode(case: Case) -> None:
    q, k, v, seqlens = _decode_inputs(case)
    flash.flash_attention_decode(q, k, v, seqlens)


def _run_nsa_decode(case: Case) -> None:
    """Decode that compresses the cache itself, plus a CompressedKVCache step (the HAS_OLD variant)."""
    q, k, v, seqlens = _decode_inputs(case)
    gates = _meta(*q.shape[:2], 3, dtype=q.dtype)
    decode.nsa_decode(q, k, v, gates, seqlens, case.cfg)
    cache = decode.CompressedKVCache.allocate(case.batch, case.seqlen, case.kv_heads, case.dk, case.dv, case.cfg,
                                              device="meta", dtype=q.dtype)
    cache.update(k, v, seqlens, max_new_tokens=1)


def _run_nsa_decode_v1(case: Case) -> None:
    """The v1 decode selection (NSA_KERNEL_VARIANT decode=v1: serial top-n per KV head)."""
    q, k, v, seqlens = _decode_inputs(case)
    gates = _meta(*q.shape[:2], 3, dtype=q.dtype)
    decode.nsa_decode_with_selection(q, k, v, gates, seqlens, case.cfg, variant="v1")


def _run_nsa_decode_cmp_cache(case: Case) -> None:
    q, k, v, seqlens = _decode_inputs(case)
    gates = _meta(*q.shape[:2], 3, dtype=q.dtype)
    tc = case.cfg.num_cmp_blocks(case.seqlen)
    k_cmp = _meta(case.batch, tc, case.kv_heads, case.dk, dtype=q.dtype)
    v_cmp = _meta(case.batch, tc, case.kv_heads, case.dv, dtype=q.dtype)
    decode.nsa_decode(q, k, v, gates, seqlens, case.cfg, k_cmp_cache=k_cmp, v_cmp_cache=v_cmp)


ENTRIES: dict[str, Callable[[Case], None]] = {
    "selftest": selftest.run,
    "nsa_attention": _run_nsa_attention,
    "nsa_attention_v1": _run_nsa_attention_v1,
    "nsa_attention_varlen": _run_nsa_attention_varlen,
    "select_blocks": _run_select_blocks,
    "selected_bwd_atomic": _run_selected_bwd_atomic,
    "selected_small_g": _run_selected_small_g,
    "selected_kernels": _run_selected_kernels,
    "flash_attention": _run_flash_attention,
    "flash_attention_varlen": _run_flash_attention_varlen,
    "flash_attention_decode": _run_flash_attention_decode,
    "window_kernels": _run_window_kernels,
    "window_kernels_v1": _run_window_kernels_v1,
    "nsa_decode": _run_nsa_decode,
    "nsa_decode_v1": _run_nsa_decode_v1,
    "nsa_decode_cmp_cache": _run_nsa_decode_cmp_cache,
}


def kernel_modules() -> list[ModuleType]:
    """Every module of the kernel package, and the self-test's: where the recorder stands in for kernels.
    Listed from the package, so a new kernel module is recorded without being named here."""
    names = sorted(info.name for info in pkgutil.iter_modules(nsa_kernels.__path__))
    return [importlib.import_module(f"nsa_kernels.{name}") for name in names] + [selftest]


def entry_point(entry: str) -> Callable[[Case], None]:
    """The host code of an entry: a key of ENTRIES, or "package.module:NAME" (that module's compile_entry)."""
    if entry in ENTRIES:
        return ENTRIES[entry]
    module, sep, name = entry.partition(":")
    if not sep:
        raise KeyError(f"unknown compile entry {entry!r} (choose from {', '.join(ENTRIES)} or module:name)")
    return importlib.import_module(module).compile_entry(name)


def record(case: Case) -> list[Launch]:
    """The launches of `case`'s entry point at its shape, in order."""
    return record_launches(kernel_modules(), lambda: entry_point(case.entry)(case))
