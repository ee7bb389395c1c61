"""NSA against every dense baseline of a run, and the layer's Amdahl bound, derived from a run's CSV.

The CSV keeps one `speedup` column, relative to the first `--baseline` (what compare and CI gates read).
Speedups against the other dense backends are derived here from the times already in the CSV (measured
median, else the prediction): they are exact functions of those times, so storing them would only
duplicate data and make the schema depend on which baselines ran. The summary, the report and the
plots all call these functions, so they agree.

- `baseline_speedups`: NSA's speedup against each dense backend present and against the fastest of them.
- `strongest_dense`: which dense kernel was fastest (from measured rows only: the cost model gives every
  dense backend the same ideal kernel, so predictions cannot name one).
- `padding_notes`: at Dk != Dv, which baseline pads (fa2 pads V) and which runs the true shapes.
- `layer_table`: in layer modes, NSA's layer speedup and its Amdahl bound, the layer speedup if NSA's
  attention took no time: dense layer time / NSA's non-attention time (projections and gate MLP).
"""
from __future__ import annotations

import math

import pandas as pd

from nsa_bench import reading
from nsa_bench.cost import PROJECTION_STAGES
from nsa_bench.schema import KEY_FIELDS, STAGE_TOTAL, STATUS_OK
from nsa_bench.spec import LAYER_MODES, Point

POINT_KEYS = tuple(c for c in KEY_FIELDS if c not in ("backend", "stage"))
TIE = 1e-3  # relative: dense times closer than this are a tie
TRUE_SHAPE_BACKENDS = ("cudnn", "fa3", "flex")  # what to suggest when no baseline runs Dk != Dv natively


def _family(name: str) -> str | None:
    from nsa_bench.backends import registry

    backend = registry().get(name)
    return backend.family if backend is not None else None


def dense_backends(frame: pd.DataFrame) -> list[str]:
    """Dense backends with usable rows: the CSV's baseline first, then in run order."""
    totals = reading.totals(frame)
    present = list(dict.fromkeys(totals["backend"].astype(str)))
    named = [b for b in dict.fromkeys(frame.get("baseline", pd.Series(dtype=str)).astype(str))  # an NSA backend
             if b in present and _family(b) != "nsa"]  # named as the baseline is still an NSA backend
    dense = [b for b in present if _family(b) == "dense" or b in named]
    return list(dict.fromkeys([*named, *dense]))


def nsa_backends(frame: pd.DataFrame) -> list[str]:
    dense = set(dense_backends(frame))
    present = dict.fromkeys(reading.totals(frame)["backend"].astype(str))
    return [b for b in present if b not in dense and _family(b) == "nsa"]


def axes(frame: pd.DataFrame) -> list[str]:
    """Row labels of the tables: mode, the other key columns that vary, seqlen last (d_model only when
    layer points differ in it: attention-only modes always carry 0)."""
    layer = frame[frame["mode"].astype(str).isin(LAYER_MODES)]
    middle = [c for c in POINT_KEYS if c not in ("mode", "seqlen", "d_model") and frame[c].nunique() > 1]
    if layer["d_model"].nunique() > 1:
        middle.append("d_model")
    return ["mode", *middle, "seqlen"]


def _times(rows: pd.DataFrame) -> pd.DataFrame:
    """ms per point (index: POINT_KEYS) and backend (columns)."""
    return rows.pivot_table(index=list(POINT_KEYS), columns="backend", values="ms", aggfunc="last", sort=False)


