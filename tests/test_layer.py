"""Layer modes (nsa_bench.layer): the layer's math against a hand-written one, the runner's check/time/stage
path on the CPU for NSA and dense backends, a wrong layer failing the check, and the predicted rows."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from nsa_bench import check, cost, reference
from nsa_bench import inputs as inputs_mod
from nsa_bench.backends import Backend, get_backend
from nsa_bench.backends._workloads import autograd_workload
from nsa_bench.gpus import gpu_spec
from nsa_bench.inputs import make_inputs
from nsa_bench.point_cost import cost_of
from nsa_bench.execute import Measure, Task, rows_for
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.timing import time_wallclock

pytestmark = pytest.mark.interpreter

CPU = Measure(device="cpu", timer=time_wallclock)
H100 = gpu_spec("h100")
# T not a multiple of any block, G = 2, Dk != Dv, a small model width
SPEC = SweepSpec(seqlens=(40,), kv_heads=(2,), group_sizes=(2,), head_dims=((16, 8),), block_cmp=(8,), stride_cmp=(4,),
                 block_slc=(8,), n_slc=(3,), window=(8,), dtypes=("float32",), reps=2, warmup=0, check_seqlen=40,
                 modes=("layer-fwd", "layer-bwd"), d_models=(24,))
NSA_STAGES = {"qkv_proj", "gate_mlp", "attention", "out_proj"}
DENSE_STAGES = {"qkv_proj", "attention", "out_proj"}


def on_cpu(name: str) -> Backend:
    return replace(get_backend(name), availability=lambda: None)


def layer_point(mode: str = "layer-fwd", **changes: object) -> Point:
    return replace(SPEC.points()[0][0 if mode == "layer-fwd" else 1], **changes)


def test_layer_inputs_are_the_projections_of_x():
    point = layer_point()
    inputs = make_inputs(point, "cpu", 0)
    w = inputs.layer
    assert w.x.shape == (1, 40, 24) and w.w_o.shape == (4 * 8, 24)
    assert torch.equal(inputs.q, (w.x @ w.w_q).view(1, 40, 4, 16))
    assert torch.equal(inputs.v, (w.x @ w.w_v).view(1, 40, 2, 8))
    assert torch.equal(inputs.gates, torch.sigmoid(w.x @ w.w_g).view(1, 40, 4, 3))
    assert inputs.do is None and make_inputs(layer_point("layer-bwd"), "cpu", 0).do.shape == (1, 40, 24)
    with pytest.raises(ValueError, match="d_model"):
        inputs_mod.make_layer_inputs(replace(point, d_model=0), "cpu", 0)


def test_dense_layer_is_the_textbook_layer():
    """y = softmax_causal((x Wq)(x Wk)^T / sqrt(Dk)) (x Wv) Wo, written out per head with GQA by hand."""
    point = layer_point()
    inputs = make_inputs(point, "cpu", 1).cast(torch.float64)
    w = inputs.layer
    (y,) = check.expected_layer("dense", inputs)
    x = w.x[0]
    heads = []
    for h in range(4):
        q = x @ w.w_q[:, h * 16:(h + 1) * 16]
        kv = h // 2  # query head h reads KV head h // G
        k = x @ w.w_k[:, kv * 16:(kv + 1) * 16]
        v = x @ w.w_v[:, kv * 8:(kv + 1) * 8]
        logits = (q @ k.T) / math.sqrt(16)
        logits = logits.masked_fill(torch.ones(40, 40, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(logits, dim=-1) @ v)
    want = torch.cat(heads, dim=-1) @ w.w_o
    assert torch.allclose(y[0], want, atol=1e-12)


def test_nsa_layer_gates_come_from_the_gate_mlp():
    point = layer_point()
    inputs = check.shared_selection(make_inputs(point, "cpu", 2)).cast(torch.float64)
    w = inputs.layer
    (y,) = check.expected_layer("nsa", inputs)
    q, k, v = (w.x @ w.w_q).view(1, 40, 4, 16), (w.x @ w.w_k).view(1, 40, 2, 16), (w.x @ w.w_v).view(1, 40, 2, 8)
    gates = torch.sigmoid(w.x @ w.w_g).view(1, 40, 4, 3)
    o = reference.nsa_attention(q, k, v, gates, point.cfg, block_idx=inputs.block_idx)
    assert torch.allclose(y, o.reshape(1, 40, 32) @ w.w_o, atol=1e-12)


# our Triton FA2 stands for the Triton kernels in the interpreter (nsa-triton's layer, the same wrapper around
# nsa_attention, takes minutes there)
TRITON_SPEC = replace(SPEC, seqlens=(70,), kv_heads=(1,), head_dims=((32, 16),), block_cmp=(16,), stride_cmp=(8,),
                      block_slc=(32,), window=(24,), check_seqlen=70, reps=1, d_models=(32,))


@pytest.mark.parametrize("name,stages,spec", [("nsa-ref", NSA_STAGES, SPEC), ("fa2", DENSE_STAGES, SPEC),
                                              ("fa2-triton", DENSE_STAGES, TRITON_SPEC)])
def test_layer_modes_through_the_runner(name, stages, spec):
    backend = on_cpu(name)
    for point in spec.points()[0]:
        rows = rows_for(Task(point, backend), spec, H100, CPU, baseline_ms=None)
        total = rows[0]
        assert total.status == "ok", (point.mode, total.message)
        assert total.max_rel_err < 1e-4 and total.ms_median > 0 and total.d_model == point.d_model
        assert {r.stage for r in rows[1:]} == stages
        assert all(r.status == "ok" and r.ms_median > 0 and r.flops > 0 for r in rows[1:])
        work = cost_of(point, backend.family)
        assert total.flops == work.flops
        by_stage = {r.stage: r for r in rows[1:]}
        assert by_stage["qkv_proj"].flops == work.stage("qkv_proj").flops
        attention = sum(s.flops for s in work.stages if s.stage not in cost.PROJECTION_STAGES)
        assert by_stage["attention"].flops == attention


def test_layer_backward_grads_cover_x_and_every_weight_it_uses():
    for name, count in (("nsa-ref", 6), ("fa2", 5)):  # x, Wq, Wk, Wv, (Wg,) Wo
        point = layer_point("layer-bwd")
        inputs = make_inputs(point, "cpu", 0)
        if name == "nsa-ref":
            inputs = check.shared_selection(inputs)
        grads = on_cpu(name).build(point, inputs).result()
        assert len(grads) == count and grads[0].shape == (1, 40, 24)
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_wrong_attention_inside_the_layer_fails_the_check():
    def build(point: Point, inputs):  # causal attention 1% off
        return autograd_workload(inputs, lambda q, k, v, g: 1.01 * reference.causal_attention(q, k, v), "wrong",
                                 grad_gates=False)

    backend = Backend("wrong", "dense", ("layer-fwd", "layer-bwd"), "", lambda: None, build)
    for point in SPEC.points()[0]:
        row = rows_for(Task(point, backend), SPEC, H100, CPU, None)[0]
        assert row.status == "check_failed" and row.ms_median is None, point.mode


def test_predicted_layer_rows_list_every_stage_for_both_families():
    for name in ("nsa-triton", "fa2"):
        backend = get_backend(name)
        for point in SPEC.points()[0]:
            rows = rows_for(Task(point, backend), SPEC, H100, None, None)
            assert all(r.status == "predicted" and r.d_model == 24 for r in rows)
            stages = [r.stage for r in rows[1:]]
            assert stages == list(cost_of(point, backend.family).stage_names)
            assert stages[0] == "qkv_proj" and stages[-1] == "out_proj"
            assert rows[0].predicted_ms == pytest.approx(sum(r.predicted_ms for r in rows[1:]))
