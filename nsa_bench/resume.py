"""Exact --resume: which tasks of a run folder are complete, and the folder repaired to hold only those.

A task (one point on one backend) writes several rows: its `total` and, for NSA backends, one per stage.
Its rows go to results.csv in one write, then one line naming the task and the stages of its rows goes to
progress.jsonl. A task is done only when both are on disk: its progress line, and every row that line
names (a task the time budget skipped is not done: the resumed run measures it). Anything else found in the folder — rows of a task without its progress line, a task missing a
stage row, a line cut short by a crash, a duplicate — is removed on --resume and the task runs again,
so a resumed run ends with exactly the rows of an uninterrupted one. A point's non-baseline tasks are
redone with its baseline task, since their speedup was computed from it.

`check_compatible` refuses to resume a folder made by a different sweep (other than in axes being
extended) or for another GPU, before anything in the folder is touched.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Mapping

from nsa_bench import reading, results
from nsa_bench.messages import show
from nsa_bench.schema import FIELDS, KEY_FIELDS, STAGE_TOTAL, STATUS_SKIPPED

PROGRESS_NAME = "progress.jsonl"
TASK_FIELDS = tuple(f for f in KEY_FIELDS if f != "stage")
TaskKey = tuple[str, ...]  # TASK_FIELDS of a task, as the CSV's text

_KEY_INDEX = tuple(FIELDS.index(f) for f in TASK_FIELDS)
_STAGE_INDEX = FIELDS.index("stage")
_HEADER = ",".join(FIELDS)


class ResumeError(ValueError):
    """The run folder cannot be resumed by this sweep (one line: what differs, where)."""


@dataclass(frozen=True)
class Recovered:
    """The state of a run folder after repair: what is done and what is on disk."""

    done: frozenset[TaskKey]
    times: Mapping[TaskKey, float | None]  # each done task's total time (measured median, else prediction)
    rows: int  # rows in results.csv
    dropped: int  # rows removed: partial tasks, cut lines, duplicates


def task_key(values: Mapping[str, object]) -> TaskKey:
    """The key of a task from a row's (or a point's) values."""
    return tuple(str(values[f]) for f in TASK_FIELDS)


def has_run(out: Path) -> bool:
    """Whether the folder holds rows or progress of an earlier run (what --resume would continue)."""
    return any(_size(out / name) > 0 for name in (results.CSV_NAME, PROGRESS_NAME))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


# ------------------------------------------------------------------ writing
def progress_line(key: TaskKey, stages: Iterable[str]) -> str:
    return json.dumps({"task": dict(zip(TASK_FIELDS, key)), "stages": list(stages)}, separators=(",", ":")) + "\n"


def commit(out: Path, key: TaskKey, rows: list) -> None:
    """Append a task's rows, then its progress line; on any interruption neither stays on disk."""
    csv_file, progress = out / results.CSV_NAME, out / PROGRESS_NAME
    sizes = {path: _size(path) for path in (csv_file, progress)}
    try:
        results.append_rows(csv_file, rows)
        results.append_text(progress, progress_line(key, (r.stage for r in rows)))
    except BaseException:
        for path, size in sizes.items():
            _truncate(path, size)
        raise


def _truncate(path: Path, size: int) -> None:
    try:
        if path.exists():
            with path.open("r+b") as handle:
                handle.truncate(size)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError:
        pass  # the next --resume repairs whatever is left


def start_fresh(out: Path) -> None:
    """A new run in this folder: no progress of an earlier one may be trusted."""
    try:
        (out / PROGRESS_NAME).unlink(missing_ok=True)
    except OSError as exc:
        raise ResumeError(f"cannot clear {out / PROGRESS_NAME}: {exc.strerror or exc}") from None


# ------------------------------------------------------------------ reading
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        raise ResumeError(f"cannot read {path}: {exc.strerror or exc}") from None


