"""Compile the kernels' real launches for sm_90 (H100/H200) without running them: no GPU needed.

Triton's CPU interpreter accepts code the GPU compiler rejects (small or non-power-of-two dot
tiles, shared-memory overflow) and says nothing about register spills. This module closes the gap,
and is the one code path behind the sm_90 compile check (tests/test_gpu_compile.py):

1. The work happens in a worker subprocess started with TRITON_INTERPRET=0. It has to: a process
   that imported Triton under the interpreter holds `InterpretedFunction`s for Triton's own jit
   library (`tl.sum`'s combine function, `tl.cdiv`, ...) and `triton.compile` fails on them. In the
   worker, `@triton.jit` yields JITFunctions, every module-level `interpreting()` (autotune config
   lists) takes its GPU branch, and so do the host wrappers (tile choices, UPCAST/INTERP flags).
2. `record_launches` runs a public entry point on `meta` tensors (shapes and dtypes only: no
   memory, so T = 64k costs nothing) with every kernel replaced by a recorder; each
   `kernel[grid](...)` becomes a `Launch`. Nothing runs, so values are garbage; shapes are right.
3. `expand` turns a launch into every config the GPU autotuner would try (after
   `prune_configs_by`); `KernelCompiler` binds each with Triton's own specialisation (dtypes,
   16-byte divisibility, ints equal to 1), compiles for sm_90, and reads registers, spills
   (LOCAL/STACK) and shared memory from the cubin with the `cuobjdump` shipped in Triton's wheel.

`compile_cases` runs `CompileWorker` subprocesses in parallel, each caching compiled kernels by
kernel source, signature, constexprs and options; Triton's on-disk cache makes re-runs cheap.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction, KernelInterface, create_function_from_signature

from .config import NSAConfig

_RESULT_TAG = "@@gpu_compile@@ "
_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
H100_MAX_SHARED_BYTES = 227 * 1024  # opt-in dynamic shared memory per block (Triton's launch check)
H100_REGISTERS_PER_SM = 65536
DEFAULT_CAPABILITY = 90  # sm_90 (H100, H200): what is compiled for when no GPU is present
PAPER_CFG = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16, window=512)


# ------------------------------------------------------------------------------ what to compile
@dataclass(frozen=True)
class Case:
    """One public entry point at one shape: the unit a test compiles."""

    entry: str  # a key of ENTRIES
    batch: int
    seqlen: int
    kv_heads: int
    group: int
    dk: int
    dv: int
    dtype: str  # "bfloat16" | "float16" | "float32"
    cfg: NSAConfig = PAPER_CFG

    @property
    def label(self) -> str:
        c = self.cfg
        return (f"{self.entry}-B{self.batch}-T{self.seqlen}-Hkv{self.kv_heads}-G{self.group}-Dk{self.dk}-Dv{self.dv}"
                f"-{self.dtype}-l{c.block_cmp}d{c.stride_cmp}ls{c.block_slc}n{c.n_slc}w{c.window}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> "Case":
        raw = json.loads(text)
        raw["cfg"] = NSAConfig(**raw["cfg"])
        return Case(**raw)


@dataclass(frozen=True)
class CompileResult:
    """Outcome of compiling one kernel config for sm_90; usage fields are None when unknown."""

    name: str
    config: str
    launch: int = 0  # index of the launch within its case: configs of one launch share it
    module: str = ""  # the module defining the kernel, e.g. "nsa_kernels.flash"
    num_warps: int = 4
    error: str | None = None
    registers: int | None = None
    local_bytes: int | None = None  # per-thread local memory: where register spills live
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    seconds: float = 0.0  # wall time of this compile (0 when it came from this worker's memory)
    cpu_seconds: float = 0.0  # CPU time, ptxas included: what the precompile estimate is calibrated on

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def spills(self) -> bool:
        """ptxas puts spilled registers in the stack frame (cuobjdump STACK) or LOCAL memory."""
        return bool(self.local_bytes) or bool(self.stack_bytes)

    @property
    def fits_shared_memory(self) -> bool:
        return self.shared_bytes is None or self.shared_bytes <= H100_MAX_SHARED_BYTES

    @property
    def fits_register_file(self) -> bool:
        """Launchable: registers (allocated in units of 8) x threads within the 64k-register file."""
        if self.registers is None:
            return True
        return -(-self.registers // 8) * 8 * 32 * self.num_warps <= H100_REGISTERS_PER_SM

    @property
    def usable(self) -> bool:
        return self.ok and not self.spills and self.fits_shared_memory and self.fits_register_file

    def describe(self) -> str:
        if not self.ok:
            return f"{self.name} [{self.config}] FAILED: {self.error}"
        return (f"{self.name} [{self.config}] regs={self.registers} local={self.local_bytes} "
                f"stack={self.stack_bytes} shared={self.shared_bytes}")


@dataclass(frozen=True)
class CaseReport:
    """Every compile of one case, plus the host-side error if the wrapper itself crashed."""

    case: Case
    results: tuple[CompileResult, ...]
    host_error: str | None = None

    def describe(self) -> str:
        lines = [self.case.label] + [f"  {r.describe()}" for r in self.results]
        if self.host_error:
            lines.append(f"  HOST ERROR: {self.host_error}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ recording (worker)
@dataclass(frozen=True)
class Launch:
    """One `kernel[grid](*args, **kwargs)` the host code made (nothing ran)."""

    kernel: Any = field(repr=False)
    grid: Any = field(repr=False)
    args: tuple = field(repr=False)
    kwargs: dict = field(repr=False)


class _Recorder:
    """Stands in for a kernel object: `rec[grid](...)` appends a Launch instead of launching."""

    def __init__(self, kernel: Any, sink: list[Launch]) -> None:
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.sink.append(Launch(self.kernel, grid, args, dict(kwargs)))

        return launch

    @property
    def fn(self) -> Any:  # wrappers such as selected._launcher reach through to the JITFunction
        return _Recorder(self.kernel.fn, self.sink)


def record_launches(modules: list[ModuleType], host_code: Callable[[], Any]) -> list[Launch]:
    """Run `host_code` with every kernel global of `modules` recorded; return the launches in order.

    Kernels are put back afterwards: compiling needs them, jit helpers are resolved from the globals.
    """
    launches: list[Launch] = []
    swapped: list[tuple[ModuleType, str, Any]] = []
    try:
        for module in modules:
            for attr, value in list(vars(module).items()):
                if isinstance(value, KernelInterface):
                    swapped.append((module, attr, value))
                    setattr(module, attr, _Recorder(value, launches))
        host_code()
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)
    return launches


_TILE_SIZES = ("POSITIONS",)  # autotuned sizes not named BLOCK_* (selected.py's v2 tiles)


def _config_label(kwargs: dict) -> str:
    """BLOCK_* sizes, warps, stages, and the boolean switches that are on (CAUSAL, HAS_WINDOW, ...)."""
    flags = sorted(k for k, v in kwargs.items() if k.isupper() and v is True)
    shown = {k: v for k, v in kwargs.items() if k.isupper() and (k.startswith("BLOCK") or k in _TILE_SIZES)}
    shown.update({k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs})
    return " ".join(flags + [f"{k}={v}" for k, v in sorted(shown.items())]) or "-"


def expand(launch: Launch) -> list[tuple[Any, dict]]:
    """(JITFunction, kwargs) for every config the GPU would compile for this launch.

    Autotuner: its configs after `prune_configs_by` (early pruning, perf model); Heuristics: their
    values. The grid is evaluated for every config too, so a host-side grid bug shows up here.
    """
    settings: list[dict] = [dict(launch.kwargs)]
    kernel = launch.kernel
    while not isinstance(kernel, JITFunction):
        if isinstance(kernel, Heuristics):
            for kw in settings:
                named = {**dict(zip(kernel.arg_names, launch.args)), **kw}
                kw.update({name: rule(named) for name, rule in kernel.values.items()})
        elif isinstance(kernel, Autotuner):
            expanded = []
            for kw in settings:
                kernel.nargs = dict(zip(kernel.arg_names, launch.args))
                try:
                    configs = kernel.prune_configs(kw)
                finally:
                    kernel.nargs = None
                for config in configs:
                    clash = set(kw) & set(config.all_kwargs())
                    if clash:
                        raise ValueError(f"launch passes {sorted(clash)}, which the autotuner sets")
                    expanded.append({**kw, **config.all_kwargs()})
            settings = expanded
        else:
            raise TypeError(f"unknown kernel wrapper {type(kernel).__name__} (an interpreter copy?)")
        kernel = kernel.fn
    if callable(launch.grid):
        for kw in settings:
            launch.grid({**dict(zip(kernel.arg_names, launch.args)), **kw})
    return [(kernel, kw) for kw in settings]


def _resource_usage(cubin: bytes) -> tuple[int, ...] | None:
    """(REG, STACK, SHARED, LOCAL) per cuobjdump (max over the cubin's functions), or None if unknown."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as out:
            out.write(cubin)
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True,
                              check=False).stdout
    rows = [tuple(int(x) for x in match.groups()) for match in _USAGE.finditer(text)]
    return tuple(max(column) for column in zip(*rows)) if rows else None


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas runs as a child)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _short_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text if len(text) <= 4000 else text[:2000] + "\n...\n" + text[-2000:]


