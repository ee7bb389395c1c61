"""NSA against every dense baseline, the strongest dense kernel, padding notes and the layer's Amdahl bound,
derived from a run's CSV (nsa_bench.baselines), and where they show: sweep summary, report, plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nsa_bench import baselines, report, results
from nsa_bench.plots import plot_run
from nsa_bench.results import CSV_NAME, ENV_NAME, SPEC_NAME, append_row, read_rows, write_json
from nsa_bench.schema import STATUS_OK, STATUS_PREDICTED, Row
from nsa_bench.summary import summary_text

# measured ms at T = 8k, 64k: cudnn fastest at 8k, fa3 absent, flex slowest; fa2 is the CSV's baseline
TIMES = {"fa2": (2.0, 100.0), "cudnn": (1.5, 60.0), "flex": (3.0, 90.0), "nsa-triton": (1.0, 10.0)}
SEQLENS = (8192, 65536)


def _row(mode: str, backend: str, seqlen: int, ms: float, stage: str = "total", status: str = STATUS_OK,
         d_model: int = 0) -> Row:
    measured = status == STATUS_OK
    return Row(mode=mode, backend=backend, impl=backend, stage=stage, seqlen=seqlen, batch=1, kv_heads=4,
               group_size=16, head_dim_qk=192, head_dim_v=128, block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16,
               window=512, dtype="bfloat16", ms_median=ms if measured else None, ms_p10=ms if measured else None,
               ms_p90=ms if measured else None, samples=30 if measured else None,
               predicted_ms=None if measured else ms, speedup=None, baseline="fa2", status=status,
               gpu="NVIDIA H200", d_model=d_model)


def write_run(folder: Path, status: str = STATUS_OK) -> Path:
    folder.mkdir(parents=True)
    csv = folder / CSV_NAME
    for i, seqlen in enumerate(SEQLENS):
        for name, times in TIMES.items():
            append_row(csv, _row("fwd", name, seqlen, times[i], status=status))
    # one layer point: every layer costs its attention plus 4 ms of projections (NSA: 5 with its gate MLP)
    for name, times in TIMES.items():
        gated = name == "nsa-triton"
        append_row(csv, _row("layer-fwd", name, 65536, times[1] + (5.0 if gated else 4.0), status=status, d_model=2560))
        for stage, ms in (("qkv_proj", 3.0), ("gate_mlp", 1.0), ("attention", times[1]), ("out_proj", 1.0)):
            if stage != "gate_mlp" or gated:
                append_row(csv, _row("layer-fwd", name, 65536, ms, stage=stage, status=status, d_model=2560))
    write_json(folder / ENV_NAME, {"gpu": "NVIDIA H200"})
    write_json(folder / SPEC_NAME, {"baseline": "fa2", "more_baselines": ["cudnn", "flex"]})
    return folder


@pytest.fixture
def frame(tmp_path: Path) -> pd.DataFrame:
    return read_rows(write_run(tmp_path / "run"))


def test_dense_and_nsa_backends_of_a_run(frame):
    assert baselines.dense_backends(frame) == ["fa2", "cudnn", "flex"]  # the CSV's baseline first
    assert baselines.nsa_backends(frame) == ["nsa-triton"]


def test_speedup_against_each_baseline_is_the_ratio_of_times(frame):
    table = baselines.baseline_speedups(frame)
    fwd64 = table.loc[("fwd", 65536)]
    assert fwd64["nsa-triton vs fa2"] == pytest.approx(10.0)
    assert fwd64["nsa-triton vs cudnn"] == pytest.approx(6.0)
    assert fwd64["nsa-triton vs flex"] == pytest.approx(9.0)
    assert fwd64["nsa-triton vs fastest dense"] == pytest.approx(6.0) and fwd64["fastest dense"] == "cudnn"
    assert table.loc[("fwd", 8192)]["nsa-triton vs fastest dense"] == pytest.approx(1.5)


def test_strongest_dense_kernel_is_named_from_measurements(frame):
    line = baselines.strongest_dense(frame)
    assert line.startswith("Strongest dense kernel: cudnn") and "3 of 3 points" in line


def test_predictions_name_no_strongest_kernel(tmp_path):
    frame = read_rows(write_run(tmp_path / "run", status=STATUS_PREDICTED))
    assert "not named from predictions" in baselines.strongest_dense(frame)
    assert "padding shows only in measured times" in baselines.padding_notes(frame)[0]


def test_padding_notes_say_who_pads_and_who_runs_the_true_shapes(frame):
    (note,) = baselines.padding_notes(frame)
    assert note.startswith("Dk=192 != Dv=128: fa2: V zero-padded from 128 to 192")
    assert "flatters NSA" in note and "192 -> 256" in note and "cudnn runs the true shapes" in note


def test_padding_note_asks_for_a_true_shape_baseline_when_only_fa2_ran(frame):
    only_fa2 = frame[frame["backend"].isin(["fa2", "nsa-triton"])]
    (note,) = baselines.padding_notes(only_fa2)
    assert "no baseline here runs the true shapes" in note and "cudnn" in note


def test_layer_amdahl_bound(frame):
    table = baselines.layer_table(frame)
    row = table.loc[("layer-fwd", 65536)]
    assert row["nsa-triton vs fa2"] == pytest.approx(104.0 / 15.0)
    assert row["bound vs fa2"] == pytest.approx(104.0 / 5.0)  # fa2's layer over NSA's projections + gate MLP
    assert row["bound vs cudnn"] == pytest.approx(64.0 / 5.0)
    assert row["nsa-triton attention share"] == pytest.approx(10.0 / 15.0)


def test_sweep_summary_shows_every_section(tmp_path):
    text = summary_text(write_run(tmp_path / "run") / CSV_NAME)
    for words in ("NSA speedup against each dense baseline (measured)", "nsa-triton vs cudnn",
                  "Strongest dense kernel: cudnn", "fa2: V zero-padded", "Amdahl bound", "bound vs fa2"):
        assert words in text, words


def test_report_and_plots_show_the_baselines(tmp_path):
    folder = write_run(tmp_path / "run")
    written = plot_run(folder)
    assert folder / "plots" / "speedup_baselines.png" in written and folder / "plots" / "layer.png" in written
    files = report.build_report(folder)
    markdown = files.markdown.read_text()
    assert "## Dense baselines" in markdown and "Strongest dense kernel: cudnn" in markdown
    assert "| layer-fwd | 65536 |" in markdown and "bound vs cudnn" in markdown
    assert 'id="baselines"' in files.html.read_text()


def test_no_dense_baseline_no_sections(frame):
    nsa_only = frame[frame["backend"] == "nsa-triton"]
    assert baselines.baseline_speedups(nsa_only).empty and baselines.layer_table(nsa_only).empty
    assert baselines.summary_text(nsa_only) == ""


def test_an_nsa_backend_named_as_the_baseline_is_not_called_dense(monkeypatch, capsys, tmp_path):
    """--baseline nsa-triton (NSA against NSA: which implementation is faster) is allowed; nothing the run
    prints lists nsa-triton among the dense backends."""
    from cli_runner import run_cli

    code, out, _ = run_cli(monkeypatch, capsys, "sweep", "--baseline", "nsa-triton", "--backend", "fa2,nsa-ref",
                           "--seqlen", "1k", "--mode", "fwd", "--out", str(tmp_path / "r"), "--quiet", "--no-plots")
    frame = results.read_rows(tmp_path / "r")
    assert code == 0 and baselines.dense_backends(frame) == ["fa2"]
    assert set(baselines.nsa_backends(frame)) == {"nsa-triton", "nsa-ref"}
    assert "every dense backend, nsa-triton" not in out and "nsa-triton runs the true shapes" not in out