def csv_records(path: Path) -> tuple[list[list[str]], bool]:
    """(well-formed data records, whether anything was cut or malformed) of a run's CSV.

    A last line without its newline is a write cut short and is dropped; so is any line with the wrong
    number of fields. A file whose header is not this version's is refused: resuming it would mix schemas.
    """
    raw = _read_bytes(path)
    cut = not raw.endswith(b"\n")
    complete = raw[: raw.rfind(b"\n") + 1]
    if not complete:
        if _HEADER.encode().startswith(raw):  # empty, or the header cut short
            return [], bool(raw)
        raise ResumeError(f"{path} is not a results CSV (its first line is not the header nsa-bench writes)")
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError:
        raise ResumeError(f"{path} is not a text CSV (not UTF-8): move it away or choose another --out") from None
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ResumeError(f"{path} is not a results CSV ({exc})") from None
    if not records or records[0] != list(FIELDS):
        header = show(",".join(records[0]) if records else "", 80)
        raise ResumeError(f"{path}: its header {header} is not the one this nsa-bench writes: "
                          "resume it with the version that made it, or choose another --out")
    data = [r for r in records[1:] if len(r) == len(FIELDS)]
    if data:  # cells that are not what their column holds (text in a number column): refused, naming the cell
        import pandas as pd

        try:
            results.validate(pd.DataFrame(data, columns=list(FIELDS)), path)
        except results.ResultsError as exc:
            raise ResumeError(f"{exc} (move the file away or choose another --out)") from None
    return data, cut or len(data) != len(records) - 1


def progress_entries(path: Path) -> dict[TaskKey, tuple[str, ...]]:
    """Task -> the stages of its rows, from progress.jsonl; a line that is not a well-formed entry is ignored
    (its task simply runs again)."""
    raw = _read_bytes(path)
    entries: dict[TaskKey, tuple[str, ...]] = {}
    for line in raw[: raw.rfind(b"\n") + 1].splitlines():
        try:
            entry = json.loads(line.decode("utf-8"))
            task, stages = entry["task"], entry["stages"]
            key = tuple(task[f] for f in TASK_FIELDS)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if (all(isinstance(v, str) for v in key) and isinstance(stages, list) and stages
                and all(isinstance(s, str) for s in stages) and len(set(stages)) == len(stages)):
            entries[key] = tuple(stages)
    return entries


def _time(record: list[str]) -> float | None:
    return reading.text_time(*(record[FIELDS.index(name)] for name in ("status", "ms_median", "predicted_ms")))


def recover(out: Path, baseline: str | None, sweep: frozenset[TaskKey] | None = None) -> Recovered:
    """Repair the run folder for --resume and say which tasks are done (see the module docstring).

    `baseline`: the backend whose task every other task of a point depends on (None: no dependency).
    `sweep`: the resumed sweep's tasks; a row that repair would remove and that the sweep would not write
    again is refused (`inspect`), never deleted.
    """
    state = inspect(out, baseline, sweep)
    csv_file, progress = out / results.CSV_NAME, out / PROGRESS_NAME
    if state.damaged or len(state.kept) != len(state.records):
        results.replace_text(csv_file, results_header() + _records_text(state.kept) if state.kept else "")
    progress_text = "".join(progress_line(key, stages) for key, stages in state.entries.items() if key in state.done)
    if _read_bytes(progress) != progress_text.encode("utf-8"):
        results.replace_text(progress, progress_text)
    by_task = state.by_task
    times = {key: _time(by_task[key][STAGE_TOTAL]) for key in state.done if STAGE_TOTAL in by_task[key]}
    return Recovered(state.done, times, len(state.kept), len(state.records) - len(state.kept))


@dataclass(frozen=True)
class Inspection:
    """What a run folder holds, read without changing it: its rows, progress, and the tasks that are done."""

    records: list[list[str]]
    damaged: bool
    entries: dict[TaskKey, tuple[str, ...]]
    by_task: dict[TaskKey, dict[str, list[str]]]
    done: frozenset[TaskKey]
    kept: list[list[str]]  # the rows of done tasks, the file's order, first copy of each


