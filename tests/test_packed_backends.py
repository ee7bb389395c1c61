"""Packed points (--doc-lens) through the runner on the CPU: packed inputs, the reference backend, fa2's varlen
glue (SDPA's flash kernel per document, and flash_attn_varlen_func through a stand-in), fa2-triton's kernels
with cu_seqlens (on Triton's interpreter), the check catching a backend that attends across documents, and
`unsupported` rows for backends without a varlen path."""
from __future__ import annotations

import sys
import types
from dataclasses import replace

import pytest
import torch

from nsa_bench import reference
from nsa_bench.backends import fa2, get_backend, registry
from nsa_bench.gpus import gpu_spec
from nsa_bench.inputs import make_inputs
from nsa_bench.execute import Measure, Task, cost_of, rows_for
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.timing import time_wallclock
from nsa_kernels import varlen

pytestmark = pytest.mark.interpreter

CPU = Measure(device="cpu", timer=time_wallclock)
H100 = gpu_spec("h100")
DOCS = "uniform:24@1"  # at T=96: documents 1..47 tokens, several per row


def point(mode: str = "fwd", docs: str = DOCS, seqlen: int = 96, batch: int = 2, dk: int = 16, dv: int = 8,
          dtype: str = "float32") -> Point:
    width = 24 if mode.startswith("layer") else 0
    return Point(mode, seqlen, batch, 2, 2, dk, dv, 8, 4, 16, 3, 12, dtype, width, docs)


def spec_for(pt: Point) -> SweepSpec:
    return SweepSpec(seqlens=(pt.seqlen,), reps=1, warmup=0, check_seqlen=pt.seqlen)


def cpu_rows(name: str, pt: Point, **changes):
    backend = replace(registry()[name], availability=lambda: None, **changes)
    return rows_for(Task(pt, backend), spec_for(pt), H100, CPU, None)


def test_packed_inputs_are_the_dense_tensors_with_cu_seqlens():
    pt = point("bwd")
    packed, dense = make_inputs(pt, "cpu", 3), make_inputs(replace(pt, doc_lens="none"), "cpu", 3)
    assert packed.q.shape == (1, 192, 4, 16) and torch.equal(packed.q[0], dense.q.reshape(192, 4, 16))
    assert torch.equal(packed.do[0], dense.do.reshape(192, 4, 8))
    assert packed.cu_seqlens.dtype == torch.int32 and varlen.seqlens(packed.cu_seqlens) == list(pt.documents())
    assert 96 in packed.cu_seqlens.tolist()  # no document crosses the row boundary
    layer = make_inputs(point("layer-fwd"), "cpu", 3)
    assert layer.layer.x.shape == (1, 192, 24) and layer.q.shape == (1, 192, 4, 16)


def test_packed_decode_is_a_batch_of_the_documents():
    pt = point("decode")
    inputs = make_inputs(pt, "cpu", 4)
    lengths = pt.documents()
    assert inputs.q.shape == (len(lengths), 4, 16) and inputs.cache_seqlens.tolist() == list(lengths)
    assert inputs.k.shape == (len(lengths), max(lengths), 2, 16) and inputs.cu_seqlens is None


@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"])
def test_reference_backend_runs_packed_points(mode):
    pt = point(mode)
    rows = cpu_rows("nsa-ref", pt)
    assert rows[0].status == "ok", rows[0].message
    assert rows[0].max_rel_err < 1e-6 and rows[0].doc_lens == DOCS
    assert rows[0].flops == cost_of(pt, "nsa").flops != cost_of(replace(pt, doc_lens="none"), "nsa").flops


@pytest.mark.parametrize("mode", ["fwd", "bwd", "decode"])
def test_triton_backend_runs_packed_points(mode):
    """One launch per kernel over every document (cu_seqlens), its own selection valid per document."""
    pt = replace(point(mode, dv=16), block_cmp=16, stride_cmp=8, block_slc=32)  # sizes the kernels take
    row = cpu_rows("nsa-triton", pt)[0]
    assert row.status == "ok", row.message
    assert row.max_rel_err < 1e-4 and row.doc_lens == DOCS and row.impl.startswith("triton:v2")


def test_triton_backend_refuses_packing_with_v1_kernels(monkeypatch):
    monkeypatch.setenv("NSA_KERNEL_VARIANT", "v2,win=v1")
    for measure in (CPU, None):
        row = rows_for(Task(point("fwd"), replace(registry()["nsa-triton"], availability=lambda: None)),
                       spec_for(point("fwd")), H100, measure, None)[0]
        assert row.status == "unsupported" and "need the v2 kernels" in row.message and "win=v1" in row.message
    decode = replace(point("decode", dv=16), block_cmp=16, stride_cmp=8, block_slc=32)
    assert cpu_rows("nsa-triton", decode)[0].status == "ok"  # decode packs as a batch: no cu_seqlens


