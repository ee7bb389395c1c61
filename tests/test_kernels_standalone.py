"""The kernel package stands alone: `nsa_kernels` ships as its own package, so none of its modules may
import the benchmark suite (`nsa_bench`), directly or through another module."""
from __future__ import annotations

import pytest

import os
import re
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.subprocess

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
MODULES = sorted(f"nsa_kernels.{p.stem}" for p in KERNELS.glob("*.py") if p.stem != "__init__")
SUITE_IMPORT = re.compile(r"^[ \t]*(?:import|from)[ \t]+nsa_bench\b.*$", re.MULTILINE)


def test_no_kernel_file_imports_the_suite():
    """A static check, so an import inside a function (never run by the subprocess test) is caught too."""
    offenders = [f"{p.name}: {m.group(0).strip()}" for p in sorted(KERNELS.glob("*.py"))
                 for m in SUITE_IMPORT.finditer(p.read_text())]
    assert not offenders, offenders


def test_importing_every_kernel_module_imports_no_suite_module():
    """Each module of nsa_kernels, Triton's included, imported in a fresh interpreter: no nsa_bench module
    may be loaded afterwards."""
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'nsa_bench' or m.startswith('nsa_bench.')))\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(MODULES) >= 10, MODULES
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
