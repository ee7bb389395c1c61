"""Points run in worker processes: one per device, pulling points from one queue, so a kernel that faults
costs one `error` row and a fresh worker, never the sweep.

The parent alone writes the run folder: each worker sends back a task's rows as it finishes and the parent
commits them (`resume.commit`), so Ctrl-C and --resume behave as in-process. A worker is a
`python -m nsa_bench.workers` process pinned to its device with CUDA_VISIBLE_DEVICES, talking over two
pipes of its own (stdout stays free for whatever a library prints). It is reused across points (starting
one imports torch, seconds); it is replaced when it dies (a segfault, os._exit), when a task outlives its
timeout (a hang: it is killed), or when it reports a sticky CUDA error (the context is lost for good).
Workers run in their own session, so a Ctrl-C at the terminal reaches the parent only; the parent kills
them on the way out, and a worker whose parent vanished sees its pipe close and exits.

One GPU (the default of a measured sweep) is a pool of one device kept open for the whole sweep
(`session`): the sweep's own loop hands it one task at a time (`task_rows`), so the time budget,
progress and tuning.json work as in-process while a fault still costs one row. After each task a worker
sends the autotuners' choices of its process (`tuning`), which the parent writes to tuning.json.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable, Iterator, Sequence

from nsa_bench import execute
from nsa_bench.child_env import child_environment
from nsa_bench.execute import Commit, Job
from nsa_bench.gpus import GPUSpec
from nsa_bench.schema import STATUS_ERROR
from nsa_bench.spec import Point, SweepSpec

CPU_MEASURE_ENV = "NSA_BENCH_CPU_MEASURE"  # test hook: cpuN workers measure on the CPU (wall clock)
MIN_TIMEOUT_S = 60.0
TIMEOUT_FACTOR = 50.0  # a task is hung when it takes this many times its estimate (and at least a minute)
MAX_START_FAILURES = 3  # workers of one device dying before any task: the device is unusable
IDLE_LIMIT_S = 600.0  # a worker silent this long outside a task (importing torch, between tasks) is hung


class DevicesError(ValueError):
    """A --devices value that cannot be used (one line, naming the value)."""


class PoolError(RuntimeError):
    """Workers cannot be started (the sweep stops; rows already written are kept)."""


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs to turn jobs into rows."""

    spec: SweepSpec
    gpu: GPUSpec
    measure: str | None  # "cuda", "cpu" (the test hook) or None: predicted rows
    device: str  # label rows carry: cuda:3, cpu0


def parse_devices(text: str, cuda_count: int) -> tuple[str, ...]:
    """--devices: `all` (every local GPU), GPU indices `0,1,3`, or CPU workers `cpu0,cpu1` (predicted rows,
    or the CPU measure path under NSA_BENCH_CPU_MEASURE=1). Returns labels: cuda:N or cpuN."""
    raw = str(text).strip()
    if raw == "all":
        if cuda_count == 0:
            raise DevicesError("'all': no CUDA GPU here (use cpu0,cpu1,... for CPU workers)")
        return tuple(f"cuda:{i}" for i in range(cuda_count))
    items = [item.strip() for item in raw.split(",")]
    if not raw or any(not item for item in items):
        raise DevicesError(f"{raw!r}: expected all, GPU indices (0,1,...) or cpu0,cpu1,...; empty item")
    labels = []
    for item in items:
        if item.isascii() and item.isdigit() and len(item) <= 4:
            index = int(item)
            if index >= cuda_count:
                have = f"GPUs 0..{cuda_count - 1}" if cuda_count else "no CUDA GPU"
                raise DevicesError(f"{item!r}: no such GPU here ({have})")
            labels.append(f"cuda:{index}")
        elif item.startswith("cpu") and item[3:].isascii() and item[3:].isdigit() and len(item) <= 7:
            labels.append(f"cpu{int(item[3:])}")
        else:
            raise DevicesError(f"{item[:40]!r}: expected all, a GPU index (0,1,...) or cpuN")
    if len(set(labels)) != len(labels):
        raise DevicesError(f"{raw[:60]!r}: a device is named twice (one worker per device)")
    if len({label[:3] for label in labels}) > 1:
        raise DevicesError(f"{raw[:60]!r}: mixes GPUs and CPU workers")
    return tuple(labels)


