"""The documented environment variables are checked before a command runs: one line naming the variable."""
from __future__ import annotations

import re

import pytest

from bad_inputs import count_bad_input
from cli_runner import assert_clean_exit, run_main
from nsa_bench import env_vars


@pytest.mark.parametrize("name,value,needle", [
    ("NSA_KERNEL_VARIANT", "v3", "is not a kernel variant"),
    ("NSA_KERNEL_VARIANT", "garbage", "is not a kernel variant"),
    ("NSA_KERNEL_VARIANT", "v2,foo=v1", "unknown kernel 'foo'"),
    ("NSA_KERNEL_VARIANT", "cmp_dkv=v7", "cmp_dkv='v7'"),
    ("NSA_KERNEL_VARIANT", "cmp_dkv=v1,v2", "must come first"),
    ("NSA_KERNEL_VARIANT", "v1,v2", "one base variant only"),
    ("NSA_KERNEL_VARIANT", "v2,,cmp_dkv=v1", "an empty item"),
    ("NSA_KERNEL_VARIANT", "v2,cmp_dkv=v1,cmp_dkv=v2", "cmp_dkv is set twice"),
    ("NSA_BENCH_BACKEND_MODULES", "nope.mod", "cannot import nope.mod"),
    ("NSA_BENCH_BACKEND_MODULES", "os", "defines no BACKEND"),
    ("NSA_BENCH_BACKEND_MODULES", "a b", "is not a module name"),
    ("NSA_BENCH_BACKEND_MODULES", "fault_backends,,", "is not a module name"),
])
@pytest.mark.parametrize("command", [("sweep", "--seqlen", "1k", "--dry-run"), ("env",)])
def test_a_bad_value_stops_every_command_in_one_line(monkeypatch, tmp_path, name, value, needle, command):
    count_bad_input("environment variables")
    monkeypatch.setenv(name, value)
    code, out, err = run_main(*command, cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert err.startswith(f"nsa-bench: error: environment variable {name}") and needle in err, err


@pytest.mark.parametrize("name,value", [("NSA_KERNEL_VARIANT", "v1"), ("NSA_KERNEL_VARIANT", "v2,cmp_dkv=v1"),
                                        ("NSA_KERNEL_VARIANT", "v2+slc_small_g=small_g"),
                                        ("NSA_BENCH_BACKEND_MODULES", "fault_backends")])
def test_good_values_pass(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    env_vars.check()


@pytest.mark.parametrize("source,needle", [("import sys\nsys.exit(3)\n", "called sys.exit(3)"),
                                           ("BACKEND = 5\n", "defines BACKEND(S) = 5, not an nsa_bench.backends.Backend")])
def test_a_backend_module_that_misbehaves_is_named(monkeypatch, tmp_path, source, needle):
    count_bad_input("environment variables")
    (tmp_path / "odd_backend_module.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(env_vars.EnvVarError, match=re.escape(needle)):
        env_vars.check({"NSA_BENCH_BACKEND_MODULES": "odd_backend_module"})
