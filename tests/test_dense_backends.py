"""The dense baselines a Hopper user would choose: cudnn (SDPA pinned to cuDNN), fa3 (flash_attn_interface)
and flex (FlexAttention), without a GPU.

What can be checked here: availability messages, the static limits, that a probe refusal becomes an
`unsupported` row quoting the reason (never a crash), and each backend's glue (layouts, GQA, Dk != Dv,
decode, KV-head repeats, FA3's two return conventions) through the runner's check against the float64
reference, with a CPU stand-in for the GPU kernel: math SDPA for cuDNN, a reference-backed module for
FA3, eager flex on the CPU for flex.
"""
from __future__ import annotations

import contextlib
import sys
import types
import warnings
from dataclasses import replace

import pytest
import torch

from nsa_bench import reference
from nsa_bench.backends import Unsupported, cudnn, fa3, flex, registry
from nsa_bench.gpus import gpu_spec
from nsa_bench.inputs import make_inputs
from nsa_bench.execute import Measure, Task, rows_for
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.timing import time_wallclock

pytestmark = pytest.mark.interpreter

CPU = Measure(device="cpu", timer=time_wallclock)
H100 = gpu_spec("h100")
MODES = ("fwd", "bwd", "decode", "layer-fwd")


def point(mode: str = "fwd", seqlen: int = 48, kv_heads: int = 2, group: int = 2, dk: int = 16, dv: int = 8,
          dtype: str = "bfloat16", d_model: int = 0) -> Point:
    width = d_model or (24 if mode.startswith("layer") else 0)
    return Point(mode, seqlen, 1, kv_heads, group, dk, dv, 16, 8, 16, 3, 16, dtype, width)


def spec_for(pt: Point) -> SweepSpec:
    return SweepSpec(seqlens=(pt.seqlen,), reps=1, warmup=0, check_seqlen=pt.seqlen)


def cpu_rows(name: str, pt: Point):
    backend = replace(registry()[name], availability=lambda: None)
    return rows_for(Task(pt, backend), spec_for(pt), H100, CPU, None)


def test_registered_dense_with_every_mode():
    for name in ("cudnn", "fa3", "flex"):
        backend = registry()[name]
        assert backend.family == "dense"
        assert set(backend.modes) == {"fwd", "bwd", "fwdbwd", "decode", "layer-fwd", "layer-bwd"}


def test_availability_says_why_not_here():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    assert "needs a CUDA GPU" in cudnn.availability() and "sm80" in cudnn.availability()
    assert "CUDA" in flex.availability()
    if fa3.importlib.util.find_spec(fa3.MODULE) is None:
        assert fa3.availability() == fa3.INSTALL_HINT
        assert "hopper/" in fa3.INSTALL_HINT
    rows = rows_for(Task(point(), registry()["cudnn"]), spec_for(point()), H100, CPU, None)
    assert rows[0].status == "unsupported" and "CUDA" in rows[0].message


# ------------------------------------------------------------------ cudnn
@pytest.mark.parametrize("changes,words", [
    ({"dtype": "float32"}, ("float16/bfloat16", "float32")),
    ({"dk": 20}, ("head_dim_qk", "multiple of 8", "20")),
    ({"dv": 320, "dk": 320}, ("<= 256", "320")),
    ({"mode": "decode", "seqlen": 1}, ("key length above 1",)),
])
def test_cudnn_static_limits(changes, words):
    why = cudnn.supports(point(**changes))
    assert why is not None and all(w in why for w in words), why
    assert cudnn.supports(point(dk=192, dv=128)) is None  # the paper's shape is left to the probe


def test_cudnn_static_limits_hold_for_predicted_rows():
    row = rows_for(Task(point(dtype="float32"), registry()["cudnn"]), spec_for(point()), H100, None, None)[0]
    assert row.status == "unsupported" and "float16/bfloat16" in row.message


def _warning(text: str) -> warnings.WarningMessage:
    return warnings.WarningMessage(UserWarning(text), UserWarning, "sdp_utils.cpp", 1)


