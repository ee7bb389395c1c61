"""The compile worker process: `python -m nsa_bench.compilecheck.service [--capability N]`, answering the
requests of protocol.py until its stdin closes.

It must run with TRITON_INTERPRET=0: a process that imported Triton under the interpreter holds
`InterpretedFunction`s for Triton's own jit library (`tl.sum`'s combine function, `tl.cdiv`, ...) and
`triton.compile` fails on them. Here `@triton.jit` yields JITFunctions, every module-level `interpreting()`
(autotune config lists) takes its GPU branch, and so do the host wrappers (tile choices, UPCAST/INTERP flags).
Each case's launches are recorded once and each compile is kept (per worker) by its key.
"""
from __future__ import annotations

import dataclasses
import sys
import traceback
from typing import Any

from triton import knobs
from triton.runtime.autotuner import Autotuner

from nsa_bench.compilecheck import protocol
from nsa_bench.compilecheck.case import DEFAULT_CAPABILITY, Case
from nsa_bench.compilecheck.compiler import KernelCompiler, short_error
from nsa_bench.compilecheck.entries import record
from nsa_bench.compilecheck.recorder import Launch, config_label, expand, kernel_name, launched_constexprs, tuning_of
from nsa_bench.compilecheck.results import CasePlan, CaseReport, CompileResult, Tuning, Variant


class Session:
    """One worker's state: its compiler, and each case's launches and their expanded configs, made once."""

    def __init__(self, compiler: KernelCompiler) -> None:
        self.compiler = compiler
        self._launches: dict[Case, list[Launch]] = {}
        self._variants: dict[tuple[Case, int], list[tuple[Any, dict]]] = {}

    def launches(self, case: Case) -> list[Launch]:
        if case not in self._launches:
            self._launches[case] = record(case)
        return self._launches[case]

    def variants(self, case: Case, launch: int) -> list[tuple[Any, dict]]:
        if (case, launch) not in self._variants:
            self._variants[case, launch] = expand(self.launches(case)[launch])
        return self._variants[case, launch]

    def report(self, case: Case) -> CaseReport:
        """Record the entry point's launches at `case`'s shape and compile every config."""
        try:
            launches = self.launches(case)
        except Exception as exc:
            return CaseReport(case, (), host_error="".join(traceback.format_exception(exc))[-4000:])
        results = tuple(r for i, launch in enumerate(launches) for r in self.compiler.compile_launch(launch, i))
        return CaseReport(case, results)

    def plan(self, case: Case) -> CasePlan:
        """Every variant `case` would compile, named by its compile digest, and every autotune lookup."""
        try:
            launches = self.launches(case)
        except Exception as exc:
            return CasePlan(case, 0, (), (), host_error="".join(traceback.format_exception(exc))[-4000:])
        variants: list[Variant] = []
        tunings: list[Tuning] = []
        for i, launch in enumerate(launches):
            name = kernel_name(launch.kernel)
            try:
                expanded = self.variants(case, i)
            except Exception as exc:
                variants.append(Variant(i, 0, name, config_label(launch.kwargs), "", f"expand: {short_error(exc)}"))
                continue
            tuning = tuning_of(launch, len(expanded))
            if tuning is not None:
                tunings.append(tuning)
            autotuned = isinstance(launch.kernel, Autotuner)
            for j, (jit, kw) in enumerate(expanded):
                what = {"module": jit.fn.__module__, "constexprs": launched_constexprs(jit, launch.args, kw),
                        "tuned": tuple(k for k in kw if k not in launch.kwargs) if autotuned else ()}
                try:
                    variants.append(Variant(i, j, name, config_label(kw), self.compiler.digest(jit, launch.args, kw),
                                            **what))
                except Exception as exc:
                    variants.append(Variant(i, j, name, config_label(kw), "", f"bind: {short_error(exc)}", **what))
        return CasePlan(case, len(launches), tuple(variants), tuple(tunings))

    def compile(self, case: Case, launch: int, index: int) -> CompileResult:
        """Variant `index` of launch `launch` of `case`."""
        recorded = self.launches(case)[launch]
        jit, kw = self.variants(case, launch)[index]
        return self.compiler.compile_config(jit, recorded.args, kw, kernel_name(recorded.kernel), launch)

    def answer(self, line: str) -> dict:
        op, case, fields = protocol.parse_request(line)
        if op == "report":
            return dataclasses.asdict(self.report(case))
        if op == "plan":
            return dataclasses.asdict(self.plan(case))
        return dataclasses.asdict(self.compile(case, fields["launch"], fields["index"]))


def serve(capability: int) -> None:
    """Answer one request per stdin line until stdin closes."""
    if knobs.runtime.interpret:  # TRITON_INTERPRET as Triton reads it
        raise SystemExit("the compile worker needs TRITON_INTERPRET=0")
    session = Session(KernelCompiler(capability))
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(protocol.answer(session.answer(line)))
            sys.stdout.flush()


if __name__ == "__main__":
    serve(int(sys.argv[sys.argv.index("--capability") + 1]) if "--capability" in sys.argv else DEFAULT_CAPABILITY)
