"""`nsa-bench selftest`: before trusting a GPU's numbers, run what the suite will launch there against the
float64 reference, on that GPU.

1. **Pinned configs.** Every pinned run of the suite's launch plan (nsa_bench.launchplan: each kernel x code
   path x autotune candidate the suite may launch, one config pinned per kernel, at a small probe shape), in
   bf16 and fp16, every output compared with the float64 reference (NSA_SPEC tolerances).
2. **Deterministic backward.** NSA's default backward (no atomics) run twice on the suite's layout: every
   gradient equal bit for bit.
3. **compute-sanitizer** (where it is on PATH, on a GPU): memcheck and racecheck over the pinned runs again
   (every config of the suite's fwd, bwd and decode launches, at the probes' small shapes, so nothing new
   is compiled under the sanitizer), each tool in a process of its own.

On a machine without a GPU it runs under Triton's CPU interpreter instead, saying so: fp32 and fp16, the quick
subset of the pinned runs (the cheapest shape of each probe: every kernel's code paths), no sanitizer.
Prints a table, writes a JSON file, exits 1 when any check failed.

Run it as `nsa-bench selftest` (which starts `python -m nsa_bench.selftest run` with the interpreter
switched on where there is no GPU: Triton reads that switch when the kernels are first imported).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import click

GPU_DTYPES = ("bfloat16", "float16")
CPU_DTYPES = ("float32", "float16")
SANITIZER_TOOLS = ("memcheck", "racecheck")
SANITIZER_TIMEOUT_S = 600
SANITIZER_ERROR_EXIT = 66
PASS, FAIL, SKIPPED = "pass", "FAIL", "skipped"
DEVICE_WORKERS = 14  # compile workers a dry run here assumes for the lent GPU machine (16 cores - 2)


@dataclass(frozen=True)
class Check:
    """One check: its kind (pinned, deterministic, memcheck, racecheck), what it ran, in which dtype, how it
    went and why."""

    kind: str
    what: str
    dtype: str
    status: str
    detail: str = ""
    seconds: float = 0.0


# ------------------------------------------------------------------ what to run
def suite_runs(suite: str, workers: int = 2) -> tuple[list, str]:
    """(the pinned runs that execute the suite's GPU launches, where they came from): the committed plan when
    it holds the suite (a checkout's tests/launch_plan.json), else planned now (recorded in compile workers)."""
    from nsa_bench.launchplan import planfile
    from nsa_bench.launchplan.planner import Sweep

    if planfile.PLAN_FILE.exists():
        committed = planfile.read()
        if suite in committed.sweeps:
            return planfile.sweep_runs(committed, suite), f"{planfile.PLAN_FILE.name} (committed)"
    plan = planfile.build([Sweep(suite, suite)], workers=workers)
    return list(plan.runs), "planned now"


def gpu_runs(runs: list) -> list:
    """The runs a GPU makes: one per (tile, warps, stages) config (the interpreter's runs share warps)."""
    from nsa_bench.launchplan.planner import split_warps

    return split_warps(runs)


def pinned_variants(runs: list):
    """keep(case, variant) for precompile_cases: the variants the runs pin, and every fixed launch."""
    from nsa_bench.launchplan.planner import planned_variant
    from nsa_bench.launchplan.probes import ProbeShape

    pins: dict = {}
    for run in runs:
        pins.setdefault(run.shape, set()).update(run.pins)

    def keep(case, variant) -> bool:
        planned = planned_variant(variant)
        pinned = (*planned.pin, planned.key.num_warps, planned.key.num_stages)
        return not planned.tuned or pinned in pins.get(ProbeShape.of_case(case), ())

    return keep


def _suite_point(suite: str, modes: Iterable[str]):
    """The suite's first valid point in the first of `modes` it sweeps (None when it sweeps none of them)."""
    from nsa_bench.suites import build_spec

    points = build_spec(suite, {}).points()[0]
    for mode in modes:
        found = [p for p in points if p.mode == mode]
        if found:
            return found[0]
    return None


# ------------------------------------------------------------------ the checks
def pinned_checks(runs: list, dtypes: Iterable[str], device: str) -> Iterator[Check]:
    """Each run with its configs pinned, in each dtype (inputs and the reference shared by a shape's runs)."""
    from nsa_bench.launchplan.pinning import run_pinned
    from nsa_bench.launchplan.probes import make_inputs

    for dtype in dtypes:
        shape, inputs = None, None
        for run in runs:
            start = time.perf_counter()
            try:
                if run.shape != shape:
                    shape, inputs = run.shape, make_inputs(run.shape, dtype, device)
                result = run_pinned(run.shape, run.configs(), dtype, device, inputs=inputs)
                status = PASS if result.ok else FAIL
                detail = "; ".join(result.failures()) or f"max relative error {result.max_error:.2e}"
            except Exception as exc:  # a kernel that faults is a failed check, and the rest still run
                shape, status, detail = None, FAIL, f"{type(exc).__name__}: {exc}"
            yield Check("pinned", run.label, dtype, status, detail[:600], time.perf_counter() - start)


def deterministic_check(suite: str, dtype: str, device: str, interpreted: bool) -> Check:
    """NSA's backward twice on the suite's layout (its first bwd point: G, KV heads, head dims, block config, at
    1024 tokens on a GPU; under the interpreter 100 tokens, G <= 4, test head dims): every gradient equal bit
    for bit."""
    import torch

    import nsa_kernels
    from nsa_bench.launchplan.probes import TEST_DK, TEST_DV, ProbeShape, make_inputs

    point = _suite_point(suite, ("bwd", "fwdbwd", "layer-bwd", "fwd", "decode"))
    if point is None:
        return Check("deterministic", "backward twice", dtype, SKIPPED, "the suite has no point")
    if interpreted:  # the interpreter's minutes: a small group and test head dims, the suite's blocks
        shape = ProbeShape("slc_bwd", 100, min(point.group_size, 4), 1, 1, TEST_DK, TEST_DV, point.cfg)
    else:
        shape = ProbeShape("slc_bwd", min(point.seqlen, 1024), point.group_size, point.kv_heads, 1, point.head_dim_qk,
                           point.head_dim_v, point.cfg)
    start = time.perf_counter()
    inp = make_inputs(shape, dtype, device, seed=7)
    grads = []
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_(True) for t in (inp.q, inp.k, inp.v, inp.gates)]
        nsa_kernels.nsa_attention(*leaves, point.cfg).backward(inp.do)
        grads.append([leaf.grad for leaf in leaves])
    if device == "cuda":
        torch.cuda.synchronize()
    differ = [name for name, a, b in zip(("dq", "dk", "dv", "dgates"), *grads) if not torch.equal(a, b)]
    what = f"nsa_attention backward twice, {shape.label.replace('slc_bwd ', '')}"
    detail = f"differ: {', '.join(differ)}" if differ else "dq, dk, dv, dgates equal bit for bit"
    return Check("deterministic", what, dtype, FAIL if differ else PASS, detail, time.perf_counter() - start)


def sanitizer_checks(suite: str, tools: Iterable[str], device: str, runs: int) -> Iterator[Check]:
    """compute-sanitizer TOOL over the pinned runs (every config the suite may launch, at the probes' small
    shapes: the binaries the pinned pass compiled), in bf16, in a process of its own per tool."""
    tools = list(tools)
    exe = shutil.which("compute-sanitizer")
    why = "no GPU here" if device != "cuda" else ("compute-sanitizer is not on PATH" if exe is None else "")
    what = f"the {runs} pinned runs in {GPU_DTYPES[0]}"
    for tool in tools:
        if why:
            yield Check(tool, what, GPU_DTYPES[0], SKIPPED, why)
            continue
        start = time.perf_counter()
        command = [exe, "--tool", tool, "--error-exitcode", str(SANITIZER_ERROR_EXIT), sys.executable, "-m",
                   "nsa_bench.selftest", "pinned", "--suite", suite, "--dtype", GPU_DTYPES[0]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=SANITIZER_TIMEOUT_S)
            text = (done.stdout + done.stderr).strip().splitlines()
            summary = next((line for line in reversed(text) if "ERROR SUMMARY" in line), "")
            status = PASS if done.returncode == 0 else FAIL
            detail = summary or (text[-1] if text else "")
            if done.returncode not in (0, SANITIZER_ERROR_EXIT):
                detail = f"exit {done.returncode}: {detail}"
        except subprocess.TimeoutExpired:
            status, detail = FAIL, f"no result within {SANITIZER_TIMEOUT_S} s"
        yield Check(tool, what, GPU_DTYPES[0], status, detail[:600], time.perf_counter() - start)


# ------------------------------------------------------------------ estimate
def estimate(chosen: list, tools: list[str], workers: int, gpu_workers: int) -> tuple[float, str]:
    """(seconds, the breakdown) of the self-test on a GPU with `gpu_workers` compile workers: start-up,
    compiling the probes' launches (their configs counted from a recording, compile costs as the sweep's
    precompile estimate), the pinned runs in two dtypes, the backward twice, the sanitizer passes."""
    from nsa_bench.budget import CALIBRATION as cal
    from nsa_bench.budget import compile_seconds
    from nsa_bench.compilecheck.pool import precompile_cases
    from nsa_bench.compilecheck.results import distinct_variants

    runs = len(chosen)
    cases = _probe_cases(chosen)
    plans = precompile_cases(cases, workers, compile=False).plans
    jobs, _ = distinct_variants(list(plans.values()), pinned_variants(chosen))
    compile_s = compile_seconds(len(jobs), len(cases), gpu_workers)
    runs_s = runs * len(GPU_DTYPES) * cal.selftest_run_s
    sanitize_s = sum(cal.worker_start_s + runs * cal.sanitizer_run_s[tool] for tool in tools)
    total = cal.startup_s + compile_s + runs_s + cal.selftest_fixed_s + sanitize_s
    parts = (f"start-up {cal.startup_s:.0f} s; compile {compile_s:.0f} s ({len(jobs)} configs of {len(cases)} probe "
             f"cases on {gpu_workers} workers); {runs} pinned runs x {len(GPU_DTYPES)} dtypes {runs_s:.0f} s; backward "
             f"twice {cal.selftest_fixed_s:.0f} s; " + (f"{', '.join(tools)} {sanitize_s:.0f} s" if tools else
                                                       "no sanitizer"))
    return total, parts


# ------------------------------------------------------------------ report
def table(checks: list[Check], header: str) -> str:
    """Per kind and dtype: passed, failed, skipped, seconds; then every failure on a line of its own."""
    groups: dict[tuple[str, str], list[Check]] = {}
    for check in checks:
        groups.setdefault((check.kind, check.dtype), []).append(check)
    lines = [header, f"{'check':<14}  {'dtype':<9}  {'passed':>6}  {'failed':>6}  {'skipped':>7}  {'seconds':>7}"]
    for (kind, dtype), group in groups.items():
        count = {s: sum(c.status == s for c in group) for s in (PASS, FAIL, SKIPPED)}
        lines.append(f"{kind:<14}  {dtype:<9}  {count[PASS]:>6}  {count[FAIL]:>6}  {count[SKIPPED]:>7}  "
                     f"{sum(c.seconds for c in group):>7.1f}")
    for check in checks:
        if check.status != PASS:
            lines.append(f"  {check.status} {check.kind} {check.dtype}: {check.what}: {check.detail}")
    return "\n".join(lines)


def _write_json(path: Path, payload: dict) -> None:
    """Replaced whole (a temporary file renamed), so an interrupted run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------ entry points
@click.group()
def main() -> None:
    """The self-test's process (`nsa-bench selftest` starts it) and one sanitized workload run."""


@main.command()
@click.option("--suite", default="paper", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("selftest.json"),
              show_default=True)
@click.option("--sanitize", default=",".join(SANITIZER_TOOLS), show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--dry-run", is_flag=True)
def run(suite: str, json_path: Path, sanitize: str, workers: int, dry_run: bool) -> None:
    """Run the self-test (module doc) and exit 1 when a check failed."""
    import torch

    tools = [t for t in sanitize.split(",") if t and t != "none"]
    if dry_run:
        runs, source = suite_runs(suite, workers)
        runs = gpu_runs(runs)
        gpu_workers = workers if torch.cuda.is_available() else DEVICE_WORKERS
        seconds, parts = estimate(runs, tools, workers, gpu_workers)
        click.echo(f"Dry run of the self-test of the {suite} suite on a GPU ({len(runs)} pinned runs from {source}): "
                   f"{parts}\nEstimated self-test wall time: {seconds:.0f} s (compute-sanitizer where on PATH)")
        return

    from nsa_kernels._common import interpreting

    interpreted = interpreting()
    device = "cuda" if torch.cuda.is_available() and not interpreted else "cpu"
    if device == "cpu" and not interpreted:
        raise click.UsageError("no GPU here and Triton's interpreter is off: run it as `nsa-bench selftest`")
    start = time.perf_counter()
    runs, source = suite_runs(suite, workers)
    if interpreted:
        from nsa_bench.launchplan.planfile import quick_runs

        chosen, dtypes, on_gpu = quick_runs(runs), CPU_DTYPES, len(gpu_runs(runs))
        where = (f"the CPU (Triton's interpreter, no GPU here): {len(chosen)} of the {len(runs)} pinned runs (the "
                 f"cheapest shape of each probe) in {' and '.join(dtypes)}; a GPU runs all {on_gpu} (each warps and "
                 f"stages apart) in {' and '.join(GPU_DTYPES)}, and compute-sanitizer")
    else:
        chosen, dtypes = gpu_runs(runs), GPU_DTYPES
        on_gpu = len(chosen)
        where = f"{torch.cuda.get_device_name(0)}: {len(chosen)} pinned runs in {' and '.join(dtypes)}"
        _precompile(chosen, workers)
    click.echo(f"Self-test of the {suite} suite's kernel launches ({source}) on {where}", err=True)
    checks: list[Check] = []
    for i, check in enumerate(pinned_checks(chosen, dtypes, device), 1):
        checks.append(check)
        if check.status == FAIL or i % 10 == 0:
            click.echo(f"  {i}/{len(chosen) * len(dtypes)} pinned runs, {sum(c.status == FAIL for c in checks)} "
                       f"failed", err=True)
    checks.append(deterministic_check(suite, dtypes[0], device, interpreted))
    checks.extend(sanitizer_checks(suite, tools, device, on_gpu))
    failed = [c for c in checks if c.status == FAIL]
    header = f"Self-test ({suite} suite) on {where}"
    click.echo(table(checks, header))
    _write_json(json_path, {"suite": suite, "plan": source, "on": where, "device": device,
                            "interpreter": interpreted, "seconds": round(time.perf_counter() - start, 1),
                            "failed": len(failed), "checks": [asdict(c) for c in checks]})
    verdict = f"{len(failed)} of {len(checks)} checks FAILED" if failed else f"all {len(checks)} checks passed or skipped"
    click.echo(f"{verdict} in {time.perf_counter() - start:.0f} s; wrote {json_path}")
    sys.exit(1 if failed else 0)


def _precompile(runs: list, workers: int) -> None:
    """Compile the probes' launches in worker processes first, so the runs load binaries, not compile them."""
    from nsa_bench.compilecheck.pool import precompile_cases
    from nsa_bench.precompile import target_capability

    precompile_cases(_probe_cases(runs), workers, target_capability(), keep=pinned_variants(runs))


def _probe_cases(runs: list) -> list:
    """The compile cases of the runs' probe shapes in the GPU's dtypes (what the self-test compiles)."""
    return list(dict.fromkeys(run.shape.case(dtype) for run in runs for dtype in GPU_DTYPES))


@main.command()
@click.option("--suite", default="paper", show_default=True)
@click.option("--dtype", type=click.Choice(GPU_DTYPES), default=GPU_DTYPES[0], show_default=True)
def pinned(suite: str, dtype: str) -> None:
    """The pinned runs alone, on the GPU, in one dtype (what a sanitizer watches); exit 1 if one is wrong."""
    runs, _ = suite_runs(suite)
    failed = [c for c in pinned_checks(gpu_runs(runs), (dtype,), "cuda") if c.status == FAIL]
    for check in failed:
        click.echo(f"FAIL {check.what}: {check.detail}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
