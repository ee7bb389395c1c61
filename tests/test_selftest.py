"""`nsa-bench selftest` on the CPU: the suite's pinned runs under the interpreter (the quick subset), the
backward twice, the sanitizer skipped with the reason; a wrong output is a FAIL line and exit 1; bad flags are
one line and exit 2. The GPU's share of it (bf16, every warps/stages config, compute-sanitizer) is planned here
and checked for what it covers."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli_runner import run_cli

from nsa_bench import selftest
from nsa_bench.launchplan import planfile, probes
from nsa_bench.launchplan.planner import split_warps

pytestmark = pytest.mark.interpreter


def test_the_gpu_runs_every_config_of_the_suite_with_its_own_warps_and_stages():
    plan = planfile.read()
    for name, (_, keys) in plan.sweeps.items():
        runs = planfile.sweep_runs(plan, name)
        gpu = split_warps(runs)
        assert set(keys) <= {key for run in gpu for key in run.covers}, name
        for run in gpu:  # a pin is exactly one planned config: tile, warps and stages
            for kernel, tile, w, s in run.pins:
                assert any(k.kernel == kernel and (k.num_warps, k.num_stages) == (w, s) for k in run.covers), run.label
        assert len(gpu) >= len(runs)


def test_selftest_on_the_cpu_passes_and_says_what_it_ran(tmp_path):
    out = tmp_path / "selftest.json"
    result = CliRunner().invoke(selftest.main, ["run", "--suite", "decode", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "Triton's interpreter, no GPU here" in result.output and "checks passed or skipped" in result.output
    report = json.loads(out.read_text())
    kinds = {(c["kind"], c["status"]) for c in report["checks"]}
    assert ("pinned", "pass") in kinds and ("deterministic", "pass") in kinds
    assert ("memcheck", "skipped") in kinds and ("racecheck", "skipped") in kinds
    assert report["interpreter"] is True and report["failed"] == 0
    assert {c["dtype"] for c in report["checks"] if c["kind"] == "pinned"} == {"float32", "float16"}


def test_a_wrong_output_fails_the_selftest_naming_kernel_and_config(tmp_path, monkeypatch):
    monkeypatch.setitem(probes.TOLERANCE, "float32", 0.0)  # every rounding difference is now "wrong"
    out = tmp_path / "selftest.json"
    result = CliRunner().invoke(selftest.main, ["run", "--suite", "decode", "--json", str(out), "--sanitize", "none"])
    assert result.exit_code == 1, result.output
    assert "FAIL pinned float32: decode G16" in result.output and "made by decode." in result.output, result.output
    assert "checks FAILED" in result.output and json.loads(out.read_text())["failed"] > 0


@pytest.mark.parametrize("args, flag", [(["--suite", "nope"], "suite"), (["--sanitize", "valgrind"], "--sanitize"),
                                        (["--json", "."], "--json"), (["--workers", "0"], "--workers"),
                                        (["--json", "notes.txt"], "--json")])
def test_bad_flags_are_one_line_and_exit_2(args, flag, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("someone's notes, not a self-test's result\n")
    code, out, err = run_cli(monkeypatch, capsys, "selftest", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and flag in err and "Traceback" not in err, err
    assert (tmp_path / "notes.txt").read_text().startswith("someone's notes")


def test_the_dry_run_estimates_the_gpu_run(tmp_path):
    result = CliRunner().invoke(selftest.main, ["run", "--suite", "decode", "--dry-run", "--sanitize", "memcheck"])
    assert result.exit_code == 0, result.output
    assert "Estimated self-test wall time:" in result.output and "memcheck" in result.output