def inspect(out: Path, baseline: str | None, sweep: frozenset[TaskKey] | None = None) -> Inspection:
    """Read a run folder for --resume (and its dry run) without touching it; ResumeError for a folder that
    cannot be resumed: results.csv or progress.jsonl a link (appending would write into another run), or
    rows repair would remove although `sweep` (the resumed sweep's tasks) will not write them again."""
    csv_file, progress = out / results.CSV_NAME, out / PROGRESS_NAME
    for path in (csv_file, progress):
        if path.is_symlink():
            raise ResumeError(f"{path} is a link (to {show(os.readlink(path), 100)}): --resume would append to "
                              "another run's file; copy the run into a folder of its own, or choose another --out")
        if path.is_file() and path.stat().st_nlink > 1:
            raise ResumeError(f"{path} is a hard link ({path.stat().st_nlink} names for one file): --resume would "
                              "append to the other name's file too; copy the run into a folder of its own, or "
                              "choose another --out")
    records, damaged = csv_records(csv_file)
    if records and not progress.exists():
        raise ResumeError(f"{out} has rows but no {PROGRESS_NAME} (made by an nsa-bench that did not record "
                          "complete points): its partial points cannot be told apart; choose another --out")
    entries = progress_entries(progress)
    by_task: dict[TaskKey, dict[str, list[str]]] = {}
    for record in records:
        by_task.setdefault(tuple(record[i] for i in _KEY_INDEX), {}).setdefault(record[_STAGE_INDEX], record)
    done = {key for key, stages in entries.items() if set(by_task.get(key, {})) == set(stages)}
    status = FIELDS.index("status")
    done = {key for key in done  # a task the time budget skipped is measured by the resumed run
            if by_task[key].get(STAGE_TOTAL, [""] * len(FIELDS))[status] != STATUS_SKIPPED}
    if baseline is not None:
        backend = TASK_FIELDS.index("backend")
        done = {key for key in done if key[backend] == baseline
                or key[:backend] + (baseline,) + key[backend + 1:] in done}
    kept, seen = [], set()
    for record in records:  # the file's order, first copy of each row
        row = (tuple(record[i] for i in _KEY_INDEX), record[_STAGE_INDEX])
        if row[0] in done and row not in seen:
            seen.add(row)
            kept.append(record)
    if sweep is not None:
        _refuse_losing(csv_file, records, entries, done | sweep)
    return Inspection(records, damaged, entries, by_task, frozenset(done), kept)


def _refuse_losing(csv_file: Path, records: list[list[str]], entries: Mapping[TaskKey, tuple[str, ...]],
                   safe: frozenset[TaskKey] | set[TaskKey]) -> None:
    """Refuse to remove a row whose task is neither done nor in the resumed sweep: it would be lost, not run
    again (a point of another sweep, or a row someone added). A task of the sweep cut off by an interruption
    runs again and its partial rows go as ever; one the sweep does not hold is refused even then: resume with
    the sweep that made it."""
    keys = [tuple(record[i] for i in _KEY_INDEX) for record in records]
    for line, key in enumerate(keys):
        if key not in safe:
            what = dict(zip(TASK_FIELDS, key))
            why = "it has no line in " + PROGRESS_NAME if key not in entries else "its point is incomplete"
            raise ResumeError(f"{csv_file} line {line + 2} ({what['backend']} {what['mode']} T={what['seqlen']}): "
                              f"{why} and this sweep does not include it, so --resume would delete it; resume with "
                              "the sweep that made it (or add its axis values), or move the row out of the file")


def results_header() -> str:
    return _HEADER + "\n"


