"""Executing one point's tasks: check, time or predict, and the rows each task writes.

This is the one place a task becomes rows, whichever way a sweep runs its points: in the sweep's own
process, in local worker processes (nsa_bench.workers) or as Ray tasks (nsa_bench.ray_runner). A `Job`
is one point's pending backends, the baseline first; running it gives each backend's rows with its
speedup against the baseline's time at that point (`Job.after` carries that time from the baseline's
rows to the next task, wherever the next task runs). The runner (nsa_bench.runner) decides what runs
and commits the rows; a `Pool` is where they run.

Without a CUDA GPU nothing is measured: every row carries the cost model's prediction for the chosen
GPU spec (status `predicted`). A failing task becomes a row with a status and a message, never an
exception that ends the sweep.
"""
from __future__ import annotations

import contextlib
import gc
import socket
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Iterator, Protocol

import torch

from nsa_bench import check, cost, memory, reading, results
from nsa_bench.backends import Backend, Unsupported, cuda_required, registry
from nsa_bench.gpus import GPUSpec
from nsa_bench.inputs import make_inputs
from nsa_bench.nvtx import annotate
from nsa_bench.point_cost import cost_of
from nsa_bench.schema import (
    STAGE_TOTAL, STATUS_CHECK_FAILED, STATUS_ERROR, STATUS_OK, STATUS_OOM, STATUS_PREDICTED, STATUS_UNSUPPORTED, Row,
)
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.telemetry import Reading, Telemetry, combine
from nsa_bench.timing import GraphCaptureError, Timing, time_cuda, time_wallclock

if TYPE_CHECKING:  # imported where a GPU measures: it brings in the kernels and the compile workers
    from nsa_bench.configcheck import ConfigChecker


@dataclass(frozen=True)
class Task:
    """One point on one backend: the unit of progress and of --resume. `invalid`: why the point is not a
    valid NSA configuration (NSA backends report it; dense backends, which use none of those parameters,
    run it)."""

    point: Point
    backend: Backend
    invalid: str = ""


@dataclass(frozen=True)
class Job:
    """One point's pending tasks, in run order (the baseline first while it is pending). `baseline_ms`: the
    baseline's time at this point once known (from its rows, or from the run folder on --resume), which
    the other backends' speedups are against. Plain values only: a job crosses process pipes and Ray."""

    point: Point
    backends: tuple[str, ...]
    baseline: str
    invalid: str = ""
    baseline_ms: float | None = None

    def only(self, name: str) -> Job:
        """The one task `name` of this job, with what it needs to know of the baseline."""
        return replace(self, backends=(name,))

    def after(self, name: str, rows: list[Row]) -> Job:
        """The rest of the job once `name`'s rows are in; the baseline's rows give the point's baseline time,
        as the CSV writes it (6 significant digits): a run resumed after the baseline's task reads it back
        from there, and its speedups must be those of a run that was never interrupted."""
        known = _as_written(baseline_time(rows)) if name == self.baseline else self.baseline_ms
        return replace(self, backends=tuple(b for b in self.backends if b != name), baseline_ms=known)


def _as_written(ms: float | None) -> float | None:
    return None if ms is None else float(results.cell(ms))


def baseline_time(rows: list[Row]) -> float | None:
    """The time other backends' speedups are against: the total row's measured median, or its prediction."""
    total = next((r for r in rows if r.stage == STAGE_TOTAL), None)
    return None if total is None else reading.row_time(total.status, total.ms_median, total.predicted_ms)


# ------------------------------------------------------------------ rows
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


def failure_row(task: Task, status: str, message: str, gpu: GPUSpec) -> Row:
    return base_row(task.point, task.backend, status=status, message=message.replace("\n", " ")[:500], gpu=gpu.name)


