"""The sweep runner: points x backends -> checked, timed rows, appended to the CSV as they finish.

Without a CUDA GPU nothing is measured: every row carries the cost model's prediction for the chosen
GPU spec (status `predicted`). A failing point becomes a row with a status and a message and the
sweep goes on; Ctrl-C (or SIGTERM) stops after the rows already written, which form a valid CSV: each
task's rows are committed together (`resume.commit`), so --resume knows exactly what is complete.
"""
from __future__ import annotations

import gc
import socket
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from nsa_bench import check, cost, interrupts, memory, results, resume as resume_mod
from nsa_bench.backends import Backend, Unsupported, registry
from nsa_bench.budget import Budget
from nsa_bench.gpus import GPUSpec
from nsa_bench.inputs import make_inputs
from nsa_bench.nvtx import annotate
from nsa_bench.point_cost import cost_of
from nsa_bench.shard import WHOLE, Shard
from nsa_bench.schema import (
    STAGE_TOTAL, STATUS_CHECK_FAILED, STATUS_ERROR, STATUS_OK, STATUS_OOM, STATUS_PREDICTED, STATUS_SKIPPED,
    STATUS_UNSUPPORTED, Row,
)
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.telemetry import Reading, Telemetry, combine
from nsa_bench.timing import GraphCaptureError, Timing, time_cuda


@dataclass(frozen=True)
class Task:
    """One point on one backend: the unit of progress and of --resume. `invalid`: why the point is not a
    valid NSA configuration (NSA backends report it; dense backends, which use none of those parameters,
    run it)."""

    point: Point
    backend: Backend
    invalid: str = ""


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
    backends = registry()
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




def base_row(point: Point, backend: Backend, **values: object) -> Row:
    return Row(backend=backend.name, stage=values.pop("stage", STAGE_TOTAL), impl=values.pop("impl", ""),
               **point.as_dict(), **values)


def figures(work: cost.Cost | cost.StageCost, gpu: GPUSpec, ms: float | None) -> dict[str, float | None]:
    """flops, bytes, intensity, predicted floor and — when measured — achieved TFLOP/s and GB/s."""
    if isinstance(work, cost.Cost):
        floor_s = cost.floor_seconds(work, gpu)
    else:
        floor_s = cost.stage_floor_seconds(work, gpu)
    out: dict[str, float | None] = {
        "flops": work.flops, "bytes": work.bytes, "intensity": work.intensity if work.bytes else None,
        "predicted_ms": floor_s * 1e3,
    }
    if ms:
        out["tflops"] = work.flops / (ms * 1e-3) / 1e12
        out["gbps"] = work.bytes / (ms * 1e-3) / 1e9
    return out


def predicted_rows(task: Task, gpu: GPUSpec, baseline_ms: float | None) -> list[Row]:
    """Cost-model rows for a point: the total, and each stage for NSA."""
    point, backend = task.point, task.backend
    work = cost_of(point, backend.family)
    message = f"predicted for {gpu.name} by the cost model (no CUDA GPU)"
    if backend.family == "dense":
        message += f"; an ideal dense kernel at the true Dk={point.head_dim_qk}, Dv={point.head_dim_v}"
    total = figures(work, gpu, None)
    speedup = baseline_ms / total["predicted_ms"] if baseline_ms and total["predicted_ms"] else None
    rows = [base_row(point, backend, impl="cost-model", status=STATUS_PREDICTED, message=message,
                     speedup=speedup, gpu=gpu.name, **total)]
    if backend.family == "nsa" or point.is_layer:
        for stage in work.stages:
            rows.append(base_row(point, backend, stage=stage.stage, impl="cost-model", status=STATUS_PREDICTED,
                                 message=message, gpu=gpu.name, **figures(stage, gpu, None)))
    return rows


