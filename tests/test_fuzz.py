"""Property: no input a user can give ends in a traceback. Hypothesis feeds random text to every sweep flag,
random TOML values to every suite key and randomly damaged bytes to every file the commands read; each run
must exit 0 or 2, print no traceback and at most one line on stderr.

Examples are derandomized (the same ones on every CI run) and capped, so the whole file takes about two
minute on two cores; raise FUZZ_EXAMPLES (a multiplier) and set FUZZ_RANDOM=1 locally to look harder.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bad_inputs import count_bad_input
from cli_runner import assert_clean_exit, run_main
from nsa_bench import results
from nsa_bench.suites import OPTIONS

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "1"))
FUZZ = settings(max_examples=40 * SCALE, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SWEEP_FLAGS = (*OPTIONS, "max-points", "suite", "out", "time-budget", "workers", "shard", "devices", "point-timeout")
# not fuzzed: --ray (a random HOST:PORT would make Ray try to connect; its bad values are in test_bad_input)
# what a sweep takes here: few points and no plots, so a valid random value costs milliseconds
QUICK = ("--quiet", "--no-plots", "--max-points", "40")

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
size_like = st.from_regex(r"\A[0-9kKm., :+*-]{0,14}\Z")
flag_value = st.one_of(text, size_like, st.sampled_from(["", " ", ",", "1,,2", "0", "-1", "1e3", "9" * 40, "h100",
                                                          "fwd", "fa2", "bfloat16", "192-128", "1k..8k:+1k"]))


@FUZZ
@given(flag=st.sampled_from(SWEEP_FLAGS), value=flag_value)
def test_random_text_for_every_sweep_flag(flag: str, value: str):
    count_bad_input("fuzzed flag values")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["sweep", *QUICK, "--out", str(Path(tmp) / "run"), f"--{flag}", value]
        if flag == "max-points":
            args = [a for a in args if a != "40"]
            args.remove("--max-points")
            args += ["--seqlen", "1k"]
        assert_clean_exit(*run_main(*args, cwd=Path(tmp)))


def _toml(value: object) -> str:
    """A TOML literal (tomllib only reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, datetime.date, datetime.time)):
        return value.isoformat() if not isinstance(value, int) else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


toml_scalar = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), text, size_like, st.dates(),
                        st.datetimes().map(lambda d: d.replace(microsecond=0)), st.times().map(lambda t: t.replace(microsecond=0)))
toml_value = st.recursive(toml_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=6)
suite_key = st.sampled_from((*OPTIONS, "description")) | st.text(max_size=8)


@FUZZ
@given(entries=st.dictionaries(suite_key, toml_value, min_size=1, max_size=3))
def test_random_toml_values_for_every_suite_key(entries: dict):
    count_bad_input("fuzzed suite files")
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "fuzz.toml"
        suite.write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in entries.items()), encoding="utf-8")
        assert_clean_exit(*run_main("sweep", "--suite", str(suite), *QUICK, "--out", str(Path(tmp) / "run"),
                                    cwd=Path(tmp)))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "run"
    code, _, err = run_main("sweep", "--seqlen", "1k", "--mode", "fwd,decode", "--quiet", "--out", str(folder))
    assert code == 0, err
    return folder


FILES = (results.CSV_NAME, results.ENV_NAME, results.SPEC_NAME, "progress.jsonl", "suite.toml",
         "results/calibration/h100.json")


def _damaged(original: bytes, cuts: list[tuple[int, int, bytes]]) -> bytes:
    data = original
    for start, length, junk in cuts:
        at = start % (len(data) + 1)
        data = data[:at] + junk + data[at + length:]
    return data


damage = st.one_of(st.binary(max_size=300).map(lambda b: [(0, 10**9, b)]),
                   st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 60), st.binary(max_size=12)), min_size=1,
                            max_size=4))


def _commands(run: Path, template_run: Path, tmp: Path) -> dict[str, list[list[str]]]:
    resume = ["sweep", "--seqlen", "1k", "--mode", "fwd,decode", "--out", str(run), "--resume", *QUICK]
    csv_commands = [["plot", str(run)], ["report", str(run)],
                    ["compare", str(run), str(template_run), "--metric", "predicted_ms"], resume]
    return {results.CSV_NAME: csv_commands, results.ENV_NAME: csv_commands[1:], results.SPEC_NAME: [resume],
            "progress.jsonl": [resume], "suite.toml": [["sweep", "--suite", str(tmp / "suite.toml"), *QUICK, "--out",
                                                          str(tmp / "fresh")]],
            "results/calibration/h100.json": [["plot", str(run)]]}


@settings(FUZZ, max_examples=24 * SCALE)
@given(name=st.sampled_from(FILES), cuts=damage, command=st.integers(0, 3))
def test_random_bytes_in_every_file_the_commands_read(template: Path, name: str, cuts, command: int):
    count_bad_input("fuzzed files")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = tmp / "run"
        shutil.copytree(template, run)
        originals = {"suite.toml": b'seqlen = "1k"\nmode = "fwd,decode"\nreps = 3\n',
                     "results/calibration/h100.json": json.dumps({"key": "h100", "device_name": "NVIDIA H100",
                                                                  "matmul_flops": 7e14, "copy_bytes_per_s": 3e12}).encode()}
        target = tmp / name if name in originals else run / name
        target.parent.mkdir(parents=True, exist_ok=True)
        original = originals[name] if name in originals else target.read_bytes()
        target.write_bytes(_damaged(original, cuts))
        if name == "results/calibration/h100.json":
            shutil.rmtree(run / results.PLOTS_DIR)  # plot reads the calibration of the GPU it draws for
        choices = _commands(run, template, tmp)[name]
        assert_clean_exit(*run_main(*choices[command % len(choices)], cwd=tmp))
