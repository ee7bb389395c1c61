"""`--launch-log FILE`: every kernel launch the CPU interpreter runs in this session, one JSON line each
(nsa_bench.launchplan.keys.LaunchKey, distinct), for `python -m nsa_bench.launchplan coverage --executed FILE`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

_SESSION: dict[str, object] = {}


def addoption(parser: pytest.Parser) -> None:
    parser.addoption("--launch-log", metavar="FILE", default=None,
                     help="write every interpreter kernel launch of the session to FILE (JSON lines)")


def configure(config: pytest.Config) -> None:
    path = config.getoption("--launch-log")
    if not path:
        return
    from nsa_bench.launchplan.executed import recording

    context = recording()
    _SESSION.update(path=Path(path), context=context, launches=context.__enter__())


def unconfigure(config: pytest.Config) -> None:
    if "context" not in _SESSION:
        return
    _SESSION["context"].__exit__(None, None, None)
    keys = dict.fromkeys(_SESSION["launches"])
    _SESSION["path"].write_text("".join(json.dumps(k.as_dict(), sort_keys=True) + "\n" for k in keys))
    _SESSION.clear()
