"""`nsa-bench merge RUN... --out DIR`: the runs of one sweep (its --shard parts, or runs on several machines)
as one run folder.

The runs must be of the same sweep (identical spec.json: axes and measurement settings). The merged CSV
holds every row once; shards of one split are interleaved back into the unsharded run order (a shard
holds every N-th point of it). Speedups are recomputed against the baseline row of the same point on the
same GPU (the `gpu` column), wherever that row came from; where the run's own speedup already is that
ratio (to the CSV's six digits) its cell is kept, so a merge of shards reads exactly like the unsharded run.
Each run's env.json is kept as envs/<run folder name>.json; env.json is the first run's, naming them all.

Key cells are compared as numbers where they are numbers: `32768.0` (a CSV saved by a spreadsheet) is the
point 32768, written back as `32768`. A run must hold rows (a folder without results.csv, or with an empty
one, is refused, not merged as contributing nothing). The merged folder is written whole into a hidden
sibling and renamed into place at the end, so an interrupted merge (Ctrl-C, SIGTERM) leaves no half-written
--out in the way of a retry; an --out folder that exists and is no run may take the merge, unless it holds
a file the merge would write (refused, naming it, touching nothing).
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from nsa_bench import breakeven, reading, results, resume
from nsa_bench.messages import show
from nsa_bench.schema import FIELDS, STAGE_TOTAL

ENVS_DIR = "envs"
_I = {name: FIELDS.index(name) for name in FIELDS}
_POINT_FIELDS = tuple(f for f in resume.TASK_FIELDS if f != "backend")
_NUMBER_KEYS = tuple(_I[name] for name in (*results.INT_KEY_COLUMNS, "d_model"))


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


def _whole(text: str) -> str:
    """A number key cell in its integer spelling when it is a whole number (`32768.0` -> `32768`)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if math.isfinite(value) and value.is_integer() else text


def _normalized(record: list[str]) -> list[str]:
    for index in _NUMBER_KEYS:
        record[index] = _whole(record[index])
    return record


