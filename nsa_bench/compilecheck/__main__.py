"""`python -m nsa_bench.compilecheck [entry ...]`: registers, spills and shared memory of every config of every
case of the table (those of the entries named, if any), compiled for sm_90 on two worker processes."""
from __future__ import annotations

import sys

from nsa_bench.compilecheck.pool import compile_cases
from nsa_bench.compilecheck.table import CASES


def main(entries: list[str]) -> None:
    chosen = tuple(c for c in CASES if not entries or c.entry in entries)
    for report in compile_cases(chosen).values():
        print(report.describe(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
