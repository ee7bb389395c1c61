"""Where NSA starts to pay: the sequence length at which an NSA backend's time equals a dense baseline's.

Users ask "from what context length is NSA worth it on my GPU?", and a table of speedups at 8k, 16k, ...
answers it only roughly. For each mode, configuration (every key column but seqlen, and the GPU), NSA
backend (family "nsa" in the backends registry) and dense baseline (family "dense", or named in the CSV's
`baseline` column) of a results frame, the time ratio r = NSA / baseline is taken at every swept length
where both have a time. The break-even length is where r crosses 1, with log(seqlen) linear in log(r)
between the two neighbouring swept lengths: attention times are close to power laws in the length, so
a straight line in log-log is their natural interpolant.

Times: nsa_bench.reading's one rule (the measured median where a row's status is `ok`, else the roofline
floor where it is `predicted`). Rows of any other status give no time (a failed point is not a slow one),
and a length at which either side has no time is left out of the series. NSA counts as faster where r < 1.

Several crossings (noise near r = 1, or a ratio that turns): the answer is where NSA starts to pay for good
within the sweep, the last crossing from slower to faster, after which NSA is faster at every longer swept
length. `where` says which case a record is:

- `below`: NSA is faster at every swept length (no seqlen; `upper` is the shortest length);
- `between`: one crossing, from slower to faster (seqlen interpolated between `lower` and `upper`);
- `several`: the ratio crossed 1 more than once and NSA is faster at the longest length (seqlen: the last
  crossing from slower to faster);
- `beyond`: NSA is slower at the longest swept length (no seqlen; `lower` is the longest length;
  `crossings` > 0 says it was faster at some shorter one).

`breakeven.csv` columns: `mode`, the configuration (CONFIG_KEYS: batch ... doc_lens, as in results.csv),
`gpu`, `nsa` (the NSA backend), `baseline` (the dense backend), `seqlen` (tokens, interpolated; empty for
below/beyond), `where`, `kind` (`measured`, `predicted`, or `mixed` when the series mixes both), `lower`,
`upper` (the swept lengths around the crossing, empty where there is none), `crossings` (how many times the
ratio crossed 1) and `lengths` (how many swept lengths had both times).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from nsa_bench import reading
from nsa_bench.results import replace_text
from nsa_bench.schema import KEY_FIELDS, STATUS_OK
from nsa_bench.spec import LAYER_MODES

CSV_NAME = "breakeven.csv"
# a configuration: the key columns that are neither what varies along a series nor what is compared
CONFIG_KEYS = tuple(k for k in KEY_FIELDS if k not in ("mode", "backend", "stage", "seqlen"))
BELOW, BETWEEN, SEVERAL, BEYOND = "below", "between", "several", "beyond"
MEASURED, PREDICTED, MIXED = "measured", "predicted", "mixed"
COLUMNS = ("mode", *CONFIG_KEYS, "gpu", "nsa", "baseline", "seqlen", "where", "kind", "lower", "upper",
           "crossings", "lengths")


@dataclass(frozen=True)
class BreakEven:
    """Where one NSA backend's time meets one dense baseline's along the swept lengths of one configuration."""

    mode: str
    config: tuple[tuple[str, object], ...]  # (column, value) for each of CONFIG_KEYS
    gpu: str
    nsa: str
    baseline: str
    seqlen: float | None  # tokens at which the times are equal; None for below / beyond
    where: str  # below, between, several, beyond
    kind: str  # measured, predicted, mixed
    lower: int | None  # the swept length before the crossing (beyond: the longest)
    upper: int | None  # the swept length after it (below: the shortest)
    crossings: int
    lengths: int

    def as_dict(self) -> dict[str, object]:
        """A breakeven.csv record: mode, the configuration columns, then the other fields."""
        record = asdict(self)
        config = dict(record.pop("config"))
        return {"mode": record.pop("mode"), **config, **record}


def _families_here() -> Mapping[str, str]:
    from nsa_bench.backends import registry

    return {name: backend.family for name, backend in registry().items()}


def _timed_totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Total rows with a time (`ms`) and whether it was measured; a measured row wins over a predicted one
    of the same point and backend (merged runs can hold both)."""
    rows = reading.totals(frame)
    rows = rows.assign(measured=rows["status"].astype(str) == STATUS_OK)
    keys = ["mode", *CONFIG_KEYS, "gpu", "backend", "seqlen"]
    return rows.sort_values("measured", kind="stable").drop_duplicates(keys, keep="last").sort_index()