# ------------------------------------------------------------------ measuring
@dataclass(frozen=True)
class Measure:
    """How to measure: the device inputs live on, the timer, and the telemetry source (None: no NVML)."""

    device: str
    timer: Callable[..., Timing]
    telemetry: Telemetry | None = None
    device_name: str = ""  # what rows record in `gpu` (the card's own name, as in env.json)

    def read(self) -> Reading:
        return self.telemetry.read() if self.telemetry is not None else Reading()


def _check(task: Task, spec: SweepSpec, device: str) -> tuple[float, str | None]:
    """Max relative error of the backend vs the float64 reference at a reduced length, and what is wrong
    with the backend's own selection there (None: valid, or the backend does not select)."""
    point = check.check_point(task.point, spec.check_seqlen)
    inputs = make_inputs(point, device, spec.seed + 1)
    if task.backend.family == "nsa":
        inputs = check.shared_selection(inputs)
    workload = task.backend.build(point, inputs)
    got = workload.result()
    want = check.expected(task.backend.family, inputs)
    problem = None
    if workload.selection is not None and point.mode != "decode":
        problem = check.selection_violation(workload.selection(), inputs)
    return check.max_rel_error(got, want), problem


def measured_rows(task: Task, spec: SweepSpec, gpu: GPUSpec, measure: Measure,
                  baseline_ms: float | None) -> list[Row]:
    """Check, then time one point on one backend (and its stages)."""
    point, backend = task.point, task.backend

    def timed(fn: Callable[[], object], use_graph: bool) -> Timing:
        return measure.timer(fn, reps=spec.reps, warmup=spec.warmup, before_each=workload.before_each,
                             cuda_graph=use_graph)

    err, problem = _check(task, spec, measure.device)
    tolerance = check.TOLERANCE[point.dtype]
    if not err <= tolerance or problem:
        why = [f"relative error {err:.3g} > {tolerance:g} vs the float64 reference"] if not err <= tolerance else []
        why += [f"selection invalid: {problem}"] if problem else []
        return [base_row(point, backend, status=STATUS_CHECK_FAILED, max_rel_err=err, gpu=measure.device_name or gpu.name,
                         message="; ".join(why) + "; not timed")]
    inputs = make_inputs(point, measure.device, spec.seed)
    workload = annotate(backend.build(point, inputs), f"nsa-bench:{backend.name}:{point.mode}")
    use_graph = spec.cuda_graph and point.mode == "decode"
    note = workload.note
    before = measure.read()
    try:
        timing = timed(workload.run, use_graph)
    except GraphCaptureError as exc:  # time eager launches instead, and say so
        use_graph = False
        note = "; ".join(n for n in (note, f"CUDA-graph capture failed ({exc}): timed eager launches") if n)
        timing = timed(workload.run, False)
    reading = combine(before, measure.read())
    work = cost_of(point, backend.family)
    speedup = baseline_ms / timing.ms_median if baseline_ms else None
    common = _reading_columns(reading) | {"gpu": measure.device_name or gpu.name, "cuda_graph": use_graph}
    rows = [base_row(point, backend, impl=workload.impl, status=STATUS_OK, message=note, speedup=speedup,
                     max_rel_err=err, **_timing_columns(timing), **figures(work, gpu, timing.ms_median), **common)]
    for name, stage_fn in workload.stages.items():
        stage_timing = timed(stage_fn, False)
        parts = workload.stage_costs.get(name, (name,))
        stage_cost = work.merged(name, parts).stage(name)
        rows.append(base_row(point, backend, stage=name, impl=workload.impl, status=STATUS_OK,
                             **_timing_columns(stage_timing), **figures(stage_cost, gpu, stage_timing.ms_median),
                             **common))
    return rows


def _timing_columns(timing: Timing) -> dict[str, object]:
    return {"ms_median": timing.ms_median, "ms_p10": timing.ms_p10, "ms_p90": timing.ms_p90,
            "samples": timing.samples}


def _reading_columns(reading: Reading) -> dict[str, object]:
    return {"sm_clock_mhz": reading.sm_clock_mhz, "mem_clock_mhz": reading.mem_clock_mhz, "temp_c": reading.temp_c,
            "power_w": reading.power_w, "throttled": reading.throttled,
            "throttle_reasons": ",".join(reading.throttle_reasons)}


