"""What a compile comes back as: one config's resource usage, a case's compiles, a precompile's plans.

Plain data (frozen dataclasses) that crosses the worker boundary as JSON; the limits are an H100's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nsa_bench.compilecheck.case import Case

H100_MAX_SHARED_BYTES = 227 * 1024  # opt-in dynamic shared memory per block (Triton's launch check)
H100_REGISTERS_PER_SM = 65536


@dataclass(frozen=True)
class CompileResult:
    """Outcome of compiling one kernel config for the target; usage fields are None when unknown."""

    name: str
    config: str
    launch: int = 0  # index of the launch within its case: configs of one launch share it
    module: str = ""  # the module defining the kernel, e.g. "nsa_kernels.flash"
    num_warps: int = 4
    error: str | None = None
    registers: int | None = None
    local_bytes: int | None = None  # per-thread local memory: where register spills live
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    seconds: float = 0.0  # wall time of this compile (0 when it came from this worker's memory)
    cpu_seconds: float = 0.0  # CPU time, ptxas included: what the precompile estimate is calibrated on

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def spills(self) -> bool:
        """ptxas puts spilled registers in the stack frame (cuobjdump STACK) or LOCAL memory."""
        return bool(self.local_bytes) or bool(self.stack_bytes)

    @property
    def fits_shared_memory(self) -> bool:
        return self.shared_bytes is None or self.shared_bytes <= H100_MAX_SHARED_BYTES

    @property
    def fits_register_file(self) -> bool:
        """Launchable: registers (allocated in units of 8) x threads within the 64k-register file."""
        if self.registers is None:
            return True
        return -(-self.registers // 8) * 8 * 32 * self.num_warps <= H100_REGISTERS_PER_SM

    @property
    def usable(self) -> bool:
        return self.ok and not self.spills and self.fits_shared_memory and self.fits_register_file

    def describe(self) -> str:
        if not self.ok:
            return f"{self.name} [{self.config}] FAILED: {self.error}"
        return (f"{self.name} [{self.config}] regs={self.registers} local={self.local_bytes} "
                f"stack={self.stack_bytes} shared={self.shared_bytes}")


@dataclass(frozen=True)
class CaseReport:
    """Every compile of one case, plus the host-side error if the wrapper itself crashed."""

    case: Case
    results: tuple[CompileResult, ...]
    host_error: str | None = None

    def describe(self) -> str:
        lines = [self.case.label] + [f"  {r.describe()}" for r in self.results]
        if self.host_error:
            lines.append(f"  HOST ERROR: {self.host_error}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Variant:
    """One config of one recorded launch, planned but not compiled. `digest` names the compile (equal
    digests, in any case, compile to the same binary); empty when the host side failed (`error`).
    `module`, `tuned` (the names an autotuner set: its config's; empty for a fixed launch) and `constexprs`
    (every constexpr bound, with num_warps and num_stages) say what runs, for the launch plan
    (nsa_bench/launchplan)."""

    launch: int
    index: int
    name: str
    config: str
    digest: str
    error: str | None = None
    module: str = ""
    tuned: tuple[str, ...] = ()
    constexprs: tuple[tuple[str, object], ...] = ()

    @staticmethod
    def from_dict(raw: dict) -> Variant:
        """A Variant from its JSON form (tuples come back as lists)."""
        return Variant(**{**raw, "tuned": tuple(raw.get("tuned", ())),
                          "constexprs": tuple((str(k), v) for k, v in raw.get("constexprs", ()))})


@dataclass(frozen=True)
class Tuning:
    """An autotuned launch: the key its autotuner looks up and the configs it benchmarks on a miss."""

    kernel: str
    key: str
    configs: int


@dataclass(frozen=True)
class CasePlan:
    """What one case launches: every variant to compile and every autotuner lookup."""

    case: Case
    launches: int
    variants: tuple[Variant, ...]
    tunings: tuple[Tuning, ...]
    host_error: str | None = None


@dataclass(frozen=True)
class Precompiled:
    """Every case's plan and one result per distinct compile (variants shared by cases compile once)."""

    plans: dict[Case, CasePlan]
    results: tuple[CompileResult, ...]
    workers: int
    plan_seconds: float
    compile_seconds: float

    @property
    def variants(self) -> int:
        """Variants over all cases, before deduplication."""
        return sum(len(p.variants) for p in self.plans.values())

    @property
    def failed(self) -> tuple[CompileResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def host_errors(self) -> dict[Case, str]:
        return {c: p.host_error for c, p in self.plans.items() if p.host_error}


def distinct_variants(plans: list[CasePlan], keep: Callable[[Case, Variant], bool] | None = None
                      ) -> tuple[list[tuple[Case, Variant]], list[CompileResult]]:
    """(the first case naming each distinct compile, results for variants the host side failed on);
    `keep(case, variant)`: only the variants it accepts (e.g. the configs a self-test pins), all when None."""
    seen: dict[str, tuple[Case, Variant]] = {}
    broken: list[CompileResult] = []
    for plan in plans:
        for variant in plan.variants:
            if variant.error:
                broken.append(CompileResult(variant.name, variant.config, variant.launch, error=variant.error))
            elif keep is not None and not keep(plan.case, variant):
                continue
            elif variant.digest not in seen:
                seen[variant.digest] = (plan.case, variant)
    return list(seen.values()), broken