def test_cudnn_reasons_are_the_lines_after_torchs_cudnn_header():
    caught = [_warning("Memory efficient kernel not used because:"), _warning("Flash attention kernel not used because:"),
              _warning("Flash attention requires q,k,v to have the same last dimension"),
              _warning("cuDNN attention kernel not used because:"),
              _warning("head_dim should be no more than 128 (Triggered internally at sdp_utils.cpp:1)")]
    assert cudnn.reasons(caught, RuntimeError("No available kernel. Aborting execution.")) == \
        "head_dim should be no more than 128"
    assert cudnn.reasons([], RuntimeError("No available kernel.\nmore")) == "No available kernel."


def test_cudnn_probe_refusal_is_an_unsupported_row_with_the_reason(monkeypatch):
    cudnn.probe.cache_clear()
    monkeypatch.setattr(cudnn, "_attempt", lambda *args, **kw: "head_dim should be no more than 128")
    try:
        with pytest.raises(Unsupported, match="refuses D=192-128, G=2, bfloat16, bwd: head_dim should be no more"):
            cudnn.plan(point("bwd", dk=192, dv=128), "cuda")
        # the runner turns it into a row (the same path a GPU run takes)
        build = lambda pt, inputs: (cudnn.plan(pt, "cuda"), None)[1]  # noqa: E731
        backend = replace(registry()["cudnn"], availability=lambda: None, build=build)
        row = rows_for(Task(point("fwd", dk=192, dv=128), backend), spec_for(point()), H100, CPU, None)[0]
        assert row.status == "unsupported" and "head_dim should be no more than 128" in row.message
    finally:
        cudnn.probe.cache_clear()


def test_cudnn_probe_falls_back_to_repeated_kv_heads(monkeypatch):
    cudnn.probe.cache_clear()
    monkeypatch.setattr(cudnn, "_attempt", lambda dqk, dv, group, kind, dtype, repeat: None if repeat else "no GQA")
    try:
        assert cudnn.probe(192, 128, 16, "fwd", "bfloat16") == cudnn.Probe(True, repeat_kv=True, reason="no GQA")
        repeats, note = cudnn.plan(point(group=4), "cuda")
        assert repeats == 4 and "KV heads repeated x4" in note and "no GQA" in note
        assert cudnn.plan(point(group=4), "cpu") == (1, "")
    finally:
        cudnn.probe.cache_clear()


@pytest.fixture
def math_sdpa(monkeypatch):
    """cuDNN's kernel replaced by PyTorch's CPU SDPA: the backend's own code (layouts, GQA, decode) runs."""
    monkeypatch.setattr(cudnn, "_pinned", contextlib.nullcontext)


@pytest.mark.parametrize("mode", MODES)
def test_cudnn_glue_matches_the_reference(math_sdpa, mode):
    rows = cpu_rows("cudnn", point(mode))
    assert rows[0].status == "ok", rows[0].message
    assert rows[0].max_rel_err < 1e-2 and rows[0].impl.startswith("sdpa-cudnn")


def test_cudnn_repeated_kv_heads_match_the_reference(math_sdpa, monkeypatch):
    monkeypatch.setattr(cudnn, "plan", lambda pt, device: (pt.group_size, "KV heads repeated"))
    for mode in ("fwd", "bwd", "decode"):
        row = cpu_rows("cudnn", point(mode, group=3))[0]
        assert row.status == "ok" and row.impl.endswith("(kv-expanded)") and row.max_rel_err < 1e-2, row.message


def test_cudnn_version_text(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    assert cudnn.cudnn_version() == "9.10.2" and cudnn.impl_name() == "sdpa-cudnn-9.10.2"
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 8907)
    assert cudnn.cudnn_version() == "8.9.7"
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: None)
    assert cudnn.impl_name() == "sdpa-cudnn"


