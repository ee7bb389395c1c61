"""The cost model of one sweep point: its Shape, and the Cost its backend family does there.

One place for the runner's rows, the time budget's estimates and the profiler's model alike.
"""
from __future__ import annotations

from nsa_bench import cost
from nsa_bench.spec import Point


def shape_of(point: Point) -> cost.Shape:
    return cost.Shape(
        batch=point.batch, seqlen=point.seqlen, kv_heads=point.kv_heads, group_size=point.group_size,
        head_dim_qk=point.head_dim_qk, head_dim_v=point.head_dim_v, dtype_bytes=point.dtype_bytes,
        doc_lens=point.documents() if point.packed else (),
    )


def cost_of(point: Point, family: str) -> cost.Cost:
    """NSA's or dense attention's cost at `point`; a layer mode adds its projections (and NSA's gate MLP)."""
    if point.is_layer:
        return cost.layer_cost(shape_of(point), point.d_model, point.mode, point.cfg if family == "nsa" else None)
    if family == "nsa":
        return cost.nsa_cost(shape_of(point), point.cfg, point.mode)
    return cost.dense_cost(shape_of(point), point.mode)
