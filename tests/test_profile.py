"""`nsa-bench profile`: clean refusal without ncu/GPU, ncu CSV parsing, rows beside the cost model, NVTX helper.

ncu itself is simulated: `run_profile` takes the subprocess runner, so the whole pipeline (one child per
part, the optional-metric fallback, the permission error) runs here on realistic ncu output.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from cli_runner import run_cli
from nsa_bench import cost, nvtx, profile
from nsa_bench.backends import Workload
from nsa_bench.point_cost import shape_of
from nsa_bench.spec import Point

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
          '"Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum",'
          '"sm__inst_executed_pipe_tensor_op_gmma.sum","sm__ops_path_tensor_src_bf16_dst_fp32.sum",'
          '"sm__ops_path_tensor_src_fp16_dst_fp32.sum","sm__ops_path_tensor_src_tf32_dst_fp32.sum",'
          '"smsp__sass_thread_inst_executed_op_fadd_pred_on.sum","smsp__sass_thread_inst_executed_op_ffma_pred_on.sum",'
          '"smsp__sass_thread_inst_executed_op_fmul_pred_on.sum","smsp__sass_thread_inst_executed_op_hadd_pred_on.sum",'
          '"smsp__sass_thread_inst_executed_op_hfma_pred_on.sum","smsp__sass_thread_inst_executed_op_hmul_pred_on.sum"')
UNITS = '"","","","","","","","","","","","byte","byte","nsecond","inst","","","","inst","inst","inst","inst","inst","inst"'
KERNEL_A = ('"0","4242","python3.11","127.0.0.1","_fwd_kernel","1","7","(128, 1, 1)","(512, 64, 1)","0","9.0",'
            '"1,000,000,000","250,000,000","2,000,000","12,288","3,000,000,000,000","0","0",'
            '"1,000","2,000","3,000","0","0","0"')
KERNEL_B = ('"1","4242","python3.11","127.0.0.1","gated_sum_kernel","1","7","(256, 1, 1)","(2048, 1, 1)","0","9.0",'
            '"500,000","100,000","10,000","0","0","0","0","10","20","30","4","5","6"')
SAMPLE_CSV = "\n".join(["==PROF== Connected to process 4242", HEADER, UNITS, KERNEL_A, KERNEL_B, ""])


def fwd_point(seqlen: int = 65536) -> Point:
    return Point("fwd", seqlen, 1, 4, 16, 192, 128, 32, 16, 64, 16, 512, "bfloat16")


# ------------------------------------------------------------------ the command without ncu / GPU
@pytest.mark.parametrize("has_gpu,missing", [(False, "ncu and a CUDA GPU"), (True, "missing here: ncu")])
def test_profile_without_ncu_is_one_line_exit_1(monkeypatch, capsys, tmp_path, has_gpu, missing):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    code, out, err = run_cli(monkeypatch, capsys, "profile", "--seqlen", "64k", "--out", str(tmp_path / "p"))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert missing in lines[0] and "Nsight Compute" in lines[0] and "PATH" in lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "p").exists()


def test_profile_without_gpu_only(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/local/cuda/bin/ncu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(monkeypatch, capsys, "profile", "--out", str(tmp_path / "p"))
    assert code == 1 and "missing here: a CUDA GPU" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,flag", [(["--seqlen", "8k,16k"], "--seqlen"), (["--mode", "fwd,bwd"], "--mode"),
                                       (["--backend", "warp-drive"], "--backend"),
                                       (["--n-slc", "2"], "--n-slc"), (["--dtype", "fp8"], "--dtype")])
def test_profile_bad_flags_exit_2(monkeypatch, capsys, args, flag):
    code, out, err = run_cli(monkeypatch, capsys, "profile", *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and flag in err
    assert "Traceback" not in out + err


def test_point_from_options_defaults_to_the_paper_64k_forward():
    point, backend = profile.point_from_options({"seqlen": None, "batch": "2"})
    assert backend == "nsa-triton"
    assert point == Point("fwd", 65536, 2, 4, 16, 192, 128, 32, 16, 64, 16, 512, "bfloat16")


# ------------------------------------------------------------------ parsing ncu's CSV
def test_parse_sample_ncu_csv():
    records = profile.parse_ncu_csv(SAMPLE_CSV, "total")
    assert [r.kernel for r in records] == ["_fwd_kernel", "gated_sum_kernel"]
    first, second = records
    assert first.part == "total"
    assert first.duration_ns == 2_000_000 and first.dram_read_bytes == 1e9 and first.dram_write_bytes == 2.5e8
    assert first.tensor_flops == 3e12 and first.gmma_inst == 12288
    assert first.simt_flops == 1000 + 2 * 2000 + 3000
    assert second.simt_flops == 10 + 2 * 20 + 30 + 4 + 2 * 5 + 6
    assert second.tensor_flops == 0


def test_parse_without_tensor_columns_marks_them_missing():
    keep = [i for i, name in enumerate(HEADER.split(",")) if "ops_path_tensor" not in name and "gmma" not in name]
    pick = lambda line: ",".join(line.split('","')[i].strip('"').join('""') for i in keep)  # noqa: E731
    text = "\n".join(pick(line) for line in (HEADER, UNITS, KERNEL_B))
    (record,) = profile.parse_ncu_csv(text, "gated_sum")
    assert record.tensor_flops is None and record.gmma_inst is None and record.simt_flops == 100
    (row,) = [r for r in profile.profile_rows([record], {"gated_sum": None}) if r.kernel == profile.ALL_KERNELS]
    assert "unavailable" in row.flops_note


def test_parse_rejects_csv_without_kernel_names():
    with pytest.raises(profile.ProfileError, match="kernel-name"):
        profile.parse_ncu_csv('"ID","Foo"\n"0","1"\n', "total")


# ------------------------------------------------------------------ rows beside the cost model
def test_rows_sum_kernels_and_carry_the_model():
    point = fwd_point()
    stage_costs = {"select": ["scoring", "topn"]}
    records = profile.parse_ncu_csv(SAMPLE_CSV, "total") + profile.parse_ncu_csv(SAMPLE_CSV, "select")
    models = {part: profile.model_for(part, point, "nsa", stage_costs) for part in ("total", "select", "bogus")}
    assert models["bogus"] is None
    rows = profile.profile_rows(records, models)
    assert [(r.part, r.kernel) for r in rows] == [
        ("total", "_fwd_kernel"), ("total", "gated_sum_kernel"), ("total", profile.ALL_KERNELS),
        ("select", "_fwd_kernel"), ("select", "gated_sum_kernel"), ("select", profile.ALL_KERNELS)]
    whole = rows[2]
    assert whole.duration_ms == pytest.approx(2.01)
    assert whole.measured_bytes == pytest.approx(1e9 + 2.5e8 + 6e5)
    assert whole.measured_flops == pytest.approx(3e12 + 8000 + 100)
    assert whole.achieved_tflops == pytest.approx(whole.measured_flops / 2.01e-3 / 1e12)
    assert whole.measured_intensity == pytest.approx(whole.measured_flops / whole.measured_bytes)
    model = cost.nsa_cost(shape_of(point), point.cfg, "fwd")
    assert whole.model_flops == model.flops and whole.model_bytes == model.bytes
    assert whole.model_intensity == pytest.approx(model.intensity)
    selected = rows[5]
    assert selected.model_stages == "scoring+topn"
    assert selected.model_flops == model.stage("scoring").flops + model.stage("topn").flops
    assert selected.model_bytes == model.stage("scoring").bytes + model.stage("topn").bytes
    assert whole.flops_note == ""  # tensor counters saw the wgmma work


def test_wgmma_missed_by_counters_is_flagged():
    text = SAMPLE_CSV.replace('"12,288","3,000,000,000,000"', '"12,288","0"')
    rows = profile.profile_rows(profile.parse_ncu_csv(text, "total"), {"total": None})
    assert "wgmma" in rows[0].flops_note and rows[1].flops_note == ""


def test_csv_and_plot_are_written(tmp_path):
    point = fwd_point()
    records = profile.parse_ncu_csv(SAMPLE_CSV, "total") + profile.parse_ncu_csv(SAMPLE_CSV, "cmp_attn")
    models = {part: profile.model_for(part, point, "nsa", {}) for part in ("total", "cmp_attn")}
    rows = profile.profile_rows(records, models)
    path = profile.write_csv(rows, tmp_path / "profile.csv")
    frame = pd.read_csv(path)
    for column in ("part", "kernel", "duration_ms", "measured_bytes", "measured_flops", "achieved_tflops",
                   "measured_intensity", "model_flops", "model_bytes", "model_intensity"):
        assert column in frame.columns
    assert len(frame) == 6 and set(frame["part"]) == {"total", "cmp_attn"}
    plots = profile.plot_intensity(rows, tmp_path)
    assert [p.name for p in plots] == ["profile_intensity.png", "profile_intensity.svg"]
    assert plots[0].stat().st_size > 10_000


# ------------------------------------------------------------------ the pipeline with a simulated ncu
class FakeNcu:
    """Stands in for subprocess.run: profiles write parts.json (as the child does), imports print SAMPLE_CSV."""

    def __init__(self, stages: list[str], fail_metrics_once: bool = False, perm_error: bool = False) -> None:
        self.stages, self.fail_metrics_once, self.perm_error = stages, fail_metrics_once, perm_error
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        self.commands.append(command)
        if "--import" in command:
            return subprocess.CompletedProcess(command, 0, stdout=SAMPLE_CSV, stderr="")
        metrics = command[command.index("--metrics") + 1]
        if self.perm_error:
            return subprocess.CompletedProcess(command, 1, stdout="==ERROR== ERR_NVGPUCTRPERM - no access", stderr="")
        if self.fail_metrics_once and "ops_path_tensor" in metrics:
            return subprocess.CompletedProcess(command, 1, stdout="",
                                               stderr="==ERROR== Failed to find metric sm__ops_path_tensor_src_tf32")
        assert "--profile-from-start" in command and command[command.index("--profile-from-start") + 1] == "off"
        child = command[command.index("-m") - 1:]
        assert child[1:3] == ["-m", "nsa_bench.profile"]
        part = child[child.index("--part") + 1]
        if part == "total":
            parts_file = Path(child[child.index("--parts-file") + 1])
            parts_file.write_text(json.dumps({"impl": "triton", "stages": self.stages,
                                              "stage_costs": {"select": ["scoring", "topn"]}}))
        return subprocess.CompletedProcess(command, 0, stdout="==PROF== Disconnected", stderr="")


@pytest.fixture
def gpu_backends(monkeypatch):
    """Backends report themselves available (their availability asks torch.cuda)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_pipeline_profiles_each_part_in_its_own_child(tmp_path, gpu_backends):
    fake = FakeNcu(["cmp_attn", "select"])
    outcome = profile.run_profile(fwd_point(), "nsa-triton", tmp_path, execute=fake, ncu="ncu")
    profiled = [c for c in fake.commands if "--import" not in c]
    assert [c[c.index("--part") + 1] for c in profiled] == ["total", "cmp_attn", "select"]
    assert all("gpu__time_duration.sum" in c[c.index("--metrics") + 1] for c in profiled)
    frame = pd.read_csv(outcome.csv)
    sums = frame[frame["kernel"] == profile.ALL_KERNELS]
    assert list(sums["part"]) == ["total", "cmp_attn", "select"]
    assert list(sums["model_stages"])[2] == "scoring+topn"
    assert (tmp_path / "profile_intensity.png").exists()
    text = profile.summary(outcome)
    assert "cmp_attn" in text and "profile.csv" in text


