"""The sweep runner: which tasks run, in what order, within what budget, and committing their rows.

A task becomes rows in nsa_bench.execute, wherever it runs (`Pool`: this process, local workers, Ray);
here the sweep is planned (run order, shard, --resume's done tasks), the time budget decides before each
task of a sequential pool, and each task's rows are committed together as they arrive (`resume.commit`),
so Ctrl-C (or SIGTERM) leaves a valid CSV and --resume knows exactly what is complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from nsa_bench import execute, interrupts, results, resume as resume_mod
from nsa_bench.backends import Backend
from nsa_bench.budget import Budget
from nsa_bench.execute import Job, Pool, Task, base_row, failure_row
from nsa_bench.gpus import GPUSpec
from nsa_bench.shard import WHOLE, Shard
from nsa_bench.schema import STATUS_SKIPPED, Row
from nsa_bench.spec import Point, SweepSpec


@dataclass(frozen=True)
class Outcome:
    csv: Path
    rows_written: int
    skipped: int
    interrupted: bool
    rows_on_disk: int = 0  # rows in the CSV when the sweep stopped (kept by --resume + written now)
    signal: int = 0  # the signal that interrupted it (SIGINT, SIGTERM), 0 when it ran to the end


def order_backends(names: tuple[str, ...], baseline: str) -> list[Backend]:
    """The requested backends, baseline first so each point's speedup is known when its rows are written."""
    backends = execute.registry()
    ordered = sorted(names, key=lambda name: name != baseline)
    return [backends[name] for name in ordered]


def run_order(points: list[Point]) -> list[Point]:
    """Longest sequence first (each mode's headline length), the spec's order among equal lengths: a run
    cut short (time budget, a lost machine) holds the headline points of every mode."""
    return sorted(points, key=lambda point: -point.seqlen)


def tasks(points: list[Point], backends: list[Backend], invalid: dict[Point, str] | None = None) -> Iterator[Task]:
    """Every point on every backend, in run order: the backends of one point back to back, baseline first."""
    for point in run_order(points):
        for backend in backends:
            yield Task(point, backend, (invalid or {}).get(point, ""))


def sweep_tasks(spec: SweepSpec, shard: Shard = WHOLE) -> list[Task]:
    """Every task of `spec` (only `shard`'s points) in run order, invalid NSA configurations included (their
    task writes an `unsupported` row; dense backends run them)."""
    everything = spec.all_points()
    if shard != WHOLE:
        mine = set(shard.select(run_order([point for point, _ in everything])))
        everything = [(point, why) for point, why in everything if point in mine]
    invalid = {point: why for point, why in everything if why}
    backends = order_backends(spec.run_backends, spec.baseline)
    return list(tasks([point for point, _ in everything], backends, invalid))


def _over_budget(budget: Budget | None, task: Task, job: Job) -> str | None:
    """The budget's reason to skip `task` (None: run it); a baseline must fit with the rest of its point.
    An NSA task on an invalid configuration costs nothing: it only writes its `unsupported` row."""
    if budget is None or (task.invalid and task.backend.family == "nsa"):
        return None
    is_baseline = task.backend.name == job.baseline
    backends = execute.registry()
    rest = [backends[name] for name in job.backends if name != task.backend.name
            and not (job.invalid and backends[name].family == "nsa")] if is_baseline else []
    return budget.skip_reason(task.point, task.backend, rest, baseline=is_baseline)


def _jobs(all_tasks: list[Task], done: frozenset, times: dict, baseline: str) -> tuple[list[Job], int]:
    """One job per point with pending tasks (run order kept), and how many tasks are already done. A done
    baseline gives the job its time (from the run folder), so the other tasks' speedups are against it."""
    pending: dict[Point, list[Task]] = {}
    known: dict[Point, float | None] = {}
    skipped = 0
    for task in all_tasks:
        key = resume_mod.task_key(base_row(task.point, task.backend).as_dict())
        if key in done:
            skipped += 1
            if task.backend.name == baseline:
                known[task.point] = times.get(key)
            continue
        pending.setdefault(task.point, []).append(task)
    return [Job(point, tuple(t.backend.name for t in group), baseline, group[0].invalid, known.get(point))
            for point, group in pending.items()], skipped


def run_sweep(
    spec: SweepSpec, out_dir: Path, gpu: GPUSpec, pool: Pool, resume: bool,
    progress: Callable[[list[Task]], Iterator[Task]] | None = None, budget: Budget | None = None,
    on_task_done: Callable[[Task, list[Row]], None] | None = None, shard: Shard = WHOLE,
) -> Outcome:
    """Run every task of `spec` in `pool`, appending rows to out_dir/results.csv.

    With `resume`, tasks complete in the folder are skipped and partial ones run again (`resume.recover`;
    `skipped` tasks of a time budget count as not done). A sequential pool (this process, or one worker
    process) is fed task by task: with a `budget`, a task whose estimate does not fit in the time left
    becomes a `skipped` row instead. Other pools (several workers, Ray) take every job at once and the rows
    come back here in the order tasks finish (no budget). `on_task_done` is called after each task's rows
    are written. `shard`: only its points run (`nsa_bench.shard`).
    """
    csv_file = out_dir / results.CSV_NAME
    all_tasks = sweep_tasks(spec, shard)
    if resume:
        keys = frozenset(resume_mod.task_key(base_row(t.point, t.backend).as_dict()) for t in all_tasks)
        state = resume_mod.recover(out_dir, spec.baseline, keys)
    else:
        resume_mod.start_fresh(out_dir)
        state = resume_mod.Recovered(frozenset(), {}, 0, 0)
    jobs, skipped = _jobs(all_tasks, state.done, state.times, spec.baseline)
    iterator = progress(all_tasks) if progress else iter(all_tasks)
    written = 0

    def commit(point: Point, name: str, rows: list[Row]) -> None:
        nonlocal written
        task = Task(point, execute.registry()[name])
        resume_mod.commit(out_dir, resume_mod.task_key(base_row(point, task.backend).as_dict()), rows)
        written += len(rows)
        if on_task_done is not None:
            on_task_done(task, rows)

    try:
        if pool.sequential:
            _feed(pool, jobs, state.done, iterator, budget, commit, gpu)
        else:
            for _ in range(skipped):
                next(iterator, None)
            pool.run(jobs, lambda point, name, rows: (commit(point, name, rows), next(iterator, None)))
            for _ in iterator:  # close the progress bar
                pass
    except KeyboardInterrupt as exc:
        return Outcome(csv_file, written, skipped, interrupted=True, rows_on_disk=state.rows + written,
                       signal=interrupts.signal_of(exc))
    return Outcome(csv_file, written, skipped, interrupted=False, rows_on_disk=state.rows + written)


def _feed(pool: Pool, jobs: list[Job], done: frozenset, iterator: Iterator[Task], budget: Budget | None,
          commit: execute.Commit, gpu: GPUSpec) -> None:
    """A sequential pool's loop: each task in run order, the budget asked before it runs."""
    pending = {job.point: job for job in jobs}
    for task in iterator:
        key = resume_mod.task_key(base_row(task.point, task.backend).as_dict())
        if key in done:
            continue
        job, name = pending[task.point], task.backend.name
        why = _over_budget(budget, task, job)
        if why:
            rows = [failure_row(task, STATUS_SKIPPED, why, gpu)]
        else:
            rows = []
            pool.run([job.only(name)], lambda _point, _name, got: rows.extend(got))
            if budget is not None:
                budget.observe(task.backend, rows)
        pending[task.point] = job.after(name, rows)
        commit(task.point, name, rows)
