"""One attention layer of a model around any backend's attention (modes `layer-fwd`, `layer-bwd`).

x [B, T, d_model] -> q/k/v projections (gated attention, i.e. NSA: and its gate MLP) -> attention ->
output projection -> y [B, T, d_model]. Every backend runs the same projections (plain GEMMs in the
point's dtype); only the attention call differs, so a layer speedup is what one layer of a model gains.
The gate MLP is one linear layer d_model -> 3 * Hq with a sigmoid, giving the gates [B, T, Hq, 3] that
NSA_SPEC section 6 takes (the form public NSA layers use). Weights are [in, out]: a projection is `x @ w`.

This module is the layer's math only: its inputs are made with the others' (nsa_bench.inputs), its
float64 expectation is with the other checks (nsa_bench.check), and its timed workload is with the other
workloads (nsa_bench.backends._workloads).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from nsa_bench.spec import Point

# attention(q, k, v, gates or None) -> o [B, T, Hq, Dv]: what a backend gives autograd_workload
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


# ------------------------------------------------------------------ the layer's pieces
def project_qkv(point: Point, x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                w_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, t = x.shape[:2]
    return ((x @ w_q).view(b, t, point.q_heads, point.head_dim_qk),
            (x @ w_k).view(b, t, point.kv_heads, point.head_dim_qk),
            (x @ w_v).view(b, t, point.kv_heads, point.head_dim_v))


def gate_mlp(point: Point, x: torch.Tensor, w_g: torch.Tensor) -> torch.Tensor:
    b, t = x.shape[:2]
    return torch.sigmoid(x @ w_g).view(b, t, point.q_heads, 3)


def out_proj(o: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    b, t = o.shape[:2]
    return o.reshape(b, t, -1) @ w_o


def layer_fn(point: Point, attend: Attention, gated: bool) -> Callable[..., torch.Tensor]:
    """layer(x, w_q, w_k, w_v, [w_g,] w_o) -> y: the whole layer around `attend`."""
    def layer(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
              *rest: torch.Tensor) -> torch.Tensor:
        w_g, w_o = rest if gated else (None, rest[0])
        q, k, v = project_qkv(point, x, w_q, w_k, w_v)
        gates = gate_mlp(point, x, w_g) if gated else None
        return out_proj(attend(q, k, v, gates), w_o)

    return layer
