"""Two speed-ups of Triton 3.6's CPU interpreter for the test session; neither changes what a kernel computes.

- `create_dot`: the operands are made contiguous before `np.matmul(a, b, dtype=acc)`. With a transposed
  operand (every `tl.dot(q, tl.trans(k))`) numpy otherwise runs a scalar loop instead of BLAS, ~100x slower.
  The products are the same; only the order of the fp32 sums changes (as it does between GPUs).
- `_patch_builtin`: at every call of a jit helper the interpreter lists a module's members
  (`inspect.getmembers`) to find the Triton builtins to patch. That list never changes, so it is made once
  per module; the same attributes are patched the same way, at the same moments.

Each is installed only if the interpreter has the function it replaces with the signature it expects;
NSA_FAST_INTERPRETER=0 leaves the interpreter as it is.
"""
from __future__ import annotations

import inspect
import os

import numpy as np


def install() -> bool:
    """Install both speed-ups (False when switched off or the interpreter is not the one they fit)."""
    if os.environ.get("NSA_FAST_INTERPRETER", "1") == "0":
        return False
    import triton.language as tl
    from triton.runtime import interpreter

    original_dot = getattr(interpreter.InterpreterBuilder, "create_dot", None)
    original_patch = getattr(interpreter, "_patch_builtin", None)
    if original_dot is None or original_patch is None or not hasattr(interpreter, "_patch_attr"):
        return False
    if list(inspect.signature(original_dot).parameters) != ["self", "a", "b", "d", "input_precision",
                                                             "max_num_imprecise_acc"]:
        return False
    if getattr(original_dot, "_nsa_fast", False):
        return True

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.primitive_bitwidth == 8 or b.dtype.primitive_bitwidth == 8:  # fp8/int8: the original's casts
            return original_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        product = np.matmul(np.ascontiguousarray(a.data), np.ascontiguousarray(b.data), dtype=d.data.dtype)
        return interpreter.TensorHandle(product + d.data, d.dtype.scalar)

    names: dict[int, list[str]] = {}

    def patch_builtin(pkg, builder, scope):
        listed = names.get(id(pkg))
        if listed is None:
            listed = names[id(pkg)] = [n for n, m in inspect.getmembers(pkg) if tl.core.is_builtin(m)]
        for name in listed:
            member = getattr(pkg, name)
            if tl.core.is_builtin(member):  # as the original: what an enclosing call already patched stays
                interpreter._patch_attr(pkg, name, member, builder, scope)

    create_dot._nsa_fast = True
    interpreter.InterpreterBuilder.create_dot = create_dot
    interpreter._patch_builtin = patch_builtin
    return True
