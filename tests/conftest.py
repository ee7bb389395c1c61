"""Reports how many bad inputs the tests tried (counted in tests/bad_inputs.py), and `run_only`, the
fixture that runs chosen programs of a launch alone (tests of offsets past 2^31, test_offsets64.py).

Also the interpreter plugins of tests/: `--program-order=reverse|footprint` (program_order.py),
`--launch-log FILE` (launch_log.py), and the interpreter's two speed-ups (interpreter_speed.py)."""
from __future__ import annotations

import inspect
import types

import pytest
import triton.runtime.interpreter as interpreter

import interpreter_speed
import launch_log
import program_order
from bad_inputs import BAD_INPUTS

interpreter_speed.install()
pytest_runtest_call = program_order.runtest_call


def pytest_addoption(parser: pytest.Parser) -> None:
    launch_log.addoption(parser)
    program_order.addoption(parser)


def pytest_configure(config: pytest.Config) -> None:
    launch_log.configure(config)
    program_order.configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    launch_log.unconfigure(config)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if BAD_INPUTS:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(BAD_INPUTS.items()))
        terminalreporter.write_line(f"bad inputs tried: {sum(BAD_INPUTS.values())} ({parts}); each ended in exit "
                                    "0 or 2 with at most one stderr line and no traceback (else a test failed)")


@pytest.fixture
def run_only(monkeypatch):
    """`run_only(keep)`: from then on the interpreter runs only the programs (x, y, z) of a launch for
    which keep(x, y, z, nx, ny, nz) holds; the others are skipped (their outputs stay unwritten)."""
    original = interpreter.GridExecutor.__init__
    chosen = []

    def init(self, fn, *args, **kwargs):
        original(self, fn, *args, **kwargs)
        inner, builder, keep = self.fn, interpreter.interpreter_builder, chosen[-1]

        def chosen_only(*a, **kw):
            if keep(*builder.grid_idx, *builder.grid_dim):
                return inner(*a, **kw)
            return None

        # the executor binds arguments by the signature and patches triton.language in the globals
        wrapped = types.FunctionType(chosen_only.__code__, inner.__globals__, inner.__name__, None,
                                     chosen_only.__closure__)
        wrapped.__signature__ = inspect.signature(inner)
        self.fn = wrapped

    monkeypatch.setattr(interpreter.GridExecutor, "__init__", init)
    return chosen.append