def failure_row(task: Task, status: str, message: str, gpu: GPUSpec) -> Row:
    return base_row(task.point, task.backend, status=status, message=message.replace("\n", " ")[:500], gpu=gpu.name)


def rows_for(task: Task, spec: SweepSpec, gpu: GPUSpec, measure: Measure | None,
             baseline_ms: float | None) -> list[Row]:
    """All rows of one task, each naming the host; every failure becomes a status row instead of stopping
    the sweep."""
    host = socket.gethostname()
    return [replace(row, host=host) for row in _rows_for(task, spec, gpu, measure, baseline_ms)]


def _rows_for(task: Task, spec: SweepSpec, gpu: GPUSpec, measure: Measure | None,
              baseline_ms: float | None) -> list[Row]:
    backend, point = task.backend, task.point
    if task.invalid and backend.family == "nsa":
        return [failure_row(task, STATUS_UNSUPPORTED, f"invalid configuration: {task.invalid}", gpu)]
    if point.mode not in backend.modes:
        return [failure_row(task, STATUS_UNSUPPORTED, f"{backend.name} has no {point.mode} mode", gpu)]
    why_not = backend.availability() if measure is not None else None
    why_not = why_not or backend.out_of_scope(point)
    if why_not:
        return [failure_row(task, STATUS_UNSUPPORTED, why_not, gpu)]
    resident = memory.bytes_resident(point, backend.family, padded_v=bool(backend.pads(point)))
    too_big = _oom_reason(resident, gpu, measure)
    if too_big:
        return [replace(failure_row(task, STATUS_OOM, too_big, gpu), mem_bytes=resident)]
    if measure is None:
        rows = predicted_rows(task, gpu, baseline_ms)
    else:
        rows = _measured_or_failed(task, spec, gpu, measure, baseline_ms)
    return [replace(row, mem_bytes=resident) for row in rows]


def _oom_reason(resident: int, gpu: GPUSpec, measure: Measure | None) -> str | None:
    """Why the point would not fit on the device (predicted rows: the --gpu spec's memory)."""
    if measure is None:
        return memory.oom_reason(resident, memory.spec_free_bytes(gpu), f"{gpu.name} (its {memory.gib(gpu.memory_bytes)})")
    if measure.device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return memory.oom_reason(resident, free, measure.device_name or gpu.name)
    return None


def _measured_or_failed(task: Task, spec: SweepSpec, gpu: GPUSpec, measure: Measure,
                        baseline_ms: float | None) -> list[Row]:
    try:
        return measured_rows(task, spec, gpu, measure, baseline_ms)
    except torch.cuda.OutOfMemoryError as exc:
        return [failure_row(task, STATUS_OOM, f"out of GPU memory: {str(exc).splitlines()[0]}", gpu)]
    except (Unsupported, NotImplementedError) as exc:
        return [failure_row(task, STATUS_UNSUPPORTED, str(exc), gpu)]
    except ValueError as exc:  # kernels refuse shapes/configs they do not implement with ValueError
        return [failure_row(task, STATUS_UNSUPPORTED, f"ValueError: {exc}", gpu)]
    except Exception as exc:  # a kernel error must not end the sweep
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return [failure_row(task, STATUS_ERROR, f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})", gpu)]
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def with_baseline(rows: list[Row], task: Task, baseline: str, ref_ms: float | None) -> list[Row]:
    """A task's rows as the CSV holds them: the baseline's total carries speedup 1, others name the baseline
    their speedup is against."""
    if task.backend.name == baseline:
        return [replace(r, speedup=1.0, baseline=baseline) if r.stage == STAGE_TOTAL and
                r.status in (STATUS_OK, STATUS_PREDICTED) else r for r in rows]
    if ref_ms:
        return [replace(r, baseline=baseline) if r.speedup is not None else r for r in rows]
    return rows


