"""Exact --resume: partial points are found and re-run, finished ones kept once; another sweep or GPU is refused.

The interrupt test drives real sweeps in a subprocess (tests/interrupt_driver.py slows the writing of rows
so signals land inside points) and interrupts them at random moments with SIGINT, SIGTERM and SIGKILL;
after every chain of interruptions, `--resume` must end with exactly the rows of an uninterrupted run.
"""
from __future__ import annotations

import json
from dataclasses import replace
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli_runner import run_cli
from nsa_bench import resume, results
from nsa_bench.gpus import gpu_spec
from nsa_bench.execute import InProcessPool
from nsa_bench.runner import run_sweep
from nsa_bench.spec import SweepSpec

pytestmark = pytest.mark.subprocess

H100 = gpu_spec("h100")
SMALL = SweepSpec(seqlens=(1024, 2048), n_slc=(2, 16), modes=("fwd", "bwd", "decode"))
DRIVER = Path(__file__).with_name("interrupt_driver.py")
SWEEP = ["sweep", "--seqlen", "1k,2k", "--n-slc", "2,16", "--mode", "fwd,bwd,decode", "--backend", "fa2,nsa-triton",
         "--quiet", "--no-plots"]


def data_lines(folder: Path) -> list[str]:
    text = (folder / results.CSV_NAME).read_text(encoding="utf-8")
    assert "\r" not in text and text.endswith("\n")
    return text.splitlines()[1:]


