"""--shard K/N: a deterministic split of a sweep's points, for Slurm arrays and CI matrices.

The unit is a point (a configuration x mode), never a task: the baseline and every backend of one point
land in the same shard, so each shard's speedups are computed in that shard like in an unsharded run.
Points are dealt round-robin in the runner's order (longest sequence first), so every shard gets about
the same mix of long and short points, and shard K of N is the same set on every machine that runs it.
`nsa-bench merge` interleaves the shards back in the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, TypeVar

MAX_SHARDS = 100_000
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as the user writes it
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"N must be from 1 to {MAX_SHARDS:,}")
        if not 1 <= self.index <= self.count:
            raise ValueError(f"K must be from 1 to N={self.count}")

    def text(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, position: int) -> bool:
        """Whether the point at `position` (0-based, in run order) belongs to this shard."""
        return position % self.count == self.index - 1

    def select(self, ordered: Sequence[T]) -> list[T]:
        """The items of this shard, from items in run order."""
        return [item for i, item in enumerate(ordered) if self.owns(i)]


WHOLE = Shard(1, 1)


def parse_shard(text: str) -> Shard:
    """'K/N' -> Shard(K, N); ValueError saying what a shard looks like."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*", str(text), re.ASCII)
    if match is None:
        raise ValueError("expected K/N, e.g. 1/4 (shard K of N, 1 <= K <= N)")
    return Shard(int(match.group(1)), int(match.group(2)))