def baseline_time(rows: list[Row]) -> float | None:
    total = next((r for r in rows if r.stage == STAGE_TOTAL), None)
    if total is None or total.status not in (STATUS_OK, STATUS_PREDICTED):
        return None
    return total.ms_median if total.status == STATUS_OK else total.predicted_ms


def _over_budget(budget: Budget | None, task: Task, later: list[Task], done: frozenset, baseline: str) -> str | None:
    """The budget's reason to skip `task` (None: run it); a baseline must fit with the rest of its point.
    An NSA task on an invalid configuration costs nothing: it only writes its `unsupported` row."""
    if budget is None or (task.invalid and task.backend.family == "nsa"):
        return None
    is_baseline = task.backend.name == baseline
    rest = [t.backend for t in later if t.point == task.point and not (t.invalid and t.backend.family == "nsa")
            and resume_mod.task_key(base_row(t.point, t.backend).as_dict()) not in done] if is_baseline else []
    return budget.skip_reason(task.point, task.backend, rest, baseline=is_baseline)


def cuda_measure(nvml_index: int = 0) -> Measure:
    """Measuring on the first visible GPU; `nvml_index`: that GPU's index for NVML, which ignores
    CUDA_VISIBLE_DEVICES (a worker pinned to GPU 3 reads NVML device 3)."""
    return Measure(device="cuda", timer=time_cuda, telemetry=Telemetry(nvml_index),
                   device_name=torch.cuda.get_device_name(0))


def job_rows(job, spec: SweepSpec, gpu: GPUSpec, measure: Measure | None,
             on_begin: Callable[[str], None] | None = None, cpu_hook: bool = False) -> Iterator[tuple[str, list[Row]]]:
    """(backend, rows) of each task of one point's job (`workers.Job`), as `run_sweep` would write them: the
    baseline first, the others' speedups against it. What worker processes and Ray tasks run.
    `cpu_hook`: every backend counts as available (the CPU measure path of the tests)."""
    ref_ms = job.baseline_ms
    for name in job.backends:
        backend = registry()[name]
        if cpu_hook:
            backend = replace(backend, availability=lambda: None)
        task = Task(job.point, backend, job.invalid)
        if on_begin is not None:
            on_begin(name)
        is_baseline = name == spec.baseline
        rows = rows_for(task, spec, gpu, measure, None if is_baseline else ref_ms)
        if is_baseline:
            ref_ms = baseline_time(rows)
        yield name, with_baseline(rows, task, spec.baseline, None if is_baseline else ref_ms)


def _jobs(all_tasks: list[Task], done: frozenset, times: Mapping, baseline: str) -> tuple[list, int]:
    """One job per point with pending tasks (run order kept), and how many tasks are already done."""
    from nsa_bench.workers import Job

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
    return [Job(point, tuple(t.backend.name for t in group), group[0].invalid, known.get(point))
            for point, group in pending.items()], skipped