def complete_run(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    run_sweep(SMALL, folder, H100, InProcessPool(SMALL, H100, None), resume=False)
    return data_lines(folder)


# ------------------------------------------------------------------ recover, by hand-made damage
def test_a_complete_run_is_all_done(tmp_path: Path):
    lines = complete_run(tmp_path)
    state = resume.recover(tmp_path, "fa2")
    assert state.rows == len(lines) == 58 and state.dropped == 0
    assert len(state.done) == 24  # 12 points x 2 backends, invalid NSA points included
    outcome = run_sweep(SMALL, tmp_path, H100, InProcessPool(SMALL, H100, None), resume=True)
    assert outcome.rows_written == 0 and outcome.skipped == 24 and data_lines(tmp_path) == lines


@pytest.mark.parametrize("damage", ["cut_line", "missing_stage", "no_progress_line", "duplicate", "garbage_progress",
                                    "cut_progress", "extra_blank"])
def test_damaged_points_are_rerun_and_replaced(tmp_path: Path, damage: str):
    reference = complete_run(tmp_path / "ref")
    run = tmp_path / "run"
    complete_run(run)
    csv_file, progress = run / results.CSV_NAME, run / resume.PROGRESS_NAME
    text, lines = csv_file.read_text(), progress.read_text().splitlines(keepends=True)
    if damage == "cut_line":
        csv_file.write_text(text[: len(text) - 37])
    elif damage == "missing_stage":  # a total row whose stage rows are gone (a bug once)
        rows = text.splitlines(keepends=True)
        stage_row = next(i for i, r in enumerate(rows) if ",cmp_attn," in r)
        csv_file.write_text("".join(rows[:stage_row] + rows[stage_row + 1:]))
    elif damage == "no_progress_line":
        progress.write_text("".join(lines[:-3]))
    elif damage == "duplicate":
        rows = text.splitlines(keepends=True)
        csv_file.write_text(text + "".join(rows[5:9]))
    elif damage == "garbage_progress":
        progress.write_text("".join(lines[:4]) + "{not json\n" + '{"task": 3, "stages": []}\n' + "".join(lines[6:]))
    elif damage == "cut_progress":
        progress.write_text("".join(lines)[:-20])
    elif damage == "extra_blank":
        csv_file.write_text(text + "\n")
    outcome = run_sweep(SMALL, run, H100, InProcessPool(SMALL, H100, None), resume=True)
    assert outcome.rows_written > 0 or damage in ("duplicate", "extra_blank")
    assert sorted(data_lines(run)) == sorted(reference)
    assert resume.recover(run, "fa2").dropped == 0


def test_a_point_is_redone_with_its_baseline(tmp_path: Path):
    complete_run(tmp_path)
    everything = resume.recover(tmp_path, "fa2").done
    progress = tmp_path / resume.PROGRESS_NAME
    kept = [line for line in progress.read_text().splitlines(keepends=True)
            if not ('"backend":"fa2"' in line and '"seqlen":"2048"' in line and '"mode":"bwd"' in line)]
    progress.write_text("".join(kept))
    gone = everything - resume.recover(tmp_path, "fa2").done
    backend, seqlen, mode = (resume.TASK_FIELDS.index(f) for f in ("backend", "seqlen", "mode"))
    assert len(gone) == 4  # n_slc 2 and 16, each with fa2 and the nsa-triton task whose speedup used it
    assert {k[backend] for k in gone} == {"fa2", "nsa-triton"}
    assert all(k[seqlen] == "2048" and k[mode] == "bwd" for k in gone)


@pytest.mark.parametrize("content,needle", [
    (b"\x00\xff\xfe binary", "not a results CSV"),
    ("mode,backend\nfwd,fa2\n".encode(), "header"),
    ("\u00e9t\u00e9\n".encode("latin-1") + b"x\n", "not a text CSV"),
])
def test_a_csv_that_is_not_ours_is_refused(tmp_path: Path, content: bytes, needle: str):
    (tmp_path / results.CSV_NAME).write_bytes(content)
    (tmp_path / resume.PROGRESS_NAME).write_text("")
    with pytest.raises(resume.ResumeError, match=needle):
        resume.recover(tmp_path, "fa2")


def test_a_cut_header_is_an_empty_run(tmp_path: Path):
    (tmp_path / results.CSV_NAME).write_text(",".join(results.FIELDS)[:50])
    assert resume.recover(tmp_path, "fa2").rows == 0
    assert (tmp_path / results.CSV_NAME).read_text() == ""


def test_rows_without_any_progress_file_are_refused(tmp_path: Path):
    complete_run(tmp_path)
    (tmp_path / resume.PROGRESS_NAME).unlink()
    with pytest.raises(resume.ResumeError, match="progress.jsonl"):
        resume.recover(tmp_path, "fa2")


# ------------------------------------------------------------------ same sweep, same GPU
def _resume(monkeypatch, capsys, out: Path, *flags: str):
    return run_cli(monkeypatch, capsys, *SWEEP, "--out", str(out), *flags)


@pytest.mark.parametrize("flags,needle", [
    (["--gpu", "a100"], "'a100'"), (["--reps", "7"], "--reps"), (["--seed", "3"], "--seed"),
    (["--warmup", "0"], "--warmup"), (["--baseline", "nsa-triton"], "--baseline"),
    (["--check-seqlen", "512"], "--check-seqlen"), (["--no-cuda-graph"], "--cuda-graph"),
])
def test_resume_refuses_another_sweep_in_one_line(monkeypatch, capsys, tmp_path: Path, flags, needle):
    out = tmp_path / "run"
    assert _resume(monkeypatch, capsys, out)[0] == 0
    before = {name: (out / name).read_bytes() for name in (results.CSV_NAME, results.ENV_NAME, results.SPEC_NAME)}
    code, _, err = run_cli(monkeypatch, capsys, *SWEEP, "--out", str(out), "--resume", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert "cannot resume" in err and "Traceback" not in err
    assert before == {name: (out / name).read_bytes() for name in before}  # nothing touched


def test_resume_extends_axes_and_keeps_the_first_env(monkeypatch, capsys, tmp_path: Path):
    out = tmp_path / "run"
    assert _resume(monkeypatch, capsys, out)[0] == 0
    first = json.loads((out / results.ENV_NAME).read_text())
    rows = len(data_lines(out))
    args = [a if a != "1k,2k" else "1k,2k,4k" for a in SWEEP]
    code, out_text, _ = run_cli(monkeypatch, capsys, *args, "--out", str(out), "--resume")
    assert code == 0 and "24 already done" in out_text
    env = json.loads((out / results.ENV_NAME).read_text())
    assert env["timestamp"] == first["timestamp"] and len(env["resumed"]) == 1
    assert json.loads((out / results.SPEC_NAME).read_text())["seqlens"] == [1024, 2048, 4096]
    assert len(data_lines(out)) == rows + rows // 2


def test_resume_one_mode_at_a_time_as_docs_gpu_run_does(monkeypatch, capsys, tmp_path: Path):
    out = tmp_path / "run"
    modes = ["fwd", "bwd", "decode"]
    for mode in modes:
        args = [a if a != "fwd,bwd,decode" else mode for a in SWEEP]
        code, text, err = run_cli(monkeypatch, capsys, *args, "--out", str(out), *(["--resume"] if mode != "fwd" else []))
        assert code == 0, err
    assert sorted(data_lines(out)) == sorted(complete_run(tmp_path / "all-at-once"))
    assert json.loads((out / results.SPEC_NAME).read_text())["modes"] == modes
    code, text, _ = run_cli(monkeypatch, capsys, *[a if a != "1k,2k" else "1k" for a in SWEEP], "--out", str(out),
                            "--resume")
    assert code == 0 and "0 rows, 12 already done" in text  # fewer values: nothing to do, nothing dropped
    assert json.loads((out / results.SPEC_NAME).read_text())["seqlens"] == [1024, 2048]


def test_resume_on_a_gpu_of_a_cpu_run_is_refused(tmp_path: Path):
    complete_run(tmp_path)
    results.write_json(tmp_path / results.ENV_NAME, {"measured": False, "gpu": None, "target_gpu": {"key": "h100"}})
    results.write_json(tmp_path / results.SPEC_NAME, SMALL.to_dict())
    resume.check_compatible(tmp_path, SMALL, "h100", None)
    with pytest.raises(resume.ResumeError, match="predicted without a GPU"):
        resume.check_compatible(tmp_path, SMALL, "h100", "NVIDIA H100 80GB HBM3")
    results.write_json(tmp_path / results.SPEC_NAME, {**SMALL.to_dict(), "seqlens": "1k"})
    with pytest.raises(resume.ResumeError, match="not a list"):
        resume.check_compatible(tmp_path, SMALL, "h100", None)


# ------------------------------------------------------------------ interrupted at random moments
class Driver:
    """tests/interrupt_driver.py in a subprocess: runs commands on request, reports START and END."""

    def __init__(self, cwd: Path, *once: str) -> None:
        command = [sys.executable, str(DRIVER), *(("--once", *once) if once else ())]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("EOF")

    def expect(self, prefix: str, timeout: float = 120) -> str:
        line = self.lines.get(timeout=timeout)
        assert line.startswith(prefix), line
        return line

    def start(self, args: list[str]) -> None:
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        self.expect("START")

    def end(self) -> dict:
        return json.loads(self.expect("END")[4:])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


INTERRUPTIONS = 40  # SIGINT and SIGTERM, in chains; plus KILLS SIGKILLs
KILLS = 2
MID_WRITE = 5  # at least this many must cut a write of rows or of a progress line (more chains until they do)
MAX_INTERRUPTIONS = 120
KEPT = re.compile(r"Interrupted \((SIGINT|SIGTERM)\): (\d+) rows kept")


def test_random_interruptions_then_resume_give_exactly_the_uninterrupted_rows(tmp_path: Path):
    rng = random.Random(14)
    driver = Driver(tmp_path)
    driver.expect("READY")
    driver.start([*SWEEP, "--out", str(tmp_path / "warm-up")])  # the first command pays for lazy imports
    assert driver.end()["code"] == 0
    started = time.perf_counter()
    driver.start([*SWEEP, "--out", str(tmp_path / "reference")])
    assert driver.end()["code"] == 0
    duration = time.perf_counter() - started
    reference = sorted(data_lines(tmp_path / "reference"))
    started = time.perf_counter()
    driver.start([*SWEEP, "--out", str(tmp_path / "reference"), "--resume"])  # all done: the fixed cost
    assert driver.end()["code"] == 0
    overhead = time.perf_counter() - started
    work = max(duration - overhead, 0.1)

    def moment(out: Path) -> float:
        """A random moment of the next command, mostly inside the work it has left."""
        csv_file = out / results.CSV_NAME
        # a SIGKILLed command may have left a cut last line: count lines leniently (resume repairs it)
        on_disk = len(csv_file.read_text(encoding="utf-8").splitlines()[1:]) if csv_file.exists() else 0
        left = 1 - on_disk / len(reference)
        if rng.random() < 0.2:  # during start-up: reading the folder, repairing it, writing env.json
            return rng.uniform(0, overhead)
        return overhead + rng.uniform(0, 1.1 * max(left, 0.05) * work)
    counts = {"SIGINT": 0, "SIGTERM": 0, "SIGKILL": 0, "mid_write": 0, "missed": 0, "chains": 0}
    chain = 0
    where: dict[str, int] = {}  # the function each signal landed in
    def more() -> bool:
        done = counts["SIGINT"] + counts["SIGTERM"]
        assert done < MAX_INTERRUPTIONS, counts
        return done < INTERRUPTIONS or counts["mid_write"] < MID_WRITE

    while more() or counts["SIGKILL"] < KILLS:
        chain += 1
        out = tmp_path / f"chain{chain}"
        resume_flag: list[str] = []
        if counts["SIGKILL"] < KILLS:  # a fresh process killed outright: rows and lines cut anywhere
            killed = Driver(tmp_path, *SWEEP, "--out", str(out))
            killed.expect("START")
            time.sleep(rng.uniform(0.3, 1.0) * duration)
            killed.proc.kill()
            killed.proc.wait(timeout=60)
            counts["SIGKILL"] += 1
            resume_flag = ["--resume"]
        while more():
            signum = rng.choice((signal.SIGINT, signal.SIGTERM))
            pause = moment(out) if resume_flag else rng.uniform(0, 1.1) * duration
            driver.start([*SWEEP, "--out", str(out), *resume_flag])
            time.sleep(pause)
            driver.proc.send_signal(signum)
            end = driver.end()
            resume_flag = ["--resume"]
            if end["code"] == 0:
                counts["missed"] += 1  # it finished first
                break
            assert end["code"] == 128 + signum, end
            assert len(end["stderr"].strip().splitlines()) == 1 and "Traceback" not in end["stderr"], end
            counts[signal.Signals(signum).name] += 1
            counts["mid_write"] += end["mid_write"]
            where[end["where"]] = where.get(end["where"], 0) + 1
            kept = KEPT.search(end["stderr"])
            if kept:  # the count says what is on disk
                csv_file = out / results.CSV_NAME
                on_disk = len(data_lines(out)) if csv_file.exists() and csv_file.stat().st_size else 0
                assert int(kept.group(2)) == on_disk, end
        driver.start([*SWEEP, "--out", str(out), "--resume"])
        end = driver.end()
        assert end["code"] == 0, end
        assert sorted(data_lines(out)) == reference, f"chain {chain}"
        counts["chains"] += 1
    driver.close()
    print(f"\ninterruptions: {counts} over {counts['chains']} chains; reference run {duration:.2f}s "
          f"({overhead:.2f}s fixed cost); landed in {where}")
    assert counts["mid_write"] >= MID_WRITE  # the slow path really puts signals inside points


# ------------------------------------------------------------------ rows it did not write, links
def test_a_row_outside_the_sweep_is_refused_not_deleted(tmp_path: Path):
    """A row without a progress line whose point the resumed sweep does not include would be lost: refused in
    one line naming the file and line, the folder untouched. The same row inside the sweep is re-run."""
    complete_run(tmp_path / "other")
    foreign = next(line for line in data_lines(tmp_path / "other") if ",2048," in line)
    run = tmp_path / "run"
    only_1k = replace(SMALL, seqlens=(1024,))
    run.mkdir()
    run_sweep(only_1k, run, H100, InProcessPool(only_1k, H100, None), resume=False)
    csv_file = run / results.CSV_NAME
    rows = csv_file.read_text().splitlines(keepends=True)
    csv_file.write_text("".join(rows[:3] + [foreign + "\n"] + rows[3:]))  # a 2k row in the middle of the file
    before = {name: (run / name).read_bytes() for name in (results.CSV_NAME, resume.PROGRESS_NAME)}
    with pytest.raises(resume.ResumeError, match=r"results.csv line 4 \(.* T=2048\).*would delete it"):
        run_sweep(only_1k, run, H100, InProcessPool(only_1k, H100, None), resume=True)
    assert {name: (run / name).read_bytes() for name in before} == before
    outcome = run_sweep(SMALL, run, H100, InProcessPool(SMALL, H100, None), resume=True)  # 2k is in this sweep
    assert outcome.rows_written > 0 and sorted(data_lines(run)) == sorted(complete_run(tmp_path / "ref"))


def test_a_linked_results_csv_is_refused(tmp_path: Path):
    complete_run(tmp_path / "a")
    run = tmp_path / "b"
    run.mkdir()
    (run / results.CSV_NAME).symlink_to(tmp_path / "a" / results.CSV_NAME)
    (run / resume.PROGRESS_NAME).write_text((tmp_path / "a" / resume.PROGRESS_NAME).read_text())
    before = (tmp_path / "a" / results.CSV_NAME).read_bytes()
    with pytest.raises(resume.ResumeError, match="is a link"):
        run_sweep(SMALL, run, H100, InProcessPool(SMALL, H100, None), resume=True)
    assert (tmp_path / "a" / results.CSV_NAME).read_bytes() == before


def test_a_hard_linked_results_csv_is_refused(tmp_path: Path):
    complete_run(tmp_path / "a")
    os.link(tmp_path / "a" / results.CSV_NAME, tmp_path / "elsewhere.csv")
    before = (tmp_path / "elsewhere.csv").read_bytes()
    with pytest.raises(resume.ResumeError, match="is a hard link"):
        run_sweep(SMALL, tmp_path / "a", H100, InProcessPool(SMALL, H100, None), resume=True)
    assert (tmp_path / "elsewhere.csv").read_bytes() == before


def test_a_complete_row_added_at_the_end_outside_the_sweep_is_refused(tmp_path: Path):
    """The last rows without a progress line are a cut-off write only if the resumed sweep runs their task
    again; a row of another point there would be deleted for good: refused."""
    complete_run(tmp_path / "other")
    foreign = next(line for line in data_lines(tmp_path / "other") if ",2048," in line)
    only_1k = replace(SMALL, seqlens=(1024,))
    run = tmp_path / "run"
    run.mkdir()
    run_sweep(only_1k, run, H100, InProcessPool(only_1k, H100, None), resume=False)
    with (run / results.CSV_NAME).open("a") as handle:
        handle.write(foreign + "\n")
    before = (run / results.CSV_NAME).read_bytes()
    with pytest.raises(resume.ResumeError, match="would delete it"):
        run_sweep(only_1k, run, H100, InProcessPool(only_1k, H100, None), resume=True)
    assert (run / results.CSV_NAME).read_bytes() == before


def test_a_task_redone_against_its_baselines_written_time_matches_the_uninterrupted_run(tmp_path: Path):
    """The baseline's time of a resumed point comes back from the CSV (6 significant digits); the
    uninterrupted run computes its speedups from the same written value, so both write the same bytes."""
    spec = replace(SMALL, seqlens=(1000, 1536, 2300, 3100, 23552), n_slc=(16,), modes=("fwd", "bwd"))
    reference = tmp_path / "ref"
    reference.mkdir()
    run_sweep(spec, reference, H100, InProcessPool(spec, H100, None), resume=False)
    run = tmp_path / "run"
    run.mkdir()
    run_sweep(spec, run, H100, InProcessPool(spec, H100, None), resume=False)
    progress = run / resume.PROGRESS_NAME
    kept = [line for line in progress.read_text().splitlines(keepends=True) if '"backend":"nsa-triton"' not in line]
    progress.write_text("".join(kept))  # every baseline done, every NSA task to redo against it
    outcome = run_sweep(spec, run, H100, InProcessPool(spec, H100, None), resume=True)
    assert outcome.rows_written > 0 and sorted(data_lines(run)) == sorted(data_lines(reference))


@pytest.mark.parametrize("file,change,needle", [
    ("spec.json", {"reps": "30"}, "reps is '30', not a value a sweep has"),
    ("spec.json", {"seqlens": [-8192]}, "seqlens is [-8192], not a value a sweep has"),
    ("spec.json", {"baseline": 5}, "baseline is 5, not a value a sweep has"),
    ("env.json", {"target_gpu": "h200"}, "has no target_gpu with a key"),
])
def test_a_run_files_bad_value_is_named_as_the_files(tmp_path: Path, file: str, change: dict, needle: str):
    """A bad value in spec.json or env.json is the file's fault, said so; never read as another sweep's setting."""
    from cli_runner import run_main

    run = tmp_path / "run"
    assert run_main(*SWEEP, "--out", str(run), cwd=tmp_path)[0] == 0
    record = json.loads((run / file).read_text())
    (run / file).write_text(json.dumps({**record, **change}))
    code, _, err = run_main(*SWEEP, "--out", str(run), "--resume", cwd=tmp_path)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
