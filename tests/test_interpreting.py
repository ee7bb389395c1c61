"""kernels/_common.interpreting() asks Triton: no value of TRITON_INTERPRET makes the kernels and Triton disagree
about whether the CPU interpreter runs them (Triton reads `true`/`1` as on, `0`/`false`/`off`/`2` as off).
Each value in a fresh process: what the kernels believe, what Triton's knob says, and what the kernels'
jit functions are (interpreted or compiled)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

PROBE = """
import json, triton
from triton.runtime.interpreter import InterpretedFunction
from nsa_kernels import _common, compressed
print(json.dumps([_common.interpreting(), _common.small_sizes(), bool(triton.knobs.runtime.interpret),
                  isinstance(compressed._cmp_fwd_tuned.fn, InterpretedFunction)]))
"""


def test_kernels_and_triton_agree_for_every_value():
    expected = {"1": True, "true": True, "0": False, "false": False, "off": False, "2": False}
    seen = {}
    for value in expected:
        env = {**os.environ, "TRITON_INTERPRET": value}
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        seen[value] = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {value: [on] * 4 for value, on in expected.items()}, seen
