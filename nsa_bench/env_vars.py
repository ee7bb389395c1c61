"""The environment variables the README documents, checked before a command does anything.

A wrong value must stop the command with one line naming the variable and what it takes, not run
silently with a default or end in an "internal error" about a module.
"""
from __future__ import annotations

import importlib
import os
import re
from typing import Mapping

from nsa_bench.messages import show

KERNEL_VARIANT = "NSA_KERNEL_VARIANT"  # which kernel implementations nsa-triton runs (kernels/variants.py)
BACKEND_MODULES = "NSA_BENCH_BACKEND_MODULES"  # backends kept outside the package (backends.extra_modules)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)


class EnvVarError(ValueError):
    """An environment variable with a value that cannot be used (one line, naming it)."""


def check(environ: Mapping[str, str] = os.environ) -> None:
    """Every documented variable that is set holds a usable value, else EnvVarError."""
    variant = environ.get(KERNEL_VARIANT)
    if variant:
        from nsa_kernels.variants import CHOICES, KernelVariants

        try:
            KernelVariants.parse(variant)
        except ValueError as exc:
            raise EnvVarError(f"environment variable {str(exc)[:300]}; allowed: v1, v2, or a base then kernel=variant "
                              f"overrides such as v2,cmp_dkv=v1 (kernels: {', '.join(CHOICES)})") from None
    modules = environ.get(BACKEND_MODULES)
    if modules:
        for name in (part.strip() for part in modules.split(",")):
            _check_module(name, modules)


def _check_module(name: str, value: str) -> None:
    where = f"environment variable {BACKEND_MODULES}={show(value, 60)}"
    if not _MODULE.fullmatch(name):
        raise EnvVarError(f"{where}: {show(name, 40)} is not a module name (a comma list of importable modules, "
                          "each defining BACKEND or BACKENDS)")
    try:
        module = importlib.import_module(name)
    except SystemExit as exc:  # a module that exits while imported must not take the command with it silently
        raise EnvVarError(f"{where}: importing {name} called sys.exit({str(exc.code)[:20]})") from None
    except Exception as exc:  # noqa: BLE001 - any failure to import is the variable's fault
        raise EnvVarError(f"{where}: cannot import {name} ({type(exc).__name__}: "
                          f"{show(str(exc).splitlines()[0] if str(exc) else '', 80)})") from None
    from nsa_bench.backends import Backend

    found = [getattr(module, "BACKEND", None), *getattr(module, "BACKENDS", ())]
    if not any(isinstance(backend, Backend) for backend in found):
        given = getattr(module, "BACKEND", getattr(module, "BACKENDS", None))
        what = "defines no BACKEND or BACKENDS" if given is None else f"defines BACKEND(S) = {repr(given)[:40]}"
        raise EnvVarError(f"{where}: module {name} {what}, not an nsa_bench.backends.Backend")