def error_rows(job: Job, name: str, gpu: GPUSpec, device: str, message: str) -> list[Row]:
    """The `error` row of a task whose worker faulted (it wrote nothing itself)."""
    task = Task(job.point, registry()[name], job.invalid)
    return [replace(failure_row(task, STATUS_ERROR, message, gpu), host=socket.gethostname(), device=device)]


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
    # checks every autotune candidate before a point is timed (nsa_bench/configcheck.py; None: not checked)
    config_checker: ConfigChecker | None = None

    def read(self) -> Reading:
        return self.telemetry.read() if self.telemetry is not None else Reading()


def cuda_measure(nvml_index: int = 0) -> Measure:
    """Measuring on the first visible GPU; `nvml_index`: that GPU's index for NVML, which ignores
    CUDA_VISIBLE_DEVICES (a worker pinned to GPU 3 reads NVML device 3)."""
    from nsa_bench.configcheck import ConfigChecker

    return Measure(device="cuda", timer=time_cuda, telemetry=Telemetry(nvml_index),
                   device_name=torch.cuda.get_device_name(0), config_checker=ConfigChecker("cuda"))


def measure_of(kind: str | None, nvml_index: int = 0) -> Measure | None:
    """The Measure a worker makes for itself: "cuda", "cpu" (the tests' wall-clock path) or None (predict)."""
    if kind == "cuda":
        return cuda_measure(nvml_index)
    if kind == "cpu":
        return Measure(device="cpu", timer=time_wallclock)
    return None


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
    configs = None
    if measure.config_checker is not None and backend.launch_probes:
        configs = measure.config_checker.check(point, backend.launch_probes)
        if not configs.ok:
            return [base_row(point, backend, status=STATUS_CHECK_FAILED, max_rel_err=err, message=configs.message(),
                             gpu=measure.device_name or gpu.name)]
    inputs = make_inputs(point, measure.device, spec.seed)
    workload = annotate(backend.build(point, inputs), f"nsa-bench:{backend.name}:{point.mode}")
    use_graph = spec.cuda_graph and point.mode == "decode"
    note = "; ".join(n for n in (workload.note, configs.note() if configs else "") if n)
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


# ------------------------------------------------------------------ one task's rows
def rows_for(task: Task, spec: SweepSpec, gpu: GPUSpec, measure: Measure | None,
             baseline_ms: float | None) -> list[Row]:
    """All rows of one task, each naming the host; every failure becomes a status row instead of stopping
    the sweep."""
    host = socket.gethostname()
    return [replace(row, host=host) for row in _status_rows(task, spec, gpu, measure, baseline_ms)]


def _status_rows(task: Task, spec: SweepSpec, gpu: GPUSpec, measure: Measure | None,
                 baseline_ms: float | None) -> list[Row]:
    refused = refusal(task, gpu, measure)
    if refused is not None:
        return [replace(failure_row(task, refused.status, refused.message, gpu), mem_bytes=refused.mem_bytes)]
    resident = memory.bytes_resident(task.point, task.backend.family, padded_v=bool(task.backend.pads(task.point)))
    if measure is None:
        rows = predicted_rows(task, gpu, baseline_ms)
    else:
        rows = _measured_or_failed(task, spec, gpu, measure, baseline_ms)
    return [replace(row, mem_bytes=resident) for row in rows]


@dataclass(frozen=True)
class Refusal:
    """Why a task is a status row instead of a run: `unsupported` or `oom` (with the bytes it would need)."""

    status: str
    message: str
    mem_bytes: int | None = None


def refusal(task: Task, gpu: GPUSpec, measure: Measure | None, planning: bool = False) -> Refusal | None:
    """What the sweep writes instead of running `task` (None: it runs). The sweep and its dry run both ask
    here, so the plan's `oom` and `unsupported` tasks are the run's. `planning`: a dry run plans for a GPU
    on a machine that may have none, so a backend that lacks only a GPU here counts as available."""
    backend, point = task.backend, task.point
    if task.invalid and backend.family == "nsa":
        return Refusal(STATUS_UNSUPPORTED, f"invalid configuration: {task.invalid}")
    if point.mode not in backend.modes:
        return Refusal(STATUS_UNSUPPORTED, f"{backend.name} has no {point.mode} mode")
    why_not = backend.availability() if measure is not None or planning else None
    if planning and why_not == cuda_required():
        why_not = None
    why_not = why_not or backend.out_of_scope(point)
    if why_not:
        return Refusal(STATUS_UNSUPPORTED, why_not)
    resident = memory.bytes_resident(point, backend.family, padded_v=bool(backend.pads(point)))
    too_big = _oom_reason(resident, gpu, measure)
    return Refusal(STATUS_OOM, too_big, resident) if too_big else None


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


