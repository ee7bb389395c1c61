"""The dry run: what a sweep would run, in which order, how long each part would take, and what a
time budget would skip; nothing is compiled or run.

The plan walks the tasks in the runner's order through the same estimator and budget a real run uses,
on a simulated clock, so the dry run's skips are the ones a run would make if every estimate held.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from nsa_bench.budget import CALIBRATION, Budget, Calibration, Estimator, TaskEstimate
from nsa_bench.execute import Measure, base_row
from nsa_bench.gpus import GPUSpec
from nsa_bench.resume import TaskKey, task_key
from nsa_bench.runner import sweep_tasks
from nsa_bench.shard import WHOLE, Shard
from nsa_bench.spec import LAYER_MODES, SweepSpec


@dataclass(frozen=True)
class PlannedTask:
    estimate: TaskEstimate
    start_s: float  # simulated wall time when the task starts
    skipped: str | None = None  # the time budget's reason

    @property
    def seconds(self) -> float:
        return 0.0 if self.skipped else self.estimate.total_s


@dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    gpu: GPUSpec
    workers: int
    precompile: bool
    plots: bool
    budget_s: float | None
    tasks: tuple[PlannedTask, ...]
    invalid: int  # points that are not valid NSA configurations (unsupported for NSA backends)
    done: int  # tasks already complete in the run folder being resumed
    startup_s: float
    precompile_s: float
    configs: int  # distinct compiles
    cases: int
    jit_compile_s: float  # compiles at first call, serially, when precompile is off
    finish_s: float

    def part(self, name: str) -> float:
        return sum(getattr(t.estimate, name) for t in self.tasks if not t.skipped)

    @property
    def total_s(self) -> float:
        return (self.startup_s + self.precompile_s + self.jit_compile_s + sum(t.seconds for t in self.tasks)
                + self.finish_s)


def build(spec: SweepSpec, gpu: GPUSpec, workers: int, budget_s: float | None = None, plots: bool = True,
          precompile: bool = True, plans: Mapping | None = None, calibration: Calibration = CALIBRATION,
          shard: Shard = WHOLE, done: frozenset[TaskKey] = frozenset(), measure: Measure | None = None) -> Plan:
    """Plan `spec` (only `shard`'s points, without the tasks `done` in the run folder being resumed) for
    `gpu`; `plans` are precompile's case plans (compile counts, autotune lookups); `measure`: the GPU here,
    whose free memory decides `oom` as the sweep would."""
    estimator = Estimator(spec, gpu, plans, calibration, measure)
    pre_s, configs, cases = estimator.precompile_s(workers)
    jit_s = 0.0
    if not precompile:
        jit_s, pre_s = configs * calibration.compile_cpu_s * calibration.cpu_factor, 0.0
    finish = estimator.finish_s(plots)
    now = [calibration.startup_s + pre_s + jit_s]
    budget = Budget(budget_s, estimator, reserve_s=finish, clock=lambda: now[0], start=0.0) if budget_s else None
    pending = [t for t in sweep_tasks(spec, shard)
               if task_key(base_row(t.point, t.backend).as_dict()) not in done]
    invalid = {t.point for t in pending if t.invalid}
    planned: list[PlannedTask] = []
    for i, task in enumerate(pending):
        point, backend = task.point, task.backend
        estimate = estimator.estimate(point, backend, invalid=task.invalid)
        reason = None
        if budget is not None and estimate.runs:
            baseline = backend.name == spec.baseline
            rest = [t.backend for t in pending[i + 1:] if t.point == point and not (t.invalid and t.backend.family == "nsa")
                    ] if baseline else []
            reason = budget.skip_reason(point, backend, rest, baseline=baseline)
        elif estimate.runs:
            estimator.estimate(point, backend, commit=True, invalid=task.invalid)
        planned.append(PlannedTask(estimate, now[0], reason))
        if reason is None:
            now[0] += estimate.total_s
    return Plan(spec, gpu, workers, precompile, plots, budget_s, tuple(planned), len(invalid), len(done),
                calibration.startup_s, pre_s, configs, cases, jit_s, finish)


def _axes(spec: SweepSpec) -> list[str]:
    """Point fields that vary in this sweep besides mode and seqlen (shown per task)."""
    varying = {"batch": spec.batches, "kv_heads": spec.kv_heads, "group_size": spec.group_sizes,
               "head_dims": spec.head_dims, "block_cmp": spec.block_cmp, "stride_cmp": spec.stride_cmp,
               "block_slc": spec.block_slc, "n_slc": spec.n_slc, "window": spec.window, "dtype": spec.dtypes,
               "q_heads": spec.q_heads, "d_model": spec.d_models if set(spec.modes) & set(LAYER_MODES) else (),
               "doc_lens": spec.doc_lens}
    return [name for name, values in varying.items() if len(values) > 1]


def _label(task: PlannedTask, axes: list[str]) -> str:
    p = task.estimate.point
    extra = {"batch": f"B={p.batch}", "kv_heads": f"Hkv={p.kv_heads}", "group_size": f"G={p.group_size}",
             "head_dims": f"D={p.head_dim_qk}-{p.head_dim_v}", "block_cmp": f"l={p.block_cmp}",
             "stride_cmp": f"d={p.stride_cmp}", "block_slc": f"l'={p.block_slc}", "n_slc": f"n={p.n_slc}",
             "window": f"w={p.window}", "dtype": p.dtype, "q_heads": f"Hq={p.q_heads}", "d_model": f"d_model={p.d_model}",
             "doc_lens": f"docs={p.doc_lens}"}
    return " ".join([task.estimate.backend, p.mode, f"T={p.seqlen}", *(extra[a] for a in axes)])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _short(message: str, width: int = 90) -> str:
    return message if len(message) <= width else message[: width - 3] + "..."


def render(plan: Plan) -> str:
    """The plan as text: one line per task, then the overheads and the total wall time."""
    spec = plan.spec
    points = {t.estimate.point for t in plan.tasks}
    axes = _axes(spec)
    modes, lengths = len({p.mode for p in points}), len({p.seqlen for p in points})
    lines = [
        f"Dry run (nothing compiled or run): {_count(len(points), 'point')} ({_count(modes, 'mode')} x "
        f"{_count(lengths, 'length')}{' x ' + ', '.join(axes) if axes else ''}) x "
        f"{_count(len(spec.run_backends), 'backend')} = {_count(len(plan.tasks), 'task')}, "
        f"in run order; floors for {plan.gpu.name}; reps {spec.reps} + warm-up {spec.warmup}"
        f"{'; decode by CUDA-graph replay' if spec.cuda_graph and 'decode' in spec.modes else ''}",
    ]
    if plan.done:
        lines.append(f"  ({plan.done} tasks already complete in the run folder: not planned again)")
    if plan.invalid:
        lines.append(f"  ({plan.invalid} points are not valid NSA configurations: `unsupported` rows for the NSA "
                     "backends, which the dense backends still run)")
    width = max([len(_label(t, axes)) for t in plan.tasks] + [4])
    header = (f"  {'#':>3}  {'task':<{width}}  {'floor ms':>9}  {'eff':>5}  {'ms/call':>9}  {'calls':>5}  "
              f"{'timed s':>7}  {'tune s':>6}  {'check s':>7}  {'task s':>6}  {'at s':>6}  note")
    lines += [header]
    for i, task in enumerate(plan.tasks, 1):
        e = task.estimate
        label = _label(task, axes)
        if not e.runs:
            why = e.refused.status if e.refused else "unsupported"
            lines.append(f"  {i:>3}  {label:<{width}}  {'':>9}  {'':>5}  {'':>9}  {'':>5}  {'':>7}  {'':>6}  {'':>7}  "
                         f"{0:>6.1f}  {task.start_s:>6.0f}  not run: an `{why}` row"
                         + (f" ({_short(e.refused.message)})" if e.refused else ""))
            continue
        eff = f"{e.efficiency:.2f}" + ("*" if e.measured_efficiency else "")
        note = f"SKIP: {task.skipped}" if task.skipped else ""
        tune = e.tune_s + e.load_s
        lines.append(f"  {i:>3}  {label:<{width}}  {e.floor_ms:>9.4g}  {eff:>5}  {e.per_call_ms:>9.4g}  {e.calls:>5.0f}  "
                     f"{e.timed_s:>7.1f}  {tune:>6.1f}  {e.check_s + e.config_check_s:>7.1f}  {e.total_s:>6.1f}  {task.start_s:>6.0f}  {note}")
    ran = [t for t in plan.tasks if not t.skipped]
    skipped = [t for t in plan.tasks if t.skipped]
    configs = sum(t.estimate.tune_configs for t in ran)
    checks, pinned = plan.part("check_s") + plan.part("config_check_s"), plan.part("config_configs")
    pre = (f"precompile {plan.precompile_s:.0f} s ({plan.configs} distinct configs of {plan.cases} cases on "
           f"{plan.workers} workers)" if plan.precompile else
           f"no precompile: {plan.configs} configs compile at first call, serially, ~{plan.jit_compile_s:.0f} s")
    lines += [
        "",
        f"Overheads: start-up {plan.startup_s:.0f} s; {pre}; autotune {plan.part('tune_s'):.0f} s ({configs} configs "
        f"benchmarked) + kernel loads {plan.part('load_s'):.0f} s; checks {checks:.0f} s (config checks "
        f"{plan.part('config_check_s'):.0f} s, {pinned:.0f} configs pinned); inputs "
        f"{plan.part('inputs_s'):.1f} s; per-task housekeeping {plan.part('fixed_s'):.0f} s; finish "
        f"{plan.finish_s:.0f} s{' (plots included)' if plan.plots else ''}",
        f"Timed calls: {plan.part('timed_s'):.0f} s over {len(ran)} tasks"
        + (f"; {len(skipped)} tasks skipped by the time budget" if skipped else ""),
        f"Estimated total wall time: {plan.total_s:.0f} s"
        + (f" (time budget {plan.budget_s:.0f} s)" if plan.budget_s else ""),
        "eff: fraction of the roofline floor assumed (* measured in this run); docs/gpu-run.md says what the "
        "overhead estimates rest on.",
    ]
    return "\n".join(lines)


def done_in(out: Path, spec: SweepSpec, gpu: GPUSpec, shard: Shard = WHOLE, device: str | None = None) -> frozenset[TaskKey]:
    """The tasks of `spec` complete in the run folder `out`, as --resume would find them; read only (the
    folder is not repaired), refusing what --resume would refuse (resume.ResumeError)."""
    from nsa_bench import resume

    if not resume.has_run(out):
        return frozenset()
    resume.check_compatible(out, spec, gpu.key, device)
    keys = frozenset(task_key(base_row(t.point, t.backend).as_dict()) for t in sweep_tasks(spec, shard))
    return resume.inspect(out, spec.baseline, keys).done & keys


def dry_run(spec: SweepSpec, gpu: GPUSpec, workers: int, budget_s: float | None, plots: bool, precompile: bool,
            shard: Shard = WHOLE, done: frozenset[TaskKey] = frozenset(), measure: Measure | None = None) -> str:
    """Plan the sweep (recording its launches in one compile worker, nothing compiled) and render it."""
    from nsa_bench import precompile as precompile_mod

    result = precompile_mod.plan(spec, workers=1)
    plans = result.plans if result is not None else {}
    return render(build(spec, gpu, workers, budget_s, plots, precompile, plans, shard=shard, done=done,
                        measure=measure))

