"""`nsa-bench`: the command line. Thin on purpose: it parses flags and delegates to nsa_bench modules."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from nsa_bench import interrupts, limits, suites
from nsa_bench.messages import one_line, show
from nsa_bench.suites import OptionError

_LIST = "comma list"


def _bad(flag: str | None, message: str) -> click.UsageError:
    """A one-line usage error; with a flag, it is named the way click names it."""
    return click.UsageError(message if flag is None else f"invalid value for --{flag}: {message}")


def _range(field: str) -> str:
    return limits.bounds_text(field)


class _Path(click.Path):
    """click.Path that refuses an empty value: Path('') is the current folder, which nobody means by ''."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path (name a file or folder)", param, ctx)
        return super().convert(value, param, ctx)


class _Number(click.ParamType):
    """A decimal number written in ASCII (click's float also takes full-width digits, 'inf' and 'nan')."""

    name = "number"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        import re

        if isinstance(value, float):
            return value
        if not re.fullmatch(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*", str(value), re.ASCII):
            self.fail(f"{show(str(value), 40)} is not a number like 5 or 2.5", param, ctx)
        return float(value)


_NUMBER = _Number()


def _path(file_okay: bool = True, dir_okay: bool = True) -> _Path:
    return _Path(file_okay=file_okay, dir_okay=dir_okay, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="nsa-bench")
def cli() -> None:
    """Benchmark DeepSeek's Native Sparse Attention (Triton kernels) against FlashAttention-2.

    \b
    Environment: NSA_KERNEL_VARIANT (v1, v2 or per-kernel overrides such as v2,cmp_dkv=v1) picks the
    nsa-triton kernels; NSA_BENCH_BACKEND_MODULES (module,...) adds backends kept outside the package.

    \b
    nsa-bench sweep --seqlen 8k..64k            the paper configuration, fwd/bwd/decode
    nsa-bench sweep --suite smoke               a quick check
    nsa-bench sweep --suite paper --dry-run     the plan: tasks, predicted times, overheads, total
    nsa-bench precompile --suite paper          compile a sweep's kernels in parallel (a GPU run does it first)
    nsa-bench plot results/<run>                redraw a run's plots
    nsa-bench compare BASE CURRENT              regression gate (exit 1 on a confirmed SLOWER)
    nsa-bench report results/<run>              self-contained HTML + markdown report
    nsa-bench profile --seqlen 64k              one point under Nsight Compute
    nsa-bench env [--calibrate]                 GPU, versions, backends; measured ceilings
    """
    from nsa_bench import env_vars

    try:
        env_vars.check()
    except env_vars.EnvVarError as exc:
        raise click.UsageError(str(exc)) from None


@cli.command()
@click.option("--suite", metavar="NAME", help=f"named sweep from suites/ ({', '.join(suites.suite_names())}) or a .toml path; flags override it")
@click.option("--seqlen", metavar="SPEC", help=f"sequence lengths: 8k..64k (doubling), 8k,16k, 1k..8k:+1k; each {_range('seqlens')}  [default: 8k..64k]")
@click.option("--batch", metavar="LIST", help=f"batch sizes, {_LIST}, {_range('batches')}  [default: 1]")
@click.option("--kv-heads", metavar="LIST", help=f"KV heads = GQA groups (paper g), {_LIST}, {_range('kv_heads')}  [default: 4]")
@click.option("--q-heads", metavar="LIST", help=f"query heads, held fixed while --group-size varies: Hkv = Hq / G "
              f"(instead of --kv-heads), {_range('q_heads')}")
@click.option("--group-size", metavar="LIST", help=f"query heads per KV head (paper h), {_LIST}, {_range('group_sizes')}  [default: 16]")
@click.option("--head-dim", metavar="LIST", help=f"head dims qk-v, e.g. 192-128,128; each {_range('head_dims')}  [default: 192-128]")
@click.option("--block-cmp", metavar="LIST", help=f"compression block l, {_range('block_cmp')}  [default: 32]")
@click.option("--stride-cmp", metavar="LIST", help=f"compression stride d (divides l and l'), {_range('stride_cmp')}  [default: 16]")
@click.option("--block-slc", metavar="LIST", help=f"selection block l', {_range('block_slc')}  [default: 64]")
@click.option("--n-slc", metavar="LIST", help=f"selected blocks n (>= 3), {_range('n_slc')}  [default: 16]")
@click.option("--window", metavar="LIST", help=f"sliding window w, {_range('window')}  [default: 512]")
@click.option("--mode", metavar="LIST", help="fwd, bwd, fwdbwd, decode; layer-fwd, layer-bwd (one model layer: projections "
              "+ attention)  [default: fwd,bwd,decode]")
@click.option("--d-model", metavar="LIST", help=f"model width of the layer modes (x is [B, T, d_model]), {_range('d_models')}  "
              "[default: 2560, the NSA paper's model]")
@click.option("--doc-lens", metavar="LIST", help="documents packed into each row of --seqlen tokens (a varlen batch, "
              "cu_seqlens): none, fixed:N, uniform:N (lengths 1..2N-1), lognormal:N[:SIGMA] (mean N, sigma 1); "
              "@SEED seeds the lengths; the document that passes the row's end is cut to fill it  [default: none]")
@click.option("--backend", metavar="LIST", help="backends to run (see `nsa-bench env`)  [default: fa2,nsa-triton]")
@click.option("--baseline", metavar="LIST", help="dense backends to compare against, e.g. fa2,cudnn: all run, the summary "
              "shows NSA against each; the CSV's speedup column is vs the first  [default: fa2]")
@click.option("--dtype", metavar="LIST", help="bfloat16, float16, float32  [default: bfloat16]")
@click.option("--reps", metavar="N", help=f"timed repetitions per point, {_range('reps')}  [default: 30]")
@click.option("--warmup", metavar="N", help=f"untimed warm-up calls per point, {_range('warmup')}  [default: 5]")
@click.option("--seed", metavar="N", help="seed of the random inputs, 0..2^63-1  [default: 0]")
@click.option("--gpu", metavar="NAME", help="GPU spec for predictions and roofline floors (h100, h200, a100, ...)  [default: the GPU present, else h100]")
@click.option("--check-seqlen", metavar="N", help=f"length at which each backend is checked against the reference, {_range('check_seqlen')}  [default: 1024]")
@click.option("--cuda-graph/--no-cuda-graph", default=None, help="time decode by CUDA-graph replay, or by eager "
              "launches (a backend that cannot be captured falls back to eager and its row says so)  [default: graph]")
@click.option("--point", metavar="LABEL", help="run exactly one point, as reports and progress print it (e.g. "
              "\"fwd T=65536 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16\"); replaces the axis flags")
@click.option("--out", type=_path(file_okay=False), help="run folder  [default: a new folder under ./results/]")
@click.option("--resume", is_flag=True, help="continue the run in --out: complete points are kept, partial and "
              "time-budget-skipped ones run again; refused when --out holds a sweep with other settings or another GPU")
@click.option("--max-points", metavar="N", help=f"refuse a sweep of more points (configurations x modes) than this, "
              f"checked before anything is allocated; up to {limits.MAX_POINTS_CEILING:,}  "
              f"[default: {limits.DEFAULT_MAX_POINTS:,}]")
@click.option("--no-plots", is_flag=True, help="write the CSV only")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--time-budget", metavar="DURATION", help="wall-clock budget for the whole sweep (300s, 5m, 4m30s): "
              "points whose estimate would not fit become `skipped` rows; then env.json, plots, summary, exit 0")