def task_timeout_s(spec: SweepSpec, gpu: GPUSpec, point_timeout: float | None) -> Callable[[Point, str], float]:
    """Seconds a task may take before its worker counts as hung: --point-timeout, else
    max(60 s, 50 x the time budget's estimate of the task)."""
    if point_timeout is not None:
        return lambda point, backend: point_timeout
    from nsa_bench.backends import registry
    from nsa_bench.budget import Estimator

    estimator = Estimator(spec, gpu)

    def timeout(point: Point, backend: str) -> float:
        try:
            estimate = estimator.estimate(point, registry()[backend]).total_s
        except Exception:  # noqa: BLE001 - an invalid configuration has no estimate: it costs nothing
            estimate = 0.0
        return max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * estimate)
    return timeout


def fault_text(returncode: int | None) -> str:
    """What a worker's exit status says happened."""
    if returncode is None:
        return "stopped responding"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        what = {"SIGSEGV": "segmentation fault", "SIGABRT": "abort", "SIGBUS": "bus error", "SIGKILL": "killed",
                "SIGFPE": "floating-point exception", "SIGILL": "illegal instruction"}.get(name, "killed by a signal")
        return f"{what} ({name})"
    return f"exited with code {returncode}"


# ------------------------------------------------------------------ the parent side
@dataclass
class _Slot:
    device: str
    proc: subprocess.Popen | None = None
    to_worker: Connection | None = None
    from_worker: Connection | None = None
    job: Job | None = None
    done: list[str] = field(default_factory=list)  # tasks of the job whose rows arrived
    current: str | None = None  # the task in flight
    deadline: float = float("inf")
    start_failures: int = 0


