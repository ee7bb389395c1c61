"""What a sweep will cost in wall time, and a time budget that skips what would not fit.

One estimator serves the dry run's plan and the budget of a real run, so both say the same thing.
A task's timed part is its cost-model floor divided by an efficiency (the fraction of the floor a
backend reaches): a cautious default until the run has measured that backend in that mode, then the
lowest efficiency measured so far. Overheads (autotuning, loading compiled kernels, the correctness
check, input generation, the per-task housekeeping, precompile, start-up and finish) come from the
constants in `Calibration`, each with what it rests on; docs/gpu-run.md lists them.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from nsa_bench import cost
from nsa_bench.backends import Backend
from nsa_bench.check import check_point
from nsa_bench.execute import Measure, Refusal, Task
from nsa_bench.execute import refusal as execute_refusal
from nsa_bench.gpus import GPUSpec
from nsa_bench.inputs import input_samples
from nsa_bench.point_cost import cost_of
from nsa_bench.schema import STAGE_TOTAL, STATUS_OK, Row
from nsa_bench.spec import Point, SweepSpec

# Fraction of the roofline floor reached, assumed until measured: cautious on purpose (an estimate
# that is too low overruns the budget; one too high only skips work a later run can add with --resume).
# Dense: FA2 reaches ~35% of H100 peak forward, ~25% backward at Dk = 128, less in useful FLOPs when V
# is padded to Dk = 192. NSA: our Triton kernels have never run on a GPU.
DEFAULT_EFFICIENCY: Mapping[tuple[str, str], float] = {
    ("dense", "fwd"): 0.25, ("dense", "bwd"): 0.15, ("dense", "fwdbwd"): 0.17, ("dense", "decode"): 0.3,
    ("nsa", "fwd"): 0.1, ("nsa", "bwd"): 0.1, ("nsa", "fwdbwd"): 0.1, ("nsa", "decode"): 0.05,
    # a layer adds cuBLAS projections (near peak) to the attention: no lower than the attention's
    ("dense", "layer-fwd"): 0.25, ("dense", "layer-bwd"): 0.17, ("nsa", "layer-fwd"): 0.1, ("nsa", "layer-bwd"): 0.1,
}


@dataclass(frozen=True)
class Calibration:
    """Overhead constants (seconds unless named otherwise) and what each rests on."""

    # measured here (a 2-core x86 VM shared with other work, Triton 3.6; tools/calibrate notes in
    # docs/gpu-run.md): CPU seconds per sm_90 compile, ptxas and cuobjdump included, mean over the 91
    # distinct configs of the paper suite's fa2,nsa-triton (1.58 s; the longest 3.9 s)
    compile_cpu_s: float = 1.6
    compile_max_s: float = 3.9
    # the device's cores are assumed no faster per core than this machine's; 1.25 leaves a margin
    cpu_factor: float = 1.25
    # measured here: a compile worker's start (python, torch, triton, nsa_bench imports), 4.2 s; the
    # workers start in parallel
    worker_start_s: float = 5.0
    # measured here: recording and binding one case's launches on meta tensors, 0.16 s mean, 1.8 s for
    # a worker's first case (Triton parses the kernels' sources)
    plan_case_s: float = 0.3
    plan_first_case_s: float = 2.0
    # measured here: `nsa-bench sweep` start-up (imports 3.7 s, env.json) without a GPU, and the point
    # worker's start (a measured sweep runs its points in one, workers.py; 4.2 s as a compile worker's);
    # plus an assumed 3 s for the CUDA context, NVML and cuBLAS on their first use
    startup_s: float = 12.0
    # Triton's do_bench per autotune config: 25 ms warm-up + 100 ms of reps, each rep after zeroing a
    # 256 MB buffer (~0.08 ms at H200 bandwidth); a host loop of ~0.04 ms per call bounds tiny kernels
    bench_warmup_ms: float = 25.0
    bench_rep_ms: float = 100.0
    bench_flush_ms: float = 0.08
    bench_host_ms: float = 0.04
    # assumed: loading one compiled kernel from Triton's disk cache into the process (read + cuModuleLoad)
    load_s: float = 0.02
    # assumed: the float64 reference at <= 1024 tokens on the GPU plus the backend's check call
    # (NSA adds the selection check); a GPU does this in well under a second
    check_s: Mapping[str, float] = field(default_factory=lambda: {"nsa": 1.0, "dense": 0.5})
    # the config check (nsa_bench/configcheck.py), once per layout of a backend: recording its probes at the
    # point's shape and the check lengths in compile workers (measured here: ~5 s for a worker pool's start
    # and ~20 probe cases); per check shape, inputs and the float64 reference at <= 8k tokens (assumed); per
    # autotune candidate pinned, one call of each kernel and the comparison (assumed; compiled by precompile)
    config_record_s: float = 6.0
    config_shape_s: float = 1.0
    config_run_s: float = 0.05
    # `nsa-bench selftest` on a GPU (assumed): one pinned run (its kernels at <= 1.7k tokens and the float64
    # reference); the deterministic backward twice; a pinned run under compute-sanitizer, per tool
    selftest_run_s: float = 0.1
    selftest_fixed_s: float = 3.0
    sanitizer_run_s: Mapping[str, float] = field(default_factory=lambda: {"memcheck": 1.0, "racecheck": 3.0})
    # assumed: per task, gc.collect + empty_cache, build, NVML reads, CSV append with fsync
    task_s: float = 0.3
    # per timed call beyond the kernel: the L2 flush (a 120 MB write) and event records, ~0.1 ms
    call_overhead_ms: float = 0.1
    # device-side generation: ~10 bytes moved per float32 sample drawn and cast, at an assumed 1 TB/s
    input_bytes_per_s: float = 1e11
    # assumed: flex-nsa compiles through torch.compile at each new shape
    first_call_s: Mapping[str, float] = field(default_factory=lambda: {"flex-nsa": 30.0})
    # measured here: summary table and tuning.json ~1 s; plots (3 figures, PNG + SVG) 3.6 s
    finish_s: float = 1.5
    plots_s: float = 5.0
    # without a precompile plan (--no-precompile): autotuning per task of a Triton backend
    unplanned_tune_s: float = 15.0


CALIBRATION = Calibration()


def parse_duration(text: str) -> float:
    """Seconds from "300", "300s", "5m", "4m30s", "1h" (a positive duration)."""
    raw = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", raw, re.ASCII)
    if not raw or parts is None or not any(parts.groups()):
        raise ValueError("expected a duration such as 300s, 5m or 4m30s")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError("must be positive")
    return total


def refusal(backend: Backend, point: Point, gpu: GPUSpec, invalid: str = "",
            measure: Measure | None = None) -> Refusal | None:
    """What a GPU run would write instead of measuring this task (None: it measures it), decided as the sweep
    decides (execute.refusal); a missing GPU does not count: the plan is for one."""
    return execute_refusal(Task(point, backend, invalid), gpu, measure, planning=True)


def compile_seconds(configs: int, cases: int, workers: int, cal: Calibration = CALIBRATION) -> float:
    """Compiling `configs` distinct configs recorded from `cases` on `workers` compile processes: the pool's
    start, planning the cases, the compiles shared out, and the last worker's last compile."""
    workers = max(1, workers)
    plan_s = cal.plan_first_case_s + (math.ceil(cases / workers) - 1) * cal.plan_case_s
    tail = cal.compile_max_s * cal.cpu_factor if configs else 0.0
    return cal.worker_start_s + plan_s + configs / workers * cal.compile_cpu_s * cal.cpu_factor + tail


