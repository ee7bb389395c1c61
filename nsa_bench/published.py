"""Published NSA kernel results (`published.csv`), and which of them a run's points can be set beside.

A run's speedup means most next to what others published for the same configuration, labelled by the GPU
it ran on and by what it covers: a selected branch alone is not all of NSA, a module with projections
dilutes attention's share, and an A100 figure is not an H100 one. The figures come from the sources
PAPER.md cites; each row names its source.

`published.csv`, one figure a row (empty cells: the source does not say):

- `source`: the paper or repository, and its figure, table or issue;
- `implementation`: what was timed or counted;
- `gpu`: the GPU it ran on (empty for a count rather than a timing);
- `q_heads`, `kv_heads`, `head_dim_qk`, `head_dim_v`, `block_cmp`, `stride_cmp`, `block_slc`, `n_slc`,
  `window`, `batch`: the configuration, in results.csv's names (q_heads = kv_heads x group_size there);
- `mode`: fwd, bwd, fwdbwd, decode, layer-fwd or layer-bwd (a row without one matches no run);
- `seqlen`: tokens (empty on break-even rows, whose value is the length);
- `value`, `unit`: `speedup` (x), `ms`, `tokens` (KV tokens read per decoding step) or `break-even tokens`
  (the length at which NSA's time equals the baseline's);
- `baseline`: what a speedup or break-even is against (required for those units), by this suite's backend
  names where one exists (`fa2`, `fa2-triton`, `fa3`), so a report can pick the run's own figure against it;
- `covers`: what part of attention the figure covers; `note`: what a reader needs (rounding, readings).
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import pandas as pd

from nsa_bench.breakeven import CONFIG_KEYS
from nsa_bench.messages import show
from nsa_bench.spec import MODES, Point

FILE = Path(__file__).with_name("published.csv")
UNITS = ("speedup", "ms", "tokens", "break-even tokens")
NEEDS_BASELINE = ("speedup", "break-even tokens")
# configuration columns a source may give; a run's value of each (q_heads is derived there)
SHAPE_FIELDS = ("q_heads", "kv_heads", "head_dim_qk", "head_dim_v", "block_cmp", "stride_cmp", "block_slc",
                "n_slc", "window")
CONFIG_FIELDS = (*SHAPE_FIELDS, "batch")


class PublishedError(ValueError):
    """A published-results file that cannot be read (one line naming the file, line and column)."""


@dataclass(frozen=True)
class Published:
    """One published figure."""

    source: str
    implementation: str
    gpu: str
    q_heads: int | None
    kv_heads: int | None
    head_dim_qk: int | None
    head_dim_v: int | None
    block_cmp: int | None
    stride_cmp: int | None
    block_slc: int | None
    n_slc: int | None
    window: int | None
    batch: int | None
    mode: str
    seqlen: int | None
    value: float
    unit: str
    baseline: str
    covers: str
    note: str

    @property
    def group_size(self) -> int | None:
        """Query heads per KV head, where the source gives both."""
        if self.q_heads is None or self.kv_heads is None:
            return None
        return self.q_heads // self.kv_heads


COLUMNS = tuple(f.name for f in fields(Published))
_INTS = (*CONFIG_FIELDS, "seqlen")
_REQUIRED = ("source", "implementation", "unit", "covers")


@dataclass(frozen=True)
class Match:
    """A published figure whose stated configuration agrees with one of a run's configurations.

    `exact`: the source states the GPU and every shape field (heads, head dims, blocks, window), and all agree
    with the run's (batch counts where stated, but is not required: no source here states one). Otherwise
    `differences` says what keeps it partial, e.g. ("gpu A100, this run NVIDIA H100 SXM5 80GB",
    "not stated: window")."""

    published: Published
    mode: str
    config: tuple[tuple[str, object], ...]  # the run's configuration: (column, value) for breakeven.CONFIG_KEYS
    gpu: str  # the run's GPU
    exact: bool
    differences: tuple[str, ...]


def _error(path: Path, line: int, column: str, value: str, why: str) -> PublishedError:
    return PublishedError(f"{path} line {line}: column {column}: {show(value)} {why}")


def _parse(cells: dict[str, str], path: Path, line: int) -> Published:
    values: dict[str, object] = {}
    for column in COLUMNS:
        text = cells[column].strip()
        if column in _INTS:
            if text and not (re.fullmatch(r"[0-9]+", text) and int(text) > 0):
                raise _error(path, line, column, text, "is not a positive whole number")
            values[column] = int(text) if text else None
        elif column == "value":
            try:
                number = float(text)
            except ValueError:
                raise _error(path, line, column, text, "is not a number") from None
            if not (math.isfinite(number) and number > 0):
                raise _error(path, line, column, text, "must be a positive number")
            values[column] = number
        else:
            values[column] = text
    for column in _REQUIRED:
        if not values[column]:
            raise _error(path, line, column, "", "is empty (required)")
    if values["unit"] not in UNITS:
        raise _error(path, line, "unit", str(values["unit"]), f"is not a unit ({', '.join(UNITS)})")
    if values["mode"] and values["mode"] not in MODES:
        raise _error(path, line, "mode", str(values["mode"]), f"is not a mode ({', '.join(MODES)}) or empty")
    if values["unit"] in NEEDS_BASELINE and not values["baseline"]:
        raise _error(path, line, "baseline", "", f"is empty (required for unit {values['unit']})")
    if values["unit"] == "break-even tokens" and values["seqlen"] is not None:
        raise _error(path, line, "seqlen", cells["seqlen"], "must be empty on a break-even row (its value is the length)")
    return Published(**values)  # type: ignore[arg-type]


def load(path: Path | None = None) -> tuple[Published, ...]:
    """The rows of a published-results CSV (default: the one shipped with the package)."""
    path = FILE if path is None else Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [c.strip() for c in next(reader, [])]
            if tuple(header) != COLUMNS:
                raise PublishedError(f"{path} line 1: the header must be {','.join(COLUMNS)}")
            rows = []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(COLUMNS):
                    raise PublishedError(f"{path} line {reader.line_num}: {len(cells)} columns, expected {len(COLUMNS)}")
                rows.append(_parse(dict(zip(COLUMNS, cells)), path, reader.line_num))
    except UnicodeDecodeError:
        raise PublishedError(f"{path} is not a text CSV (not UTF-8)") from None
    except csv.Error as exc:
        raise PublishedError(f"{path}: not a CSV ({show(str(exc), 80)})") from None
    except OSError as exc:
        raise PublishedError(f"cannot read {path}: {exc.strerror or exc}") from None
    return tuple(rows)


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def same_gpu(published: str, run: str) -> bool:
    """Whether a run's GPU is the published one, as far as the source names it ("A100" is any A100 and
    not an H100; "H800" is not an H100)."""
    wanted = _words(published)
    return bool(wanted) and wanted <= _words(run)


def _configurations(run: pd.DataFrame | Point, gpu: str) -> list[tuple[str, dict[str, object], str, set[int]]]:
    """(mode, configuration, gpu, swept lengths) of each configuration of a run, in run order."""
    if isinstance(run, Point):
        return [(run.mode, {k: getattr(run, k) for k in CONFIG_KEYS}, gpu, {run.seqlen})]
    found: list[tuple[str, dict[str, object], str, set[int]]] = []
    for key, part in run.groupby(["mode", *CONFIG_KEYS, "gpu"], sort=False):
        mode, *config, run_gpu = (v.item() if hasattr(v, "item") else v for v in key)
        found.append((str(mode), dict(zip(CONFIG_KEYS, config)), str(run_gpu) or gpu, {int(t) for t in part["seqlen"]}))
    return found


def _differences(row: Published, gpu: str) -> tuple[str, ...]:
    if not row.gpu:
        why = ["gpu not stated"]
    elif not same_gpu(row.gpu, gpu):
        why = [f"gpu {row.gpu}, this run {gpu or 'unknown'}"]
    else:
        why = []
    unstated = [name for name in SHAPE_FIELDS if getattr(row, name) is None]
    if unstated:
        why.append("shape not stated" if len(unstated) == len(SHAPE_FIELDS) else f"not stated: {', '.join(unstated)}")
    return tuple(why)


def _agrees(row: Published, mode: str, config: dict[str, object], lengths: set[int]) -> bool:
    """Whether the source states the mode and every field it states (mode, length, configuration) is the run's."""
    run = {**config, "q_heads": int(config["kv_heads"]) * int(config["group_size"])}  # type: ignore[call-overload]
    if row.mode != mode:  # a figure of an unstated mode cannot be set beside a fwd or a decode time
        return False
    if row.seqlen is not None and row.seqlen not in lengths:
        return False
    return all(getattr(row, name) is None or getattr(row, name) == run[name] for name in CONFIG_FIELDS)


def matching(run: pd.DataFrame | Point, rows: Sequence[Published] | None = None, gpu: str = "") -> list[Match]:
    """The published rows that agree with a run's configurations, one Match per row and configuration.

    `run` is a results frame (`results.read_rows`; its `gpu` column names the GPU) or one Point (`gpu` names
    it). A row agrees when its mode is the run's, every configuration field its source states is the run's,
    and the length it gives (if any) is one of the run's. The GPU need not be the same; `exact` says whether
    it is. Rows that state no mode never match (load() still returns them).
    """
    rows = load() if rows is None else rows
    found = []
    for mode, config, run_gpu, lengths in _configurations(run, gpu):
        for row in rows:
            if _agrees(row, mode, config, lengths):
                differences = _differences(row, run_gpu)
                found.append(Match(published=row, mode=mode, config=tuple(config.items()), gpu=run_gpu,
                                   exact=not differences, differences=differences))
    return found