class KernelCompiler:
    """Compiles launches for one CUDA capability (sm_90 by default), caching by (kernel source,
    signature, constexprs, attrs, options): the parts of Triton's own on-disk cache key that vary."""

    def __init__(self, capability: int = DEFAULT_CAPABILITY) -> None:
        self.target = GPUTarget("cuda", capability, 32)
        self.backend = make_backend(self.target)
        self._binders: dict[int, Callable] = {}
        self._cache: dict[tuple, CompileResult] = {}

    def bind(self, jit: JITFunction, args: tuple, kwargs: dict) -> tuple[tuple, Any, Any, Any, Any]:
        """(key, signature, constexprs, attrs, options) exactly as JITFunction.run computes them before
        it compiles: the same binder, the same debug and instrumentation options from Triton's knobs."""
        kwargs = {**kwargs, "debug": kwargs.get("debug", jit.debug) or knobs.runtime.debug,
                  "instrumentation_mode": knobs.compilation.instrumentation_mode}
        binder = self._binders.get(id(jit))
        if binder is None:
            binder = create_function_from_signature(jit.signature, jit.params, self.backend)
            self._binders[id(jit)] = binder
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = jit._pack_args(self.backend, kwargs, bound, specialization, options)
        key = (jit.cache_key, tuple(signature.items()), repr(sorted(constexprs.items())),
               repr(sorted(attrs.items())), options.hash())
        return key, signature, constexprs, attrs, options

    def digest(self, jit: JITFunction, args: tuple, kwargs: dict) -> str:
        """A short name of one compile: equal digests compile to the same binary (deduplication)."""
        key = self.bind(jit, args, kwargs)[0]
        return hashlib.sha256(repr(key).encode()).hexdigest()[:24]

    def compile_launch(self, launch: Launch, index: int = 0) -> list[CompileResult]:
        """Every config of `launch` (its index in the case is `index`); failures come back as results."""
        inner = launch.kernel
        while isinstance(inner, (Autotuner, Heuristics)):
            inner = inner.fn
        name = getattr(inner, "__name__", repr(inner))
        module = getattr(inner, "__module__", "") or ""
        try:
            variants = expand(launch)
        except Exception as exc:  # host side: pruning or grid evaluation failed
            return [CompileResult(name, _config_label(launch.kwargs), index, module,
                                  error=f"expand: {_short_error(exc)}")]
        return [dataclasses.replace(self._compile(name, jit, launch.args, kw), name=name, config=_config_label(kw),
                                    launch=index, module=module) for jit, kw in variants]

    def _compile(self, name: str, jit: JITFunction, args: tuple, kwargs: dict) -> CompileResult:
        label = _config_label(kwargs)
        warps = kwargs.get("num_warps", 4)
        try:  # exactly what JITFunction.run does before compiling on a GPU
            key, signature, constexprs, attrs, options = self.bind(jit, args, kwargs)
        except Exception as exc:
            return CompileResult(name, label, num_warps=warps, error=f"bind: {_short_error(exc)}")
        if key not in self._cache:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            try:
                compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=self.target,
                                          options=options.__dict__)
            except Exception as exc:
                self._cache[key] = CompileResult(name, label, num_warps=warps, error=_short_error(exc))
            else:
                spent = {"seconds": time.perf_counter() - wall, "cpu_seconds": _cpu_seconds() - cpu}
                usage = _resource_usage(compiled.asm["cubin"])
                reg, stack, _, local = usage if usage else (None, None, None, None)
                self._cache[key] = CompileResult(name, label, num_warps=compiled.metadata.num_warps, registers=reg,
                                                 local_bytes=local, stack_bytes=stack,
                                                 shared_bytes=compiled.metadata.shared, **spent)
            return self._cache[key]
        return dataclasses.replace(self._cache[key], seconds=0.0, cpu_seconds=0.0)


