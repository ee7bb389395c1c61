"""Where a command that reads runs may write its own output: never over its inputs or over a run's files.

`compare RUN RUN --md RUN/results.csv` once replaced a run's CSV with markdown and said PASS. An output path
is refused, before anything is read or measured, when it is (after resolving symlinks) one of the command's
input files, bears the name of a run folder's file, is a folder, is the command's other output, or is an
existing file inside a run folder (a folder holding results.csv or progress.jsonl, or one of its subfolders
such as plots/) that the command did not write itself (its `is_own` says so: a retry may rewrite its own
gate.md, never the run's breakeven.csv or plots); a path that cannot be written is named in one line. A new
file in a run folder (`--md RUN/gate.md`) is allowed.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from nsa_bench.messages import show
from nsa_bench.results import CSV_NAME, ENV_NAME, SPEC_NAME, run_dir
from nsa_bench.resume import PROGRESS_NAME

RUN_FILES = (CSV_NAME, ENV_NAME, SPEC_NAME, PROGRESS_NAME)
RUN_MARKERS = (CSV_NAME, PROGRESS_NAME)  # a folder holding one of these is a run folder
IsOwn = Callable[[str, Path], bool]  # (flag, existing file) -> whether this command wrote it for that flag


class OutputError(ValueError):
    """An output path the command must not or cannot write (one line naming the flag and the path)."""


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return Path(os.path.abspath(path))


def input_files(inputs: Sequence[Path]) -> set[Path]:
    """Every file a comparison of `inputs` (run folders or CSV files) reads, resolved."""
    files: set[Path] = set()
    for given in inputs:
        path = Path(given)
        folder = run_dir(path)
        if not path.is_dir():
            files.add(_resolved(path))
        files.update(_resolved(folder / name) for name in RUN_FILES)
    return files


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def run_folder_of(file: Path) -> Path | None:
    """The run folder `file` lies in, directly or in one of its subfolders (plots/, envs/); None outside runs."""
    for folder in dict.fromkeys((file.parent, file.parent.parent)):
        try:
            if any((folder / name).exists() for name in RUN_MARKERS):
                return folder
        except OSError:
            continue
    return None


def _never_own(_flag: str, _path: Path) -> bool:
    return False


def _refusal(flag: str, path: Path, inputs: set[Path], taken: dict[Path, str], is_own: IsOwn) -> str:
    """Why `path` must not be written ("" when it may be)."""
    target = _resolved(path)
    if path.is_dir() or target.is_dir():
        return "is a folder"
    if target in inputs:
        return "is an input of this command"
    name = next((n for n in (Path(path).name, target.name) if n in RUN_FILES), "")
    if name:
        return f"bears the name of a run folder's {name}"
    if target in taken:
        return f"is also the {taken[target]} output"
    run = run_folder_of(target) if target.exists() else None
    if run is not None and not is_own(flag, target):
        return (f"would overwrite a file of the run folder {show(str(run), 120)} that this command did not write "
                "(name a new file)")
    folder = target.parent
    if not folder.is_dir():
        return f"cannot be written: {folder} is not a folder"
    if not _writable(folder) or (target.exists() and not _writable(target)):
        return "cannot be written (permission denied)"
    return ""


def check_outputs(inputs: Sequence[Path], outputs: Sequence[tuple[str, Path | None]],
                  is_own: IsOwn = _never_own) -> None:
    """OutputError for the first output (flag, path) this command must not or cannot write; `is_own` tells an
    existing file in a run folder that this command wrote for that flag (which it may write again)."""
    files = input_files(inputs)
    taken: dict[Path, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        why = _refusal(flag, Path(path), files, taken, is_own)
        if why:
            raise OutputError(f"{flag} {show(str(path), 200)} {why}; nothing was written")
        taken[_resolved(Path(path))] = flag


def write_output(flag: str, path: Path, text: str) -> None:
    """Write one output; OutputError naming the flag and the path when the system refuses."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{flag} {show(str(path), 200)} cannot be written: {exc.strerror or exc}") from None
