"""The count of bad inputs the tests try (the project reports it), printed by tests/conftest.py at the end."""
from __future__ import annotations

import collections

BAD_INPUTS: collections.Counter[str] = collections.Counter()


def count_bad_input(kind: str, n: int = 1) -> None:
    BAD_INPUTS[kind] += n
