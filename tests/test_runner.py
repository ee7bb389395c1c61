"""The runner's measured path on the CPU (reference backend, wall-clock timer) and its failure rows."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nsa_bench import results
from nsa_bench.backends import Backend, Unsupported, get_backend, registry
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool, Measure, Task, rows_for
from nsa_bench.runner import run_sweep, tasks
from nsa_bench.schema import FIELDS
from nsa_bench.spec import SweepSpec
from nsa_bench.timing import GraphCaptureError, time_wallclock

pytestmark = pytest.mark.interpreter

CPU = Measure(device="cpu", timer=time_wallclock)
H100 = gpu_spec("h100")
TINY = SweepSpec(seqlens=(40,), kv_heads=(1,), group_sizes=(2,), head_dims=((16, 8),), block_cmp=(8,), stride_cmp=(4,),
                 block_slc=(8,), n_slc=(3,), window=(8,), dtypes=("float32",), reps=2, warmup=0, check_seqlen=32)


def on_cpu(backend: Backend) -> Backend:
    return replace(backend, availability=lambda: None)


def test_reference_backend_is_checked_and_timed():
    spec = replace(TINY, modes=("fwd", "bwd", "fwdbwd", "decode"))
    points, _ = spec.points()
    ref = on_cpu(get_backend("nsa-ref"))
    for point in points:
        rows = rows_for(Task(point, ref), spec, H100, CPU, baseline_ms=None)
        assert rows[0].status == "ok", rows[0].message
        assert rows[0].max_rel_err < 1e-6
        assert rows[0].ms_median > 0 and rows[0].samples == 2
        assert rows[0].flops > 0 and rows[0].tflops > 0 and rows[0].predicted_ms > 0


@pytest.mark.parametrize("name", ["nsa-triton", "fa2-triton"])
def test_triton_backends_through_the_runner(name):
    """Our kernels (CPU interpreter) go through the same check/time/stage path a GPU run takes."""
    spec = replace(TINY, seqlens=(70,), head_dims=((32, 16),), block_cmp=(16,), stride_cmp=(8,), block_slc=(32,),
                   window=(24,), modes=("fwd", "bwd", "fwdbwd", "decode"), check_seqlen=70)
    backend = on_cpu(get_backend(name))
    for point in spec.points()[0]:
        rows = rows_for(Task(point, backend), spec, H100, CPU, baseline_ms=None)
        total = rows[0]
        assert total.status == "ok", (point.mode, total.message)
        assert total.max_rel_err < 2e-3 and total.ms_median > 0
        stages = {r.stage for r in rows[1:]}
        if name == "nsa-triton" and point.mode == "fwd":
            assert stages == {"compress", "cmp_attn", "select", "slc_attn", "win_attn", "gated_sum"}
            select = next(r for r in rows if r.stage == "select")
            assert select.flops > 0 and select.predicted_ms > 0  # scoring + top-n costs merged
        if name == "nsa-triton" and point.mode == "bwd":
            assert stages == {"compress", "cmp_attn", "slc_attn", "win_attn", "gated_sum"}
        assert all(r.status == "ok" and r.ms_median > 0 for r in rows[1:])


def test_wrong_backend_fails_the_check_and_is_not_timed():
    ref = on_cpu(get_backend("nsa-ref"))

    def build(point, inputs):
        good = ref.build(point, inputs)
        return replace(good, result=lambda: tuple(t * 1.01 for t in good.result()))

    point = replace(TINY, modes=("fwd",)).points()[0][0]
    row = rows_for(Task(point, replace(ref, build=build)), TINY, H100, CPU, None)[0]
    assert row.status == "check_failed" and row.ms_median is None and row.max_rel_err > 1e-3


@pytest.mark.parametrize(
    "error,status",
    [(Unsupported("G too large"), "unsupported"), (ValueError("block_slc=48 unsupported"), "unsupported"),
     (RuntimeError("illegal memory access"), "error")],
)
def test_failing_point_becomes_a_status_row(error, status):
    def build(point, inputs):
        raise error

    backend = Backend("boom", "nsa", ("fwd",), "raises", lambda: None, build)
    point = replace(TINY, modes=("fwd",)).points()[0][0]
    rows = rows_for(Task(point, backend), TINY, H100, CPU, None)
    assert len(rows) == 1 and rows[0].status == status and str(error) in rows[0].message


def test_unavailable_backend_and_missing_mode():
    point = replace(TINY, modes=("decode",)).points()[0][0]
    backend = Backend("gpu-only", "dense", ("fwd",), "", lambda: "needs a CUDA GPU", lambda p, i: None)
    assert rows_for(Task(point, backend), TINY, H100, CPU, None)[0].message == "gpu-only has no decode mode"
    point = replace(TINY, modes=("fwd",)).points()[0][0]
    assert rows_for(Task(point, backend), TINY, H100, CPU, None)[0].status == "unsupported"


def test_out_of_scope_point_is_unsupported_even_when_predicted():
    point = replace(TINY, modes=("fwd",)).points()[0][0]
    backend = Backend("narrow", "nsa", ("fwd",), "", lambda: None, lambda p, i: None,
                      supports=lambda p: f"needs l = l', got {p.block_cmp} and {p.block_slc}" if p.block_cmp != p.block_slc else None)
    assert rows_for(Task(point, backend), TINY, H100, None, None)[0].status == "predicted"
    other = replace(point, block_slc=16)
    row = rows_for(Task(other, backend), TINY, H100, None, None)[0]
    assert row.status == "unsupported" and "needs l = l'" in row.message


def test_sweep_survives_a_failing_backend_and_ctrl_c(tmp_path, monkeypatch):
    spec = replace(TINY, seqlens=(24, 40), modes=("fwd",), backends=("nsa-ref", "boom", "fa2"), baseline="fa2")
    backends = dict(registry())
    backends["nsa-ref"] = on_cpu(backends["nsa-ref"])
    backends["fa2"] = on_cpu(backends["fa2"])  # PyTorch's flash SDPA has a CPU kernel too

    def explode(point, inputs):
        raise RuntimeError("kernel exploded")

    backends["boom"] = Backend("boom", "nsa", ("fwd",), "raises", lambda: None, explode)
    monkeypatch.setattr("nsa_bench.execute.registry", lambda: backends)

    calls = []

    def interrupt_after_three(tasks):
        for task in tasks:
            if len(calls) == 4:
                raise KeyboardInterrupt
            calls.append(task)
            yield task

    outcome = run_sweep(spec, tmp_path, H100, InProcessPool(spec, H100, CPU), resume=False,
                        progress=interrupt_after_three)
    assert outcome.interrupted
    frame = results.read_rows(tmp_path)
    assert list(frame.columns) == list(FIELDS)
    assert len(frame[frame["stage"] == "total"]) == 4  # every finished task is on disk
    assert list(frame["backend"][:3]) == ["fa2", "nsa-ref", "boom"]  # baseline first
    assert set(frame[frame["backend"] == "boom"]["status"]) == {"error"}  # it failed, the sweep went on
    resumed = run_sweep(spec, tmp_path, H100, InProcessPool(spec, H100, CPU), resume=True)
    assert not resumed.interrupted and resumed.skipped == 4
    frame = results.read_rows(tmp_path)
    assert len(frame[frame["stage"] == "total"]) == 6
    for seqlen in (24, 40):
        at = frame[frame["seqlen"] == seqlen].set_index("backend")
        assert at.loc["fa2", "speedup"] == 1.0
        ratio = at.loc["fa2", "ms_median"] / at.loc["nsa-ref", "ms_median"]
        assert at.loc["nsa-ref", "speedup"] == pytest.approx(ratio, rel=1e-3)
        assert at.loc["nsa-ref", "baseline"] == "fa2"


def test_tasks_run_longest_first_with_each_points_backends_together():
    spec = replace(TINY, seqlens=(24, 40, 32), modes=("fwd", "decode"))
    backends = [get_backend("fa2"), get_backend("nsa-ref")]
    order = [(t.point.seqlen, t.point.mode, t.backend.name) for t in tasks(spec.points()[0], backends)]
    assert order[:4] == [(40, "fwd", "fa2"), (40, "fwd", "nsa-ref"), (40, "decode", "fa2"), (40, "decode", "nsa-ref")]
    assert [s for s, _, _ in order] == sorted((s for s, _, _ in order), reverse=True)


def _decode_rows(timer):
    spec = replace(TINY, modes=("decode",))
    assert spec.cuda_graph  # graph replay is the default
    point = spec.points()[0][0]
    return rows_for(Task(point, on_cpu(get_backend("nsa-ref"))), spec, H100, Measure("cpu", timer), None)


def test_decode_is_timed_by_graph_replay_and_falls_back_to_eager_when_capture_fails():
    calls: list[bool] = []

    def capturing(fn, reps, warmup, before_each=None, cuda_graph=False):
        calls.append(cuda_graph)
        return time_wallclock(fn, reps, warmup, before_each)

    row = _decode_rows(capturing)[0]
    assert calls == [True] and row.status == "ok" and row.cuda_graph is True and row.message == ""

    calls.clear()

    def refusing(fn, reps, warmup, before_each=None, cuda_graph=False):
        calls.append(cuda_graph)
        if cuda_graph:
            raise GraphCaptureError("RuntimeError: operation not permitted when stream is capturing")
        return time_wallclock(fn, reps, warmup, before_each)

    row = _decode_rows(refusing)[0]
    assert calls == [True, False]
    assert row.status == "ok" and row.cuda_graph is False and row.ms_median > 0
    assert "CUDA-graph capture failed (RuntimeError: operation not permitted" in row.message
    assert "timed eager launches" in row.message


def test_invalid_selection_fails_the_check_and_is_not_timed():
    """A backend whose own selection breaks NSA_SPEC's rule is check_failed with the reason, untimed."""
    ref = on_cpu(get_backend("nsa-ref"))

    def build(point, inputs):
        good = ref.build(point, inputs)

        def planted() -> torch.Tensor:
            idx = good.selection().clone()
            row = idx[0, -1, 0]  # t = 31: blocks {0, 2, 3}, all forced
            row[row == 0] = 1
            return idx

        return replace(good, selection=planted)

    point = replace(TINY, modes=("fwd",)).points()[0][0]
    row = rows_for(Task(point, replace(ref, build=build)), TINY, H100, CPU, None)[0]
    assert row.status == "check_failed" and row.ms_median is None
    assert row.max_rel_err < 1e-6  # the output itself is right: the selection check caught it
    assert "selection invalid: query t=31 (b=0, group 0) misses forced block(s) [0]" in row.message
    assert row.message.endswith("not timed")