# ------------------------------------------------------------------------------ entry points (worker)
def _meta(*shape: int, dtype: Any, grad: bool = False) -> Any:
    import torch

    return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=grad)


def _qkv(case: Case, grad: bool = False) -> tuple[Any, Any, Any]:
    import torch

    dt = getattr(torch, case.dtype)
    b, t, hkv, hq = case.batch, case.seqlen, case.kv_heads, case.kv_heads * case.group
    return (_meta(b, t, hq, case.dk, dtype=dt, grad=grad), _meta(b, t, hkv, case.dk, dtype=dt, grad=grad),
            _meta(b, t, hkv, case.dv, dtype=dt, grad=grad))


def _packing(case: Case) -> Any:
    """cu_seqlens (CPU int32: the wrappers read lengths on the host) of documents packed into case.seqlen
    tokens: lengths 1, l - 1 and l' - 1, then halves of what is left, so boundaries fall inside blocks."""
    from nsa_kernels import varlen

    cfg, left = case.cfg, case.seqlen
    lengths = []
    for length in (1, cfg.block_cmp - 1, cfg.block_slc - 1):
        lengths.append(min(length, left))
        left -= lengths[-1]
    while left > 0:
        lengths.append(max(left // 2 + 7, 1) if left > 64 else left)
        left -= lengths[-1]
    return varlen.cu_seqlens_of(lengths)


def _nsa_attention_launches(case: Case, variant: str | None, packed: bool = False) -> None:
    """Forward and backward through autograd (all three branches, the gated sum), then the in-place
    inference forward (the branch kernels' gated-accumulate epilogues). variant None: the public
    `nsa_attention` (default kernels); else every kernel in that variant (kernels/variants.py).
    packed: a packed batch (cu_seqlens, docs/varlen.md) of case.seqlen tokens: the VARLEN builds."""
    import torch

    from nsa_kernels import nsa
    from nsa_kernels.variants import KernelVariants

    cu = _packing(case) if packed else None

    def attend(*tensors: Any) -> Any:
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
    """The pre-issue-13 kernels (NSA_KERNEL_VARIANT=v1), still selectable until a GPU has timed both."""
    _nsa_attention_launches(case, "v1")


def _run_nsa_attention_varlen(case: Case) -> None:
    """Issue 17: every kernel's VARLEN build (a packed batch), forward, backward and inference forward."""
    _nsa_attention_launches(case, None, packed=True)


def _run_select_blocks(case: Case) -> None:
    from nsa_kernels import nsa

    q, k, _ = _qkv(case)
    k_cmp = _meta(case.batch, case.cfg.num_cmp_blocks(case.seqlen), case.kv_heads, case.dk, dtype=q.dtype)
    nsa.select_blocks(q, k_cmp, case.cfg)


def _run_flash_attention(case: Case) -> None:
    """The dense causal fa2-triton baseline, forward and backward."""
    import torch

    from nsa_kernels import flash

    q, k, v = _qkv(case, grad=True)
    out = flash.flash_attention(q, k, v, causal=True)
    out.backward(torch.empty_like(out))


def _run_flash_attention_varlen(case: Case) -> None:
    """The fa2-triton baseline over a packed batch (cu_seqlens), forward and backward."""
    import torch

    from nsa_kernels import flash

    q, k, v = _qkv(case, grad=True)
    out = flash.flash_attention(q, k, v, causal=True, cu_seqlens=_packing(case))
    out.backward(torch.empty_like(out))


def _run_selected_bwd_atomic(case: Case) -> None:
    """The non-deterministic (atomic dk/dv) selected backward, which nsa_attention does not use."""
    import torch

    from nsa_kernels import selected

    q, k, v = _qkv(case)
    b, t, hq = q.shape[:3]
    o, do = _meta(b, t, hq, case.dv, dtype=q.dtype), _meta(b, t, hq, case.dv, dtype=q.dtype)
    lse = _meta(b, t, hq, dtype=torch.float32)
    block_idx = _meta(b, t, case.kv_heads, case.cfg.n_slc, dtype=torch.int32)
    selected.selected_bwd(q, k, v, o, lse, do, block_idx, case.cfg.block_slc, case.dk**-0.5, deterministic=False)


def _run_selected_small_g(case: Case) -> None:
    """The small-group selected path (selected_small_g.py, NSA_KERNEL_VARIANT slc_small_g): forward, the
    gated-accumulate forward, the backward with NSA's dq chain and the atomic backward."""
    import torch

    from nsa_kernels import selected

    q, k, v = _qkv(case)
    b, t, hq = q.shape[:3]
    o, do = _meta(b, t, hq, case.dv, dtype=q.dtype), _meta(b, t, hq, case.dv, dtype=q.dtype)
    lse = _meta(b, t, hq, dtype=torch.float32)
    block_idx = _meta(b, t, case.kv_heads, case.cfg.n_slc, dtype=torch.int32)
    slc, scale = case.cfg.block_slc, case.dk**-0.5
    selected.selected_fwd(q, k, v, block_idx, slc, scale, small_g="small_g")
    selected.selected_fwd(q, k, v, block_idx, slc, scale, out=_meta(b, t, hq, case.dv, dtype=q.dtype),
                          gates=_meta(b, t, hq, 3, dtype=q.dtype), gate_index=1, accumulate=True, small_g="small_g")
    dq_sum = _meta(*q.shape, dtype=torch.float32)
    selected.selected_bwd(q, k, v, o, lse, do, block_idx, slc, scale, dq_out=dq_sum, dq_add=dq_sum, small_g="small_g")
    selected.selected_bwd(q, k, v, o, lse, do, block_idx, slc, scale, deterministic=False, small_g="small_g")


def _decode_inputs(case: Case) -> tuple[Any, ...]:
    import torch

    dt = getattr(torch, case.dtype)
    b, hq = case.batch, case.kv_heads * case.group
    q = _meta(b, hq, case.dk, dtype=dt)
    k = _meta(b, case.seqlen, case.kv_heads, case.dk, dtype=dt)
    v = _meta(b, case.seqlen, case.kv_heads, case.dv, dtype=dt)
    return q, k, v, _meta(b, dtype=torch.int32)


def _run_flash_attention_decode(case: Case) -> None:
    from nsa_kernels import flash

    q, k, v, seqlens = _decode_inputs(case)
    flash.flash_attention_decode(q, k, v, seqlens)


def _run_nsa_decode(case: Case) -> None:
    """Decode that compresses the cache itself, plus a CompressedKVCache step (the HAS_OLD variant)."""
    from nsa_kernels import decode

    q, k, v, seqlens = _decode_inputs(case)
    gates = _meta(*q.shape[:2], 3, dtype=q.dtype)
    decode.nsa_decode(q, k, v, gates, seqlens, case.cfg)
    cache = decode.CompressedKVCache.allocate(case.batch, case.seqlen, case.kv_heads, case.dk, case.dv, case.cfg,
                                              device="meta", dtype=q.dtype)
    cache.update(k, v, seqlens, max_new_tokens=1)


def _run_nsa_decode_v1(case: Case) -> None:
    """The pre-issue-13 decode selection (NSA_KERNEL_VARIANT decode=v1: serial top-n per KV head)."""
    from nsa_kernels import decode

    q, k, v, seqlens = _decode_inputs(case)
    gates = _meta(*q.shape[:2], 3, dtype=q.dtype)
    decode.nsa_decode_with_selection(q, k, v, gates, seqlens, case.cfg, variant="v1")


def _run_nsa_decode_cmp_cache(case: Case) -> None:
    from nsa_kernels import decode

    q, k, v, seqlens = _decode_inputs(case)
    gates = _meta(*q.shape[:2], 3, dtype=q.dtype)
    tc = case.cfg.num_cmp_blocks(case.seqlen)
    k_cmp = _meta(case.batch, tc, case.kv_heads, case.dk, dtype=q.dtype)
    v_cmp = _meta(case.batch, tc, case.kv_heads, case.dv, dtype=q.dtype)
    decode.nsa_decode(q, k, v, gates, seqlens, case.cfg, k_cmp_cache=k_cmp, v_cmp_cache=v_cmp)


# Self-test kernels: what the checker must catch (a dot tile under 16, a register spill) and pass.
@triton.jit
def _selftest_dot_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, tl.dot(x, x))


@triton.jit
def _selftest_spill_kernel(x_ptr, out_ptr, steps, ROWS: tl.constexpr, COLS: tl.constexpr):
    offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
    for i in range(steps):  # acc stays live across the loop: ROWS*COLS/threads registers
        acc = acc * 0.5 + tl.load(x_ptr + i * ROWS * COLS + offs)
    tl.store(out_ptr + offs, acc)


def _selftest_prune(configs: list, named_args: dict, **kwargs: Any) -> list:
    return [c for c in configs if c.kwargs["BLOCK"] <= 32]


_selftest_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK": b}, num_warps=4) for b in (16, 32, 64)], key=[],
    prune_configs_by={"early_config_prune": _selftest_prune},
)(_selftest_dot_kernel)


