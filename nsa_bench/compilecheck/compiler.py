"""Compile recorded launches for one CUDA capability (sm_90 by default) and read their resource usage.

Each config is bound exactly as `JITFunction.run` binds it before compiling on a GPU (Triton's own
specialisation: dtypes, 16-byte divisibility, ints equal to 1; its debug and instrumentation knobs), so the
compile key equals the one the JIT computes, and `triton.compile` puts the binary in Triton's on-disk cache.
Registers, spills (LOCAL/STACK) and shared memory come from the cubin, read with the `cuobjdump` in Triton's wheel.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import tempfile
import time
import traceback
from typing import Any, Callable

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner, Heuristics
from triton.runtime.jit import JITFunction, create_function_from_signature

from nsa_bench.compilecheck.case import DEFAULT_CAPABILITY
from nsa_bench.compilecheck.recorder import Launch, config_label, expand, kernel_name
from nsa_bench.compilecheck.results import CompileResult

_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


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


def short_error(exc: BaseException) -> str:
    """An exception's message, cut to 4000 characters (compile errors can be long)."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text if len(text) <= 4000 else text[:2000] + "\n...\n" + text[-2000:]


class KernelCompiler:
    """Compiles launches for one CUDA capability, caching by (kernel source, signature, constexprs, attrs,
    options): the parts of Triton's own on-disk cache key that vary."""

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
        name = kernel_name(launch.kernel)
        module = getattr(inner, "__module__", "") or ""
        try:
            variants = expand(launch)
        except Exception as exc:  # host side: pruning or grid evaluation failed
            return [CompileResult(name, config_label(launch.kwargs), index, module,
                                  error=f"expand: {short_error(exc)}")]
        return [self.compile_config(jit, launch.args, kw, name, index) for jit, kw in variants]

    def compile_config(self, jit: JITFunction, args: tuple, kwargs: dict, name: str, launch: int) -> CompileResult:
        """One config (a result of `expand`) of launch number `launch` of its case, compiled once per worker."""
        label = config_label(kwargs)
        module = getattr(jit, "__module__", "") or ""
        warps = kwargs.get("num_warps", 4)
        try:  # exactly what JITFunction.run does before compiling on a GPU
            key, signature, constexprs, attrs, options = self.bind(jit, args, kwargs)
        except Exception as exc:
            return CompileResult(name, label, launch, module, num_warps=warps, error=f"bind: {short_error(exc)}")
        if key not in self._cache:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            try:
                compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=self.target,
                                          options=options.__dict__)
            except Exception as exc:
                self._cache[key] = CompileResult(name, label, num_warps=warps, error=short_error(exc))
            else:
                spent = {"seconds": time.perf_counter() - wall, "cpu_seconds": _cpu_seconds() - cpu}
                usage = _resource_usage(compiled.asm["cubin"])
                reg, stack, _, local = usage if usage else (None, None, None, None)
                self._cache[key] = CompileResult(name, label, num_warps=compiled.metadata.num_warps, registers=reg,
                                                 local_bytes=local, stack_bytes=stack,
                                                 shared_bytes=compiled.metadata.shared, **spent)
            result = self._cache[key]
        else:
            result = dataclasses.replace(self._cache[key], seconds=0.0, cpu_seconds=0.0)
        return dataclasses.replace(result, name=name, config=label, launch=launch, module=module)