@click.option("--dry-run", is_flag=True, help="print the plan (tasks in run order, predicted time of each, "
              "compile/tune/input/check overheads, total wall time) and run nothing")
@click.option("--no-precompile", is_flag=True, help="on a GPU, skip compiling every kernel config in parallel first")
@click.option("--workers", metavar="N", help="precompile worker processes  [default: CPU cores minus 2]")
@click.option("--shard", metavar="K/N", help="run only shard K of N (a deterministic split of the points; a point's "
              "backends stay together): for Slurm arrays and CI matrices; join the runs with `nsa-bench merge`")
@click.option("--devices", metavar="LIST", help="one worker process per device, pulling points from one queue: all "
              "(every local GPU), GPU indices 0,1,..., or cpu0,cpu1,... (CPU workers: predictions); a kernel fault "
              "costs a row, not the sweep  [default on a GPU: one worker on GPU 0; without one: this process]")
@click.option("--in-process", is_flag=True, help="on a GPU, run the points in this process instead of a worker (no "
              "fault isolation: a crash ends the sweep; for a profiler attached to the sweep)")
@click.option("--point-timeout", metavar="DURATION", help="a task of a worker taking longer is a hang: an `error` row, "
              "the worker replaced  [default: max(60 s, 50 x the task's estimate)]")
