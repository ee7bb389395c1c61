"""This run beside what others published for the same configuration (nsa_bench.published).

For each published speedup, time or break-even length that matches one of the run's configurations, the
run's own figure at the same mode, configuration and length: NSA's speedup against the same baseline when
the run has it (else against the run's CSV baseline, and the table says so), its time, or its break-even
length (nsa_bench.breakeven). Published token counts (the paper's Table 4) are counts, not timings: they
are left to the published file. Each row keeps the published GPU and what the figure covers, so an A100
kernel-only figure is never read as an H100 whole-NSA one.
"""
from __future__ import annotations

import math

import pandas as pd

from nsa_bench import breakeven, published, reading
from nsa_bench.breakeven import CONFIG_KEYS

FULL = "full attention"  # a published baseline any dense backend stands for
COLUMNS = ("source", "published GPU", "covers", "mode", "seqlen", "published", "against", "this run",
           "this run against", "kind", "match")


def _nsa_and_dense(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    from nsa_bench.backends import registry

    present = list(dict.fromkeys(frame["backend"].astype(str)))
    family = {name: registry()[name].family for name in present if name in registry()}
    return [b for b in present if family.get(b) == "nsa"], [b for b in present if family.get(b) == "dense"]


def _times(frame: pd.DataFrame) -> pd.DataFrame:
    totals = reading.totals(frame)
    return totals.pivot_table(index=["mode", *CONFIG_KEYS, "seqlen"], columns="backend", values="ms",
                              aggfunc="first")


def beside_published(frame: pd.DataFrame, gpu: str = "", rows: tuple[published.Published, ...] | None = None
                     ) -> pd.DataFrame:
    """One row per published figure (speedup, ms, break-even) that matches a configuration of the run."""
    nsa, dense = _nsa_and_dense(frame)
    if not nsa:
        return pd.DataFrame(columns=list(COLUMNS))
    times = _times(frame)
    csv_baseline = next((b for b in frame.get("baseline", pd.Series(dtype=str)).astype(str) if b), dense[0] if dense else "")
    evens = breakeven.break_evens(frame)
    kind = reading.kind(frame)
    out = []
    for match in published.matching(frame, rows, gpu):
        row = match.published
        if row.unit == "tokens":
            continue
        against = row.baseline if row.baseline in dense else csv_baseline
        config = dict(match.config)
        key = (match.mode, *(config[k] for k in CONFIG_KEYS), row.seqlen)
        value, unit = math.nan, row.unit
        if row.unit in ("speedup", "ms") and key in times.index:
            at = times.loc[key]
            if row.unit == "ms":
                value = at.get(nsa[0], math.nan) if "fa" not in row.implementation.lower() else at.get(against, math.nan)
            elif against in at:
                value = at[against] / at.get(nsa[0], math.nan)
        elif row.unit == "break-even tokens":
            found = next((e for e in evens if e.mode == match.mode and e.nsa == nsa[0] and e.baseline == against
                          and dict(e.config) == config), None)
            value = found.seqlen if found is not None and found.seqlen is not None else math.nan
        out.append({"source": row.source, "published GPU": row.gpu or "-", "covers": row.covers, "mode": match.mode,
                    "seqlen": row.seqlen if row.seqlen is not None else "", "published": f"{row.value:g} {_unit(unit)}",
                    "against": row.baseline or "-", "this run": "" if math.isnan(value) else _shown(value, unit),
                    "this run against": "" if row.unit == "ms" else f"{nsa[0]} vs {against}"
                    + ("" if against == row.baseline or row.baseline == FULL else " (not the published baseline)"),
                    "kind": kind, "match": "exact" if match.exact else "partial: " + "; ".join(match.differences)})
    return pd.DataFrame(out, columns=list(COLUMNS))


def _unit(unit: str) -> str:
    return {"speedup": "x", "ms": "ms", "break-even tokens": "tokens"}.get(unit, unit)


def _shown(value: float, unit: str) -> str:
    if unit == "break-even tokens":
        return f"{breakeven.tokens_text(value)} tokens"
    return f"{value:.3g} {_unit(unit)}"