def _roles(frame: pd.DataFrame, families: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(NSA backends, dense baselines) present, in run order; the CSV's named baselines first."""
    present = list(dict.fromkeys(frame["backend"].astype(str)))
    named = [b for b in dict.fromkeys(frame["baseline"].astype(str)) if b in present]
    nsa = [b for b in present if families.get(b) == "nsa"]
    dense = [b for b in dict.fromkeys([*named, *present]) if b not in nsa and (families.get(b) == "dense" or b in named)]
    return nsa, dense


def crossing(seqlens: Sequence[int], ratios: Sequence[float]) -> tuple[str, float | None, int | None, int | None, int]:
    """(where, seqlen, lower, upper, crossings) of one series of NSA/baseline time ratios at increasing
    lengths (see the module docstring for the cases)."""
    faster = [r < 1 for r in ratios]
    crossings = sum(a != b for a, b in zip(faster, faster[1:]))
    if not faster[-1]:
        return BEYOND, None, seqlens[-1], None, crossings
    if all(faster):
        return BELOW, None, None, seqlens[0], 0
    i = max(j for j, f in enumerate(faster) if not f)  # the last slower length; NSA is faster from i + 1 on
    x1, x2 = math.log(seqlens[i]), math.log(seqlens[i + 1])
    y1, y2 = math.log(ratios[i]), math.log(ratios[i + 1])  # y1 >= 0 > y2
    seqlen = math.exp(x1 + (0.0 - y1) * (x2 - x1) / (y2 - y1))
    return (BETWEEN if crossings == 1 else SEVERAL), seqlen, seqlens[i], seqlens[i + 1], crossings


def _kind(measured: pd.Series) -> str:
    return MEASURED if measured.all() else PREDICTED if not measured.any() else MIXED


def break_evens(frame: pd.DataFrame, families: Mapping[str, str] | None = None) -> list[BreakEven]:
    """Every NSA backend's break-even length against every dense baseline, per mode and configuration, from a
    frame as `results.read_rows` returns it. `families` (backend -> "nsa"/"dense") defaults to the registry's."""
    families = _families_here() if families is None else families
    rows = _timed_totals(frame)
    nsa_names, dense_names = _roles(rows, families)
    found = []
    for key, part in rows.groupby(["mode", *CONFIG_KEYS, "gpu"], sort=False):
        mode, *config, gpu = key
        times = part.pivot_table(index="seqlen", columns="backend", values="ms", aggfunc="last").sort_index()
        measured = part.pivot_table(index="seqlen", columns="backend", values="measured", aggfunc="last")
        for nsa in (n for n in nsa_names if n in times):
            for base in (b for b in dense_names if b in times):
                both = times[[nsa, base]].dropna()
                if both.empty:
                    continue
                ratios = both[nsa] / both[base]
                where, seqlen, lower, upper, crossings = crossing(list(both.index), list(ratios))
                kind = _kind(measured.loc[both.index, [nsa, base]].stack())
                found.append(BreakEven(
                    mode=str(mode), config=tuple(zip(CONFIG_KEYS, (_plain(v) for v in config))), gpu=str(gpu),
                    nsa=nsa, baseline=base, seqlen=seqlen, where=where, kind=kind,
                    lower=None if lower is None else int(lower), upper=None if upper is None else int(upper),
                    crossings=crossings, lengths=len(both)))
    return found


def _plain(value: object) -> object:
    """numpy scalars as Python ones (records compare and print as plain values)."""
    return value.item() if hasattr(value, "item") else value


def to_frame(records: Iterable[BreakEven]) -> pd.DataFrame:
    """The records as a table with the columns of breakeven.csv."""
    table = pd.DataFrame([r.as_dict() for r in records], columns=list(COLUMNS))
    return table.astype({"lower": "Int64", "upper": "Int64"})


def write_csv(records: Iterable[BreakEven], folder: Path) -> Path:
    """Write `breakeven.csv` into a run folder (atomically) and return its path."""
    path = Path(folder) / CSV_NAME
    table = to_frame(records)
    replace_text(path, table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    return path


def tokens_text(tokens: float) -> str:
    """A length as the suite's axis syntax writes it (k = 1024 tokens): 8192 -> 8k, 6000 -> 5.9k."""
    if tokens >= 1024 and float(tokens).is_integer() and int(tokens) % 1024 == 0:
        return f"{int(tokens) // 1024}k"
    return f"{tokens / 1024:.1f}k" if tokens >= 1024 else f"{tokens:.0f}"


def _outcome(record: BreakEven) -> tuple[str, str]:
    """(headline, detail) of a record for the summary."""
    if record.where == BELOW:
        return f"below {tokens_text(record.upper)}", "NSA faster at every swept length"
    if record.where == BEYOND:
        earlier = f"; faster at a shorter length, crossed {record.crossings}x" if record.crossings else ""
        return f"beyond {tokens_text(record.lower)}", f"NSA slower at the longest swept length{earlier}"
    detail = f"between {tokens_text(record.lower)} and {tokens_text(record.upper)}"
    return f"{tokens_text(record.seqlen)} tokens", detail + (f"; last of {record.crossings} crossings"
                                                               if record.where == SEVERAL else "")


def report_table(records: Sequence[BreakEven]) -> pd.DataFrame:
    """The records as a report shows them: what was compared, the length, and between which swept lengths."""
    varying = [k for k in CONFIG_KEYS if len({dict(r.config)[k] for r in records}) > 1]
    rows = []
    for r in records:
        headline, detail = _outcome(r)
        rows.append({"mode": r.mode, **{k: dict(r.config)[k] for k in varying}, "NSA": r.nsa, "baseline": r.baseline,
                     "break-even": headline, "where": detail, "kind": r.kind})
    return pd.DataFrame(rows)


def format_table(records: Sequence[BreakEven]) -> str:
    """One line per record, e.g. `fwd  nsa-triton vs fa2:  5.9k tokens  (predicted; between 4k and 8k)`;
    configuration columns and the GPU are shown only where they differ between records."""
    if not records:
        return "Break-even: no NSA backend and dense baseline share a timed length."
    varying = [k for k in CONFIG_KEYS if len({dict(r.config)[k] for r in records}) > 1]
    if len({dict(r.config)["d_model"] for r in records if r.mode in LAYER_MODES}) < 2:
        varying = [k for k in varying if k != "d_model"]  # attention-only modes carry d_model 0
    several_gpus = len({r.gpu for r in records}) > 1
    rows = []
    for r in records:
        settings = " ".join(f"{k}={dict(r.config)[k]}" for k in varying
                            if k != "d_model" or r.mode in LAYER_MODES)
        label = " ".join(p for p in (r.mode, settings, f"[{r.gpu}]" if several_gpus else "") if p)
        headline, detail = _outcome(r)
        rows.append((label, f"{r.nsa} vs {r.baseline}:", headline, f"({r.kind}; {detail})"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["Break-even length, where NSA's time equals the baseline's (log-log interpolation; k = 1024 tokens):"]
    lines += ["  ".join(f"{cell:<{w}}" for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    return "\n".join(lines)