@click.option("--ray", metavar="ADDRESS", is_flag=False, flag_value="local", default=None,
              help="run points as Ray tasks of one GPU each on the cluster at ADDRESS (auto: the one this machine "
              "belongs to), or, bare, on a local Ray instance; needs the `ray` extra")
def sweep(suite: str | None, point: str | None, out: Path | None, resume: bool, max_points: str | None,
          no_plots: bool, quiet: bool,
          cuda_graph: bool | None, time_budget: str | None, dry_run: bool, no_precompile: bool, workers: str | None,
          shard: str | None, devices: str | None, point_timeout: str | None, ray: str | None, in_process: bool,
          **flags: str | None) -> None:
    """Run a sweep: the product of the axes x modes x backends, one CSV row per point, then plots.

    Without a CUDA GPU nothing is measured: rows carry the cost model's predictions for --gpu.
    On a GPU every kernel config the sweep will launch is compiled first, in parallel (see `precompile`).
    Sizes have upper bounds (shown with each flag) far past what one GPU holds.
    """
    from nsa_bench import backends, run_folder, summary, sweep as sweep_mod

    options = {name.replace("_", "-"): value for name, value in flags.items()}
    spec = _spec_from(suite, options, cuda_graph, max_points)
    if point is not None:
        spec = _one_point(point, spec, suite, options)
    budget_s = _duration("time-budget", time_budget)
    timeout_s = _duration("point-timeout", point_timeout)
    chosen_shard = _shard(shard)
    n_workers = _workers(workers)
    known = tuple(backends.registry())
    for flag, names in (("backend", spec.backends), ("baseline", spec.baselines)):
        unknown = [b for b in names if b not in known]
        if unknown:
            message = f"unknown {', '.join(map(repr, unknown))} (choose from {', '.join(known)})"
            if options.get(flag) is None and suite is not None:  # the suite named it, not a flag
                raise _bad(None, f"invalid value for {flag} in suite {show(suite, 120)}: {message}")
            raise _bad(flag, message)
    points, invalid = spec.points()
    nsa_backends = [b for b in spec.run_backends if backends.registry()[b].family == "nsa"]
    if not points and nsa_backends:
        if point is not None:
            raise _bad("point", f"{show(point, 80)} is not a valid NSA configuration: {invalid[0][1]}")
        raise _bad(None, str(suites.InvalidConfiguration(invalid[0][1], options, suite)))
    if resume and out is None:
        raise _bad(None, "--resume continues the run in --out: name that folder with --out")
    if dry_run:
        _dry_run(spec, out, resume, chosen_shard, n_workers, budget_s, no_plots, no_precompile, devices, ray,
                 timeout_s, in_process)
        return
    out = out or run_folder.default_out_dir(suite)
    try:
        outcome = sweep_mod.execute(spec, out, resume, plots=not no_plots, progress=not quiet,
                                    precompile_workers=None if no_precompile else n_workers, budget_s=budget_s,
                                    shard=chosen_shard, devices=devices, point_timeout=timeout_s,
                                    ray=ray, in_process=in_process)
    except sweep_mod.SweepError as exc:
        raise _bad(exc.flag, str(exc)) from None
    if outcome.interrupted:
        sys.exit(128 + (outcome.signal or 2))
    click.echo(summary.summary_text(outcome.csv, spec.baseline))
    skipped = f", {outcome.skipped} already done" if outcome.skipped else ""
    click.echo(f"\n{outcome.rows_written} rows{skipped} -> {outcome.csv}")
    if summary.only_failed_rows(outcome.csv):
        click.echo("nsa-bench: no point was measured or predicted (every row above failed): exit 1", err=True)
        sys.exit(1)


