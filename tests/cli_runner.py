"""Run the `nsa-bench` entry point in-process, as a user's shell would: exit code, stdout, stderr."""
from __future__ import annotations

import sys

import pytest

from nsa_bench import cli


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["nsa-bench", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    return info.value.code, out.out, out.err
