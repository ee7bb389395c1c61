"""Test-only backends that fault the way experimental kernels do: a segfault, an exit, a hang, mid-point.

Loaded through NSA_BENCH_BACKEND_MODULES=fault_backends (tests/ on PYTHONPATH), never by a normal run.
They fault at T = 48 only; at other lengths they say `unsupported`, so a sweep shows the other rows survive.
"""
from __future__ import annotations

import os
import signal
import time

from nsa_bench.backends import Backend

FAULT_SEQLEN = 48


def _builder(kind: str):
    def build(point, inputs):  # the first build is the correctness check's, at --check-seqlen
        if kind == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif kind == "exit":
            os._exit(7)
        elif kind == "hang":
            time.sleep(3600)
        raise AssertionError("unreachable")
    return build


BACKENDS = tuple(
    Backend(name=f"fault-{kind}", family="dense", modes=("fwd", "bwd", "fwdbwd", "decode"),
            description=f"test only: {kind} mid-point", availability=lambda: None, build=_builder(kind),
            supports=lambda point: None if point.seqlen == FAULT_SEQLEN else f"faults at T={FAULT_SEQLEN} only")
    for kind in ("segv", "exit", "hang")
)



def _faults_once(marker_env: str, fault) -> object:
    """A build that runs `fault` the first time (the file named by $marker_env does not exist yet: it is made),
    then runs as nsa-ref: a point whose worker or node is lost once, queued again, and then succeeding."""
    def build(point, inputs):
        from pathlib import Path

        from nsa_bench.backends import get_backend

        marker = Path(os.environ[marker_env])
        if not marker.exists():
            marker.write_text(f"faulted once in pid {os.getpid()}\n")
            fault()
        return get_backend("nsa-ref").build(point, inputs)
    return build


BACKENDS = (*BACKENDS, *(
    Backend(name=name, family="nsa", modes=("fwd",), description=f"test only: {what} once, then runs as nsa-ref",
            availability=lambda: None, build=_faults_once(marker_env, fault),
            supports=lambda point: None if point.seqlen == FAULT_SEQLEN else f"faults at T={FAULT_SEQLEN} only")
    for name, what, marker_env, fault in (
        ("fault-once", "exits", "FAULT_ONCE_MARKER", lambda: os._exit(9)),  # a worker lost once
        ("fault-slow-once", "hangs", "FAULT_SLOW_MARKER", lambda: time.sleep(3600)),  # asleep when its node goes
    )))