def _spec_from(suite: str | None, options: dict[str, str | None], cuda_graph: bool | None = None,
               max_points: str | None = None):
    """The SweepSpec of a suite and the axis flags given (one-line errors naming the flag), refused before
    any point is made when its product is over --max-points."""
    try:
        limit = _max_points(max_points)
        spec = suites.build_spec(suite, options)
    except OptionError as exc:
        raise _bad(None, str(exc)) from None
    too_many = limits.too_many_points(spec, limit)
    if too_many:
        raise _bad("max-points" if max_points else None, too_many)
    if cuda_graph is not None:
        from dataclasses import replace

        spec = replace(spec, cuda_graph=cuda_graph)
    return spec


def _gpu_key_here() -> str:
    """The spec key of the GPU here (h100, h200, ...); an unknown card's name as a slug; "none" without one."""
    import re

    import torch

    from nsa_bench.gpus import gpu_spec

    if not torch.cuda.is_available():
        return "none"
    name = torch.cuda.get_device_name(0)
    try:
        return gpu_spec(name).key
    except ValueError:
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def _dry_run(spec, out: Path | None, resume: bool, shard, n_workers: int, budget_s: float | None, no_plots: bool,
             no_precompile: bool, devices: str | None, ray: str | None, timeout_s: float | None,
             in_process: bool) -> None:
    """Print the plan of the sweep these flags make, refusing what the sweep itself would refuse (where its
    points run, the run folder) so a plan that prints is a run that starts."""
    from nsa_bench import environment, execute, plan, resume as resume_mod
    from nsa_bench import sweep as sweep_mod

    measuring = sweep_mod.cuda_present()
    try:
        gpu = sweep_mod.target_gpu(spec.gpu, measuring=measuring)
        sweep_mod.choose_pool(spec, gpu, measuring, devices, ray, timeout_s, budget_s, in_process)
        if out is not None and not resume and resume_mod.has_run(out):
            raise _bad("out", f"{show(str(out), 120)} already holds a run: pass --resume to continue it, or choose "
                              "another --out")
        done = plan.done_in(out, spec, gpu, shard, environment.gpu_name() if measuring else None) \
            if resume else frozenset()
    except sweep_mod.SweepError as exc:
        raise _bad(exc.flag, str(exc)) from None
    except (resume_mod.ResumeError, ValueError) as exc:
        raise _bad(None, str(exc)) from None
    if not measuring:
        click.echo(f"No CUDA GPU here: this sweep would write predictions in seconds; the plan below is of the run "
                   f"on {gpu.name} (--gpu), with what it would compile, tune, check and time.")
    click.echo(plan.dry_run(spec, gpu, n_workers, budget_s, plots=not no_plots, precompile=not no_precompile,
                            shard=shard, done=done, measure=execute.cuda_measure() if measuring else None))


def _one_point(label: str, spec, suite: str | None, options: dict[str, str | None]):
    """The sweep of the one point --point names, measured as the other flags say; refused with a suite or an
    axis flag (the point fixes every axis)."""
    from nsa_bench.spec import POINT_AXES, Point, SweepSpec

    axis_flags = {flag for flag, (field, _) in suites.OPTIONS.items()
                  if field in {*POINT_AXES.values(), "q_heads"}}
    given = sorted(flag for flag in axis_flags if options.get(flag) is not None)
    if suite is not None or given:
        clash = "--suite" if suite is not None else f"--{given[0]}"
        raise _bad("point", f"fixes every axis of the sweep: leave out {clash}")
    from nsa_bench.backends import registry

    words = label.split()
    if words and words[0] in registry():  # a progress line: "<backend> <point label>"
        raise _bad("point", f"{show(label, 80)}: starts with the backend {words[0]}: give the point alone "
                            f"(from the mode on) and the backends with --backend")
    try:
        chosen = Point.from_label(label)
        one = SweepSpec.for_point(chosen, spec.backends, spec)
    except ValueError as exc:
        raise _bad("point", f"{show(label, 80)}: {exc}") from None
    for field in POINT_AXES.values():
        why = limits.out_of_bounds(field, getattr(one, field))
        if why:
            raise _bad("point", f"{show(label, 80)}: {field} {why}")
    return one


def _duration(flag: str, text: str | None) -> float | None:
    if text is None:
        return None
    from nsa_bench.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _bad(flag, f"{show(text)}: {exc}") from None


def _shard(text: str | None):
    from nsa_bench.shard import WHOLE, parse_shard

    if text is None:
        return WHOLE
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise _bad("shard", f"{show(text)}: {exc}") from None


