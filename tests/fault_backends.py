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


def _once_build(point, inputs):
    """Exits the first time it is built (FAULT_ONCE_MARKER does not exist yet), then runs as nsa-ref: a worker
    lost once, as on a node that goes away, whose point must be queued again and then succeed."""
    from pathlib import Path

    from nsa_bench.backends import get_backend

    marker = Path(os.environ["FAULT_ONCE_MARKER"])
    if not marker.exists():
        marker.write_text("crashed once\n")
        os._exit(9)
    return get_backend("nsa-ref").build(point, inputs)


BACKENDS = (*BACKENDS, Backend(
    name="fault-once", family="nsa", modes=("fwd",), description="test only: exits once, then runs as nsa-ref",
    availability=lambda: None, build=_once_build,
    supports=lambda point: None if point.seqlen == FAULT_SEQLEN else f"faults at T={FAULT_SEQLEN} only"))


def _slow_once_build(point, inputs):
    """Sleeps the first time it is built (FAULT_SLOW_MARKER does not exist yet): a task that is running when
    its node goes away; run again elsewhere, it runs as nsa-ref."""
    from pathlib import Path

    from nsa_bench.backends import get_backend

    marker = Path(os.environ["FAULT_SLOW_MARKER"])
    if not marker.exists():
        marker.write_text(f"asleep in pid {os.getpid()}\n")
        time.sleep(3600)
    return get_backend("nsa-ref").build(point, inputs)


BACKENDS = (*BACKENDS, Backend(
    name="fault-slow-once", family="nsa", modes=("fwd",), description="test only: hangs once, then runs as nsa-ref",
    availability=lambda: None, build=_slow_once_build,
    supports=lambda point: None if point.seqlen == FAULT_SEQLEN else f"faults at T={FAULT_SEQLEN} only"))