def _run_selftest(case: Case) -> None:
    """Launches with known outcomes: dot 8 fails, dot 16 compiles, 512 live fp32 per thread spill."""
    import torch

    this = sys.modules[__name__]
    x = _meta(4096, dtype=torch.float16)
    y = _meta(4096, dtype=torch.float32)
    this._selftest_dot_kernel[(1,)](x, y, BLOCK=8)
    this._selftest_dot_kernel[(1,)](x, y, BLOCK=16)
    this._selftest_spill_kernel[(1,)](y, y, 7, ROWS=128, COLS=128, num_warps=1)
    this._selftest_spill_kernel[(1,)](y, y, 7, ROWS=32, COLS=32, num_warps=4)
    this._selftest_tuned[lambda meta: (meta["BLOCK"],)](x, y)


ENTRIES: dict[str, Callable[[Case], None]] = {
    "selftest": _run_selftest,
    "nsa_attention": _run_nsa_attention,
    "nsa_attention_v1": _run_nsa_attention_v1,
    "nsa_attention_varlen": _run_nsa_attention_varlen,
    "select_blocks": _run_select_blocks,
    "selected_bwd_atomic": _run_selected_bwd_atomic,
    "selected_small_g": _run_selected_small_g,
    "flash_attention": _run_flash_attention,
    "flash_attention_varlen": _run_flash_attention_varlen,
    "flash_attention_decode": _run_flash_attention_decode,
    "nsa_decode": _run_nsa_decode,
    "nsa_decode_v1": _run_nsa_decode_v1,
    "nsa_decode_cmp_cache": _run_nsa_decode_cmp_cache,
}


