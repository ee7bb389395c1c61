"""tuning.json: a measured run records each autotuned kernel's config as its tasks finish."""
from __future__ import annotations

import json
from dataclasses import replace

from nsa_bench import sweep
from nsa_bench.backends import registry
from nsa_bench.execute import Measure
from nsa_bench.spec import SweepSpec
from nsa_bench.timing import time_wallclock
from nsa_bench.tuning_log import TUNING_NAME, TuningLog
from nsa_kernels import flash, selected

SPEC = SweepSpec(seqlens=(24, 40), kv_heads=(1,), group_sizes=(2,), head_dims=((16, 8),), block_cmp=(8,),
                 stride_cmp=(4,), block_slc=(8,), n_slc=(3,), window=(8,), dtypes=("float32",), reps=1, warmup=0,
                 check_seqlen=16, modes=("fwd",), backends=("nsa-ref", "nsa-triton"), baseline="nsa-ref", gpu="h100")
KEY_40 = (64, 0, 16, True, False, 6, 2, "torch.float32")  # a tuner cache key: BLOCK_DK, DK_B, BLOCK_DV, CAUSAL, HAS_WINDOW, buckets, dtypes
KEY_24 = (16, 16, 8, 8, 5, 2, "torch.float32")  # G_PAD, DK_PAD, DV_PAD, BLOCK_SLC, buckets, dtypes


def test_measured_sweep_writes_tuning_json_as_tasks_finish(tmp_path, monkeypatch):
    """Autotuner choices (planted: the CPU interpreter never autotunes) appear after the task that made them."""
    backends = dict(registry())
    ref = replace(backends["nsa-ref"], availability=lambda: None)

    def build(point, inputs):
        if point.seqlen == 24:  # the second point in run order (its timed build; checks run at 16) tunes a key
            monkeypatch.setitem(selected._selected_fwd_tuned.cache, KEY_24, selected._selected_fwd_tuned.configs[0])
        return ref.build(point, inputs)

    backends["nsa-ref"] = replace(ref, build=build)
    monkeypatch.setattr("nsa_bench.execute.registry", lambda: backends)
    monkeypatch.setattr(sweep, "cuda_present", lambda: True)
    monkeypatch.setattr(sweep, "cuda_measure", lambda: Measure("cpu", time_wallclock))
    monkeypatch.setitem(flash._fwd_tuned.cache, KEY_40, flash._fwd_tuned.configs[0])
    # in-process: the choices are planted in this process (workers report theirs: tests/test_workers.py)
    sweep.execute(SPEC, tmp_path / "run", resume=False, plots=False, echo=lambda text: None, progress=False,
                  in_process=True)
    recorded = json.loads((tmp_path / "run" / TUNING_NAME).read_text())["configs"]
    by_kernel = {entry["kernel"]: entry for entry in recorded}
    assert by_kernel["flash._fwd_tuned"]["first_tuned_in"].startswith("nsa-ref fwd T=40")
    assert by_kernel["selected._selected_fwd_tuned"]["first_tuned_in"].startswith("nsa-ref fwd T=24")
    assert by_kernel["flash._fwd_tuned"]["key"]["SEQ_BUCKET"] == 6
    assert by_kernel["flash._fwd_tuned"]["config"] == str(flash._fwd_tuned.configs[0])
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_tuning_log_replaces_the_file_whole(tmp_path, monkeypatch):
    log = TuningLog(tmp_path)
    assert log.update("first") == 0
    monkeypatch.setitem(flash._fwd_tuned.cache, KEY_40, flash._fwd_tuned.configs[0])
    assert log.update("second") == 1
    (entry,) = json.loads((tmp_path / TUNING_NAME).read_text())["configs"]
    assert entry["first_tuned_in"] == "second" and entry["kernel"] == "flash._fwd_tuned"


def test_tuning_log_says_the_stage_rows_ran_the_totals_autotuners(tmp_path):
    """tests/test_nsa.py checks the claim (the stage callables launch the total's autotuners); the file states it."""
    TuningLog(tmp_path).update("first")
    stages = json.loads((tmp_path / TUNING_NAME).read_text())["stages"]
    assert "stage rows launch the autotuners its total row launches" in stages