def test_pipeline_drops_optional_metrics_it_lacks(tmp_path, gpu_backends):
    fake = FakeNcu([], fail_metrics_once=True)
    outcome = profile.run_profile(fwd_point(), "nsa-triton", tmp_path, execute=fake, ncu="ncu")
    profiled = [c for c in fake.commands if "--import" not in c]
    assert len(profiled) == 2 and "ops_path_tensor" not in profiled[1][profiled[1].index("--metrics") + 1]
    assert len(outcome.rows) == 3


def test_pipeline_permission_error_is_explained(tmp_path, gpu_backends):
    with pytest.raises(profile.ProfileError, match="NVreg_RestrictProfilingToAdminUsers"):
        profile.run_profile(fwd_point(), "nsa-triton", tmp_path, execute=FakeNcu([], perm_error=True), ncu="ncu")


def test_pipeline_refuses_unavailable_backend(tmp_path, monkeypatch):
    from nsa_bench.backends import fla_nsa

    monkeypatch.setattr(fla_nsa, "fla_importable", lambda: False)
    with pytest.raises(profile.ProfileError, match="pip install fla-core"):
        profile.run_profile(fwd_point(), "fla-nsa", tmp_path, execute=FakeNcu([]), ncu="ncu")
    with pytest.raises(profile.ProfileError, match="no decode mode"):
        profile.run_profile(Point("decode", 1024, 1, 4, 16, 192, 128, 32, 16, 64, 16, 512, "bfloat16"),
                            "flex-nsa", tmp_path, execute=FakeNcu([]), ncu="ncu")