def bench_seconds(kernel_ms: float, cal: Calibration = CALIBRATION) -> float:
    """Triton's do_bench of one autotune config whose kernel takes `kernel_ms`."""
    per_call = max(kernel_ms + cal.bench_flush_ms, cal.bench_host_ms)
    warmup = max(1, int(cal.bench_warmup_ms / per_call))
    reps = max(1, int(cal.bench_rep_ms / per_call))
    return ((1 + 5 + reps) * per_call + warmup * max(kernel_ms, cal.bench_host_ms)) / 1e3


@dataclass(frozen=True)
class TaskEstimate:
    """Seconds one task is expected to take, by part."""

    point: Point
    backend: str
    runs: bool  # False: a status row (unsupported, oom) and no time
    refused: Refusal | None = None  # why it does not run
    floor_ms: float = 0.0  # cost-model floor of one call
    per_call_ms: float = 0.0  # floor / efficiency
    efficiency: float = 0.0
    measured_efficiency: bool = False
    calls: float = 0.0  # timed calls as call-equivalents (warm-up + reps, the stages' calls included)
    timed_s: float = 0.0
    tune_s: float = 0.0
    tune_configs: int = 0
    load_s: float = 0.0
    check_s: float = 0.0
    inputs_s: float = 0.0
    fixed_s: float = 0.0
    config_check_s: float = 0.0  # the config check's share: a layout's first task pays it (configcheck.py)
    config_configs: int = 0  # autotune candidates it pins

    @property
    def total_s(self) -> float:
        return (self.timed_s + self.tune_s + self.load_s + self.check_s + self.config_check_s + self.inputs_s
                + self.fixed_s)


