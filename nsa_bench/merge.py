"""`nsa-bench merge RUN... --out DIR`: the runs of one sweep (its --shard parts, or runs on several machines)
as one run folder.

The runs must be of the same sweep (identical spec.json: axes and measurement settings). The merged CSV
holds every row once; shards of one split are interleaved back into the unsharded run order (a shard
holds every N-th point of it). Speedups are recomputed against the baseline row of the same point on the
same GPU (the `gpu` column), wherever that row came from; where the run's own speedup already is that
ratio (to the CSV's six digits) its cell is kept, so a merge of shards reads exactly like the unsharded run.
Each run's env.json is kept as envs/<run folder name>.json; env.json is the first run's, naming them all.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nsa_bench import breakeven, reading, results, resume
from nsa_bench.messages import show
from nsa_bench.schema import FIELDS, STAGE_TOTAL

ENVS_DIR = "envs"
_I = {name: FIELDS.index(name) for name in FIELDS}
_POINT_FIELDS = tuple(f for f in resume.TASK_FIELDS if f != "backend")


class MergeError(ValueError):
    """Runs that cannot be merged (one line naming the run and what is wrong)."""


@dataclass(frozen=True)
class Run:
    folder: Path
    spec: dict
    env: dict
    records: list[list[str]]
    progress: str


@dataclass(frozen=True)
class Merged:
    csv: Path
    rows: int
    runs: int
    missing_shards: tuple[str, ...]
    recomputed: int  # speedup cells whose value changed (the baseline was in another run, or absent)


def _load(path: Path) -> Run:
    folder = results.run_dir(Path(path))
    where = show(str(path), 120)
    if not Path(path).exists() or not folder.is_dir():
        raise MergeError(f"RUN {where}: no such run folder")
    try:
        spec = results.read_json(folder / results.SPEC_NAME)
        env = results.read_json(folder / results.ENV_NAME)
        records, damaged = resume.csv_records(folder / results.CSV_NAME)
    except (results.ResultsError, resume.ResumeError) as exc:
        raise MergeError(f"RUN {where}: {exc}") from None
    if not spec:
        raise MergeError(f"RUN {where}: no {results.SPEC_NAME} (not a run folder of nsa-bench sweep)")
    if damaged:
        raise MergeError(f"RUN {where}: its CSV has a cut or malformed line (an interrupted run): finish it with "
                         "--resume first")
    progress_file = folder / resume.PROGRESS_NAME
    progress = progress_file.read_text(encoding="utf-8") if progress_file.is_file() else ""
    return Run(folder, spec, env, records, progress)


def _check_same_sweep(runs: Sequence[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for field in sorted(set(first.spec) | set(run.spec)):
            if first.spec.get(field) != run.spec.get(field):
                raise MergeError(f"RUN {show(str(run.folder), 100)} is another sweep than {show(str(first.folder), 100)}: "
                                 f"spec.json {field} is {show(run.spec.get(field))}, not {show(first.spec.get(field))}")


def _shards(runs: Sequence[Run]) -> tuple[list[Run], tuple[str, ...]]:
    """The runs in shard order when all are shards of one split (and the shards missing), else as given."""
    marks = [run.env.get("shard") for run in runs]
    if not all(isinstance(m, str) and "/" in m for m in marks):
        return list(runs), ()
    parsed = [tuple(int(x) for x in m.split("/")) for m in marks]
    counts = {n for _, n in parsed}
    if len(counts) > 1:
        raise MergeError(f"the runs are shards of different splits ({', '.join(sorted(set(marks)))})")
    seen: dict[int, Run] = {}
    for (k, _), run in zip(parsed, runs):
        if k in seen:
            raise MergeError(f"shard {k}/{counts.pop()} given twice: {show(str(seen[k].folder), 100)} and "
                             f"{show(str(run.folder), 100)}")
        seen[k] = run
    n = counts.pop()
    return [seen[k] for k in sorted(seen)], tuple(f"{k}/{n}" for k in range(1, n + 1) if k not in seen)


def _groups(records: list[list[str]]) -> list[list[list[str]]]:
    """Records by point (and GPU), in the file's order of first appearance."""
    groups: dict[tuple, list[list[str]]] = {}
    for record in records:
        key = (*(record[_I[f]] for f in _POINT_FIELDS), record[_I["gpu"]])
        groups.setdefault(key, []).append(record)
    return list(groups.values())


def _time(record: list[str]) -> float | None:
    return reading.text_time(record[_I["status"]], record[_I["ms_median"]], record[_I["predicted_ms"]])


