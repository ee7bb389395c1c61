"""The parent side: compile worker processes (service.py) and the one loop that drives them in parallel.

Compiles are CPU-bound and differ in length by kernel and config, so each worker is fed by its own thread
from one shared queue (dynamic balance). `compile_cases` runs the compile check's unit, a whole case;
`precompile_cases` plans every case, then compiles each distinct variant once. Plain Python: the parent
never imports Triton (the CLI stays cheap, and an interpreter-mode process can drive the workers).
"""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from nsa_bench.compilecheck import protocol
from nsa_bench.compilecheck.case import DEFAULT_CAPABILITY, Case
from nsa_bench.child_env import child_environment
from nsa_bench.compilecheck.results import (
    CasePlan, CaseReport, CompileResult, Precompiled, Tuning, Variant, distinct_variants,
)


class CompileWorker:
    """A TRITON_INTERPRET=0 worker subprocess answering protocol.py's requests (use as a context manager)."""

    def __init__(self, capability: int = DEFAULT_CAPABILITY) -> None:
        env = {**child_environment(), "TRITON_INTERPRET": "0"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "nsa_bench.compilecheck.service", "--capability", str(capability)], env=env,
            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._reports: dict[Case, CaseReport] = {}

    def _ask(self, line: str, what: str) -> dict:
        """Send one request line, return its answer (the worker's other output is skipped)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        answer = protocol.read_answer(self._proc.stdout)
        if answer is None:
            raise RuntimeError(f"compile worker exited (rc={self._proc.wait()}) while {what}")
        return answer

    def compile_case(self, case: Case) -> CaseReport:
        """Every config of every launch of `case` (kept: a case asked for twice compiles once)."""
        if case not in self._reports:
            raw = self._ask(protocol.request("report", case), f"compiling {case.label}")
            self._reports[case] = CaseReport(case, tuple(CompileResult(**r) for r in raw["results"]),
                                             raw["host_error"])
        return self._reports[case]

    def plan(self, case: Case) -> CasePlan:
        """Record `case` and name every variant it would compile, without compiling."""
        raw = self._ask(protocol.request("plan", case), f"planning {case.label}")
        return CasePlan(case, raw["launches"], tuple(Variant.from_dict(v) for v in raw["variants"]),
                        tuple(Tuning(**t) for t in raw["tunings"]), raw["host_error"])

    def compile_variant(self, case: Case, launch: int, index: int) -> CompileResult:
        line = protocol.request("compile", case, launch=launch, index=index)
        return CompileResult(**self._ask(line, f"compiling {case.label} launch {launch} config {index}"))

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> CompileWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerPool:
    """`workers` CompileWorkers, each driven by one thread pulling from a shared queue. Use as a context manager."""

    def __init__(self, workers: int, capability: int = DEFAULT_CAPABILITY) -> None:
        self._workers = [CompileWorker(capability) for _ in range(max(1, workers))]

    def map(self, work: Callable[[CompileWorker, Any], Any], items: list,
            done: Callable[[int, Any], None] | None = None) -> list:
        """[work(some worker, item) for item in items], in parallel; `done(i, result)` as each finishes (one at
        a time). The first failure stops the others taking new items and is raised here."""
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(items)):
            todo.put(i)
        out: list = [None] * len(items)
        failures: list[BaseException] = []
        lock = threading.Lock()

        def drain(worker: CompileWorker) -> None:
            try:
                while not failures:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    out[i] = work(worker, items[i])
                    if done is not None:
                        with lock:
                            done(i, out[i])
            except BaseException as exc:  # surfaced below, in the caller's thread
                failures.append(exc)

        threads = [threading.Thread(target=drain, args=(w,)) for w in self._workers[:max(1, len(items))]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return out

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compile_cases(cases: tuple[Case, ...], workers: int = 2,
                  capability: int = DEFAULT_CAPABILITY) -> dict[Case, CaseReport]:
    """Compile every config of every case on `workers` processes in parallel, reports in the order given."""
    longest_first = sorted(dict.fromkeys(cases), key=lambda c: not c.entry.startswith("nsa_attention"))  # balance
    with WorkerPool(min(workers, len(longest_first)), capability) as pool:
        reports = pool.map(lambda worker, case: worker.compile_case(case), longest_first)
    by_case = dict(zip(longest_first, reports))
    return {case: by_case[case] for case in cases}


def precompile_cases(cases: list[Case], workers: int, capability: int = DEFAULT_CAPABILITY, compile: bool = True,
                     progress: Callable[[int, int], None] | None = None,
                     keep: Callable[[Case, Variant], bool] | None = None) -> Precompiled:
    """Plan every case, then compile each distinct variant once, on `workers` processes in parallel.

    Compiling goes through `triton.compile` with Triton's own cache manager, so every binary lands in
    Triton's on-disk cache under the key JITFunction.run computes for the same launch: a later process
    that launches these kernels at these shapes loads them instead of compiling. `compile=False` only
    plans (what a dry run needs). `progress(done, total)` is called as compiles finish. `keep(case, variant)`: compile
    only the variants it accepts (e.g. the configs a self-test pins), all when None.
    """
    cases = list(dict.fromkeys(cases))
    start = time.perf_counter()
    with WorkerPool(workers if compile else min(workers, max(1, len(cases))), capability) as pool:
        plans = pool.map(lambda worker, case: worker.plan(case), cases)
        planned = time.perf_counter()
        jobs, broken = distinct_variants(plans, keep)
        results: list[CompileResult] = []
        if compile and jobs:
            finished = [0]

            def done(i: int, result: CompileResult) -> None:
                finished[0] += 1
                if progress is not None:
                    progress(finished[0], len(jobs))

            results = pool.map(lambda worker, job: worker.compile_variant(job[0], job[1].launch, job[1].index),
                               jobs, done)
        end = time.perf_counter()
    return Precompiled(dict(zip(cases, plans)), tuple(results + broken), max(1, workers), planned - start,
                       end - planned)