def test_a_backend_that_ignores_cu_seqlens_fails_the_check():
    leaky = get_backend("nsa-ref")

    def build(pt, inputs):  # attends across documents: the packed buffer as one sequence
        return leaky.build(pt, replace(inputs, cu_seqlens=None))

    row = cpu_rows("nsa-ref", point("fwd"), build=build)[0]
    assert row.status == "check_failed" and row.max_rel_err > 1e-2 and row.ms_median is None


@pytest.mark.parametrize("mode", ["fwd", "bwd", "decode", "layer-bwd"])
def test_fa2_sdpa_runs_each_document_alone(mode):
    rows = cpu_rows("fa2", point(mode))
    assert rows[0].status == "ok", rows[0].message
    assert rows[0].max_rel_err < 1e-4 and rows[0].impl.endswith("(per-seq)")
    assert "once per" in rows[0].message and "V zero-padded" in rows[0].message


def test_fa2_dense_decode_stays_one_call():
    row = cpu_rows("fa2", point("decode", docs="none"))[0]
    assert row.status == "ok" and row.impl == "sdpa-flash" and "once per" not in row.message


def _fake_flash_attn(calls: list) -> types.ModuleType:
    """flash_attn's three entry points with its signatures and layouts, computed by the reference."""
    module = types.ModuleType("flash_attn")
    module.__version__ = "2.0-stand-in"

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, **_):
        assert q.dim() == 3 and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and causal
        calls.append((max_q, max_k))
        return reference.causal_attention(q[None], k[None], v[None], cu_seqlens=cu_q)[0]

    def flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=None, **_):
        lengths = cache_seqlens.tolist()
        calls.append(tuple(lengths))
        return torch.stack([_last_query(q[i], k_cache[i, :n], v_cache[i, :n]) for i, n in enumerate(lengths)])[:, None]

    module.flash_attn_varlen_func, module.flash_attn_with_kvcache = flash_attn_varlen_func, flash_attn_with_kvcache
    module.flash_attn_func = lambda q, k, v, causal=False, **_: reference.causal_attention(q, k, v)
    return module


def _last_query(q1: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query [1, Hq, D] over keys [L, Hkv, D]: what a decode step computes."""
    hq, hkv = q1.shape[1], k.shape[1]
    qg = q1[0].reshape(hkv, hq // hkv, -1)
    p = torch.softmax(torch.einsum("hgd,thd->hgt", qg, k) * q1.shape[-1] ** -0.5, -1)
    return torch.einsum("hgt,thd->hgd", p, v).reshape(hq, -1)


@pytest.mark.parametrize("mode", ["fwd", "bwd", "decode"])
def test_fa2_uses_flash_attn_varlen_func_when_importable(monkeypatch, mode):
    calls: list = []
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn(calls))
    monkeypatch.setattr(fa2, "_has_flash_attn", lambda: True)
    pt = point(mode)
    row = cpu_rows("fa2", pt)[0]
    assert row.status == "ok", row.message
    assert row.max_rel_err < 1e-4 and row.impl == "flash_attn-2.0-stand-in"
    if mode == "decode":
        assert calls[-1] == pt.documents()
    else:
        longest = max(pt.documents())
        assert "flash_attn_varlen_func over" in row.message and calls[-1] == (longest, longest)


@pytest.mark.parametrize("mode", ["fwd", "bwd", "decode", "layer-fwd"])
def test_fa2_triton_runs_packed_points_in_its_kernels(mode):
    """fa2-triton's Triton kernels take cu_seqlens (decode: the documents as a decode batch); the runner
    checks every packed row against the reference. Dv = 16: the kernels' smallest head dim."""
    pt = point(mode, seqlen=48, dv=16)
    row = cpu_rows("fa2-triton", pt)[0]
    assert row.status == "ok", row.message
    assert row.max_rel_err < 1e-4 and row.impl == "triton" and row.doc_lens == DOCS
    if mode != "decode":
        assert f"cu_seqlens over {len(pt.documents())} documents" in row.message


@pytest.mark.parametrize("name,words", [
    ("cudnn", "no packed-batch (cu_seqlens) path"), ("flex-nsa", "no packed-batch"), ("fa3", "no packed-batch"),
])
def test_backends_without_varlen_give_unsupported_rows(name, words):
    for measure in (CPU, None):  # measured and predicted alike
        backend = replace(registry()[name], availability=lambda: None)
        pt = point(dtype="bfloat16")  # in every backend's static scope but for the packing
        row = rows_for(Task(pt, backend), spec_for(pt), H100, measure, None)[0]
        assert row.status == "unsupported" and words in row.message, row.message
    assert registry()[name].varlen_refusal(point(docs="none")) is None


def test_only_the_varlen_backends_claim_it():
    assert {name for name, b in registry().items() if b.varlen} == {"fa2", "fa2-triton", "nsa-ref", "nsa-triton"}