def _workers(text: str | None) -> int:
    from nsa_bench.precompile import default_workers

    if text is None:
        return default_workers()
    from nsa_bench.parse import parse_int

    try:
        value = parse_int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1024:
        raise _bad("workers", f"{show(text)}: must be a whole number from 1 to 1024")
    return value


def _max_points(text: str | None) -> int:
    if text is None:
        return limits.DEFAULT_MAX_POINTS
    from nsa_bench.parse import parse_sizes

    try:
        values = parse_sizes(text)
        if len(values) != 1:
            raise ValueError("takes a single number")
    except ValueError as exc:
        raise OptionError("max-points", text, str(exc)) from None
    if values[0] > limits.MAX_POINTS_CEILING:
        raise OptionError("max-points", text, f"must be at most {limits.MAX_POINTS_CEILING:,} (the task list must fit in memory)")
    return values[0]


# `precompile` takes the sweep's axis flags (the same click options), plus --workers.
_PRECOMPILE_FLAGS = {"suite", "seqlen", "batch", "kv_heads", "q_heads", "group_size", "head_dim", "block_cmp",
                     "stride_cmp", "block_slc", "n_slc", "window", "mode", "d_model", "doc_lens", "backend", "baseline",
                     "dtype", "check_seqlen", "max_points", "workers", "quiet"}


def _precompile(suite: str | None, workers: str | None, quiet: bool, max_points: str | None,
                **flags: str | None) -> None:
    """Compile every kernel variant and autotune config the given sweep will launch, in parallel.

    For the GPU present (its capability; sm_90 without one), in worker processes, into Triton's on-disk
    cache: the sweep's first calls then load binaries instead of compiling. Prints how many and how long.
    """
    from nsa_bench import backends, precompile

    options = {name.replace("_", "-"): value for name, value in flags.items()}
    spec = _spec_from(suite, options, max_points=max_points)
    known = tuple(backends.registry())
    unknown = [b for b in spec.run_backends if b not in known]
    if unknown:
        raise _bad("backend", f"unknown {', '.join(map(repr, unknown))} (choose from {', '.join(known)})")
    points, invalid = spec.points()
    if not points:  # as sweep refuses it: there is nothing to compile, and saying "nothing" would hide why
        raise _bad(None, str(suites.InvalidConfiguration(invalid[0][1], options, suite)))
    import torch

    if not torch.cuda.is_available():
        click.echo(f"No CUDA GPU here: compiling for sm_{precompile.target_capability()} (H100, H200) only to check that "
                   "every config compiles, into this machine's Triton cache; a sweep on a GPU compiles "
                   "again on its own machine.")
    result = precompile.run(spec, _workers(workers), click.echo, progress=not quiet)
    if result is not None and (result.failed or result.host_errors):
        sys.exit(1)


cli.add_command(click.Command(
    "precompile", callback=_precompile, help=_precompile.__doc__, short_help="compile a sweep's kernels in parallel",
    context_settings={"max_content_width": 110},
    params=[p for p in sweep.params if p.name in _PRECOMPILE_FLAGS],
))


