"""Run the `nsa-bench` entry point in-process, as a user's shell would: exit code, stdout, stderr."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest

from nsa_bench import cli


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["nsa-bench", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def run_main(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """The same without pytest fixtures (for hypothesis tests): argv, cwd and the streams restored after."""
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code: object = None
    try:
        sys.argv = ["nsa-bench", *args]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return code, out.getvalue(), err.getvalue()  # type: ignore[return-value]


def assert_clean_exit(code: object, out: str, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    """What every user input must end in: exit 0 or 2, no traceback, at most one line on stderr."""
    assert code in allowed, (code, err[-2000:])
    assert "Traceback" not in out + err, err[-2000:]
    assert len(err.strip().splitlines()) <= 1, err[-2000:]