def _environment(device: str) -> dict[str, str]:
    """The worker's environment: only its own GPU visible (an index counts among the GPUs this process
    sees, so it is mapped through the parent's own CUDA_VISIBLE_DEVICES); a CPU worker sees none."""
    env = child_environment()
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[index] if "CUDA_VISIBLE_DEVICES" in os.environ and index < len(visible) \
            else str(index)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalPool:
    """One worker process per device label; `run` feeds them jobs and hands each task's rows to `commit`."""

    def __init__(self, setup: WorkerSetup, devices: Sequence[str],
                 timeout_s: Callable[[Point, str], float]) -> None:
        self.setup = setup
        self.devices = tuple(devices)
        self.timeout_s = timeout_s
        self.replaced = 0
        self.tuning: dict[tuple[str, str], dict] = {}  # (kernel, key) -> the choice a worker reported for it
        self._open: list[_Slot] | None = None  # the workers of a session (kept between `run` calls)

    @property
    def sequential(self) -> bool:
        """One device: the sweep's own loop can feed it task by task (budget, tuning.json as in-process)."""
        return len(self.devices) == 1

    @contextlib.contextmanager
    def session(self) -> Iterator["LocalPool"]:
        """Keep the workers alive across `run` calls (a sweep fed task by task); stopped on the way out."""
        self._open = [_Slot(device) for device in self.devices]
        try:
            for slot in self._open:
                self._start(slot)
            yield self
        finally:
            slots, self._open = self._open or [], None
            self._shutdown(slots)

    def tuning_choices(self) -> list[dict]:
        """The autotuners' choices the workers reported, one per (kernel, key); those of a worker that was
        replaced are kept (a later report of the same key wins)."""
        return list(self.tuning.values())

    def note_tuning(self, records: list[dict]) -> None:
        for record in records:
            self.tuning[(str(record.get("kernel")), repr(record.get("key")))] = record

    def describe(self) -> dict[str, object]:
        """What env.json records of the pool."""
        return {"kind": "local", "devices": list(self.devices), "measure": self.setup.measure or "predicted"}

    # worker lifecycle
    def _start(self, slot: _Slot) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "nsa_bench.workers", str(child_read), str(child_write)],
                pass_fds=(child_read, child_write), env=_environment(slot.device), start_new_session=True,
                stdin=subprocess.DEVNULL)
        except OSError as exc:
            for fd in (parent_read, child_write, child_read, parent_write):
                os.close(fd)
            raise PoolError(f"cannot start a worker for {slot.device}: {exc.strerror or exc}") from None
        os.close(child_read)
        os.close(child_write)
        slot.from_worker, slot.to_worker = Connection(parent_read), Connection(parent_write)
        slot.to_worker.send(replace(self.setup, device=slot.device))

    def _stop(self, slot: _Slot, kill: bool) -> int | None:
        proc = slot.proc
        for conn in (slot.to_worker, slot.from_worker):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        slot.to_worker = slot.from_worker = None
        slot.proc = None
        if proc is None:
            return None
        if kill and proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _assign(self, slot: _Slot, job: Job) -> None:
        slot.job, slot.done, slot.current, slot.deadline = job, [], None, float("inf")
        slot.to_worker.send(job)
        # until the first "begin" the worker may still be importing torch: a wide limit, not the task's
        slot.deadline = time.monotonic() + IDLE_LIMIT_S

    def run(self, jobs: Iterable[Job], commit: Commit) -> None:
        """Run every job; returns when all are done. KeyboardInterrupt: workers killed, then re-raised."""
        queue = collections.deque(jobs)
        if not queue:
            return
        if self._open is not None:
            try:
                self._drive(self._open, queue, commit)
            except BaseException:  # an interrupt or a pool error: no worker may outlive it mid-task
                slots, self._open = self._open, None
                self._shutdown(slots)
                raise
            return
        slots = [_Slot(device) for device in self.devices]
        try:
            for slot in slots:
                self._start(slot)
            self._drive(slots, queue, commit)
        finally:
            self._shutdown(slots)

    def _drive(self, slots: list[_Slot], queue: collections.deque, commit: Callable) -> None:
        """Feed the queue's jobs to the slots' workers until every job is done."""
        while queue or any(s.job is not None for s in slots):
            for slot in slots:
                if slot.job is None and queue:
                    try:
                        self._assign(slot, queue.popleft())
                    except (OSError, EOFError, BrokenPipeError):  # it died while idle: the job goes back
                        self._fault(slot, queue, commit, self._stop(slot, kill=True))
            busy = [s for s in slots if s.job is not None]
            if not busy:
                continue
            now = time.monotonic()
            wait_s = max(0.0, min(s.deadline for s in busy) - now)
            ready = wait([s.from_worker for s in busy], timeout=min(wait_s, 3600.0))
            for slot in busy:
                if slot.from_worker in ready:
                    self._receive(slot, queue, commit)
                elif time.monotonic() > slot.deadline:
                    self._hung(slot, queue, commit)

    def _shutdown(self, slots: list[_Slot]) -> None:
        """Stop every worker: a clean stop for idle ones, a kill for any with a task in flight."""
        for slot in slots:
            if slot.proc is not None:
                if slot.job is None and slot.to_worker is not None:
                    try:
                        slot.to_worker.send(None)  # a clean stop: nothing in flight
                    except OSError:
                        pass
                    try:
                        slot.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                self._stop(slot, kill=True)

    def _receive(self, slot: _Slot, queue: collections.deque, commit: Callable) -> None:
        try:
            message = slot.from_worker.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            self._fault(slot, queue, commit, self._stop(slot, kill=False))
            return
        kind = message[0]
        if kind == "begin":
            slot.current = message[1]
            slot.start_failures = 0
            slot.deadline = time.monotonic() + self.timeout_s(slot.job.point, message[1])
        elif kind == "rows":
            name, rows = message[1], message[2]
            slot.job = slot.job.after(name, rows)
            slot.done.append(name)
            slot.current, slot.deadline = None, time.monotonic() + IDLE_LIMIT_S
            commit(slot.job.point, name, rows)
        elif kind == "done":
            slot.job, slot.current, slot.deadline = None, None, float("inf")
        elif kind == "tuning":
            self.note_tuning(message[1])
        elif kind == "sticky":  # the worker's CUDA context is lost: replace it, the job's rest runs elsewhere
            self._requeue(slot, queue)
            self._stop(slot, kill=True)
            self.replaced += 1
            self._start(slot)

    def _requeue(self, slot: _Slot, queue: collections.deque) -> None:
        """The job's tasks still to run go back to the front of the queue (its baseline's time with them)."""
        if slot.job is not None and slot.job.backends:
            queue.appendleft(slot.job)
        slot.job, slot.done, slot.current, slot.deadline = None, [], None, float("inf")

    def _fault(self, slot: _Slot, queue: collections.deque, commit: Callable, returncode: int | None,
               why: str | None = None) -> None:
        """The worker is gone: an error row for the task in flight, the job's other tasks queued again, a new
        worker in its place."""
        what = why or f"worker process {fault_text(returncode)}"
        failed = slot.current
        job = slot.job
        if failed is None and job is not None and not slot.done:
            slot.start_failures += 1
            if slot.start_failures >= MAX_START_FAILURES:
                raise PoolError(f"workers for {slot.device} keep dying before running anything ({what})")
        if failed is not None and job is not None:
            rows = execute.error_rows(job, failed, self.setup.gpu, slot.device,
                                      f"{what} during this point on {slot.device}; the worker was replaced and "
                                      "the sweep went on")
            commit(job.point, failed, rows)
            slot.job = job.after(failed, rows)
            slot.done.append(failed)
        self._requeue(slot, queue)
        self._stop(slot, kill=True)
        self.replaced += 1
        self._start(slot)

    def _hung(self, slot: _Slot, queue: collections.deque, commit: Callable) -> None:
        self._stop(slot, kill=True)
        if slot.current is None:
            why = f"worker silent for {IDLE_LIMIT_S:.0f} s outside a task (start-up or between tasks); killed"
        else:
            limit = self.timeout_s(slot.job.point, slot.current)
            why = f"hang: no result within {limit:.0f} s (--point-timeout); worker killed"
        self._fault(slot, queue, commit, None, why=why)


