"""--rerun: measure the suspect points of a comparison afresh on this GPU, then let the gate decide again.

A suspect (SLOWER or AMBIGUOUS) may be noise; re-measuring it with the current run's settings tells.
Each suspect's sweep is built from its point (`SweepSpec.for_point`: every axis value of the row, packed
documents and layer width included) and the current run's measurement settings (its spec.json, read as
`nsa_bench.repro` reads it for the re-run command each suspect is printed with), and runs through the sweep
like any other (`nsa_bench.sweep.execute`), into a scratch folder.
"""
from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from nsa_bench import compare
from nsa_bench.repro import settings_of
from nsa_bench.results import read_rows
from nsa_bench.schema import KEY_FIELDS
from nsa_bench.spec import Point, SweepSpec

Remeasure = Callable[[Sequence[dict[str, str]]], pd.DataFrame]
"""Takes the suspect points' key fields, measures them afresh (with their baseline backend rows, for
speedup) and returns the new rows in the CSV schema."""


def local_gpu() -> str | None:
    """The name of the CUDA GPU here, None without one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def spec_for_key(key: dict[str, str], settings: dict) -> SweepSpec:
    """A one-point sweep for a suspect row's key, on its backend and the run's baseline, measured like the
    original run (`settings`: its spec.json)."""
    like = settings_of(settings)
    return SweepSpec.for_point(Point.from_record(key), (like.baseline, key["backend"]), like)


def sweep_remeasure(keys: Sequence[dict[str, str]], settings: dict) -> pd.DataFrame:
    """The default Remeasure: one small sweep per suspect point (with its baseline backend) into a scratch
    folder; returns the fresh rows."""
    from nsa_bench.sweep import SweepError, execute

    frames = []
    with tempfile.TemporaryDirectory(prefix="nsa-bench-rerun-") as scratch:
        for index, key in enumerate(keys):
            try:
                spec = spec_for_key(key, settings)
                outcome = execute(spec, Path(scratch) / f"point{index}", resume=False, plots=False,
                                  echo=lambda _line: None, progress=False)
            except (SweepError, ValueError, KeyError, TypeError) as exc:
                raise compare.CompareError(f"--rerun: cannot re-measure {key.get('mode')} T={key.get('seqlen')}: "
                                           f"{exc}") from exc
            if outcome.csv.exists():
                frames.append(read_rows(outcome.csv))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(KEY_FIELDS))


def rerun_suspects(comparison: compare.Comparison, remeasure: Remeasure | None = None,
                   gpu_here: Callable[[], str | None] | None = None) -> compare.Comparison:
    """Re-measure the suspect points of the current run and decide again on the fresh figures.

    Without a GPU, or on a GPU other than the current run's, the default re-measurement cannot
    stand in for the current run: the comparison is returned as is, with a note saying why.
    """
    todo = compare.suspects(comparison)
    if not todo:
        return compare.with_note(comparison, "--rerun: no suspect points, nothing re-measured")
    if remeasure is None:
        here = (gpu_here or local_gpu)()
        if here is None:
            return compare.with_note(comparison, f"--rerun: no GPU here, cannot re-measure {len(todo)} suspect "
                                                 "point(s); decided on the recorded data")
        if comparison.current.gpu is not None and here != comparison.current.gpu:
            return compare.with_note(comparison, f"--rerun: this GPU ({here}) is not the current run's "
                                                 f"({comparison.current.gpu}); decided on the recorded data")
        remeasure = functools.partial(sweep_remeasure, settings=comparison.current.settings.to_dict())
    fresh = remeasure([p.key_dict() for p in todo])
    note = f"--rerun: re-measured {len(todo)} suspect point(s) ({len(fresh)} fresh rows) before deciding"
    if comparison.current.settings_note:
        note += f" with the sweep's default settings ({comparison.current.settings_note})"
    return compare.decide_again(comparison, fresh, note)
