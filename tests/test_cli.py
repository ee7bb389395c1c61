"""The command line as a user meets it: one-line errors with exit code 2, predicted sweeps without a GPU."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from cli_runner import run_cli


@pytest.mark.parametrize(
    "args,flag,value",
    [
        (["--seqlen", "64k..8k"], "--seqlen", "64k..8k"),
        (["--seqlen", "8q"], "--seqlen", "8q"),
        (["--batch", "0"], "--batch", "0"),
        (["--group-size", "-2"], "--group-size", "-2"),
        (["--head-dim", "192x128"], "--head-dim", "192x128"),
        (["--block-cmp", "32", "--stride-cmp", "24"], "--stride-cmp", "24"),
        (["--backend", "fa2,warp-drive"], "--backend", "warp-drive"),
        (["--suite", "nope"], "--suite", "nope"),
        (["--gpu", "tpu"], "--gpu", "tpu"),
        (["--mode", "sideways"], "--mode", "sideways"),
        (["--baseline", "fa2,warp-drive"], "--baseline", "warp-drive"),
        (["--d-model", "0"], "--d-model", "0"),
        (["--time-budget", "soon"], "--time-budget", "soon"),
        (["--workers", "0"], "--workers", "0"),
    ],
)
def test_bad_input_is_one_line_exit_2(monkeypatch, capsys, tmp_path, args, flag, value):
    code, out, err = run_cli(monkeypatch, capsys, "sweep", "--out", str(tmp_path / "run"), "--quiet", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and value in lines[0]
    assert "Traceback" not in err + out


def test_help_lists_flags(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--help")
    assert code == 0
    for flag in ("--seqlen", "--head-dim", "--block-slc", "--resume", "--suite", "--gpu", "--baseline", "--dry-run",
                 "--time-budget", "--no-precompile", "--workers", "--no-cuda-graph"):
        assert flag in out
    code, out, _ = run_cli(monkeypatch, capsys, "precompile", "--help")
    assert code == 0 and "--workers" in out and "--seqlen" in out and "--time-budget" not in out


def test_decode_graph_replay_is_the_default_and_can_be_turned_off(monkeypatch, capsys, tmp_path):
    for flags, expected in (([], True), (["--no-cuda-graph"], False)):
        out_dir = tmp_path / f"run{expected}"
        code, _, _ = run_cli(monkeypatch, capsys, "sweep", "--mode", "decode", "--seqlen", "8k", "--out", str(out_dir),
                             "--quiet", "--no-plots", *flags)
        assert code == 0
        assert json.loads((out_dir / "spec.json").read_text())["cuda_graph"] is expected


def test_predicted_sweep_without_gpu(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "8k..64k", "--out", str(out_dir), "--quiet")
    assert code == 0
    assert "No CUDA GPU found" in out
    frame = pd.read_csv(out_dir / "results.csv")
    totals = frame[frame["stage"] == "total"]
    assert set(totals["mode"]) == {"fwd", "bwd", "decode"}
    assert sorted(set(totals["seqlen"])) == [8192, 16384, 32768, 65536]
    assert (frame["status"] == "predicted").all() and frame["ms_median"].isna().all()
    decode64 = totals[(totals["mode"] == "decode") & (totals["seqlen"] == 65536) & (totals["backend"] == "nsa-triton")]
    assert 11.0 < float(decode64["speedup"].iloc[0]) < 12.0  # PAPER.md Table 4: 11.6x fewer bytes
    fwd64 = frame[(frame["mode"] == "fwd") & (frame["seqlen"] == 65536)]
    dense = float(fwd64[fwd64["backend"] == "fa2"]["flops"].iloc[0])
    nsa_attn = fwd64[fwd64["stage"].isin(["cmp_attn", "slc_attn", "win_attn"])]["flops"].sum()
    assert dense / nsa_attn == pytest.approx(9.25, abs=0.01)  # PAPER.md FLOP ratio at 64k
    for name in ("speedup", "roofline", "stages"):
        assert (out_dir / "plots" / f"{name}.png").stat().st_size > 10_000
        assert (out_dir / "plots" / f"{name}.svg").exists()
    env = json.loads((out_dir / "env.json").read_text())
    assert env["gpu"] is None and "sweep" in env["command"] and env["torch"]
    assert "Speedup vs baseline (predicted)" in out


def test_existing_run_needs_resume_and_resume_skips(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "run"
    args = ["sweep", "--suite", "smoke", "--out", str(out_dir), "--quiet", "--no-plots"]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    rows = len(pd.read_csv(out_dir / "results.csv"))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "--resume" in err
    code, out, _ = run_cli(monkeypatch, capsys, *args, "--resume")
    assert code == 0 and "already done" in out
    assert len(pd.read_csv(out_dir / "results.csv")) == rows


def test_plot_command(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "run"
    run_cli(monkeypatch, capsys, "sweep", "--suite", "smoke", "--out", str(out_dir), "--quiet", "--no-plots")
    code, out, _ = run_cli(monkeypatch, capsys, "plot", str(out_dir), "--gpu", "a100")
    assert code == 0 and "speedup.png" in out
    code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_env_lists_backends(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "env")
    assert code == 0
    for name in ("fa2", "nsa-triton", "nsa-ref", "fa2-triton", "cudnn", "fa3", "flex"):
        assert name in out
    assert "needs a CUDA GPU" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "FlashAttention-3" in lines["fa3"] and "cuDNN SDPA" in lines["cudnn"] and "flex_attention" in lines["flex"]


def test_predicted_layer_sweep_against_several_baselines(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "8k,64k", "--mode", "layer-fwd,layer-bwd",
                           "--backend", "nsa-triton", "--baseline", "fa2,cudnn", "--out", str(out_dir), "--quiet")
    assert code == 0
    frame = pd.read_csv(out_dir / "results.csv")
    assert set(frame["backend"]) == {"fa2", "cudnn", "nsa-triton"}  # baselines run without --backend naming them
    assert set(frame["d_model"]) == {2560} and (frame["status"] == "predicted").all()
    totals = frame[frame["stage"] == "total"]
    assert set(totals["baseline"]) == {"fa2"}  # the CSV's speedup column stays relative to the first baseline
    stages = set(frame[(frame["backend"] == "cudnn") & (frame["mode"] == "layer-fwd")]["stage"])
    assert stages == {"total", "qkv_proj", "attention", "out_proj"}
    for words in ("every dense backend predicts the same", "Amdahl bound", "bound vs fa2",
                  "Strongest dense kernel: not named from predictions", "fa2: V zero-padded"):
        assert words in out, words
    assert (out_dir / "plots" / "speedup_baselines.png").exists()
    spec = json.loads((out_dir / "spec.json").read_text())
    assert spec["baseline"] == "fa2" and spec["more_baselines"] == ["cudnn"] and spec["d_models"] == [2560]