# ------------------------------------------------------------------ the worker side
def _measure(setup: WorkerSetup) -> execute.Measure | None:
    """The worker's own Measure; NVML counts GPUs in PCI order, so a pinned worker reads its GPU's index."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return execute.measure_of(setup.measure, int(visible) if visible.isdigit() else 0)


def _sticky_cuda_error() -> str | None:
    """The CUDA error a context is stuck with (an illegal address poisons every later call), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
    except Exception as exc:  # noqa: BLE001 - any failure here means the context is unusable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def worker_main(read_fd: int, write_fd: int) -> None:
    """A worker: read the setup, then jobs until None or the pipe closes; send each task's rows back."""
    inbox, outbox = Connection(read_fd), Connection(write_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    setup: WorkerSetup = inbox.recv()
    measure = _measure(setup)
    while True:
        try:
            job = inbox.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        for name, rows in execute.job_rows(job, setup.spec, setup.gpu, measure,
                                   on_begin=lambda name: outbox.send(("begin", name)),
                                   cpu_hook=setup.measure == "cpu"):
            rows = [replace(r, device=setup.device) for r in rows]
            if any(r.status == STATUS_ERROR for r in rows) and setup.measure == "cuda":
                sticky = _sticky_cuda_error()
                if sticky:
                    rows = [replace(r, message=f"{r.message}; sticky CUDA error ({sticky}): worker replaced")
                            for r in rows]
                    outbox.send(("rows", name, rows))
                    outbox.send(("sticky", sticky))
                    os._exit(3)
            outbox.send(("rows", name, rows))
            if setup.measure == "cuda":
                outbox.send(("tuning", _tuning_records()))
        outbox.send(("done",))


def _tuning_records() -> list[dict]:
    """This process's autotuner choices (nsa_kernels.tuning), as tuning.json holds them; [] when none."""
    if "nsa_kernels" not in sys.modules:
        return []
    try:
        from nsa_kernels import tuning

        import json  # plain values only: what crosses the pipe and lands in tuning.json

        return json.loads(json.dumps([choice.as_dict() for choice in tuning.chosen_configs()], default=str))
    except Exception:  # noqa: BLE001 - the log is a record, never a reason to lose a row
        return []


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), int(sys.argv[2]))
