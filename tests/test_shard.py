"""--shard K/N: every point in exactly one shard, a point's backends together, the same split every time."""
from __future__ import annotations

import pytest

from nsa_bench.runner import run_order
from nsa_bench.shard import Shard, parse_shard
from nsa_bench.spec import SweepSpec


def test_parse_and_refuse():
    assert parse_shard("2/4") == Shard(2, 4) and parse_shard(" 1 / 1 ") == Shard(1, 1)
    for bad in ("0/2", "3/2", "1/0", "a", "1/2/3", "", "-1/2", "1/200000"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_partition_the_points_round_robin_in_run_order():
    points = run_order([p for p, _ in SweepSpec(seqlens=(1024, 2048, 4096, 8192), group_sizes=(4, 16)).all_points()])
    for n in (1, 2, 3, 5, 30):
        parts = [Shard(k, n).select(points) for k in range(1, n + 1)]
        assert sorted(map(repr, sum(parts, []))) == sorted(map(repr, points))  # each point once
        assert all(len(p) in (len(points) // n, -(-len(points) // n)) for p in parts)  # balanced
        assert parts == [Shard(k, n).select(points) for k in range(1, n + 1)]  # deterministic
    longest = [p.seqlen for p in Shard(1, 2).select(points)][:2]
    assert longest[0] == 8192  # each shard starts with the headline lengths


def test_dry_run_plans_only_the_shard():
    from nsa_bench import plan
    from nsa_bench.gpus import gpu_spec

    spec = SweepSpec(seqlens=(1024, 2048, 4096), modes=("fwd", "bwd"))
    whole = plan.build(spec, gpu_spec("h100"), workers=1)
    parts = [plan.build(spec, gpu_spec("h100"), workers=1, shard=Shard(k, 4)) for k in (1, 2, 3, 4)]
    assert sum(len(p.tasks) for p in parts) == len(whole.tasks) == 12
    assert {t.estimate.point for t in parts[0].tasks}.isdisjoint({t.estimate.point for t in parts[1].tasks})