def _kernel_modules() -> list[ModuleType]:
    import importlib

    names = ("_selected_tiles", "compressed", "decode", "flash", "gated_sum", "nsa", "selected", "selected_small_g")
    return [importlib.import_module(f"nsa_kernels.{name}") for name in names] + [sys.modules[__name__]]


def entry_point(entry: str) -> Callable[[Case], None]:
    """The host code of an entry: a key of ENTRIES, or "package.module:NAME" for entry points defined
    outside the kernels (the benchmark's backends: `module.compile_entry(NAME)` returns the callable),
    so what the sweep will launch is recorded by the same machinery as the compile check."""
    if entry in ENTRIES:
        return ENTRIES[entry]
    module, sep, name = entry.partition(":")
    if not sep:
        raise KeyError(f"unknown compile entry {entry!r} (choose from {', '.join(ENTRIES)} or module:name)")
    return importlib.import_module(module).compile_entry(name)


def _record(case: Case) -> list[Launch]:
    return record_launches(_kernel_modules(), lambda: entry_point(case.entry)(case))


def run_case(case: Case, compiler: KernelCompiler) -> CaseReport:
    """Record the entry point's launches at `case`'s shape and compile every config (worker side)."""
    try:
        launches = _record(case)
    except Exception as exc:
        return CaseReport(case, (), host_error="".join(traceback.format_exception(exc))[-4000:])
    results = tuple(r for i, launch in enumerate(launches) for r in compiler.compile_launch(launch, i))
    return CaseReport(case, results)


