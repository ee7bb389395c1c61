"""The cost model's resident memory (mem_bytes) and the `oom` row a point gets, before allocating, when it
would not fit; suites/long.toml predicted at 128k..1M."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nsa_bench import memory
from nsa_bench.backends import get_backend
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool, Measure, Task, rows_for
from nsa_bench.runner import run_sweep
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.suites import build_spec
from nsa_bench.timing import time_wallclock

H200 = gpu_spec("h200")
POINT = Point("fwd", 4096, 2, 4, 16, 192, 128, 32, 16, 64, 16, 512, "bfloat16")


def test_dense_forward_counts_q_k_v_o_and_lse():
    b, t, hq, hkv = 2, 4096, 64, 4
    expected = (b * t * hq * 192 + b * t * hkv * (192 + 128) + b * t * hq * 128) * 2 + b * t * hq * 4
    assert memory.dense_bytes(POINT) == expected
    assert memory.dense_bytes(POINT, padded_v=True) > expected  # fa2 stores V and O at Dk


def test_memory_grows_with_mode_and_length():
    for family in ("nsa", "dense"):
        fwd, bwd = (memory.bytes_resident(replace(POINT, mode=m), family) for m in ("fwd", "bwd"))
        assert bwd > fwd > memory.bytes_resident(replace(POINT, mode="decode"), family)
        assert memory.bytes_resident(replace(POINT, seqlen=8192), family) > fwd
    layer = replace(POINT, mode="layer-bwd", d_model=2560)
    assert memory.bytes_resident(layer, "nsa") > memory.bytes_resident(replace(POINT, mode="bwd"), "nsa")


def test_a_point_too_big_for_the_spec_is_an_oom_row_with_its_memory():
    task = Task(replace(POINT, seqlen=1 << 20, batch=4, mode="bwd"), get_backend("nsa-triton"))
    row = rows_for(task, SweepSpec(), H200, None, None)[0]
    assert row.status == "oom" and row.mem_bytes > H200.memory_bytes and "GiB free on" in row.message
    small = rows_for(Task(POINT, get_backend("nsa-triton")), SweepSpec(), H200, None, None)
    assert all(r.status == "predicted" and r.mem_bytes == small[0].mem_bytes > 0 for r in small)


def test_on_a_gpu_the_free_memory_decides_before_anything_is_built(monkeypatch):
    """mem_get_info says 1 GiB free: the point is `oom` and the backend's build is never called."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def build(point, inputs):
        raise AssertionError("allocated")

    backend = replace(get_backend("nsa-ref"), availability=lambda: None, build=build)
    measure = Measure(device="cuda", timer=time_wallclock, device_name="NVIDIA H200")
    row = rows_for(Task(POINT, backend), SweepSpec(), H200, measure, None)[0]
    assert row.status == "oom" and "1.0 GiB free on NVIDIA H200" in row.message


def test_long_suite_predicted_to_1m_has_no_unsupported_nsa_row(tmp_path: Path):
    spec = replace(build_spec("long", {}), gpu="h200")
    assert spec.seqlens == (131072, 262144, 524288, 1048576) and set(spec.modes) == {"fwd", "bwd", "decode"}
    run_sweep(spec, tmp_path, H200, InProcessPool(spec, H200, None), resume=False)
    from nsa_bench import results

    frame = results.read_rows(tmp_path)
    totals = frame[frame["stage"] == "total"]
    nsa = totals[totals["backend"] == "nsa-triton"]
    assert len(nsa) == 12 and not (nsa["status"] == "unsupported").any()
    assert set(nsa[nsa["seqlen"] == 1 << 20]["mode"]) == {"fwd", "bwd", "decode"}
    assert totals["mem_bytes"].gt(0).all()
    # what fits on an H200 runs; the 1M backward (q, o, dq in fp32 and three branch outputs) does not
    at_1m = nsa[nsa["seqlen"] == 1 << 20].set_index("mode")["status"].to_dict()
    assert at_1m == {"fwd": "predicted", "decode": "predicted", "bwd": "oom"}


def test_small_groups_count_the_block_outer_partials():
    """G < 16 runs kernels/selected_small_g.py by default: n partials per (query, head) that must be counted."""
    paper = replace(POINT, batch=1, seqlen=65536)
    g4 = replace(paper, kv_heads=16, group_size=4)  # the same 64 query heads in 16 KV groups
    fwd, bwd = memory.small_group_partials(g4), memory.small_group_partials(replace(g4, mode="bwd"))
    slots = 65536 * 64 * 16
    assert fwd == (slots * (128 * 2 + 4), slots * 192 * 2) == bwd
    assert memory.small_group_partials(paper) == (0, 0)
    grown = memory.nsa_bytes(g4) - memory.nsa_bytes(paper)
    assert grown >= fwd[0] > 17e9
    # at G = 16 the backward's tuning copies the fp32 dq sum (tuning_clone_bytes); the small-group path tunes
    # nothing that accumulates
    paper_clone = memory.tuning_clone_bytes(replace(paper, mode="bwd"))
    assert paper_clone == 65536 * 64 * 192 * 4 and memory.tuning_clone_bytes(replace(g4, mode="bwd")) == 0
    assert memory.nsa_bytes(replace(g4, mode="bwd")) - memory.nsa_bytes(replace(paper, mode="bwd")) >= fwd[1] - paper_clone
