"""`python -m nsa_bench.launchplan`: the GPU launch plan and how much of it the interpreter tests run.

    python -m nsa_bench.launchplan coverage                      # the shipped suites, from tests/launch_plan.json
    python -m nsa_bench.launchplan coverage --suite gqa --doc-lens fixed:4k   # any sweep (recorded now)
    python -m nsa_bench.launchplan coverage --executed launches.jsonl  # what a pytest run logged instead
    python -m nsa_bench.launchplan write                         # re-plan the shipped suites into the file

Sweep flags are `nsa-bench sweep`'s (`--suite`, `--seqlen`, `--group-size`, `--doc-lens`, ...). Covered means
executed by the pinned runs of tests/test_launch_configs.py (each asserts what it executed), or by the
launches a pytest run logged with `--launch-log FILE` (tests/launch_log.py). Exit status 1 when a planned
launch is not covered.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from nsa_bench.launchplan import coverage as cov
from nsa_bench.launchplan import planfile
from nsa_bench.launchplan.planner import Sweep, planned_of, record, sweep_cases


def _sweep_flags(args: list[str]) -> tuple[tuple[str, str], ...]:
    """`--flag value` pairs (as `nsa-bench sweep` takes them) from the extra arguments."""
    from nsa_bench.suites import OPTIONS

    pairs, rest = [], list(args)
    while rest:
        flag = rest.pop(0)
        name = flag[2:] if flag.startswith("--") else ""
        if "=" in name:
            name, value = name.split("=", 1)
        elif rest:
            value = rest.pop(0)
        else:
            raise click.UsageError(f"{flag} needs a value")
        if name not in OPTIONS:
            raise click.UsageError(f"unknown sweep flag {flag} (one of {', '.join('--' + o for o in OPTIONS)})")
        pairs.append((name, value))
    return tuple(pairs)


@click.group()
def main() -> None:
    """The GPU launch plan of a sweep and its coverage by the interpreter tests."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--suite", help="a suite (suites/*.toml); with other sweep flags: record that sweep now")
@click.option("--executed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="launches a pytest run logged (--launch-log), instead of the committed plan's pinned runs")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path), default=planfile.PLAN_FILE,
              show_default=True, help="the committed launch plan")
@click.option("--workers", type=int, default=2, show_default=True, help="recording worker processes")
@click.option("--list", "show", is_flag=True, help="list every uncovered launch")
@click.pass_context
def coverage(ctx: click.Context, suite: str | None, executed: Path | None, plan_path: Path, workers: int,
             show: bool) -> None:
    """Covered / total launches per kernel, for the shipped suites or the sweep the flags name."""
    committed = planfile.read(plan_path) if plan_path.exists() else None
    flags = _sweep_flags(ctx.args)
    if suite is None and not flags:
        if committed is None:
            raise click.UsageError(f"{plan_path} does not exist: name a sweep, or run `{planfile.REGENERATE}`")
        sweeps = {name: keys for name, (_, keys) in committed.sweeps.items()}
    else:
        sweep = Sweep("sweep", suite, flags)
        cases = sweep_cases(sweep)
        plans = record(cases, workers)
        sweeps = {sweep.command or "default sweep": tuple({p.key for c in cases for p in planned_of(plans[c])})}
    if executed is not None:
        ran = cov.read_log(executed)
        source = f"launches logged in {executed}"
    else:
        ran = list(committed.covered_by_runs()) if committed else []
        source = f"the pinned runs of {plan_path.name}"
    missing_any = False
    for name, keys in sweeps.items():
        click.echo(cov.table(cov.coverage(keys, ran), f"\n{name}: planned GPU launches executed by {source}"))
        missing = cov.uncovered(keys, ran)
        missing_any |= bool(missing)
        for key in missing if show else missing[:10]:
            click.echo(f"  not covered: {key.describe()}")
        if len(missing) > 10 and not show:
            click.echo(f"  ... {len(missing) - 10} more (--list)")
    sys.exit(1 if missing_any else 0)


@main.command()
@click.option("--path", type=click.Path(dir_okay=False, path_type=Path), default=planfile.PLAN_FILE,
              show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="recording worker processes")
def write(path: Path, workers: int) -> None:
    """Plan the shipped suites (suites/*.toml but long, and packed documents at the paper shape) into PATH."""
    plan = planfile.build(workers=workers)
    planfile.write(plan, path)
    click.echo(f"wrote {path}: {len(plan.launches)} launches, {len(plan.runs)} pinned runs, "
               f"{len(plan.uncovered)} not reached by any probe")


if __name__ == "__main__":
    main()