# ------------------------------------------------------------------------------ jobs (precompile, worker)
@dataclass(frozen=True)
class Variant:
    """One config of one recorded launch, planned but not compiled. `digest` names the compile (equal
    digests, in any case, compile to the same binary); empty when the host side failed (`error`)."""

    launch: int
    index: int
    name: str
    config: str
    digest: str
    error: str | None = None


@dataclass(frozen=True)
class Tuning:
    """An autotuned launch: the key its autotuner looks up and the configs it benchmarks on a miss."""

    kernel: str
    key: str
    configs: int


@dataclass(frozen=True)
class CasePlan:
    """What one case launches: every variant to compile and every autotuner lookup."""

    case: Case
    launches: int
    variants: tuple[Variant, ...]
    tunings: tuple[Tuning, ...]
    host_error: str | None = None


def _kernel_name(kernel: Any) -> str:
    while isinstance(kernel, (Autotuner, Heuristics)):
        kernel = kernel.fn
    return getattr(kernel, "__name__", repr(kernel))


def tuning_of(launch: Launch, configs: int) -> Tuning | None:
    """The autotune lookup this launch makes, keyed as Autotuner.run keys it (key arguments, then the
    dtype of every tensor argument); None when no autotuner with several configs is involved."""
    tuner = launch.kernel
    while isinstance(tuner, Heuristics):
        tuner = tuner.fn
    if not isinstance(tuner, Autotuner) or len(tuner.configs) < 2:
        return None
    named = {**dict(zip(tuner.arg_names, launch.args)), **launch.kwargs}
    named = {k: v for k, v in named.items() if k in tuner.arg_names}
    key = [named[k] for k in tuner.keys if k in named] + [str(v.dtype) for v in named.values() if hasattr(v, "dtype")]
    return Tuning(_kernel_name(tuner), repr(tuple(key)), configs)