# ------------------------------------------------------------------ NVTX helper and child pieces
def _workload(log: list[str]) -> Workload:
    return Workload(run=lambda: log.append("run"), impl="x", result=lambda: (),
                    stages={"cmp_attn": lambda: log.append("cmp")})


def test_annotate_is_a_no_op_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    workload = _workload([])
    assert nvtx.annotate(workload, "nsa-triton") is workload


def test_annotate_wraps_operation_and_stages_in_named_ranges(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    log: list[str] = []

    @contextlib.contextmanager
    def fake_range(name):
        log.append(f"push {name}")
        yield
        log.append("pop")

    monkeypatch.setattr(torch.cuda.nvtx, "range", fake_range)
    workload = nvtx.annotate(_workload(log), "flex-nsa")
    workload.run()
    workload.stages["cmp_attn"]()
    assert log == ["push flex-nsa", "run", "pop", "push flex-nsa:cmp_attn", "cmp", "pop"]


def test_part_callable_names_known_stages():
    workload = _workload([])
    assert profile._part_callable(workload, "total") is workload.run
    with pytest.raises(profile.ProfileError, match="cmp_attn"):
        profile._part_callable(workload, "slc_attn")


def test_child_failure_is_one_line_exit_3(capsys):
    point = Point("fwd", 64, 1, 1, 2, 16, 16, 16, 16, 16, 3, 16, "float32")
    with pytest.raises(SystemExit) as info:
        profile.main(["--backend", "nsa-ref", "--point", json.dumps(point.as_dict()), "--part", "no_such_stage"])
    err = capsys.readouterr().err
    assert info.value.code == 3
    assert len(err.strip().splitlines()) == 1 and err.startswith("nsa-bench profile child error:")
