"""Every class of bad input a hostile try of the CLI found, and more: one line naming what and where, exit 2, no traceback.

Flags, suite files (TOML values of the wrong type), run folders (CSV, env.json, spec.json, progress.jsonl)
under `plot`, `report`, `compare` and `sweep --resume`. Each case counts toward the total the test run
reports (tests/conftest.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bad_inputs import count_bad_input
from cli_runner import assert_clean_exit, run_main
from nsa_bench import results
from nsa_bench.spec import SweepSpec
from nsa_bench.suites import OPTIONS

LONG = "7" * 100_000

FLAG_CASES = [
    *[("seqlen", v) for v in ("99999999999k", "0", "-1k", "8q", "64k..8k", "1k..", "..8k", "1k..8k:+0", "1k..8k:*1",
                              "1k..8k:x", "1k,,2k", ",", "", " ", "1k..16m:+1", "1e3", "1.5k", "17m", "9" * 30, LONG,
                              "1k\n2k")],
    *[("batch", v) for v in ("0", "-1", "abc", "1,,2", "5000", "")],
    *[("kv-heads", v) for v in ("0", "2000", "a", "4,")],
    *[("group-size", v) for v in ("0", "1025", "1;2")],
    *[("head-dim", v) for v in ("192x128", "192-", "-128", "0-128", "128-0", "2000", "192-128,,128", "", "a-b")],
    *[("block-cmp", v) for v in ("24", "0", "70000", "x")],
    *[("stride-cmp", v) for v in ("24", "0", "7")],
    *[("block-slc", v) for v in ("40", "0", "1m")],
    *[("n-slc", v) for v in ("2", "0", "abc")],
    *[("window", v) for v in ("0", "17m", "w")],
    *[("mode", v) for v in ("sideways", "fwd,,bwd", "", "fwd,", "FWD")],
    *[("dtype", v) for v in ("int8", "bf16,,fp16", "")],
    *[("backend", v) for v in ("warp-drive", "fa2,,nsa-triton", "", ",")],
    *[("baseline", v) for v in ("", "nope", "fa2,,cudnn", "fa2,nope")],
    *[("reps", v) for v in ("0", "abc", "1,2", "200000", "1.5")],
    *[("warmup", v) for v in ("abc", "-1", "1.5", "200000", "")],
    *[("seed", v) for v in ("abc", "-1", "1e3", "9" * 25)],
    *[("gpu", v) for v in ("", "tpu", "h100,a100", "  ")],
    *[("check-seqlen", v) for v in ("0", "abc", "1,2", "17m")],
    *[("max-points", v) for v in ("0", "abc", "99999999", "1,2", "")],
    *[("time-budget", v) for v in ("soon", "-5s", "0", "5x", "")],
    *[("workers", v) for v in ("0", "-2", "many", "1.5", "99999")],
    *[("d-model", v) for v in ("0", "abc", "100000", "2560,,1024")],
    *[("doc-lens", v) for v in ("zipf:4k", "fixed:0", "uniform:", "lognormal:8k:-1", "none,,fixed:2k", "")],
    *[("q-heads", v) for v in ("0", "2000", "64,,32", "x")],
    *[("shard", v) for v in ("0/2", "3/2", "1/0", "a", "1/2/3", "", "-1/2", "1/9999999")],
    *[("devices", v) for v in ("", "0", "all", "cpu0,cpu0", "gpu1", "0,cpu1", ",", "cpu0,,cpu1", "cpux")],
    *[("point-timeout", v) for v in ("soon", "0", "-1s", "")],
    *[("ray", v) for v in ("not an address!", "host:port", "ray://", "")],
    *[("suite", v) for v in ("nope", "x\0y", "a" * 300 + ".toml", "", "../../nope")],
    # digits that are not ASCII (full-width, Arabic-Indic): Python's int() takes them, no user means them
    *[(flag, v) for flag, v in (("seqlen", "８k"), ("seqlen", "١٢٨"), ("batch", "２"), ("kv-heads", "４"),
                                ("group-size", "１６"), ("head-dim", "１９２-128"), ("block-cmp", "３２"),
                                ("n-slc", "１６"), ("window", "５１２"), ("reps", "３０"), ("warmup", "٥"),
                                ("seed", "٣"), ("check-seqlen", "１k"), ("max-points", "１０"),
                                ("time-budget", "５m"), ("point-timeout", "６０s"), ("workers", "３"),
                                ("shard", "１/2"), ("devices", "０"), ("devices", "cpu１"), ("d-model", "２５６０"),
                                ("doc-lens", "fixed:２k"), ("doc-lens", "lognormal:8k:１.5"),
                                ("doc-lens", "fixed:2k@３"), ("q-heads", "６４"))],
]


@pytest.mark.parametrize("flag,value", FLAG_CASES, ids=[f"{f}={v[:12]!r}" for f, v in FLAG_CASES])
def test_bad_flag_value(tmp_path: Path, flag: str, value: str):
    count_bad_input("flag values")
    code, out, err = run_main("sweep", "--out", str(tmp_path / "run"), "--quiet", "--no-plots", f"--{flag}", value)
    assert_clean_exit(code, out, err, allowed=(2,))
    line = err.strip()
    assert line.startswith("nsa-bench: error: ") and flag in line, line
    assert len(line) < 400  # a long value is cut, never echoed in full
    assert not (tmp_path / "run").exists()  # refused before anything is made


@pytest.mark.parametrize("args,needle", [
    (["--seqlen", "1k..64k:+1k", "--batch", "1,2,4,8,16", "--group-size", "1,2,4,8", "--window", "64,128,256"],
     "--max-points"),
    (["--seqlen", "1k,2k", "--max-points", "3"], "--max-points"),
    (["--out", "/proc/nsa-bench-x"], "--out"), (["--out", "/dev/null/x"], "--out"),
    (["--out", "x" * 300], "--out"), (["--seqle", "1k"], "--seqle"), (["--no-such-flag"], "--no-such-flag"),
    (["surplus"], "surplus"), (["--block-cmp", "32", "--stride-cmp", "24"], "--stride-cmp"),
    (["--block-cmp", "24"], "--block-cmp"),
    (["--devices", "cpu0,cpu1", "--time-budget", "5m"], "--time-budget"),  # one device keeps the budget
    (["--devices", "cpu0", "--in-process"], "--in-process"),
    (["--ray", "--devices", "cpu0"], "--ray"),
    (["--out", ""], "--out"), (["--out", "  "], "--out"), (["--resume"], "--resume continues the run in --out"),
    (["--resume", "--dry-run"], "--resume"), (["--q-heads", "64", "--group-size", "3"], "--group-size"),
])
def test_bad_sweep(tmp_path: Path, args: list[str], needle: str):
    count_bad_input("flag combinations")
    code, out, err = run_main("sweep", "--quiet", "--no-plots", *args, cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert needle in err
    if "--block-cmp" in args and "--stride-cmp" not in args:
        assert "--stride-cmp" not in err  # --block-cmp 24 is blamed, not the default stride it clashes with


def test_max_points_is_checked_before_allocating(tmp_path: Path, monkeypatch):
    def never(self):
        raise AssertionError("points were made")

    monkeypatch.setattr(SweepSpec, "all_points", never)
    args = ["--seqlen", "1..4k:+1", "--batch", "1..4k:+1", "--kv-heads", "1..1k:+1", "--group-size", "1..1k:+1"]
    code, _, err = run_main("sweep", "--quiet", *args, cwd=tmp_path)
    assert code == 2 and f"{3 * 4096 * 4096 * 1024 * 1024:,} points" in err and "--max-points" in err


# ------------------------------------------------------------------ suite files
TOML_VALUES = {"boolean": "true", "float": "1.5", "table": "{ a = 1 }", "date": "1979-05-27", "empty array": "[]",
               "nested array": "[[1]]", "array of booleans": "[true]"}
SUITE_CASES = [(key, kind) for key in OPTIONS for kind in TOML_VALUES
               if not (kind in ("empty array", "nested array", "array of booleans")
                       and key in ("baseline", "reps", "warmup", "seed", "gpu", "check-seqlen"))]


@pytest.mark.parametrize("key,kind", SUITE_CASES, ids=[f"{k}={t}" for k, t in SUITE_CASES])
def test_suite_value_of_the_wrong_type(tmp_path: Path, key: str, kind: str):
    count_bad_input("suite values")
    suite = tmp_path / "bad.toml"
    suite.write_text(f"{key} = {TOML_VALUES[kind]}\n")
    code, out, err = run_main("sweep", "--suite", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-plots")
    assert_clean_exit(code, out, err, allowed=(2,))
    assert f"invalid value for {key} in suite {suite}" in err, err


@pytest.mark.parametrize("content,needle", [
    (b"description = 3\n", "description"), (b"warp = 9\n", "unknown keys 'warp'"), (b"seqlen = \"1k\n", "not valid TOML"),
    (b"\xff\xfe\x00binary", "not a text file"), (b"[table]\nx = 1\n", "unknown keys 'table'"),
    (b"seqlen = \"99999999999k\"\n", "out of range"), (b"mode = \"fwd,,bwd\"\n", "empty item"),
    (b"block-cmp = 24\n", "block-cmp in suite"), (b"seqlen = 1e3\n", "float"),
])
def test_bad_suite_file(tmp_path: Path, content: bytes, needle: str):
    count_bad_input("suite files")
    suite = tmp_path / "bad.toml"
    suite.write_bytes(content)
    code, out, err = run_main("sweep", "--suite", str(suite), "--out", str(tmp_path / "run"), "--quiet", "--no-plots")
    assert_clean_exit(code, out, err, allowed=(2,))
    assert needle in err, err


def test_a_suite_that_is_a_folder(tmp_path: Path):
    count_bad_input("suite files")
    (tmp_path / "dir.toml").mkdir()
    code, out, err = run_main("sweep", "--suite", str(tmp_path / "dir.toml"), "--quiet", cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert "is not a regular file" in err  # it exists: "no such suite" would blame the name


@pytest.mark.parametrize("suite,needle", [("/dev/zero", "is not a suite file"), ("/tmp", "is not a suite file"),
                                          ("no-such-suite", "no such suite")])
def test_a_suite_message_names_what_is_wrong(tmp_path: Path, suite: str, needle: str):
    count_bad_input("suite files")
    code, out, err = run_main("sweep", "--suite", suite, "--quiet", "--dry-run", cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert needle in err and "--suite" in err, err


# ------------------------------------------------------------------ run folders
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("template")
    code, out, err = run_main("sweep", "--seqlen", "1k", "--mode", "fwd,decode", "--out", str(folder / "run"),
                              "--quiet")  # with its plots, so that report does not redraw them every time
    assert code == 0, err
    return folder / "run"


def _header() -> str:
    return ",".join(results.FIELDS)


def _rows(folder: Path) -> list[str]:
    return (folder / results.CSV_NAME).read_text().splitlines()


def _set_cell(folder: Path, column: str, value: str) -> str:
    lines = _rows(folder)
    cells = lines[1].split(",")
    cells[results.FIELDS.index(column)] = value
    return "\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n"


# name -> (how to damage the run folder, commands that must refuse it with exit 2 and this text)
DAMAGE = {
    "csv cut mid-row": (lambda f: (f / "results.csv").write_text((f / "results.csv").read_text()[:-40]), {}),
    "csv cut mid-header": (lambda f: (f / "results.csv").write_text(_header()[:90]),
                           {"plot": "missing columns", "report": "missing columns", "compare": "missing columns"}),
    "csv binary": (lambda f: (f / "results.csv").write_bytes(bytes(range(256)) * 8),
                   {"plot": "results.csv", "report": "results.csv", "compare": "results.csv", "resume": "results.csv"}),
    "csv header only": (lambda f: (f / "results.csv").write_text(_header() + "\n"),
                        {"plot": "no rows", "report": "no rows", "compare": "no rows in common"}),
    "csv empty": (lambda f: (f / "results.csv").write_text(""), {"plot": "empty", "report": "empty", "compare": "empty"}),
    "csv key columns only": (lambda f: (f / "results.csv").write_text(
        "\n".join(",".join(line.split(",")[i] for i in [results.FIELDS.index(c) for c in results.KEY_FIELDS])
                  for line in _rows(f)) + "\n"), {"plot": "nothing to plot", "resume": "header"}),
    "text in a number column": (lambda f: (f / "results.csv").write_text(_set_cell(f, "predicted_ms", "fast")),
                                {"plot": "predicted_ms", "report": "predicted_ms", "compare": "predicted_ms",
                                 "resume": "predicted_ms"}),
    "text in a key column": (lambda f: (f / "results.csv").write_text(_set_cell(f, "seqlen", "long")),
                             {"plot": "seqlen", "report": "seqlen", "compare": "seqlen"}),
    "absurd seqlen": (lambda f: (f / "results.csv").write_text(_set_cell(f, "seqlen", "102399999998976")),
                      {"plot": "out of range", "report": "out of range", "compare": "out of range"}),
    "negative time": (lambda f: (f / "results.csv").write_text(_set_cell(f, "predicted_ms", "-3")),
                      {"plot": "negative", "report": "negative"}),
    "unknown mode": (lambda f: (f / "results.csv").write_text(_set_cell(f, "mode", "sideways")), {"plot": "mode"}),
    "unknown status": (lambda f: (f / "results.csv").write_text(_set_cell(f, "status", "fine")), {"plot": "status"}),
    "csv is a folder": (lambda f: ((f / "results.csv").unlink(), (f / "results.csv").mkdir()),
                        {"plot": "no results CSV", "report": "no results CSV", "compare": "no results CSV"}),
    "a file named plots": (lambda f: (shutil.rmtree(f / "plots"), (f / "plots").write_text("x")), {"plot": "plots"}),
    "env.json a list": (lambda f: (f / "env.json").write_text("[1, 2]"),
                        {"report": "env.json", "compare": "env.json", "resume": "env.json"}),
    "env.json null": (lambda f: (f / "env.json").write_text("null"), {"report": "env.json", "compare": "env.json"}),
    "env.json not JSON": (lambda f: (f / "env.json").write_text("{gpu: h100"), {"report": "env.json", "compare": "env.json"}),
    "env.json binary": (lambda f: (f / "env.json").write_bytes(b"\xff\x00\xfe"), {"report": "env.json", "compare": "env.json"}),
    "env.json deep": (lambda f: (f / "env.json").write_text("[" * 100_000), {"report": "env.json"}),
    "env.json missing": (lambda f: (f / "env.json").unlink(), {"resume": "env.json"}),
    "env.json odd fields": (lambda f: (f / "env.json").write_text('{"gpu": [1], "target_gpu": 5, "measured": "x"}'), {}),
    "spec.json a string": (lambda f: (f / "spec.json").write_text('"x"'), {"report": "spec.json", "resume": "spec.json"}),
    "spec.json wrong types": (lambda f: (f / "spec.json").write_text('{"seqlens": "1k", "reps": "many"}'),
                              {"resume": "spec.json"}),
    "spec.json missing": (lambda f: (f / "spec.json").unlink(), {"resume": "spec.json"}),
    "progress binary": (lambda f: (f / "progress.jsonl").write_bytes(bytes(range(256))), {}),
    "progress missing": (lambda f: (f / "progress.jsonl").unlink(), {"resume": "progress.jsonl"}),
    "progress wrong shapes": (lambda f: (f / "progress.jsonl").write_text('[1]\n{"task": {}, "stages": 3}\n7\n'), {}),
}
# the commands that read each file (plot reads only the CSV; report and compare env.json too; resume all)
READERS = {"csv": ("plot", "report", "compare", "resume"), "env.json": ("report", "compare", "resume"),
           "spec.json": ("report", "resume"), "progress": ("resume",), "plots": ("plot", "report")}
RUN_CASES = [(name, command) for name in DAMAGE
             for command in READERS[next((k for k in READERS if name.startswith(k) or k in name), "csv")]]


def _command(command: str, run: Path, template: Path) -> list[str]:
    return {"plot": ["plot", str(run)], "report": ["report", str(run)],
            "compare": ["compare", str(run), str(template), "--metric", "predicted_ms"],
            "resume": ["sweep", "--seqlen", "1k", "--mode", "fwd,decode", "--out", str(run), "--resume", "--quiet",
                       "--no-plots"]}[command]


@pytest.mark.parametrize("damage,command", RUN_CASES, ids=[f"{d}-{c}" for d, c in RUN_CASES])
def test_damaged_run_folder(tmp_path: Path, template: Path, damage: str, command: str):
    count_bad_input("run folders")
    run = tmp_path / "run"
    shutil.copytree(template, run)
    how, refusals = DAMAGE[damage]
    how(run)
    code, out, err = run_main(*_command(command, run, template), cwd=tmp_path)
    if command in refusals:
        assert_clean_exit(code, out, err, allowed=(2,))
        assert refusals[command] in err, err
        assert "--gpu" not in err and "'--run'" not in err  # the file is blamed, not a flag
    else:
        assert_clean_exit(code, out, err)


def test_resume_after_a_cut_row_ends_with_the_rows_of_a_clean_run(tmp_path: Path, template: Path):
    run = tmp_path / "run"
    shutil.copytree(template, run)
    DAMAGE["csv cut mid-row"][0](run)
    assert run_main(*_command("resume", run, template))[0] == 0
    assert sorted(_rows(run)) == sorted(_rows(template))


@pytest.mark.parametrize("args,needle", [
    (["--devices", "gpu0"], "--devices"), (["--devices", "cpu0,cpu0"], "--devices"), (["--devices", ""], "--devices"),
    (["--ray", "bogus::addr"], "--ray"), (["--ray", "auto", "--devices", "cpu0"], "--ray"),
    (["--in-process", "--devices", "cpu0"], "--in-process"), (["--time-budget", "1s", "--devices", "cpu0,cpu1"],
                                                             "--time-budget"),
    (["--point", "fwd T=0 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16"], "--point"),
    (["--point", "nsa-triton fwd T=1024 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=16 w=512 bfloat16"], "--point"),
    (["--point", "fwd T=1024 B=1 Hkv=4 G=16 D=192-128 l=32 d=16 l'=64 n=2 w=512 bfloat16"], "--point"),
])
def test_the_dry_run_refuses_what_the_run_refuses(tmp_path: Path, args: list[str], needle: str):
    count_bad_input("flag combinations")
    for extra in ([], ["--dry-run"]):
        code, out, err = run_main("sweep", "--quiet", "--no-plots", "--out", str(tmp_path / "r"), *args, *extra,
                                  cwd=tmp_path)
        assert_clean_exit(code, out, err, allowed=(2,))
        assert needle in err, (extra, err)


@pytest.mark.parametrize("args,ok", [(["--seed", "9223372036854775807"], True), (["--head-dim", "1k"], True),
                                     (["--head-dim", "1k-512"], True), (["--seed", "9223372036854775808"], False),
                                     (["--head-dim", "2k"], False)])
def test_values_inside_the_documented_ranges_are_taken(tmp_path: Path, args: list[str], ok: bool):
    """`sweep -h` documents seed 0..2^63-1 and head dims 1..1k: their edges are accepted, one past refused."""
    count_bad_input("flag values")
    code, out, err = run_main("sweep", "--seqlen", "1k", "--mode", "fwd", "--dry-run", *args, cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(0,) if ok else (2,))


def test_precompile_refuses_a_sweep_without_a_valid_point(tmp_path: Path):
    count_bad_input("flag values")
    code, out, err = run_main("precompile", "--n-slc", "2", cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert "--n-slc" in err and "n_slc must be >= 3" in err


@pytest.mark.parametrize("content,needle", [('backend = "nope"\n', "backend in suite"),
                                            ('baseline = "nope"\n', "baseline in suite"),
                                            ('q-heads = "64"\ngroup-size = "3"\n', "group-size in suite")])
def test_a_suites_value_is_blamed_on_the_suite(tmp_path: Path, content: str, needle: str):
    count_bad_input("suite values")
    (tmp_path / "bad.toml").write_text(content)
    code, out, err = run_main("sweep", "--suite", str(tmp_path / "bad.toml"), "--dry-run", cwd=tmp_path)
    assert_clean_exit(code, out, err, allowed=(2,))
    assert needle in err and "--" not in err.split("choose from")[0].split("error:")[1], err