class _Session:
    """Worker-side state for precompile requests: one compiler, each case's launches recorded once."""

    def __init__(self, compiler: KernelCompiler) -> None:
        self.compiler = compiler
        self._launches: dict[Case, list[Launch]] = {}
        self._variants: dict[tuple[Case, int], list[tuple[Any, dict]]] = {}

    def launches(self, case: Case) -> list[Launch]:
        if case not in self._launches:
            self._launches[case] = _record(case)
        return self._launches[case]

    def variants(self, case: Case, launch: int) -> list[tuple[Any, dict]]:
        if (case, launch) not in self._variants:
            self._variants[case, launch] = expand(self.launches(case)[launch])
        return self._variants[case, launch]

    def plan(self, case: Case) -> CasePlan:
        try:
            launches = self.launches(case)
        except Exception as exc:
            return CasePlan(case, 0, (), (), host_error="".join(traceback.format_exception(exc))[-4000:])
        variants: list[Variant] = []
        tunings: list[Tuning] = []
        for i, launch in enumerate(launches):
            name = _kernel_name(launch.kernel)
            try:
                expanded = self.variants(case, i)
            except Exception as exc:
                variants.append(Variant(i, 0, name, _config_label(launch.kwargs), "", f"expand: {_short_error(exc)}"))
                continue
            tuning = tuning_of(launch, len(expanded))
            if tuning is not None:
                tunings.append(tuning)
            for j, (jit, kw) in enumerate(expanded):
                try:
                    variants.append(Variant(i, j, name, _config_label(kw), self.compiler.digest(jit, launch.args, kw)))
                except Exception as exc:
                    variants.append(Variant(i, j, name, _config_label(kw), "", f"bind: {_short_error(exc)}"))
        return CasePlan(case, len(launches), tuple(variants), tuple(tunings))

    def compile(self, case: Case, launch: int, index: int) -> CompileResult:
        recorded = self.launches(case)[launch]
        jit, kw = self.variants(case, launch)[index]
        name = _kernel_name(recorded.kernel)
        result = self.compiler._compile(name, jit, recorded.args, kw)
        return dataclasses.replace(result, name=name, config=_config_label(kw), launch=launch,
                                   module=getattr(jit, "__module__", "") or "")


def _answer(request: dict, compiler: KernelCompiler, session: _Session) -> dict:
    op = request.get("op")
    if op is None:  # a bare Case: compile all of it (the compile check)
        report = run_case(Case.from_json(json.dumps(request)), compiler)
        return {"results": [dataclasses.asdict(r) for r in report.results], "host_error": report.host_error}
    case = Case.from_json(json.dumps(request["case"]))
    if op == "plan":
        return dataclasses.asdict(session.plan(case))
    if op == "compile":
        return dataclasses.asdict(session.compile(case, request["launch"], request["index"]))
    raise ValueError(f"unknown worker request {op!r}")


def _worker_main() -> None:
    """Read one JSON request per stdin line, answer one tagged JSON line on stdout."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("gpu_compile worker needs TRITON_INTERPRET=0")
    capability = int(sys.argv[sys.argv.index("--capability") + 1]) if "--capability" in sys.argv else DEFAULT_CAPABILITY
    compiler = KernelCompiler(capability)
    session = _Session(compiler)
    for line in sys.stdin:
        if not line.strip():
            continue
        payload = _answer(json.loads(line), compiler, session)
        sys.stdout.write(_RESULT_TAG + json.dumps(payload) + "\n")
        sys.stdout.flush()


# ------------------------------------------------------------------------------ parent side
class CompileWorker:
    """A GPU-mode worker subprocess that compiles Cases on request (use as a context manager)."""

    def __init__(self, capability: int = DEFAULT_CAPABILITY) -> None:
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, "--worker", "--capability", str(capability)], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._reports: dict[Case, CaseReport] = {}

    def request(self, payload: str, what: str) -> dict:
        """Send one JSON request line, return the tagged answer (other output of the worker is skipped)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(payload + "\n")
        self._proc.stdin.flush()
        for line in self._proc.stdout:
            if line.startswith(_RESULT_TAG):
                return json.loads(line[len(_RESULT_TAG):])
        raise RuntimeError(f"gpu_compile worker exited (rc={self._proc.wait()}) while {what}")

    def compile_case(self, case: Case) -> CaseReport:
        if case not in self._reports:
            raw = self.request(case.to_json(), f"compiling {case.label}")
            results = tuple(CompileResult(**r) for r in raw["results"])
            self._reports[case] = CaseReport(case, results, raw["host_error"])
        return self._reports[case]

    def plan(self, case: Case) -> CasePlan:
        """Record `case` and name every variant it would compile, without compiling."""
        raw = self.request(json.dumps({"op": "plan", "case": json.loads(case.to_json())}), f"planning {case.label}")
        return CasePlan(case, raw["launches"], tuple(Variant(**v) for v in raw["variants"]),
                        tuple(Tuning(**t) for t in raw["tunings"]), raw["host_error"])

    def compile_variant(self, case: Case, launch: int, index: int) -> CompileResult:
        payload = json.dumps({"op": "compile", "case": json.loads(case.to_json()), "launch": launch, "index": index})
        return CompileResult(**self.request(payload, f"compiling {case.label} launch {launch} config {index}"))

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> "CompileWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compile_cases(cases: tuple[Case, ...], workers: int = 2) -> dict[Case, CaseReport]:
    """Compile `cases` on `workers` GPU-mode subprocesses in parallel (compiles are CPU-bound)."""
    import queue
    import threading

    todo: "queue.Queue[Case]" = queue.Queue()
    for case in sorted(cases, key=lambda c: not c.entry.startswith("nsa_attention")):  # longest first: balance
        todo.put(case)
    reports: dict[Case, CaseReport] = {}
    failures: list[BaseException] = []

    def drain() -> None:
        try:
            with CompileWorker() as worker:
                while True:
                    try:
                        case = todo.get_nowait()
                    except queue.Empty:
                        return
                    reports[case] = worker.compile_case(case)
        except BaseException as exc:  # surfaced below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=drain) for _ in range(max(1, min(workers, len(cases))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return {case: reports[case] for case in cases}