def _is_selftest_result(path: Path) -> bool:
    """Whether `path` holds what an earlier self-test wrote (which a new one may replace)."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"suite", "checks", "failed"} <= set(data)


@cli.command()
@click.option("--suite", default="paper", show_default=True,
              help="the suite whose kernel launches are checked (suites/*.toml, or a suite file)")
@click.option("--json", "json_path", type=_path(dir_okay=False), default="selftest.json", show_default=True,
              help="where the results go (replaced whole)")
@click.option("--sanitize", default="memcheck,racecheck", show_default=True, metavar="TOOLS",
              help="compute-sanitizer tools to run on a GPU where it is on PATH (memcheck, racecheck; none)")
@click.option("--workers", metavar="N", help="compile worker processes on a GPU  [default: CPU cores - 2]")
@click.option("--dry-run", is_flag=True, help="print the self-test's estimated time on a GPU and run nothing")
def selftest(suite: str, json_path: Path, sanitize: str, workers: str | None, dry_run: bool) -> None:
    """Check the kernels a suite will launch, on this machine, before trusting its numbers: every pinned
    config of the suite's launch plan against the float64 reference (bf16 and fp16), the deterministic
    backward twice bit for bit, and compute-sanitizer memcheck / racecheck where it is on PATH. Without a
    GPU it runs under Triton's CPU interpreter at reduced scope (fp32 and fp16, the cheapest shape of each
    probe) and says so. Prints a table, writes --json, exits 1 when a check fails."""
    import subprocess

    import torch

    from nsa_bench.child_env import child_environment
    from nsa_bench.selftest import SANITIZER_TOOLS

    tools = [t.strip() for t in sanitize.split(",")]
    wrong = [t for t in tools if t not in (*SANITIZER_TOOLS, "none")]
    if wrong or not tools:
        raise _bad("sanitize", f"{show(sanitize, 60)}: choose from {', '.join(SANITIZER_TOOLS)} or none")
    _spec_from(suite, {})  # a suite that does not load is refused here, naming --suite
    if json_path.exists() and json_path.is_dir():
        raise _bad("json", f"{show(str(json_path), 120)} is a folder")
    if json_path.exists() and not _is_selftest_result(json_path):
        raise _bad("json", f"{show(str(json_path), 120)} exists and is not a self-test's result: choose another file")
    env = child_environment()
    env["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"  # read by Triton at the kernels' import
    command = [sys.executable, "-m", "nsa_bench.selftest", "run", "--suite", suite, "--json", str(json_path),
               "--sanitize", ",".join(tools), "--workers", str(_workers(workers)), *(["--dry-run"] if dry_run else [])]
    sys.exit(subprocess.run(command, env=env).returncode)


@cli.command()
@click.argument("run", type=_path())
@click.option("--gpu", metavar="NAME", help="GPU spec for the roofline ceilings  [default: the run's GPU, else h100]")
@click.option("--published", is_flag=True, help="set published speedups of the same configuration (the paper's "
              "Fig. 6, peers' figures: nsa_bench/published.csv) beside the run's on the speedup plot, as hollow "
              "markers labelled by source, GPU and what they are a speedup against  [default: off]")
def plot(run: Path, gpu: str | None, published: bool) -> None:
    """Redraw the plots of a run folder (or CSV): speedup, roofline, NSA time by stage (and, where they apply,
    NSA against each dense baseline and one attention layer). A run's go into its plots/; a CSV named other
    than results.csv gets its own folder beside it, <name>-plots/."""
    from nsa_bench import plots, results
    from nsa_bench.gpus import gpu_spec
    from nsa_bench.parse import parse_name
    from nsa_bench.published import PublishedError

    if gpu is not None:
        try:
            gpu_spec(parse_name(gpu))
        except ValueError as exc:
            raise _bad("gpu", f"{show(gpu)}: {exc}") from None
    try:
        written = plots.plot_run(run, gpu, published=published)
        if not written:
            raise _bad(None, f"RUN {show(str(run), 120)}: {plots.nothing_to_plot(run)}")
    except results.ResultsError as exc:
        raise _bad(None, f"RUN {show(str(run), 120)}: {exc}") from None
    except PublishedError as exc:
        raise _bad("published", str(exc)) from None
    for path in written:
        click.echo(str(path))
    folder = plots.plots_folder(run)
    if folder.name != results.PLOTS_DIR:
        click.echo(f"Plots of {run.name} are in {folder}, a folder of its own (the run's {results.PLOTS_DIR}/ "
                   "is left as it is).")


@cli.command()
@click.option("--calibrate", is_flag=True, help="measure the GPU's bf16 matmul FLOP/s and copy bandwidth, store them "
              "under results/calibration/ (roofline plots draw them as measured ceilings)")
@click.option("--gpu-key", is_flag=True, help="print only the key of the GPU here (h100, h200, ...; none without "
              "one): the results folder a run on it belongs in, results/<key>/")
@click.pass_context
def env(ctx: click.Context, calibrate: bool, gpu_key: bool) -> None:
    """The GPU, its clocks, library versions, and which backends can run here (or why not)."""
    if gpu_key:
        click.echo(_gpu_key_here())
        return
    if calibrate:
        from nsa_bench import calibrate as calibrate_mod

        try:
            click.echo(calibrate_mod.run())
        except calibrate_mod.CalibrationError as exc:
            click.echo(f"nsa-bench: error: {exc}", err=True)
            ctx.exit(1)
        return
    from nsa_bench import environment, envreport

    click.echo(envreport.render(environment.collect()))


@cli.command()
@click.option("--backend", metavar="NAME", help="backend to profile  [default: nsa-triton]")
@click.option("--mode", metavar="MODE", help="fwd, bwd, fwdbwd or decode  [default: fwd]")
@click.option("--seqlen", metavar="N", help="sequence length, e.g. 64k  [default: 64k]")
@click.option("--batch", metavar="N", help="batch size  [default: 1]")
@click.option("--kv-heads", metavar="N", help="KV heads  [default: 4]")
@click.option("--group-size", metavar="N", help="query heads per KV head  [default: 16]")
@click.option("--head-dim", metavar="QK-V", help="head dims, e.g. 192-128  [default: 192-128]")
@click.option("--block-cmp", metavar="N", help=f"compression block l, {_range('block_cmp')}  [default: 32]")
@click.option("--stride-cmp", metavar="N", help="compression stride d  [default: 16]")
@click.option("--block-slc", metavar="N", help=f"selection block l', {_range('block_slc')}  [default: 64]")
@click.option("--n-slc", metavar="N", help="selected blocks n  [default: 16]")
@click.option("--window", metavar="N", help=f"sliding window w, {_range('window')}  [default: 512]")
@click.option("--dtype", metavar="NAME", help="bfloat16, float16, float32  [default: bfloat16]")
@click.option("--out", type=_path(file_okay=False), help="folder for profile.csv, the plot and "
              "ncu's reports  [default: a new folder under results/]")
@click.pass_context
def profile(ctx: click.Context, out: Path | None, **flags: str | None) -> None:
    """Run one point under Nsight Compute (ncu): per-kernel DRAM bytes, FLOPs and intensity vs the cost model.

    Needs `ncu` on PATH and a CUDA GPU. Writes profile.csv and profile_intensity.png/svg.
    """
    from nsa_bench import profile as profile_mod

    options = {name.replace("_", "-"): value for name, value in flags.items()}
    try:
        point, backend = profile_mod.point_from_options(options)
    except OptionError as exc:
        raise _bad(None, str(exc)) from None
    if out is None:
        from datetime import datetime

        from nsa_bench.run_folder import results_root

        out = results_root() / f"{datetime.now():%Y%m%d-%H%M%S}-profile-{backend}-{point.mode}-{point.seqlen}"
    try:
        outcome = profile_mod.run_profile(point, backend, out)
    except profile_mod.ProfileError as exc:
        click.echo(f"nsa-bench: error: {exc}", err=True)
        ctx.exit(1)
    click.echo(profile_mod.summary(outcome))


# -- compare/report commands --
@cli.command("compare")
@click.argument("baseline", type=_path())
@click.argument("current", type=_path())
@click.option("--metric", type=click.Choice(["speedup", "ms", "predicted_ms"]), default="speedup",
              show_default=True, help="speedup over the run's baseline backend, computed from each run's own times "
              "(higher is better), ms_median, or predicted_ms (cost model, for CPU runs).")
@click.option("--threshold", type=_NUMBER, default=5.0, show_default=True,
              help="Percent change below which a point is SAME (above 0, below 100).")
@click.option("--sigmas", type=_NUMBER, default=3.0, show_default=True,
              help="A change must exceed this many combined noise units to be FASTER/SLOWER.")
@click.option("--all-stages", is_flag=True, help="Also gate the per-branch breakdown rows.")
@click.option("--rerun", is_flag=True, help="Re-measure suspect points on this GPU before deciding.")
@click.option("--allow-different-gpu", is_flag=True, help="Compare runs made on different GPUs.")
@click.option("--fail-on-ambiguous", is_flag=True, help="Exit 1 when any point could not be judged (AMBIGUOUS, "
              "or with a value in one run only), not only on a confirmed SLOWER.")
@click.option("--normalize-clocks", is_flag=True, help="For --metric ms, judge ms x SM clock (cycles) where both "
              "runs read the point's SM clock; says which points it could not normalize (speedup needs none).")
@click.option("--md", "md_path", type=_path(), help="Also write the markdown here (never over an input or an "
              "existing file of a run folder, except compare's own earlier markdown).")
@click.option("--json", "json_path", type=_path(), help="Write JSON here (never over an input or an existing file "
              "of a run folder, except compare's own earlier JSON).")
@click.pass_context
def compare_command(ctx: click.Context, baseline: Path, current: Path, metric: str, threshold: float,
                    sigmas: float, all_stages: bool, rerun: bool, allow_different_gpu: bool, fail_on_ambiguous: bool,
                    normalize_clocks: bool, md_path: Path | None, json_path: Path | None) -> None:
    """Regression gate: label each point of CURRENT vs BASELINE; exit 1 on a confirmed SLOWER (or, with
    --fail-on-ambiguous, on any point it could not judge)."""
    from nsa_bench import compare, remeasure

    try:
        options = compare.Options(metric=metric, threshold=threshold / 100, sigmas=sigmas, all_stages=all_stages,
                                  allow_different_gpu=allow_different_gpu, fail_on_ambiguous=fail_on_ambiguous,
                                  normalize_clocks=normalize_clocks)
        result, markdown = compare.run_compare(baseline, current, options, md_path=md_path, json_path=json_path,
                                               revise=remeasure.rerun_suspects if rerun else None)
    except compare.CompareError as exc:
        click.echo(f"nsa-bench: error: {one_line(str(exc))}", err=True)
        ctx.exit(compare.EXIT_USAGE)
    click.echo(markdown, nl=False)
    ctx.exit(result.exit_code)


@cli.command("merge")
@click.argument("runs", nargs=-1, required=True, type=_path())
@click.option("--out", required=True, type=_path(file_okay=False), help="the new run folder")
def merge_command(runs: tuple[Path, ...], out: Path) -> None:
    """Merge the run folders of one sweep (its --shard parts, or runs on other machines) into one run folder.

    One CSV; speedups recomputed against the baseline of the same point on the same GPU; each run's
    env.json kept as envs/<run>.json. Runs of different sweeps (spec.json) are refused.
    """
    import signal

    from nsa_bench import merge

    try:
        result = merge.merge(list(runs), out, command=" ".join(sys.argv))
    except merge.MergeError as exc:
        raise _bad(None, str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say what --out holds, in one line
        click.echo(merge.interrupted_text(out, signal.Signals(interrupts.signal_of(exc)).name), err=True)
        sys.exit(interrupts.exit_code(exc))
    click.echo(merge.describe(result))


@cli.command("report")
@click.argument("directory", type=_path())
@click.pass_context
def report_command(ctx: click.Context, directory: Path) -> None:
    """Write DIRECTORY/report.html (self-contained, plots embedded) and DIRECTORY/report.md."""
    from nsa_bench import report

    try:
        files = report.build_report(directory)
    except report.ReportError as exc:
        click.echo(f"nsa-bench: error: {exc}", err=True)
        ctx.exit(2)
    for warning in files.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {files.html} and {files.markdown} ({len(files.plots)} plots embedded)")


def _invoke(args: list[str]) -> int:
    """Parse and run one command; unlike click's own main, a KeyboardInterrupt stays one (so the caller
    can tell Ctrl-C from SIGTERM) and nothing is printed on the way out."""
    try:
        with cli.make_context("nsa-bench", args) as ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:  # --help, --version, ctx.exit(code)
        return exc.exit_code
    return 0


def main() -> None:
    """Console entry point: user mistakes end in one line and exit code 2, never a traceback.

    SIGTERM stops a command the way Ctrl-C does (exit 128 + the signal's number). An error that is not
    the user's (a bug) still ends in one line, with exit code 1, saying how to see the traceback.
    """
    import os

    try:
        with interrupts.as_keyboard_interrupt():
            code = _invoke(sys.argv[1:])
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `nsa-bench`: the help is the answer
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except BrokenPipeError:  # the reader of stdout went away (`nsa-bench ... | head`): nobody to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(128 + 13)  # as a shell reports SIGPIPE
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"nsa-bench: error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        click.echo(f"Interrupted ({interrupts.Interrupted(interrupts.signal_of(exc))}).", err=True)
        sys.exit(interrupts.exit_code(exc))
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("NSA_BENCH_TRACEBACK"):
            raise
        click.echo(one_line(f"nsa-bench: internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
                            "NSA_BENCH_TRACEBACK=1 shows the traceback)"), err=True)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    main()
