"""`nsa-bench env --calibrate`: clean refusal without a GPU, the stored JSON, and the plots reading it back."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from cli_runner import run_cli
from nsa_bench import calibrate, plot_base, plots
from nsa_bench.gpus import gpu_spec


def sample(name: str = "NVIDIA H100 80GB HBM3", flops: float = 700e12, bandwidth: float = 2.9e12):
    return calibrate.Calibration(key=calibrate.key_for(name), device_name=name, matmul_flops=flops,
                                 copy_bytes_per_s=bandwidth, matmul_size=8192, copy_buffer_bytes=1 << 30, reps=20,
                                 timestamp="2026-01-01T00:00:00+00:00", env={"torch": "2.x"})


def test_calibrate_without_gpu_is_one_line_exit_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(calibrate, "calibration_dir", lambda: tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "env", "--calibrate")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "NVIDIA GPU" in lines[0]
    assert "Traceback" not in out + err
    assert not list(tmp_path.iterdir())


def test_calibrate_with_a_measurement_prints_and_stores(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(calibrate, "calibration_dir", lambda: tmp_path)
    monkeypatch.setattr(calibrate, "calibrate", lambda reps=20: sample())
    code, out, err = run_cli(monkeypatch, capsys, "env", "--calibrate")
    assert code == 0, err
    assert "700.0" in out and "989.4" in out  # measured beside the datasheet TFLOP/s
    assert "2900.0" in out and "3350.0" in out  # GB/s
    assert "71%" in out and "87%" in out
    stored = json.loads((tmp_path / "h100.json").read_text())
    assert stored["matmul_flops"] == 700e12 and stored["device_name"] == "NVIDIA H100 80GB HBM3"


def test_plain_env_still_reports(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "env")
    assert code == 0 and "backends:" in out and "fla-nsa" in out and "flex-nsa" in out


def test_round_trip_and_keys(tmp_path):
    original = sample()
    path = calibrate.save(original, tmp_path)
    assert path == tmp_path / "h100.json"
    assert calibrate.load("h100", tmp_path) == original
    assert calibrate.for_gpu(gpu_spec("h100"), tmp_path) == original
    assert calibrate.for_gpu(gpu_spec("a100"), tmp_path) is None
    assert calibrate.key_for("NVIDIA H200") == "h200"
    assert calibrate.key_for("Acme GPU 9000 (rev. 2)") == "acme-gpu-9000-rev-2"
    assert original.ridge_intensity == pytest.approx(700e12 / 2.9e12)


def test_unreadable_calibration_is_ignored(tmp_path):
    (tmp_path / "h100.json").write_text("{not json")
    assert calibrate.load("h100", tmp_path) is None
    (tmp_path / "h100.json").write_text(json.dumps({"key": "h100"}))
    assert calibrate.load("h100", tmp_path) is None


@pytest.mark.parametrize("field,value", [("matmul_flops", 0.0), ("copy_bytes_per_s", -1.0)])
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        calibrate.Calibration(**{"key": "x", "device_name": "x", "matmul_flops": 1.0, "copy_bytes_per_s": 1.0,
                                 field: value})
    with pytest.raises(ValueError, match="device name"):
        calibrate.sanitize("---")


def test_render_unknown_gpu_has_no_datasheet():
    text = calibrate.render(sample(name="Acme GPU 9000"))
    assert "not in gpus.py" in text and "700.0" in text


def _roofline_lines(monkeypatch, tmp_path, calibration_dir):
    """The (label, linestyle) of every line plot_roofline draws."""
    seen: list[tuple[str, str]] = []

    def capture(fig, folder, name):
        seen.extend((line.get_label(), line.get_linestyle()) for line in fig.axes[0].get_lines())
        plt.close(fig)
        return [folder / f"{name}.png"]

    monkeypatch.setattr(plot_base, "save", capture)
    frame = pd.DataFrame([{"status": "predicted", "intensity": 50.0, "flops": 1e12, "predicted_ms": 2.0,
                           "ms_median": float("nan"), "backend": "nsa-triton", "stage": "total", "mode": "fwd"}])
    assert plots.plot_roofline(frame, tmp_path, gpu_spec("h100"), calibration_dir)
    return seen


def test_roofline_draws_measured_ceiling_dashed_when_calibrated(monkeypatch, tmp_path):
    calibrate.save(sample(), tmp_path)
    lines = _roofline_lines(monkeypatch, tmp_path, tmp_path)
    measured = [style for label, style in lines if label.startswith("measured ceiling")]
    assert measured == ["--"]
    assert any(label.endswith("ceiling") and style == "-" for label, style in lines)


def test_roofline_without_calibration_draws_datasheet_only(monkeypatch, tmp_path):
    lines = _roofline_lines(monkeypatch, tmp_path, tmp_path / "none")
    assert not [label for label, _ in lines if label.startswith("measured")]