# ------------------------------------------------------------------------------ precompile (parent side)
@dataclass(frozen=True)
class Precompiled:
    """Every case's plan and one result per distinct compile (variants shared by cases compile once)."""

    plans: dict[Case, CasePlan]
    results: tuple[CompileResult, ...]
    workers: int
    plan_seconds: float
    compile_seconds: float

    @property
    def variants(self) -> int:
        """Variants over all cases, before deduplication."""
        return sum(len(p.variants) for p in self.plans.values())

    @property
    def failed(self) -> tuple[CompileResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def host_errors(self) -> dict[Case, str]:
        return {c: p.host_error for c, p in self.plans.items() if p.host_error}


def distinct_variants(plans: list[CasePlan]) -> tuple[list[tuple[Case, Variant]], list[CompileResult]]:
    """(the first case naming each distinct compile, results for variants the host side failed on)."""
    seen: dict[str, tuple[Case, Variant]] = {}
    broken: list[CompileResult] = []
    for plan in plans:
        for variant in plan.variants:
            if variant.error:
                broken.append(CompileResult(variant.name, variant.config, variant.launch, error=variant.error))
            elif variant.digest not in seen:
                seen[variant.digest] = (plan.case, variant)
    return list(seen.values()), broken


class WorkerPool:
    """`workers` CompileWorkers, each driven by one thread pulling from a shared queue (dynamic balance:
    compile times differ by kernel and config). Use as a context manager."""

    def __init__(self, workers: int, capability: int = DEFAULT_CAPABILITY) -> None:
        self._workers = [CompileWorker(capability) for _ in range(max(1, workers))]

    def map(self, work: Callable[[CompileWorker, Any], Any], items: list,
            done: Callable[[int, Any], None] | None = None) -> list:
        import queue
        import threading

        todo: "queue.Queue[int]" = queue.Queue()
        for i in range(len(items)):
            todo.put(i)
        out: list = [None] * len(items)
        failures: list[BaseException] = []
        lock = threading.Lock()

        def drain(worker: CompileWorker) -> None:
            try:
                while not failures:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    out[i] = work(worker, items[i])
                    if done is not None:
                        with lock:
                            done(i, out[i])
            except BaseException as exc:  # surfaced below, in the caller's thread
                failures.append(exc)

        threads = [threading.Thread(target=drain, args=(w,)) for w in self._workers[:max(1, len(items))]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return out

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def precompile_cases(cases: list[Case], workers: int, capability: int = DEFAULT_CAPABILITY, compile: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> Precompiled:
    """Plan every case, then compile each distinct variant once, on `workers` processes in parallel.

    Compiling goes through `triton.compile` with Triton's own cache manager, so every binary lands in
    Triton's on-disk cache under the key JITFunction.run computes for the same launch: a later process
    that launches these kernels at these shapes loads them instead of compiling. `compile=False` only
    plans (what a dry run needs). `progress(done, total)` is called as compiles finish.
    """
    import time

    cases = list(dict.fromkeys(cases))
    start = time.perf_counter()
    with WorkerPool(workers if compile else min(workers, max(1, len(cases))), capability) as pool:
        plans = pool.map(lambda worker, case: worker.plan(case), cases)
        planned = time.perf_counter()
        jobs, broken = distinct_variants(plans)
        results: list[CompileResult] = []
        if compile and jobs:
            finished = [0]

            def done(i: int, result: CompileResult) -> None:
                finished[0] += 1
                if progress is not None:
                    progress(finished[0], len(jobs))

            results = pool.map(lambda worker, job: worker.compile_variant(job[0], job[1].launch, job[1].index),
                               jobs, done)
        end = time.perf_counter()
    return Precompiled(dict(zip(cases, plans)), tuple(results + broken), max(1, workers), planned - start,
                       end - planned)


if __name__ == "__main__":
    _worker_main()