def _text(file: Path, where: str) -> str:
    """The run's CSV as text; MergeError when there is none, or no row in it."""
    try:
        raw = file.read_bytes() if file.is_file() else None
    except OSError as exc:
        raise MergeError(f"RUN {where}: cannot read {file}: {exc.strerror or exc}") from None
    if raw is None:
        raise MergeError(f"RUN {where}: no {results.CSV_NAME}, so no rows to merge (leave out a run that wrote none)")
    if not raw.strip():
        raise MergeError(f"RUN {where}: {file} is empty: no rows to merge (leave out a run that wrote none)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MergeError(f"RUN {where}: {file} is not a text CSV (not UTF-8)") from None


def _records(file: Path, where: str) -> tuple[list[list[str]], bool]:
    """(well-formed data records with whole-number key cells normalized, whether a line was cut or malformed)
    of a run's CSV; MergeError for a file that holds no rows, or rows of another schema."""
    text = _text(file, where)
    try:
        records = list(csv.reader(io.StringIO(text[: text.rfind("\n") + 1], newline="")))
    except csv.Error as exc:
        raise MergeError(f"RUN {where}: {file} is not a results CSV ({exc})") from None
    if records and records[0] != list(FIELDS):
        header = show(",".join(records[0]), 80)
        raise MergeError(f"RUN {where}: {file} has the header {header}, not the one this nsa-bench writes: merge "
                         "needs runs in this version's schema (merge them with the nsa-bench that made them)")
    data = [r for r in records[1:] if len(r) == len(FIELDS)]
    cut = not text.endswith("\n") or len(data) != len(records) - 1
    if not data and not cut:
        raise MergeError(f"RUN {where}: {file} has a header but no rows: no rows to merge (leave out a run that "
                         "wrote none)")
    if data:
        try:
            results.validate(pd.DataFrame(data, columns=list(FIELDS)), file)
        except results.ResultsError as exc:
            raise MergeError(f"RUN {where}: {exc}") from None
    return [_normalized(r) for r in data], cut


def _load(path: Path) -> Run:
    folder = results.run_dir(Path(path))
    where = show(str(path), 120)
    if not Path(path).exists() or not folder.is_dir():
        raise MergeError(f"RUN {where}: no such run folder")
    try:
        spec = results.read_json(folder / results.SPEC_NAME)
        env = results.read_json(folder / results.ENV_NAME)
    except results.ResultsError as exc:
        raise MergeError(f"RUN {where}: {exc}") from None
    if not spec:
        raise MergeError(f"RUN {where}: no {results.SPEC_NAME} (not a run folder of nsa-bench sweep)")
    records, damaged = _records(folder / results.CSV_NAME, where)
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


def _written_names(names: Sequence[str]) -> list[str]:
    """The files a merge writes into --out, relative to it."""
    return [results.CSV_NAME, resume.PROGRESS_NAME, results.SPEC_NAME, results.ENV_NAME, breakeven.CSV_NAME,
            *(f"{ENVS_DIR}/{name}.json" for name in names)]


def _check_out(out: Path, runs: Sequence[Run], folders: Sequence[Path], names: Sequence[str]) -> None:
    """MergeError when --out is a run, one of the runs, or a folder holding a file the merge would write."""
    if out.resolve() in folders:
        raise MergeError(f"--out {show(str(out), 100)} is one of the runs: choose a new folder")
    if resume.has_run(out):
        raise MergeError(f"--out {show(str(out), 100)} already holds a run: choose a new folder")
    envs = out / ENVS_DIR
    if (envs.exists() or envs.is_symlink()) and not envs.is_dir():
        raise MergeError(f"--out {show(str(out), 100)} holds {show(str(envs), 120)}, which is not a folder (the merge "
                         "writes each run's env.json there): choose a new folder, or move it away")
    for name in _written_names(names):
        target = out / name
        if target.exists() or target.is_symlink():
            raise MergeError(f"--out {show(str(out), 100)} is not a run but holds {show(str(target), 120)}, a file the "
                             "merge would write: choose a new folder, or move that file away")


def _write_run(folder: Path, runs: Sequence[Run], ordered: Sequence[Run], names: Sequence[str],
               records: list[list[str]], command: str) -> None:
    """Write the merged run folder's files into `folder` (an empty folder)."""
    (folder / ENVS_DIR).mkdir()
    for name, run in zip(names, ordered):
        results.write_json(folder / ENVS_DIR / f"{name}.json", run.env)
    env = {key: value for key, value in ordered[0].env.items() if key != "shard"}
    env["merged_from"] = [{"run": str(run.folder), "env": f"{ENVS_DIR}/{name}.json",
                           **({"shard": run.env["shard"]} if "shard" in run.env else {})}
                          for name, run in zip(names, ordered)]
    env["measured"] = any(run.env.get("measured") for run in runs)
    if command:
        env["merge_command"] = command
    results.write_json(folder / results.SPEC_NAME, runs[0].spec)
    results.write_json(folder / results.ENV_NAME, env)
    results.replace_text(folder / results.CSV_NAME, resume.results_header() + resume._records_text(records))
    results.replace_text(folder / resume.PROGRESS_NAME, "".join(run.progress for run in ordered))
    frame = results.read_rows(folder / results.CSV_NAME)
    if not frame.empty:
        breakeven.write_csv(breakeven.break_evens(frame), folder)  # beside results.csv, as a sweep leaves it


def _move_into(source: Path, target: Path, moved: list[Path]) -> None:
    """Move every entry of `source` into the existing folder `target` (into its subfolders where they exist)."""
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _move_into(entry, destination, moved)
        else:
            os.rename(entry, destination)
            moved.append(destination)


def _publish(staging: Path, out: Path) -> None:
    """Put the finished folder in place: renamed whole when --out does not exist, else its files moved in, and
    taken out again if the move is cut short, so --out holds the whole merge or none of it."""
    if not out.exists():
        os.rename(staging, out)
        return
    moved: list[Path] = []
    try:
        _move_into(staging, out, moved)
    except BaseException:
        for path in reversed(moved):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def merge(paths: Sequence[Path], out: Path, command: str = "") -> Merged:
    """Merge the run folders `paths` into the new run folder `out` (see the module docstring)."""
    if not paths:
        raise MergeError("name at least one RUN")
    runs = [_load(p) for p in paths]
    folders = [run.folder.resolve() for run in runs]
    if len(set(folders)) != len(folders):
        raise MergeError("a RUN is named twice")
    _check_same_sweep(runs)
    ordered, missing = _shards(runs)
    names = _env_names(ordered)
    _check_out(out, runs, folders, names)
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
    place = Path(os.path.abspath(out))
    staging: Path | None = None
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{place.name}.merging-", dir=place.parent))
        _write_run(staging, runs, ordered, names, records, command)
        _publish(staging, place)
    except OSError as exc:
        raise MergeError(f"cannot write into --out {show(str(out), 100)}: {exc.strerror or exc}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a rename; what is left after a failure
    return Merged(out / results.CSV_NAME, len(records), len(runs), missing, recomputed)


def interrupted_text(out: Path, signal_name: str) -> str:
    """What an interrupted merge left in --out, in one line: the whole merge (the signal came after it was in
    place) or nothing."""
    csv_file = out / results.CSV_NAME
    try:
        rows = len(resume.csv_records(csv_file)[0]) if csv_file.is_file() else None
    except resume.ResumeError:
        rows = None
    if rows is not None:
        return f"Interrupted ({signal_name}) after the merge was complete: {rows} rows in {csv_file}."
    return (f"Interrupted ({signal_name}): nothing was written to --out {show(str(out), 120)} (a merge puts its "
            "folder in place whole at the end): run the same command again.")


def describe(result: Merged) -> str:
    missing = f"; shards missing: {', '.join(result.missing_shards)}" if result.missing_shards else ""
    return (f"{result.rows} rows from {result.runs} runs -> {result.csv} (speedups recomputed against each point's "
            f"baseline: {result.recomputed} cells changed{missing})")