# ------------------------------------------------------------------ fa3
def _fake_fa3(returns_tuple: bool) -> types.ModuleType:
    """A flash_attn_interface with FA3's signatures, computing with the reference (GQA, Dk != Dv)."""
    module = types.ModuleType(fa3.MODULE)

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **_):
        assert causal and q.shape[1] == k.shape[1]
        out = reference.causal_attention(q, k, v, softmax_scale)
        return (out, torch.zeros(1)) if returns_tuple else out

    def flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=None, causal=False, **_):
        assert q.shape[1] == 1 and cache_seqlens is not None
        b, hq, hkv = q.shape[0], q.shape[2], k_cache.shape[2]
        qg = q[:, 0].reshape(b, hkv, hq // hkv, -1)
        logits = torch.einsum("bhgd,bthd->bhgt", qg.float(), k_cache.float()) * q.shape[-1] ** -0.5
        o = torch.einsum("bhgt,bthd->bhgd", torch.softmax(logits, -1), v_cache.float()).reshape(b, 1, hq, -1)
        return o.to(q.dtype)

    module.flash_attn_func, module.flash_attn_with_kvcache = flash_attn_func, flash_attn_with_kvcache
    return module


@pytest.mark.parametrize("returns_tuple", [False, True])
def test_fa3_glue_matches_the_reference(monkeypatch, returns_tuple):
    monkeypatch.setitem(sys.modules, fa3.MODULE, _fake_fa3(returns_tuple))
    for mode in MODES:
        rows = cpu_rows("fa3", point(mode))
        assert rows[0].status == "ok", (mode, rows[0].message)
        assert rows[0].max_rel_err < 1e-2 and rows[0].impl.startswith("flash_attn_3")


def test_fa3_absent_or_refusing_is_an_unsupported_row(monkeypatch):
    monkeypatch.setattr(fa3, "load", lambda: (_ for _ in ()).throw(ImportError("no module")))
    monkeypatch.setattr(fa3, "availability", lambda: fa3.INSTALL_HINT)
    row = cpu_rows("fa3", point())[0]
    assert row.status == "unsupported" and row.message == fa3.INSTALL_HINT
    monkeypatch.setattr(fa3, "load", lambda: _fake_fa3(False))
    fa3.probe.cache_clear()
    monkeypatch.setattr(fa3, "probe", lambda *args: "RuntimeError: This flash attention build does not support hdim 40")
    with pytest.raises(Unsupported, match="refuses D=40-40, G=2, bfloat16, bwd: RuntimeError: This flash"):
        fa3.check_runs(point("layer-bwd", dk=40, dv=40), "cuda")
    assert "float16/bfloat16" in fa3.supports(point(dtype="float32"))


# ------------------------------------------------------------------ flex
@pytest.mark.parametrize("mode", ("fwd", "decode", "layer-fwd"))
def test_flex_matches_the_reference_eagerly(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is unfused
        rows = cpu_rows("flex", point(mode, seqlen=200, dtype="float32"))  # T not a multiple of flex's 128 block
    assert rows[0].status == "ok", rows[0].message
    assert rows[0].max_rel_err < 1e-4 and rows[0].impl == "flex_attention-eager"


def test_flex_refusal_is_an_unsupported_row_not_a_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = cpu_rows("flex", point("bwd", dtype="float32"))[0]  # flex has no backward on the CPU
    assert row.status == "unsupported" and "flex_attention refuses" in row.message and "backward" in row.message


def test_flex_causal_mask_is_causal():
    mask = flex.causal_mask(300, torch.device("cpu"))
    dense = mask.to_dense()[0, 0].bool()
    blocks = -(-300 // 128)
    assert torch.equal(dense, torch.ones(blocks, blocks, dtype=torch.bool).tril())


def test_padding_each_baseline_declares():
    assert registry()["fa2"].pads(point(dk=192, dv=128)) == "V zero-padded from 128 to 192 (FA2 needs Dk == Dv)"
    assert "192 -> 256" in flex.padding(point(dk=192, dv=128)) and flex.padding(point(dk=128, dv=64)) == ""
    for name in ("cudnn", "fa3", "fa2-triton"):
        assert registry()[name].pads(point(dk=192, dv=128)) == ""
    with pytest.raises(ValueError):
        make_inputs(replace(point("layer-fwd"), d_model=0), "cpu", 0)
