"""The command line as a user meets it: one-line errors with exit code 2, predicted sweeps without a GPU."""
from __future__ import annotations

import json
import signal

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


def test_bare_command_prints_help_without_an_error(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys)
    assert code == 0 and "Usage: nsa-bench" in out and "sweep" in out
    assert "error" not in (out + err).lower()


def test_warmup_text_is_said_in_words(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "sweep", "--warmup", "abc", "--out", str(tmp_path / "r"))
    assert code == 2 and "--warmup" in err and "'abc' is not a whole number" in err and "invalid literal" not in err


def test_sweep_help_states_the_bounds(monkeypatch, capsys):
    _, out, _ = run_cli(monkeypatch, capsys, "sweep", "--help")
    for text in ("1..16m", "1..4k", "1..100000", "--max-points", "10,000"):
        assert text in out


def test_baseline_runs_even_when_backend_leaves_it_out(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "1k", "--backend", "nsa-triton", "--out",
                           str(tmp_path / "r"), "--quiet", "--no-plots")
    assert code == 0 and "Speedup vs baseline (predicted)" in out
    assert set(pd.read_csv(tmp_path / "r" / "results.csv")["backend"]) == {"fa2", "nsa-triton"}


def test_summary_says_why_there_are_no_speedups_when_the_baseline_has_no_usable_row(monkeypatch, capsys, tmp_path):
    from nsa_bench.summary import summary_text

    run_cli(monkeypatch, capsys, "sweep", "--seqlen", "1k", "--mode", "fwd", "--out", str(tmp_path / "r"), "--quiet",
            "--no-plots")
    csv = tmp_path / "r" / "results.csv"
    frame = pd.read_csv(csv)
    frame.loc[frame["backend"] == "fa2", "status"] = "error"
    frame.to_csv(csv, index=False)
    text = summary_text(csv, "fa2")
    assert "No speedups: the baseline 'fa2' has no usable row" in text and "Time per call, ms (predicted)" in text


def test_default_run_folders_never_collide(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # within the same second
        assert run_cli(monkeypatch, capsys, "sweep", "--suite", "smoke", "--quiet", "--no-plots")[0] == 0
    runs = sorted((tmp_path / "results").iterdir())
    assert len(runs) == 2 and all(r.name.split("-")[2] == "smoke" and len(r.name.split("-")[3]) == 6 for r in runs)


def test_csv_lines_end_in_newline_only(monkeypatch, capsys, tmp_path):
    run_cli(monkeypatch, capsys, "sweep", "--suite", "smoke", "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    data = (tmp_path / "r" / "results.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 47


def test_nsa_only_invalid_setting_still_runs_fa2(monkeypatch, capsys, tmp_path):
    code, _, _ = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "1k", "--n-slc", "2,16", "--mode", "fwd",
                         "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    assert code == 0
    frame = pd.read_csv(tmp_path / "r" / "results.csv")
    at2 = frame[frame["n_slc"] == 2].set_index("backend")
    assert at2.loc["fa2", "status"] == "predicted" and at2.loc["fa2", "predicted_ms"] > 0
    assert at2.loc["nsa-triton", "status"] == "unsupported" and "n_slc must be >= 3" in at2.loc["nsa-triton", "message"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_counts_the_rows_on_disk_on_stderr(monkeypatch, capsys, tmp_path, signum):
    from nsa_bench import execute
    from nsa_bench.interrupts import Interrupted

    original, calls = execute.rows_for, []

    def interrupted_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise Interrupted(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(execute, "rows_for", interrupted_fifth)
    code, out, err = run_cli(monkeypatch, capsys, "sweep", "--suite", "smoke", "--out", str(tmp_path / "r"), "--quiet")
    assert code == 128 + signum
    on_disk = len(pd.read_csv(tmp_path / "r" / "results.csv"))
    assert err.strip() == (f"Interrupted ({signal.Signals(signum).name}): {on_disk} rows kept in "
                           f"{tmp_path / 'r' / 'results.csv'} (continue with --out {tmp_path / 'r'} --resume).")
    # 4 tasks, longest sequence first: fa2 and nsa-triton at 2k fwd (total + 7 stages), then bwd (total + 5)
    assert "Interrupted" not in out and on_disk == (1 + 8) + (1 + 6)


def test_a_folder_with_files_of_its_own_is_not_taken_for_a_run(monkeypatch, capsys, tmp_path):
    """--out naming a folder that holds env.json (or plots/, ...) but no run: refused, nothing touched; a
    folder a sweep itself started (killed before its first row) is the sweep's to write again."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "env.json").write_text("USERDATA\n")
    code, _, err = run_cli(monkeypatch, capsys, "sweep", "--seqlen", "1k", "--mode", "fwd", "--out", str(mine),
                           "--quiet", "--no-plots")
    assert code == 2 and "holds env.json but no run" in err and (mine / "env.json").read_text() == "USERDATA\n"
    assert sorted(p.name for p in mine.iterdir()) == ["env.json"]
    started = tmp_path / "started"
    args = ("sweep", "--seqlen", "1k", "--mode", "fwd", "--out", str(started), "--quiet", "--no-plots")
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    (started / "results.csv").unlink()
    (started / "progress.jsonl").unlink()
    assert run_cli(monkeypatch, capsys, *args)[0] == 0


def test_env_gpu_key_names_the_results_folder_of_the_gpu_here(monkeypatch, capsys):
    import torch

    assert run_cli(monkeypatch, capsys, "env", "--gpu-key")[1].strip() == "none"  # no GPU on the test machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, key in (("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA L40S", "nvidia-l40s")):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0, name=name: name)
        assert run_cli(monkeypatch, capsys, "env", "--gpu-key")[1].strip() == key
