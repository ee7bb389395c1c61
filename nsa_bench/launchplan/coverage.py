"""Covered / total per kernel: which of a sweep's planned GPU launches an interpreter test executed.

A planned config counts as covered when a launch of the same kernel, code path and tile ran (the CPU
interpreter ignores warps and stages, so configs that differ only there share one run); both the configs
and the distinct tiles are counted.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from nsa_bench.launchplan.keys import LaunchKey


@dataclass(frozen=True)
class KernelCoverage:
    kernel: str
    configs: int
    configs_covered: int
    tiles: int  # distinct kernel x code path x tile
    tiles_covered: int


def coverage(planned: Iterable[LaunchKey], executed: Iterable[LaunchKey]) -> list[KernelCoverage]:
    """Per kernel of `planned`, how many configs and tiles some `executed` launch ran."""
    ran = {key.binary for key in executed}
    configs: dict[str, list[LaunchKey]] = defaultdict(list)
    for key in set(planned):
        configs[key.kernel].append(key)
    out = []
    for kernel in sorted(configs):
        keys = configs[kernel]
        tiles = {k.binary for k in keys}
        out.append(KernelCoverage(kernel, len(keys), sum(k.binary in ran for k in keys), len(tiles),
                                  len(tiles & ran)))
    return out


def uncovered(planned: Iterable[LaunchKey], executed: Iterable[LaunchKey]) -> list[LaunchKey]:
    ran = {key.binary for key in executed}
    return sorted(k for k in set(planned) if k.binary not in ran)


def table(rows: list[KernelCoverage], title: str) -> str:
    """A text table: kernel, configs covered / total, tiles covered / total, and the totals."""
    width = max([len(r.kernel) for r in rows] + [6])
    lines = [title, f"{'kernel':<{width}}  configs covered/total  tiles covered/total"]
    for r in rows:
        lines.append(f"{r.kernel:<{width}}  {r.configs_covered:>7}/{r.configs:<13}  {r.tiles_covered:>5}/{r.tiles}")
    c, ct = sum(r.configs_covered for r in rows), sum(r.configs for r in rows)
    t, tt = sum(r.tiles_covered for r in rows), sum(r.tiles for r in rows)
    lines.append(f"{'total':<{width}}  {c:>7}/{ct:<13}  {t:>5}/{tt}  ({100 * c / max(ct, 1):.0f}% of configs)")
    return "\n".join(lines)


def read_log(path: Path) -> list[LaunchKey]:
    """Launches an interpreter test run logged (JSON lines of LaunchKey.as_dict, tests/launch_log.py)."""
    return [LaunchKey.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
