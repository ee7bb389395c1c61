"""The environment of the suite's child processes (sweep workers, compile workers): the parent's code.

A child started with `python -m nsa_bench...` finds its modules from its own working directory and the
installed packages, which need not be what the parent imported (`python /path/to/checkout/cli.py` run
from elsewhere, or a checkout beside an installed copy). The folders the parent's `nsa_bench` and
`nsa_kernels` came from go first on the child's PYTHONPATH, so both sides always run the same code.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with PYTHONPATH led by the parent's package folders."""
    env = dict(os.environ if base is None else base)
    roots = []
    for name in ("nsa_bench", "nsa_kernels"):
        module = sys.modules.get(name)
        where = Path(getattr(module, "__file__", "") or "").parent if module is not None else None
        if where is not None and where.name == name:  # imported under its own name: its parent is a path entry
            roots.append(str(where.parent))
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    entries = list(dict.fromkeys([*roots, *rest]))
    if entries:
        env["PYTHONPATH"] = os.pathsep.join(entries)
    return env