def run_sweep(
    spec: SweepSpec, out_dir: Path, gpu: GPUSpec, measure: Measure | None, resume: bool,
    progress: Callable[[list[Task]], Iterator[Task]] | None = None, budget: Budget | None = None,
    on_task_done: Callable[[Task, list[Row]], None] | None = None, shard: Shard = WHOLE,
    pool: object | None = None, isolate: object | None = None,
) -> Outcome:
    """Run every task of `spec`, appending rows to out_dir/results.csv (measure=None: predictions).

    With `resume`, tasks complete in the folder are skipped and partial ones run again (`resume.recover`;
    `skipped` tasks of a time budget count as not done). With a `budget` (measured runs only), a task whose
    estimate does not fit in the time left becomes a `skipped` row; `on_task_done` is called after each
    task's rows are written. `shard`: only its points run (`nsa_bench.shard`). `pool` (a `workers.LocalPool`
    or `ray_runner.RayPool`): points run there, the rows come back here to be written (no budget).
    `isolate` (a one-device `workers.LocalPool` in its session): this loop as without it, budget included,
    but each task runs in that pool's worker process, so a kernel fault costs one `error` row.
    """
    csv_file = out_dir / results.CSV_NAME
    if resume:
        state = resume_mod.recover(out_dir, spec.baseline)
    else:
        resume_mod.start_fresh(out_dir)
        state = resume_mod.Recovered(frozenset(), {}, 0, 0)
    everything = spec.all_points()
    if shard != WHOLE:
        mine = set(shard.select(run_order([point for point, _ in everything])))
        everything = [(point, why) for point, why in everything if point in mine]
    invalid = {point: why for point, why in everything if why}
    backends = order_backends(spec.run_backends, spec.baseline)
    written = skipped = 0
    all_tasks = list(tasks([point for point, _ in everything], backends, invalid))
    baseline_ms: dict[Point, float | None] = {}
    iterator = progress(all_tasks) if progress else iter(all_tasks)
    budget = budget if (measure is not None or isolate is not None) and pool is None else None
    if pool is not None:
        return _run_pool(pool, spec, out_dir, all_tasks, state, iterator, on_task_done)
    try:
        for index, task in enumerate(iterator):
            key = resume_mod.task_key(base_row(task.point, task.backend).as_dict())
            if key in state.done:
                skipped += 1
                if task.backend.name == spec.baseline:
                    baseline_ms[task.point] = state.times.get(key)
                continue
            ref_ms = None if task.backend.name == spec.baseline else baseline_ms.get(task.point)
            why = _over_budget(budget, task, all_tasks[index + 1:], state.done, spec.baseline)
            if why:
                rows = [failure_row(task, STATUS_SKIPPED, why, gpu)]
            else:
                rows = (isolate.task_rows(task.point, task.backend.name, task.invalid, ref_ms) if isolate is not None
                        else rows_for(task, spec, gpu, measure, ref_ms))
                if budget is not None:
                    budget.observe(task.backend, rows)
            if task.backend.name == spec.baseline:
                baseline_ms[task.point] = baseline_time(rows)
            rows = with_baseline(rows, task, spec.baseline, ref_ms)
            resume_mod.commit(out_dir, key, rows)
            written += len(rows)
            if on_task_done is not None:
                on_task_done(task, rows)
    except KeyboardInterrupt as exc:
        return Outcome(csv_file, written, skipped, interrupted=True, rows_on_disk=state.rows + written,
                       signal=interrupts.signal_of(exc))
    return Outcome(csv_file, written, skipped, interrupted=False, rows_on_disk=state.rows + written)


def _run_pool(pool, spec: SweepSpec, out_dir: Path, all_tasks: list[Task], state, iterator: Iterator[Task],
              on_task_done: Callable[[Task, list[Row]], None] | None) -> Outcome:
    """run_sweep's loop when the points run in worker processes or Ray tasks: rows are committed here as
    each task's arrive (in the order tasks finish; --resume knows tasks by key, not by place)."""
    csv_file = out_dir / results.CSV_NAME
    jobs, skipped = _jobs(all_tasks, state.done, state.times, spec.baseline)
    for _ in range(skipped):
        next(iterator, None)
    backends = registry()
    written = 0

    def commit(point: Point, name: str, rows: list[Row]) -> None:
        nonlocal written
        task = Task(point, backends[name])
        resume_mod.commit(out_dir, resume_mod.task_key(base_row(point, task.backend).as_dict()), rows)
        written += len(rows)
        next(iterator, None)
        if on_task_done is not None:
            on_task_done(task, rows)

    try:
        pool.run(jobs, commit)
    except KeyboardInterrupt as exc:
        return Outcome(csv_file, written, skipped, interrupted=True, rows_on_disk=state.rows + written,
                       signal=interrupts.signal_of(exc))
    for _ in iterator:  # close the progress bar
        pass
    return Outcome(csv_file, written, skipped, interrupted=False, rows_on_disk=state.rows + written)
