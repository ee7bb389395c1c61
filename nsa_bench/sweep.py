"""One sweep from start to finish: where its points run, its run folder, precompile and the time budget,
the runner, and the plots.

The CLI only parses flags into a SweepSpec and calls `execute` (and prints the summary); --rerun calls it too.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import click
import torch

from nsa_bench import interrupts, precompile, results, resume as resume_mod, run_folder, workers
from nsa_bench.budget import Budget, Estimator
from nsa_bench.execute import InProcessPool, Pool, Task, cuda_measure
from nsa_bench.gpus import GPUSpec, gpu_spec
from nsa_bench.messages import one_line, show
from nsa_bench.plots import plot_run
from nsa_bench.runner import Outcome, run_sweep
from nsa_bench.shard import WHOLE, Shard
from nsa_bench.spec import SweepSpec
from nsa_bench.tuning_log import TuningLog

class SweepError(ValueError):
    """A sweep that cannot start (the message names the flag; flag None: no single flag is to blame)."""

    def __init__(self, flag: str | None, message: str) -> None:
        super().__init__(message)
        self.flag = flag


def target_gpu(flag: str | None, measuring: bool) -> GPUSpec:
    """The spec for predictions and roofline floors: --gpu, else the GPU present, else H100."""
    if flag:
        try:
            return gpu_spec(flag)
        except ValueError as exc:
            raise SweepError("gpu", str(exc)) from None
    if measuring:
        try:
            return gpu_spec(torch.cuda.get_device_name(0))
        except ValueError:
            pass
    return gpu_spec("h100")


def progress_bar(tasks: list[Task]) -> Iterator[Task]:
    """A progress bar on stderr with the current point and an ETA."""
    def show(task: Task | None) -> str:
        return "" if task is None else f"{task.backend.name} {task.point.label()}"

    with click.progressbar(tasks, label="sweep", item_show_func=show, file=sys.stderr, show_eta=True,
                           show_pos=True, width=24) as bar:
        yield from bar


def cuda_present() -> bool:
    return torch.cuda.is_available()


def _stderr(line: str) -> None:
    click.echo(line, err=True)


def execute(spec: SweepSpec, out: Path, resume: bool, plots: bool = True,
            echo: Callable[[str], None] = click.echo, progress: bool = True,
            warn: Callable[[str], None] = _stderr, precompile_workers: int | None = None,
            budget_s: float | None = None, shard: Shard = WHOLE, devices: str | None = None,
            point_timeout: float | None = None, ray: str | None = None, in_process: bool = False) -> Outcome:
    """Run `spec` into `out`; returns what was written. Without a CUDA GPU the rows are predictions.

    `echo` takes the progress lines, `warn` what goes wrong (an interruption, failed plots: stderr).
    On a GPU: precompile on `precompile_workers` processes first (None: skip), then run the tasks within
    `budget_s` seconds counted from here (None: no budget), recording the autotuners' choices in
    tuning.json as tasks finish. `shard`: run only that shard's points (env.json records it). `devices`
    (--devices), `ray` (--ray: an address, or "" for a local cluster): where the points run (see
    `choose_pool`); `point_timeout`: seconds before a worker's task counts as hung (None: from the estimate).
    `in_process`: a measured sweep runs its points in this process (no fault isolation).
    """
    started = time.monotonic()
    measuring = cuda_present()
    gpu = target_gpu(spec.gpu, measuring)
    pool = choose_pool(spec, gpu, measuring, devices, ray, point_timeout, budget_s, in_process)
    try:
        run_folder.open_run(out, spec, gpu, measuring, resume, shard, pool.describe())
    except run_folder.RunFolderError as exc:
        raise SweepError(exc.flag, str(exc)) from None
    if not measuring:
        echo(f"No CUDA GPU found: writing the cost model's predictions for {gpu.name} (--gpu); measured columns stay empty.")
        if budget_s:
            echo("(--time-budget applies to measured runs only: predictions take no time.)")
    try:
        plans = None
        if measuring and precompile_workers:
            compiled = precompile.run(spec, precompile_workers, echo, progress=progress)
            plans = compiled.plans if compiled is not None else None
        budget = None
        if measuring and budget_s:
            estimator = Estimator(spec, gpu, plans)
            budget = Budget(budget_s, estimator, reserve_s=estimator.finish_s(plots), start=started)
            echo(f"Time budget {budget_s:.0f} s: {budget.left():.0f} s left for the points after start-up and precompile.")
        tuned = measuring and pool.sequential
        log = TuningLog(out) if tuned and set(spec.run_backends) & set(precompile.PRECOMPILED_BACKENDS) else None

        def task_done(task: Task, rows: list) -> None:
            if log is not None:
                log.update(f"{task.backend.name} {task.point.label()}", pool.tuning_choices())

        with pool.session():
            outcome = run_sweep(spec, out, gpu, pool, resume=resume, progress=progress_bar if progress else None,
                                budget=budget if pool.sequential else None, on_task_done=task_done, shard=shard)
    except resume_mod.ResumeError as exc:
        raise SweepError(None, str(exc)) from None
    except workers.PoolError as exc:
        flag = "ray" if ray is not None else "devices" if devices is not None else None  # None: the default worker
        hint = "" if flag else ", or --in-process to run the points in this process"
        raise SweepError(flag, f"{exc} (rows written so far are kept: continue with --resume{hint})") from None
    except OSError as exc:
        raise SweepError("out", f"cannot write into {show(str(out), 120)}: {exc.strerror or exc} "
                                "(rows written so far are kept: fix it and continue with --resume)") from None
    if pool.replaced:
        warn(f"{pool.replaced} worker(s) replaced after a fault; the faulting points are `error` rows.")
    if outcome.interrupted:
        name = signal.Signals(outcome.signal).name if outcome.signal else "interrupted"
        warn(f"Interrupted ({name}): {outcome.rows_on_disk} rows kept in {outcome.csv} "
             f"(continue with --out {out} --resume).")
        return outcome
    write_breakeven(out, warn)
    if plots and outcome.csv.exists():
        try:
            written = plot_run(out, gpu.key)
            echo(f"Plots: {', '.join(p.name for p in written if p.suffix == '.png') or 'none (no plottable rows)'} "
                 f"in {out / results.PLOTS_DIR}")
        except KeyboardInterrupt as exc:  # the rows are complete: say so, and how to finish the plots
            signum = interrupts.signal_of(exc)
            warn(f"Interrupted ({signal.Signals(signum).name if signum else 'interrupted'}) while plotting: all "
                 f"{outcome.rows_on_disk} rows are in {outcome.csv}; redraw the plots with `nsa-bench plot {out}`.")
            return replace(outcome, interrupted=True, signal=signum)
        except Exception as exc:  # plotting must never cost the measurements
            warn(one_line(f"Plots failed ({type(exc).__name__}: {exc}); the CSV is intact: retry with "
                          f"`nsa-bench plot {out}`."))
    return outcome


def write_breakeven(out: Path, warn: Callable[[str], None]) -> None:
    """breakeven.csv beside results.csv (nsa_bench.breakeven): derived from the CSV, so a failure costs a
    warning, never the run."""
    from nsa_bench import breakeven

    try:
        frame = results.read_rows(out / results.CSV_NAME)
        if not frame.empty:
            breakeven.write_csv(breakeven.break_evens(frame), out)
    except (OSError, results.ResultsError) as exc:
        warn(one_line(f"{breakeven.CSV_NAME} not written ({exc})"))


def choose_pool(spec: SweepSpec, gpu: GPUSpec, measuring: bool, devices: str | None, ray: str | None,
                point_timeout: float | None, budget_s: float | None, in_process: bool = False) -> Pool:
    """Where points run: Ray tasks (--ray), one worker per --devices device, or (a measured sweep's default)
    one worker on the first GPU, fed task by task (`LocalPool.sequential`: the time budget and tuning.json
    as in-process, and a kernel fault costs one row); else this process (predictions, --in-process), where
    a measured sweep measures on the first GPU. The isolated default leaves the parent without a CUDA
    context of its own (the worker measures)."""
    if in_process and (ray is not None or devices is not None):
        other = "--ray runs them as Ray tasks" if ray is not None else "--devices in worker processes"
        raise SweepError("in-process", f"runs the points in this process, {other}: give one or the other")
    timeout = workers.task_timeout_s(spec, gpu, point_timeout)
    if measuring and not in_process and ray is None and devices is None:
        return workers.LocalPool(workers.WorkerSetup(spec, gpu, "cuda", ""), ("cuda:0",), timeout)
    if ray is not None:
        if devices is not None:
            raise SweepError("ray", "and --devices exclude each other (Ray places points on the cluster's GPUs)")
        if budget_s:
            raise SweepError("time-budget", "is kept on one device only, not a Ray cluster: drop it or --ray")
        from nsa_bench import ray_runner

        try:
            return ray_runner.RayPool(workers.WorkerSetup(spec, gpu, "cuda" if measuring else _cpu_kind(), ""),
                                      ray, measuring, point_timeout=point_timeout)
        except ray_runner.RayUnavailable as exc:
            raise SweepError("ray", str(exc)) from None
    if devices is not None:
        try:
            labels = workers.parse_devices(devices, torch.cuda.device_count() if measuring else 0)
        except workers.DevicesError as exc:
            raise SweepError("devices", str(exc)) from None
        if labels[0].startswith("cpu") and measuring:
            raise SweepError("devices", f"{show(devices)}: CPU workers are for machines without a CUDA GPU")
        kind = "cuda" if measuring else _cpu_kind()
        if budget_s and len(labels) > 1:
            raise SweepError("time-budget", f"is kept on one device only, not {len(labels)}: drop it, or give "
                                            "--devices one device")
        return workers.LocalPool(workers.WorkerSetup(spec, gpu, kind, ""), labels, timeout)
    return InProcessPool(spec, gpu, cuda_measure if measuring else None)


def _cpu_kind() -> str | None:
    """CPU workers predict, unless the test hook NSA_BENCH_CPU_MEASURE=1 has them measure on the CPU."""
    import os

    return "cpu" if os.environ.get(workers.CPU_MEASURE_ENV) == "1" else None