class Estimator:
    """Task estimates for one sweep; learns efficiencies from measured rows and remembers which tuning
    keys and compiled kernels earlier tasks already paid for (the state of one run)."""

    def __init__(self, spec: SweepSpec, gpu: GPUSpec, plans: Mapping | None = None,
                 calibration: Calibration = CALIBRATION, measure: Measure | None = None) -> None:
        """`measure`: the GPU here, whose free memory decides `oom` as in the sweep (None: the spec's memory)."""
        self.spec, self.gpu, self.cal, self.measure = spec, gpu, calibration, measure
        self.plans = dict(plans) if plans is not None else None
        self._efficiency: dict[tuple[str, str], float] = {}
        self._tuned: set[tuple[str, str]] = set()
        self._loaded: set[str] = set()
        self._first_calls: set[tuple[str, Point]] = set()
        self._config_checked: set[tuple] = set()

    # ---------------------------------------------------------------- efficiency
    def efficiency(self, backend: Backend, mode: str) -> tuple[float, bool]:
        """(efficiency, measured?) for a backend in a mode."""
        seen = self._efficiency.get((backend.name, mode))
        if seen is not None:
            return seen, True
        return DEFAULT_EFFICIENCY[(backend.family, mode)], False

    def observe(self, backend: Backend, rows: list[Row]) -> None:
        """Learn from a finished task: the floor / measured time of its total row (lowest one kept)."""
        total = next((r for r in rows if r.stage == STAGE_TOTAL and r.status == STATUS_OK), None)
        if total is None or not total.ms_median or not total.predicted_ms:
            return
        value = min(1.0, total.predicted_ms / total.ms_median)
        key = (backend.name, total.mode)
        self._efficiency[key] = min(value, self._efficiency.get(key, value))

    # ---------------------------------------------------------------- parts
    def floor_ms(self, point: Point, family: str) -> float:
        return cost.floor_seconds(cost_of(point, family), self.gpu) * 1e3

    def _calls(self, backend: Backend, point: Point) -> float:
        per_timing = self.spec.warmup + self.spec.reps
        stages = 1.1 if point.mode in backend.staged_modes else 0.0  # stage times add up to ~the total's
        extra = 0.4 if point.mode == "bwd" else 0.0  # the forward the backward replays, run once per build
        graph = 2.0 if point.mode == "decode" and self.spec.cuda_graph else 0.0  # capture warm-up
        return per_timing * (1.0 + stages) + extra * (1 + stages) + graph + 1.0  # + the first call

    def _plan(self, point: Point, backend: str, role: str):
        if self.plans is None:
            return None
        from nsa_bench.precompile import attention_point, case_for

        return self.plans.get(case_for(attention_point(point), backend, role))

    def _tuning(self, task_point: Point, backend: Backend, per_call_ms: float, commit: bool) -> tuple[float, int, float]:
        """(tune seconds, configs benchmarked, load seconds) that are new at this task."""
        from nsa_bench.precompile import precompiled

        if not precompiled(backend, task_point):
            return 0.0, 0, 0.0
        check = check_point(task_point, self.spec.check_seqlen)
        roles = (("timed", task_point, per_call_ms),
                 ("check", check, self.floor_ms(check, backend.family) / self.efficiency(backend, check.mode)[0]))
        if self.plans is None:
            return self.cal.unplanned_tune_s, 0, 0.0
        tune_s, configs, loads = 0.0, 0, set()
        tuned = set(self._tuned)
        for role, point, call_ms in roles:
            plan = self._plan(point, backend.name, role)
            if plan is None:
                continue
            kernel_ms = call_ms / max(1, plan.launches)
            for tuning in plan.tunings:
                if (tuning.kernel, tuning.key) in tuned:
                    continue
                tuned.add((tuning.kernel, tuning.key))
                tune_s += tuning.configs * bench_seconds(kernel_ms, self.cal)
                configs += tuning.configs
            loads |= {v.digest for v in plan.variants if v.digest and v.digest not in self._loaded}
        if commit:
            self._tuned = tuned
            self._loaded |= loads
        return tune_s, configs, len(loads) * self.cal.load_s

    def _config_check(self, point: Point, backend: Backend, commit: bool) -> tuple[float, int]:
        """(seconds, candidate configs) of the config check this task adds: the first task of a layout pays
        for recording, check shapes and every candidate its autotune lookups hold (precompile's plan)."""
        from nsa_bench import configcheck

        probes = configcheck.probes_of(backend.launch_probes, point.mode)
        if not probes:
            return 0.0, 0
        lengths = tuple(sorted({configcheck.check_length(point, base) for base in configcheck.CHECK_LENGTHS}))
        layout = (backend.launch_probes, probes, lengths, point.batch, point.kv_heads, point.group_size,
                  point.head_dim_qk, point.head_dim_v, point.cfg, point.dtype, point.doc_lens)
        if layout in self._config_checked:
            return 0.0, 0
        if commit:
            self._config_checked.add(layout)
        plan = self._plan(point, backend.name, "timed")
        configs = sum(t.configs for t in plan.tunings) if plan is not None else 0
        shapes = len(probes) + len(lengths) - 1  # each probe at the shortest length, a few at the longer ones
        seconds = self.cal.config_record_s + shapes * self.cal.config_shape_s + configs * self.cal.config_run_s
        return seconds, configs

    # ---------------------------------------------------------------- estimates
    def estimate(self, point: Point, backend: Backend, commit: bool = False, invalid: str = "") -> TaskEstimate:
        """What the task will cost now; `commit` records that it runs (its tuning and loads are paid).
        `invalid`: why the point is not a valid NSA configuration (its NSA tasks do not run)."""
        refused = refusal(backend, point, self.gpu, invalid, self.measure)
        if refused is not None:
            return TaskEstimate(point, backend.name, runs=False, refused=refused, fixed_s=0.01)
        floor = self.floor_ms(point, backend.family)
        eff, measured = self.efficiency(backend, point.mode)
        per_call = floor / eff + self.cal.call_overhead_ms
        calls = self._calls(backend, point)
        tune_s, configs, load_s = self._tuning(point, backend, per_call, commit)
        first = self.cal.first_call_s.get(backend.name, 0.0)
        if first and (backend.name, point) not in self._first_calls:
            tune_s += first
            if commit:
                self._first_calls.add((backend.name, point))
        check = check_point(point, self.spec.check_seqlen)
        samples = input_samples(point) + input_samples(check)
        config_s, config_configs = self._config_check(point, backend, commit)
        return TaskEstimate(
            point, backend.name, runs=True, floor_ms=floor, per_call_ms=per_call, efficiency=eff,
            measured_efficiency=measured, calls=calls, timed_s=calls * per_call / 1e3, tune_s=tune_s,
            tune_configs=configs, load_s=load_s, check_s=self.cal.check_s[backend.family],
            inputs_s=samples * 10 / self.cal.input_bytes_per_s, fixed_s=self.cal.task_s,
            config_check_s=config_s, config_configs=config_configs,
        )

    # ---------------------------------------------------------------- run-level overheads
    def precompile_s(self, workers: int) -> tuple[float, int, int]:
        """(seconds, distinct configs, cases) of precompiling this sweep on `workers` processes."""
        if not self.plans:
            return 0.0, 0, 0
        from nsa_bench.compilecheck.results import distinct_variants

        jobs, _ = distinct_variants(list(self.plans.values()))
        cases = len(self.plans)
        return compile_seconds(len(jobs), cases, workers, self.cal), len(jobs), cases

    def finish_s(self, plots: bool) -> float:
        return self.cal.finish_s + (self.cal.plots_s if plots else 0.0)


