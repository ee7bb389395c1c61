"""The worker protocol: one JSON request per line on the worker's stdin, one tagged JSON answer per line on its
stdout (other output of the worker, e.g. Triton's, is skipped by the tag).

Requests: {"op": "report", "case": C} compiles every config of case C (the compile check's unit) and
answers a CaseReport; {"op": "plan", "case": C} records C and answers its CasePlan (every variant named by its
compile digest, nothing compiled); {"op": "compile", "case": C, "launch": i, "index": j} compiles variant j of
launch i of C and answers its CompileResult.
"""
from __future__ import annotations

import json
from typing import Iterable

from nsa_bench.compilecheck.case import Case

RESULT_TAG = "@@gpu_compile@@ "
OPS = ("report", "plan", "compile")


def request(op: str, case: Case, **fields: int) -> str:
    """One request line (without its newline)."""
    if op not in OPS:
        raise ValueError(f"unknown worker request {op!r} (one of {', '.join(OPS)})")
    return json.dumps({"op": op, "case": case.to_dict(), **fields})


def parse_request(line: str) -> tuple[str, Case, dict]:
    """(op, case, the other fields) of a request line."""
    raw = json.loads(line)
    op = raw.pop("op", None)
    if op not in OPS:
        raise ValueError(f"unknown worker request {op!r} (one of {', '.join(OPS)})")
    return op, Case.from_dict(raw.pop("case")), raw


def answer(payload: dict) -> str:
    """One tagged answer line, newline included."""
    return RESULT_TAG + json.dumps(payload) + "\n"


def read_answer(lines: Iterable[str]) -> dict | None:
    """The first tagged answer among `lines` (the worker's stdout); None when they end without one."""
    for line in lines:
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return None
