"""--ray [ADDRESS]: a sweep's points as Ray tasks of one GPU each, on an existing cluster or a local one.

Each point (its pending backends, baseline first) is one task asking for `num_gpus=1`, so Ray never puts
two timings on one GPU; the task returns its rows with the host and GPU that ran them, and the driver
alone commits them to the run folder as tasks finish (--resume works as on one machine). A task whose
node is lost, or whose worker process dies, is retried by Ray (`max_retries`); one that still fails, or
outlives its timeout (it is cancelled), is split into one task per backend (the baseline first), so only
the faulting backend's row is an `error` naming why, and the sweep goes on.

On a cluster without GPU resources (a laptop predicting rows) tasks ask for one CPU instead, since
predictions need no GPU. Ray is an optional extra: `pip install 'nsa-bench[ray]'`.
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from dataclasses import replace
from typing import ContextManager, Iterable

from nsa_bench import execute
from nsa_bench.execute import Commit, Job
from nsa_bench.schema import Row
from nsa_bench.workers import PoolError, WorkerSetup, task_timeout_s

DEFAULT_RETRIES = 3
_ADDRESS = re.compile(r"(auto|local|(ray://)?[A-Za-z0-9_.-]{1,253}:\d{1,5})")


class RayUnavailable(ValueError):
    """Ray cannot be used (not installed, or a malformed address): one line."""


def _run_job(setup: WorkerSetup, job: Job) -> tuple[str, str, list[tuple[str, list[Row]]]]:
    """Inside a Ray worker: the job's rows, with the host and GPU they ran on."""
    import ray

    ids = ray.get_gpu_ids()
    device = f"ray-gpu{','.join(str(i) for i in ids)}" if ids else "ray-cpu"
    host = socket.gethostname()
    measure = execute.measure_of(setup.measure)
    out = [(name, [replace(r, host=host, device=device) for r in rows])
           for name, rows in execute.job_rows(job, setup.spec, setup.gpu, measure, cpu_hook=setup.measure == "cpu")]
    return host, device, out


class RayPool:
    """Runs jobs as Ray tasks; `run` hands each task's rows to `commit` as the tasks finish."""

    def __init__(self, setup: WorkerSetup, address: str | None, measuring: bool,
                 max_retries: int | None = None, point_timeout: float | None = None) -> None:
        if address is not None and not _ADDRESS.fullmatch(address):
            raise RayUnavailable(f"{address[:60]!r}: expected auto, HOST:PORT or ray://HOST:PORT (bare --ray: a "
                                 "local Ray instance)")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise RayUnavailable("needs Ray, which is not installed: pip install 'nsa-bench[ray]'") from None
        self.setup = setup
        self.address = None if address in (None, "local") else address
        self.measuring = measuring
        self.max_retries = DEFAULT_RETRIES if max_retries is None else max_retries
        self.timeout_s = task_timeout_s(setup.spec, setup.gpu, point_timeout)
        self.replaced = 0
        self.hosts: set[str] = set()

    @property
    def sequential(self) -> bool:
        """Ray places every job at once on the cluster's GPUs: the runner hands them all over."""
        return False

    def session(self) -> ContextManager[object]:
        return contextlib.nullcontext(self)

    def tuning_choices(self) -> None:
        """Ray workers keep their autotuners' choices: tuning.json is written by local runs only."""
        return None

    def describe(self) -> dict[str, object]:
        return {"kind": "ray", "address": self.address or "local", "max_retries": self.max_retries,
                "measure": self.setup.measure or "predicted"}

    def _connect(self) -> bool:
        """ray.init unless this process is already connected; True when this call started it."""
        import ray

        if ray.is_initialized():
            return False
        try:
            quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(**quiet)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the cluster is one line
            raise PoolError(f"cannot connect to Ray at {self.address or 'a local instance'}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        return True

    def run(self, jobs: Iterable[Job], commit: Commit) -> None:
        import ray

        jobs = list(jobs)
        if not jobs:
            return
        started = self._connect()
        pending: dict[object, tuple[Job, float]] = {}
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            if self.measuring and not gpus:
                raise PoolError("the Ray cluster declares no GPU resources: nothing can be measured there")
            resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
            remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False, **resources)(_run_job)
            submitted: dict[object, float] = {}
            follow: dict[object, tuple[str, ...]] = {}  # a split job's baseline task -> the backends after it

            def submit(job: Job, then: tuple[str, ...] = ()) -> None:
                limit = sum(self.timeout_s(job.point, name) for name in job.backends)
                ref = remote.remote(self.setup, job)
                pending[ref], submitted[ref] = (job, limit), time.monotonic()
                if then:
                    follow[ref] = then

            def split(job: Job) -> None:
                """A point's tasks one Ray task each, so only the faulting backend's rows are errors; a
                pending baseline runs first, its time then goes with the others."""
                if job.backends[0] == job.baseline and len(job.backends) > 1:
                    submit(job.only(job.baseline), then=job.backends[1:])
                    return
                for name in job.backends:
                    submit(job.only(name))

            for job in jobs:
                submit(job)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    job, _limit = pending.pop(ref)
                    then = follow.pop(ref, ())
                    try:
                        host, _device, rows = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a task's failure is its rows' status
                        self.replaced += 1
                        if len(job.backends) > 1:
                            split(job)
                            continue
                        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        done = self._fail(job, commit, f"Ray task failed after {self.max_retries} retries ({why})")
                        if then:
                            split(replace(done, backends=then))
                        continue
                    self.hosts.add(host)
                    for name, task_rows in rows:
                        commit(job.point, name, task_rows)
                        job = job.after(name, task_rows)
                    if then:
                        split(replace(job, backends=then))
                now = time.monotonic()
                for ref in [r for r, (_, limit) in pending.items() if now - submitted[r] > limit + 600]:
                    # the queue wait counts too, so the limit is wide: the task's estimate x 50 plus ten minutes
                    job, limit = pending.pop(ref)
                    then = follow.pop(ref, ())
                    ray.cancel(ref, force=True)
                    done = self._fail(job, commit, f"hang: no result within {limit + 600:.0f} s (--point-timeout); "
                                                   "Ray task cancelled")
                    if then:
                        split(replace(done, backends=then))
        except KeyboardInterrupt:
            for ref in list(pending):
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()

    def _fail(self, job: Job, commit: Commit, message: str) -> Job:
        """An `error` row for each of the job's tasks; the job as it stands after them."""
        for name in job.backends:
            rows = execute.error_rows(job, name, self.setup.gpu, "ray", message)
            commit(job.point, name, rows)
            job = job.after(name, rows)
        return job
