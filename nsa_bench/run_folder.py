"""A run folder before its first row: made (or resumed) safely, with env.json and spec.json written.

A new run never mixes into an old CSV; a resumed one must have been made with the same measurement
settings, GPU and shard (`resume.check_compatible`), keeps the record of where it started and notes each
resumption, and its spec.json becomes the union of every resumed sweep's axes.
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime
from pathlib import Path

from nsa_bench import environment, results, resume as resume_mod
from nsa_bench.gpus import GPUSpec
from nsa_bench.messages import show
from nsa_bench.shard import WHOLE, Shard
from nsa_bench.spec import SweepSpec


# what a run writes beside results.csv and progress.jsonl: a folder holding any of them without a run is
# someone else's, and a new run must not write over it
RUN_FILES = (results.ENV_NAME, results.SPEC_NAME, "breakeven.csv", "tuning.json", results.PLOTS_DIR, "report.html",
             "report.md")


class RunFolderError(ValueError):
    """A run folder that cannot be used (the message names the flag; flag None: no single flag is to blame)."""

    def __init__(self, flag: str | None, message: str) -> None:
        super().__init__(message)
        self.flag = flag


def results_root() -> Path:
    """Where runs go without --out: ./results of the current directory, never inside the install."""
    return Path.cwd() / "results"


def default_out_dir(suite: str | None) -> Path:
    """results/<time>-<suite>-<random>: two sweeps started in the same second get different folders."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(suite).stem if suite else "sweep")[:40].strip("-.") or "sweep"
    while True:
        out = results_root() / f"{stamp}-{name}-{secrets.token_hex(3)}"
        if not out.exists():
            return out


def prepare_out_dir(out: Path, resume: bool) -> Path:
    """Create the run folder; refuse to mix a new run into an old CSV unless resuming."""
    where = show(str(out), 120)
    try:
        if not resume and resume_mod.has_run(out):
            raise RunFolderError("out", f"{where} already holds a run: pass --resume to continue it, or choose another --out")
        if not resume_mod.has_run(out) and not _started_here(out):
            theirs = [name for name in RUN_FILES if (out / name).exists()]
            if theirs:
                raise RunFolderError("out", f"{where} holds {', '.join(theirs)} but no run: a run would write over "
                                            f"{'it' if len(theirs) == 1 else 'them'}; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise RunFolderError("out", f"{where} is not a folder")
    except OSError as exc:
        raise RunFolderError("out", f"cannot create the run folder {where}: {exc.strerror or exc}") from None
    return out


def _started_here(out: Path) -> bool:
    """Whether `out` holds the env.json of a sweep that stopped before its first row (killed while it
    precompiled, say): its files are the sweep's own to write again."""
    try:
        env = results.read_json(out / results.ENV_NAME)
    except results.ResultsError:
        return False
    return isinstance(env.get("target_gpu"), dict) and "measured" in env


def open_run(out: Path, spec: SweepSpec, gpu: GPUSpec, measuring: bool, resume: bool, shard: Shard = WHOLE,
             workers: dict[str, object] | None = None) -> None:
    """Make (or check, to resume) the run folder `out` and write its env.json and spec.json. `workers`: what
    env.json records of where the points run (None: this process)."""
    prepare_out_dir(out, resume)
    previous: dict = {}
    spec_record = spec.to_dict()
    try:
        if resume and resume_mod.has_run(out):
            resume_mod.check_compatible(out, spec, gpu.key, environment.gpu_name() if measuring else None)
            previous = results.read_json(out / results.ENV_NAME)
            spec_record = resume_mod.merged_spec(results.read_json(out / results.SPEC_NAME), spec)
    except (resume_mod.ResumeError, results.ResultsError) as exc:
        raise RunFolderError(None, str(exc)) from None
    if previous and previous.get("shard", WHOLE.text()) != shard.text():
        raise RunFolderError("shard", f"cannot resume {show(str(out), 120)}: it is shard "
                                      f"{show(previous.get('shard', '1/1'))}, this sweep is {shard.text()}: choose "
                                      "another --out")
    env = environment.collect()
    env["target_gpu"] = {"key": gpu.key, "name": gpu.name, "peak_flops": gpu.peak_flops,
                         "hbm_bytes_per_s": gpu.hbm_bytes_per_s}
    env["measured"] = measuring
    if shard != WHOLE:
        env["shard"] = shard.text()
    if workers is not None:
        env["workers"] = workers
    if previous:  # a resumed run keeps the record of where it started, and notes each resumption
        resumed = previous.get("resumed") if isinstance(previous.get("resumed"), list) else []
        env = {**previous, "resumed": [*resumed, {"timestamp": env["timestamp"], "command": env["command"]}]}
    try:
        results.write_json(out / results.ENV_NAME, env)
        results.write_json(out / results.SPEC_NAME, spec_record)
    except OSError as exc:
        raise RunFolderError("out", f"cannot write into {show(str(out), 120)}: {exc.strerror or exc}") from None