class Budget:
    """A wall-clock budget for one sweep: skip a task when its estimate would not fit in what is left.

    The clock starts when the budget is made (the sweep's start, before precompile); `reserve_s` is
    kept for the finish (summary, plots). A baseline task only starts if the rest of its point fits
    too, so a cut-short run holds complete pairs; when a point's baseline is skipped, so is the point.
    """

    def __init__(self, seconds: float, estimator: Estimator, reserve_s: float,
                 clock: Callable[[], float] = time.monotonic, margin: float = 1.1, start: float | None = None) -> None:
        self.seconds, self.estimator, self.reserve_s, self.clock, self.margin = seconds, estimator, reserve_s, clock, margin
        self.start = clock() if start is None else start
        self._skipped_points: set[Point] = set()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left for tasks (the finish reserve kept back)."""
        return self.seconds - self.elapsed() - self.reserve_s

    def skip_reason(self, point: Point, backend: Backend, rest_of_point: list[Backend] = (),
                    baseline: bool = False) -> str | None:
        """None to run the task now (its tuning and loads are then counted as paid); else why it is
        skipped, the row's message. `rest_of_point`: the backends still to run at this point after a
        baseline task, which must fit with it."""
        if point in self._skipped_points:
            return "time budget: this point's baseline was skipped"
        mine = self.estimator.estimate(point, backend)
        needed = mine.total_s + sum(self.estimator.estimate(point, other).total_s for other in rest_of_point)
        left = self.left()
        if needed * self.margin > left:
            if baseline:
                self._skipped_points.add(point)
            pair = f" with the rest of its point ({', '.join(b.name for b in rest_of_point)})" if rest_of_point else ""
            return (f"time budget: needs ~{needed * self.margin:.0f} s{pair} (estimate + {self.margin - 1:.0%}), "
                    f"{max(left, 0):.0f} s of {self.seconds:.0f} s left")
        self.estimator.estimate(point, backend, commit=True)
        return None

    def observe(self, backend: Backend, rows: list[Row]) -> None:
        self.estimator.observe(backend, rows)