def _labelled(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """A POINT_KEYS-indexed table re-indexed by `axes` (in run order) for display."""
    shown = axes(frame)
    flat = table.reset_index()
    return flat.set_index(shown)[[c for c in table.columns]]


def baseline_speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """Speedup of every NSA backend against each dense backend (and the fastest one, when several ran),
    per point; with the name of the fastest dense backend at each point ("tie" when they agree)."""
    dense, nsa = dense_backends(frame), nsa_backends(frame)
    if not dense or not nsa:
        return pd.DataFrame()
    times = _times(reading.totals(frame))
    out = pd.DataFrame(index=times.index)
    fastest = times[dense].min(axis=1, skipna=True)
    for name in nsa:
        if name not in times:
            continue
        for base in dense:
            out[f"{name} vs {base}"] = times[base] / times[name]
        if len(dense) > 1:
            out[f"{name} vs fastest dense"] = fastest / times[name]
    if len(dense) > 1:
        out["fastest dense"] = [_fastest_name(row, dense) for _, row in times[dense].iterrows()]
    out = out.dropna(how="all", subset=[c for c in out.columns if c != "fastest dense"])
    return _labelled(out, frame)


def _fastest_name(times: pd.Series, dense: list[str]) -> str:
    present = times.dropna()
    if present.empty:
        return ""
    best = present.min()
    winners = [b for b in dense if b in present and present[b] <= best * (1 + TIE)]
    return winners[0] if len(winners) == 1 else "tie"


def strongest_dense(frame: pd.DataFrame) -> str:
    """One line naming the strongest dense kernel of the run (from measured rows), or why none is named."""
    dense = dense_backends(frame)
    if not dense:
        return ""
    measured = reading.totals(frame)
    measured = measured[(measured["status"] == STATUS_OK) & measured["backend"].isin(dense)]
    if measured.empty:
        if len(dense) < 2:
            return ""
        return (f"Strongest dense kernel: not named from predictions (the cost model gives every dense backend, "
                f"{', '.join(dense)}, the same ideal kernel at the true Dk and Dv).")
    times = _times(measured)
    ran = [b for b in dense if b in times]
    if len(ran) < 2:
        suggest = ", ".join(b for b in TRUE_SHAPE_BACKENDS if b not in ran)
        return f"Strongest dense kernel: only {ran[0]} was measured (add {suggest} to --baseline to compare)."
    compared = times[ran].dropna(thresh=2)
    wins: dict[str, int] = {}
    per_mode: dict[str, dict[str, int]] = {}
    for key, row in compared.iterrows():
        winner = _fastest_name(row, ran)  # "tie" counts for no one
        counts = per_mode.setdefault(key[POINT_KEYS.index("mode")], {})
        counts[winner] = counts.get(winner, 0) + 1
        if winner != "tie":
            wins[winner] = wins.get(winner, 0) + 1
    if not wins:
        return "Strongest dense kernel: none (the dense kernels tied wherever several ran)."
    geo = {b: _geomean_ratio(compared, b, ran) for b in ran}
    best = max(wins, key=lambda b: (wins[b], -geo.get(b, math.inf)))
    modes = "; ".join(f"{mode}: " + ", ".join(f"{b} {n}" for b, n in sorted(counts.items(), key=lambda kv: -kv[1]))
                      for mode, counts in per_mode.items())
    return (f"Strongest dense kernel: {best} (fastest dense kernel at {wins[best]} of {len(compared)} points "
            f"where several ran; {modes}).")


def _geomean_ratio(times: pd.DataFrame, name: str, ran: list[str]) -> float:
    """Geometric mean of name's time over the fastest time, where name ran (1.0 = always fastest)."""
    ratios = (times[name] / times[ran].min(axis=1)).dropna()
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if len(ratios) else math.inf


def padding_notes(frame: pd.DataFrame) -> list[str]:
    """For each Dk != Dv in the run: which dense baseline pads (and how) and which runs the true shapes."""
    from nsa_bench.backends import registry

    totals = reading.totals(frame)
    dense = dense_backends(frame)
    notes = []
    for (dqk, dv), part in totals.groupby(["head_dim_qk", "head_dim_v"], sort=False):
        if dqk == dv or not dense:
            continue
        point = Point.from_record(part.iloc[0].to_dict())
        pads = {b: registry()[b].pads(point) if b in registry() else "" for b in dense if b in set(part["backend"])}
        padded = [f"{b}: {how}" + (", which flatters NSA's speedup against it" if b == "fa2" else "")
                  for b, how in pads.items() if how]
        true = [b for b, how in pads.items() if not how]
        line = f"Dk={dqk} != Dv={dv}: " + ("; ".join(padded) if padded else "no baseline pads")
        line += (f"; {', '.join(true)} run{'s' if len(true) == 1 else ''} the true shapes" if true else
                 f"; no baseline here runs the true shapes (add {', '.join(TRUE_SHAPE_BACKENDS)} to --baseline)")
        if not (part["status"] == STATUS_OK).any():
            line += ("; predicted rows model every dense backend as an ideal kernel at the true shapes, so padding "
                     "shows only in measured times")
        notes.append(line + ".")
    return notes


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Layer modes: NSA's layer speedup against each dense backend, its Amdahl bound against it (dense layer
    time / NSA's projections + gate MLP, the speedup if NSA's attention took no time) and the share of NSA's
    layer time its attention takes."""
    rows = reading.usable(frame)
    rows = rows[rows["mode"].astype(str).isin(LAYER_MODES)]
    dense, nsa = dense_backends(frame), nsa_backends(frame)
    if rows.empty or not dense or not nsa:
        return pd.DataFrame()
    totals = _times(rows[rows["stage"] == STAGE_TOTAL])
    proj_rows = rows[rows["stage"].isin(PROJECTION_STAGES)]
    if proj_rows.empty:
        return pd.DataFrame()
    projections = proj_rows.pivot_table(index=list(POINT_KEYS), columns="backend", values="ms", aggfunc="sum", sort=False)
    out = pd.DataFrame(index=totals.index)
    for name in nsa:
        if name not in totals or name not in projections:
            continue
        rest = projections[name].reindex(totals.index)
        for base in dense:
            if base not in totals:
                continue
            out[f"{name} vs {base}"] = totals[base] / totals[name]
            out[f"bound vs {base}"] = totals[base] / rest
        out[f"{name} attention share"] = 1 - rest / totals[name]
    out = out.dropna(how="all")
    return _labelled(out, frame) if not out.empty else pd.DataFrame()


def _only_against(table: pd.DataFrame, base: str, dense: list[str]) -> pd.DataFrame:
    """The columns of `table` that are not about another dense backend than `base`."""
    others = tuple(f" vs {b}" for b in dense if b != base)
    return table[[c for c in table.columns if not c.endswith(others)]]


def summary_text(frame: pd.DataFrame) -> str:
    """The sections `nsa-bench sweep` prints after its speedup table ("" when none applies).

    A predicted run gives every dense backend the same ideal kernel, so its per-baseline columns would
    repeat one another: it shows them against the CSV's baseline only, and says so.
    """
    parts = []
    kind = reading.kind(frame)
    dense = dense_backends(frame)
    predicted = kind == "predicted"
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        speedups = baseline_speedups(frame)
        if not speedups.empty and len(dense) > 1 and not predicted:
            parts.append(f"NSA speedup against each dense baseline ({kind}):\n"
                         f"{speedups.to_string(float_format=lambda x: f'{x:.2f}')}")
        notes = [n for n in (strongest_dense(frame), *padding_notes(frame)) if n]
        if notes:
            parts.append("\n".join(notes))
        layers = layer_table(frame)
        if not layers.empty:
            against = ""
            if predicted and len(dense) > 1:
                layers = _only_against(layers, dense[0], dense)
                against = f", against {dense[0]}: every dense backend predicts the same"
            widths = sorted({int(w) for w in frame[frame["mode"].isin(LAYER_MODES)]["d_model"]})
            parts.append(f"One attention layer (d_model={', '.join(map(str, widths))}; {kind}{against}): NSA's layer "
                         "speedup, its Amdahl bound (the layer speedup if NSA's attention took no time: dense layer / "
                         "NSA's projections + gate MLP) and the share of NSA's layer time in attention:\n"
                         f"{layers.to_string(float_format=lambda x: f'{x:.2f}')}")
    return "\n\n".join(parts)