def _against_baseline(rows: list[Row], is_baseline: bool, baseline: str, ref_ms: float | None) -> list[Row]:
    """A task's rows as the CSV holds them: the baseline's total carries speedup 1, others name the baseline
    their speedup is against."""
    if is_baseline:
        return [replace(r, speedup=1.0, baseline=baseline) if r.stage == STAGE_TOTAL and
                r.status in (STATUS_OK, STATUS_PREDICTED) else r for r in rows]
    if ref_ms:
        return [replace(r, baseline=baseline) if r.speedup is not None else r for r in rows]
    return rows


def job_rows(job: Job, spec: SweepSpec, gpu: GPUSpec, measure: Measure | None,
             on_begin: Callable[[str], None] | None = None, cpu_hook: bool = False) -> Iterator[tuple[str, list[Row]]]:
    """(backend, rows) of each task of `job`, in its order: the baseline's rows first, the others' speedups
    against its time. `cpu_hook`: every backend counts as available (the CPU measure path of the tests)."""
    for name in job.backends:
        backend = registry()[name]
        if cpu_hook:
            backend = replace(backend, availability=lambda: None)
        if on_begin is not None:
            on_begin(name)
        is_baseline = name == job.baseline
        ref_ms = None if is_baseline else job.baseline_ms
        rows = rows_for(Task(job.point, backend, job.invalid), spec, gpu, measure, ref_ms)
        rows = _against_baseline(rows, is_baseline, job.baseline, ref_ms)
        yield name, rows
        job = job.after(name, rows)


# ------------------------------------------------------------------ where jobs run
Commit = Callable[[Point, str, list[Row]], None]


class Pool(Protocol):
    """Where a sweep's jobs run: in this process, in local worker processes, or as Ray tasks. `run` hands
    each task's rows to `commit` as they arrive. A `sequential` pool runs what it is given in order, one
    task at a time, so the runner can feed it task by task (the time budget decides before each task)."""

    replaced: int  # workers replaced after a fault

    @property
    def sequential(self) -> bool: ...

    def session(self) -> ContextManager[object]: ...

    def run(self, jobs: Iterable[Job], commit: Commit) -> None: ...

    def describe(self) -> dict[str, object] | None: ...

    def tuning_choices(self) -> list[dict] | None: ...


class InProcessPool:
    """Jobs run in the sweep's own process (predictions; --in-process: no fault isolation, for a profiler
    attached to the sweep). `measure` None: predictions; a callable: the Measure made when the first job
    runs (a CUDA measure opens the device and NVML, which choosing a pool must not do)."""

    replaced = 0
    sequential = True

    def __init__(self, spec: SweepSpec, gpu: GPUSpec, measure: Measure | Callable[[], Measure] | None) -> None:
        self.spec, self.gpu, self._measure = spec, gpu, measure

    @property
    def measure(self) -> Measure | None:
        if callable(self._measure):
            self._measure = self._measure()
        return self._measure

    def session(self) -> ContextManager[object]:
        return contextlib.nullcontext(self)

    def run(self, jobs: Iterable[Job], commit: Commit) -> None:
        for job in jobs:
            for name, rows in job_rows(job, self.spec, self.gpu, self.measure):
                commit(job.point, name, rows)

    def describe(self) -> None:
        """Nothing to record: env.json names worker pools only."""
        return None

    def tuning_choices(self) -> None:
        """None: the autotuners' choices are this process's own (tuning_log reads them)."""
        return None
