"""Reports how many bad inputs the tests tried (counted in tests/bad_inputs.py)."""
from __future__ import annotations

import pytest

from bad_inputs import BAD_INPUTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if BAD_INPUTS:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(BAD_INPUTS.items()))
        terminalreporter.write_line(f"bad inputs tried: {sum(BAD_INPUTS.values())} ({parts}); each ended in exit "
                                    "0 or 2 with at most one stderr line and no traceback (else a test failed)")
