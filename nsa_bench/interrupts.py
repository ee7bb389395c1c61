"""SIGTERM ends a command the way Ctrl-C does: the sweep stops after the rows already on disk and says so.

A batch scheduler or `timeout` sends SIGTERM, a person presses Ctrl-C; both deserve the same clean stop
(rows kept, one line on stderr, `--resume` to continue). While a command runs, both signals raise
`Interrupted`, a KeyboardInterrupt that remembers which signal it was, so the exit code can be the
shell's convention (128 + signal number: 130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (a bare one is Ctrl-C)."""
    return getattr(exc, "signum", signal.SIGINT)


def exit_code(exc: BaseException) -> int:
    return 128 + signal_of(exc)


def _raise(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def as_keyboard_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted; the previous handlers come back after.

    Only the main thread may set handlers; elsewhere (a test runner's worker thread) this does nothing.
    """
    previous = {}
    try:
        for signum in HANDLED:
            previous[signum] = signal.signal(signum, _raise)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