def _speedups(group: list[list[str]], baseline: str) -> int:
    """Recompute the speedup cells of one point's records in place; returns how many changed."""
    totals = [r for r in group if r[_I["stage"]] == STAGE_TOTAL]
    base = next((r for r in totals if r[_I["backend"]] == baseline), None)
    base_ms = _time(base) if base is not None else None
    changed = 0
    for record in totals:
        own = _time(record)
        if own is None:
            continue
        if base_ms is None:
            new_speedup, new_baseline = "", ""
        else:
            value = 1.0 if record is base else base_ms / own
            old = record[_I["speedup"]]
            try:
                same = math.isclose(float(old), value, rel_tol=2e-5)
            except ValueError:
                same = False
            new_speedup, new_baseline = (old if same else results.cell(value)), baseline
        if (record[_I["speedup"]], record[_I["baseline"]]) != (new_speedup, new_baseline):
            changed += 1
        record[_I["speedup"]], record[_I["baseline"]] = new_speedup, new_baseline
    return changed


def _env_names(runs: Sequence[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        base = run.folder.resolve().name or "run"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def merge(paths: Sequence[Path], out: Path, command: str = "") -> Merged:
    """Merge the run folders `paths` into the new run folder `out` (see the module docstring)."""
    if not paths:
        raise MergeError("name at least one RUN")
    runs = [_load(p) for p in paths]
    folders = [run.folder.resolve() for run in runs]
    if len(set(folders)) != len(folders):
        raise MergeError("a RUN is named twice")
    if out.resolve() in folders:
        raise MergeError(f"--out {show(str(out), 100)} is one of the runs: choose a new folder")
    if resume.has_run(out):
        raise MergeError(f"--out {show(str(out), 100)} already holds a run: choose a new folder")
    _check_same_sweep(runs)
    ordered, missing = _shards(runs)
    per_run = [_groups(run.records) for run in ordered]
    seen: dict[tuple, Path] = {}
    for run, groups in zip(ordered, per_run):
        for record in itertools.chain.from_iterable(groups):
            key = (*(record[_I[f]] for f in resume.TASK_FIELDS), record[_I["stage"]], record[_I["gpu"]])
            if key in seen:
                raise MergeError(f"the row {record[_I['backend']]} {record[_I['mode']]} T={record[_I['seqlen']]} "
                                 f"{record[_I['stage']]} on {record[_I['gpu']] or 'no GPU'} is in both "
                                 f"{show(str(seen[key]), 100)} and {show(str(run.folder), 100)}")
            seen[key] = run.folder
    interleaved = [g for batch in itertools.zip_longest(*per_run) for g in batch if g is not None]
    baseline = str(runs[0].spec.get("baseline", "fa2"))
    recomputed = sum(_speedups(group, baseline) for group in interleaved)
    records = [r for g in interleaved for r in g]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ENVS_DIR).mkdir(exist_ok=True)
        names = _env_names(ordered)
        for name, run in zip(names, ordered):
            results.write_json(out / ENVS_DIR / f"{name}.json", run.env)
        env = {key: value for key, value in ordered[0].env.items() if key != "shard"}
        env["merged_from"] = [{"run": str(run.folder), "env": f"{ENVS_DIR}/{name}.json",
                               **({"shard": run.env["shard"]} if "shard" in run.env else {})}
                              for name, run in zip(names, ordered)]
        env["measured"] = any(run.env.get("measured") for run in runs)
        if command:
            env["merge_command"] = command
        results.write_json(out / results.SPEC_NAME, runs[0].spec)
        results.write_json(out / results.ENV_NAME, env)
        text = resume.results_header() + resume._records_text(records)
        results.replace_text(out / results.CSV_NAME, text)
        results.replace_text(out / resume.PROGRESS_NAME, "".join(run.progress for run in ordered))
        frame = results.read_rows(out / results.CSV_NAME)
        if not frame.empty:
            breakeven.write_csv(breakeven.break_evens(frame), out)  # beside results.csv, as a sweep leaves it
    except OSError as exc:
        raise MergeError(f"cannot write into --out {show(str(out), 100)}: {exc.strerror or exc}") from None
    return Merged(out / results.CSV_NAME, len(records), len(runs), missing, recomputed)


def describe(result: Merged) -> str:
    missing = f"; shards missing: {', '.join(result.missing_shards)}" if result.missing_shards else ""
    return (f"{result.rows} rows from {result.runs} runs -> {result.csv} (speedups recomputed against each point's "
            f"baseline: {result.recomputed} cells changed{missing})")

