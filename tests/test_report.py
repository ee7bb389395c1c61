"""`nsa-bench report`: a self-contained HTML page and a markdown file, from CPU (predicted) and measured runs."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from nsa_bench import report
from nsa_bench.report import ReportError, build_report
from nsa_bench.results import CSV_NAME, ENV_NAME, PLOTS_DIR, SPEC_NAME, append_row, write_json
from nsa_bench.schema import STATUS_OK, STATUS_OOM, STATUS_PREDICTED, Row

PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def invoke(*args: str):
    from nsa_bench import cli

    return CliRunner().invoke(cli.cli, list(args))


@pytest.fixture
def no_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep records the git commit; the tests need not run git."""
    from nsa_bench import environment

    monkeypatch.setattr(environment, "git_commit", lambda: {"commit": "test", "dirty": False})


def _row(mode: str, backend: str, seqlen: int, ms: float, stage: str = "total", status: str = STATUS_OK,
         speedup: float | None = None, message: str = "") -> Row:
    measured = status == STATUS_OK
    return Row(mode=mode, backend=backend, impl=backend, stage=stage, seqlen=seqlen, batch=1, kv_heads=2,
               group_size=1, head_dim_qk=64, head_dim_v=32, block_cmp=32, stride_cmp=16, block_slc=64, n_slc=4,
               window=128, dtype="float16", ms_median=ms if measured else None,
               ms_p10=ms * 0.98 if measured else None, ms_p90=ms * 1.02 if measured else None,
               samples=30 if measured else None, predicted_ms=ms if status == STATUS_PREDICTED else None,
               speedup=speedup, baseline="fa2" if speedup is not None else "", status=status, message=message,
               gpu="NVIDIA H100 80GB HBM3")


def measured_run(folder: Path) -> Path:
    """fa2 + nsa-triton totals and two NSA stages at T=1 and T=1000; an OOM point with an HTML-ish message."""
    folder.mkdir(parents=True)
    csv = folder / CSV_NAME
    for seqlen, fa2, nsa in ((1, 0.01, 0.02), (1000, 1.0, 0.5)):
        append_row(csv, _row("fwd", "fa2", seqlen, fa2, speedup=1.0))
        append_row(csv, _row("fwd", "nsa-triton", seqlen, nsa, speedup=fa2 / nsa))
        append_row(csv, _row("fwd", "nsa-triton", seqlen, nsa * 0.7, stage="slc_attn"))
        append_row(csv, _row("fwd", "nsa-triton", seqlen, nsa * 0.2, stage="cmp_attn"))
    append_row(csv, _row("fwd", "nsa-triton", 4096, 0.0, status=STATUS_OOM,
                         message="out of GPU memory: <tried 80 GiB> & failed"))
    write_json(folder / ENV_NAME, {"gpu": "NVIDIA H100 80GB HBM3", "git": {"commit": "abc123"}})
    write_json(folder / SPEC_NAME, {"seqlens": [1, 1000, 4096], "backends": ["fa2", "nsa-triton"]})
    return folder