def _records_text(records: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    return buffer.getvalue()


# ------------------------------------------------------------------ is it the same sweep?
# settings that change what a row means: a resumed run must keep them (its axes may change)
SETTINGS = ("baseline", "reps", "warmup", "seed", "cuda_graph", "check_seqlen")
AXIS_FIELDS = ("seqlens", "batches", "kv_heads", "q_heads", "group_sizes", "head_dims", "block_cmp", "stride_cmp",
               "block_slc", "n_slc", "window", "modes", "dtypes", "d_models", "doc_lens", "backends", "more_baselines")


def _flag(field: str) -> str:
    from nsa_bench.suites import OPTIONS

    return next((f"--{flag}" for flag, (name, _) in OPTIONS.items() if name == field), f"--{field.replace('_', '-')}")


def _frozen(value: object) -> object:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _check_spec_record(spec: object, old: Mapping[str, object], spec_file: Path) -> None:
    """spec.json must hold a sweep's spec before a resumed run keeps its values: the field at fault named
    where one alone is wrong, else the whole record's fault."""
    make = type(spec).from_dict  # type: ignore[attr-defined]
    try:
        make(old)
        return
    except (ValueError, TypeError) as exc:
        whole = str(exc)
    for field, value in old.items():
        if field in AXIS_FIELDS and not isinstance(value, list):
            raise ResumeError(f"cannot resume: {spec_file}: {field} is {show(value)}, not a list")
        try:
            make({field: value})
        except (ValueError, TypeError):
            raise ResumeError(f"cannot resume: {spec_file}: {field} is {show(value)}, not a value a sweep has: "
                              "choose another --out") from None
    raise ResumeError(f"cannot resume: {spec_file} is not a sweep's spec ({show(whole, 120)}): choose another "
                      "--out")


def check_compatible(out: Path, spec: object, gpu_key: str, device: str | None) -> None:
    """Refuse (ResumeError) to resume `out` with a sweep that differs in anything but its axes, or on
    another GPU (`gpu_key`: the spec predictions and floors use; `device`: the CUDA device measured, None
    without one).

    Axes may differ: resuming with `--mode bwd` a run of `--mode fwd` extends the run by the backward
    points (the plan of docs/gpu-run.md), and `merged_spec` records the union. What a row means may
    not differ: reps, warmup, seed, baseline, check length, CUDA graphs, the GPU.
    """
    spec_file, env_file = out / results.SPEC_NAME, out / results.ENV_NAME
    try:
        old, env = results.read_json(spec_file), results.read_json(env_file)
    except results.ResultsError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None
    if not old or not env:
        missing = spec_file if not old else env_file
        raise ResumeError(f"cannot resume {out}: {missing.name} is missing or empty, so it cannot be checked "
                          "that this is the same sweep on the same GPU")
    _check_spec_record(spec, old, spec_file)
    for field in (f.name for f in fields(spec)):
        if field not in old or field == "gpu":
            continue
        was, now = _frozen(old[field]), getattr(spec, field)
        if field in AXIS_FIELDS:  # a resumed sweep adds its points to the run: any axis values will do
            if not isinstance(was, tuple):
                raise ResumeError(f"cannot resume: {spec_file}: {field} is {show(old[field])}, not a list")
        elif field in SETTINGS and was != now:
            raise ResumeError(f"cannot resume {out}: it was run with {_flag(field)} {show(was)}, this sweep has "
                              f"{show(now)}: choose another --out for a different sweep")
    target = env.get("target_gpu")
    if not isinstance(target, dict) or not isinstance(target.get("key"), str):
        raise ResumeError(f"cannot resume: {env_file} has no target_gpu with a key (it holds "
                          f"{show(target)}), so the GPU its rows are for is unknown: choose another --out")
    old_key = target["key"]
    if old_key != gpu_key:
        raise ResumeError(f"cannot resume {out}: its rows are for GPU {show(old_key)}, this sweep's for "
                          f"{gpu_key!r} (--gpu): mixing GPUs in one run is refused; choose another --out")
    old_device = env.get("gpu") if env.get("measured") else None
    if old_device != device:
        def where(name: object) -> str:
            return f"measured on {name}" if name else "predicted without a GPU"

        raise ResumeError(f"cannot resume {out}: it was {where(old_device)}, this sweep would be {where(device)}: "
                          "choose another --out")


def merged_spec(old: Mapping[str, object], spec: object) -> dict[str, object]:
    """spec.json of a resumed run: the new sweep's settings, each axis the union of the run's and the new
    sweep's values (the run's first, in order)."""
    merged = spec.to_dict()
    for field in AXIS_FIELDS:
        was = _frozen(old.get(field, ()))
        if isinstance(was, tuple):
            merged[field] = (*was, *(v for v in merged[field] if v not in was))
    return merged