def _fake_plots(directory: Path, gpu: str | None) -> list[Path]:
    """A stand-in plotter: one tiny PNG per plot kind (what matters here is the embedding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = directory / PLOTS_DIR
    folder.mkdir(exist_ok=True)
    written = []
    for name in ("speedup", "stages"):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([1, 2], [1, 2])
        path = folder / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# --- the CPU run through the real CLI (sweep, then report) ---------------------------------------

def test_report_of_a_cpu_sweep_via_cli(tmp_path: Path, no_git: None) -> None:
    run = tmp_path / "cpu"
    swept = invoke("sweep", "--suite", "smoke", "--out", str(run), "--quiet", "--no-plots")
    assert swept.exit_code == 0, swept.output
    assert not (run / PLOTS_DIR).exists()
    made = invoke("report", str(run))
    assert made.exit_code == 0, made.output
    assert "report.html" in made.output

    plots = sorted((run / PLOTS_DIR).glob("*.png"))  # the report made the missing plots
    assert {p.stem for p in plots} >= {"speedup", "roofline", "stages"}
    page = (run / "report.html").read_text()
    embedded = [base64.b64decode(data) for data in PNG_URI.findall(page)]
    assert sorted(embedded) == sorted(p.read_bytes() for p in plots)  # every plot, byte for byte
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<link" not in page and "<script" not in page
    for section in ("summary", "plots", "breakdown", "config", "env", "rows"):
        assert f'<section id="{section}">' in page
    assert '<section id="failed">' not in page and "## Failed points" not in (run / "report.md").read_text()  # none
    assert "<h3>One attention layer</h3>" not in page  # no layer points: no empty section for them
    assert "speedup nsa-triton" in page and "predictions, not measurements" in page
    assert "slc_attn" in page and "cmp_attn" in page  # the per-branch breakdown
    assert "NVIDIA H100 SXM5 80GB" in page  # env.json's target GPU
    # the summary holds the predicted speedup of every mode x seqlen
    frame = pd.read_csv(run / CSV_NAME)
    nsa = frame[(frame["backend"] == "nsa-triton") & (frame["stage"] == "total")]
    for value in nsa["speedup"]:
        assert f"<td>{value:.4g}</td>" in page

    markdown = (run / "report.md").read_text()
    assert "![speedup](plots/speedup.png)" in markdown and "## Per-branch breakdown" in markdown
    assert "| mode | seqlen | speedup nsa-triton |" in markdown  # fa2's own column (all 1.0) is left out


# --- the module on synthetic runs --------------------------------------------------------------

def test_measured_run_tables(tmp_path: Path) -> None:
    run = measured_run(tmp_path / "gpu")
    files = build_report(run, plotter=_fake_plots)
    assert [p.name for p in files.plots] == ["speedup", "stages"] and not files.warnings
    page = files.html.read_text()
    assert len(PNG_URI.findall(page)) == 2
    assert "Measured on a GPU" in page
    assert "<td>2</td>" in page  # speedup 1.0 / 0.5 at T=1000
    # the failed point is listed with its message, escaped
    assert "out of GPU memory: &lt;tried 80 GiB&gt; &amp; failed" in page and "<tried" not in page
    failed = page.split('<section id="failed">')[1].split("</section>")[0]
    assert "<td>oom</td>" in failed and "<td>4096</td>" in failed
    # the breakdown sits beside the total and the stages' share of it
    assert "ms slc_attn" in page and "stages / total" in page and "<td>0.9</td>" in page
    markdown = files.markdown.read_text()
    assert "| fwd | 1000 | 2 |" in markdown and "![stages](plots/stages.png)" in markdown


def test_existing_plots_are_used_not_redrawn(tmp_path: Path) -> None:
    run = measured_run(tmp_path / "gpu")
    _fake_plots(run, None)

    def must_not_plot(directory: Path, gpu: str | None) -> list[Path]:
        raise AssertionError("plots exist: the report must not redraw them")

    assert len(build_report(run, plotter=must_not_plot).plots) == 2


def test_svg_only_plot_is_inlined(tmp_path: Path) -> None:
    run = measured_run(tmp_path / "gpu")
    (run / PLOTS_DIR).mkdir()
    (run / PLOTS_DIR / "speedup.svg").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg xmlns="http://www.w3.org/2000/svg"><rect width="4" height="4"/></svg>\n')
    page = build_report(run).html.read_text()
    assert '<svg xmlns="http://www.w3.org/2000/svg"><rect' in page and "<?xml" not in page


def test_failing_plotter_still_writes_the_report(tmp_path: Path) -> None:
    run = measured_run(tmp_path / "gpu")

    def broken(directory: Path, gpu: str | None) -> list[Path]:
        raise RuntimeError("no display")

    files = build_report(run, plotter=broken)
    assert files.warnings == ("plots could not be made: RuntimeError: no display",)
    assert "plots could not be made" in files.html.read_text() and files.markdown.exists()


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a run folder"):
        build_report(tmp_path / "missing")
    run = measured_run(tmp_path / "gpu")
    with pytest.raises(ReportError, match="not a run folder"):
        build_report(run / CSV_NAME)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no results CSV"):
        build_report(tmp_path / "empty")


def test_cli_report_error_is_one_line_exit_2(tmp_path: Path) -> None:
    out = invoke("report", str(tmp_path / "missing"))
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert [line for line in out.output.splitlines() if line] == [
        f"nsa-bench: error: {tmp_path / 'missing'} is not a run folder (expected a folder holding {CSV_NAME})"]


def test_report_module_has_no_external_assets() -> None:
    """The stylesheet is inline: no url(...) that a browser would fetch."""
    assert "url(" not in report.CSS and "@import" not in report.CSS


def test_every_point_of_the_report_comes_with_a_command_that_reruns_it(tmp_path: Path, no_git: None) -> None:
    import shlex

    from cli_runner import run_main

    run = tmp_path / "run"
    swept = invoke("sweep", "--seqlen", "2k", "--mode", "fwd,bwd", "--doc-lens", "none,fixed:1k", "--dtype", "float16",
                   "--reps", "7", "--gpu", "h200", "--out", str(run), "--quiet", "--no-plots")
    assert swept.exit_code == 0, swept.output
    assert invoke("report", str(run)).exit_code == 0
    markdown = (run / "report.md").read_text()
    commands = [line.split(" | ")[1].removesuffix(" |") for line in markdown.split("## Re-run a point")[1].splitlines()
                if line.startswith("| ") and "nsa-bench sweep" in line]
    assert len(commands) == 4  # 2 modes x 2 packings: every point
    packed = next(c for c in commands if "fixed:1k" in c and "--mode bwd" in c)
    assert "--reps 7" in packed and "--gpu h200" in packed and "--dtype float16" in packed
    code, _, err = run_main(*shlex.split(packed)[1:], "--out", str(tmp_path / "again"), "--quiet", "--no-plots")
    assert code == 0, err
    keys = ["mode", "backend", "stage", "seqlen", "doc_lens", "dtype", "predicted_ms"]
    again = pd.read_csv(tmp_path / "again" / CSV_NAME)[keys]
    original = pd.read_csv(run / CSV_NAME)
    original = original[(original["mode"] == "bwd") & (original["doc_lens"] == "fixed:1k")][keys]
    assert again.reset_index(drop=True).equals(original.reset_index(drop=True))
