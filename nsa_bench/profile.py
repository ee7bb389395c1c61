"""`nsa-bench profile`: one sweep point under Nsight Compute, measured bytes and FLOPs beside the cost model.

How it runs. For each *part* of the backend's workload — `total` (the whole operation) and each stage
callable it exposes (NSA's per-branch kernels) — the parent launches `ncu ... python -m nsa_bench.profile`
as its own child process. The child builds the workload, warms it up (compilation, autotuning), then runs
the part exactly once between cudaProfilerStart/Stop (ncu `--profile-from-start off`, so warm-up and
autotune launches are never profiled) inside an NVTX range `nsa-bench:<backend>:<part>`. One process per
part keeps the attribution of kernels to parts exact without parsing NVTX columns.

Metrics (per kernel launch) and why:
- `gpu__time_duration.sum` — kernel duration (ns) under the profiler (clocks may be locked by ncu).
- `dram__bytes_read.sum`, `dram__bytes_write.sum` — HBM traffic, the denominator of measured intensity
  (L2 hits excluded: exactly what the cost model's minimum-bytes figure bounds from below).
- `sm__ops_path_tensor_src_{bf16,fp16,tf32}_dst_fp32.sum` — tensor-core operations, read as FLOPs
  (2 per multiply-add, the convention of ncu's roofline charts; not yet checked on an H100 against a
  matmul of known size: compare `measured_flops` with `model_flops` of a matmul-bound stage).
  Optional: dropped (and said so in `flops_note`) when this ncu/GPU does not know them.
- `smsp__sass_thread_inst_executed_op_{ffma,fadd,fmul,hfma,hadd,hmul}_pred_on.sum` — scalar FP work
  (softmax, scaling, reductions): FMA counts 2, add/mul 1. Counted by the hardware but not by the
  cost model (which counts useful matmul FLOPs only), so measured FLOPs >= modelled is expected.
- `sm__inst_executed_pipe_tensor_op_gmma.sum` — Hopper wgmma instructions: if they are non-zero while
  the tensor FLOP counters read 0, the counters missed wgmma and `flops_note` says so.

Without `ncu` on PATH or without a CUDA GPU the command stops with one line saying what is missing.
NVTX ranges come from `nsa_bench.nvtx`, which the runner applies to every backend.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nsa_bench.backends import Workload
from nsa_bench.nvtx import nvtx_range

NVTX_PREFIX = "nsa-bench"
PART_TOTAL = "total"
ALL_KERNELS = "(all kernels)"
CSV_NAME = "profile.csv"
PLOT_NAME = "profile_intensity"
PARTS_FILE = "parts.json"

DURATION = "gpu__time_duration.sum"
DRAM_READ = "dram__bytes_read.sum"
DRAM_WRITE = "dram__bytes_write.sum"
GMMA_INST = "sm__inst_executed_pipe_tensor_op_gmma.sum"
TENSOR_FLOPS = tuple(f"sm__ops_path_tensor_src_{src}_dst_fp32.sum" for src in ("bf16", "fp16", "tf32"))
# SASS per-thread FP instruction counters and the FLOPs each instruction does
SIMT_FLOPS = {f"smsp__sass_thread_inst_executed_op_{op}_pred_on.sum": weight
              for op, weight in (("ffma", 2), ("fadd", 1), ("fmul", 1), ("hfma", 2), ("hadd", 1), ("hmul", 1))}
CORE_METRICS = (DURATION, DRAM_READ, DRAM_WRITE, *SIMT_FLOPS)
OPTIONAL_METRICS = (*TENSOR_FLOPS, GMMA_INST)

_MISSING_HELP = ("nsa-bench profile needs Nsight Compute's `ncu` on PATH (it ships with the CUDA toolkit, or "
                 "install NVIDIA Nsight Compute, and add its folder to PATH) and a CUDA GPU; missing here: {}")


class ProfileError(Exception):
    """The profile cannot run or failed: the message is the one line the CLI prints."""


# ------------------------------------------------------------------ choosing the point
def point_from_options(options: Mapping[str, str | None]) -> tuple[Any, str]:
    """(Point, backend name) from sweep-style flags that must each hold one value (OptionError if not)."""
    from nsa_bench import suites
    from nsa_bench.backends import registry
    from nsa_bench.suites import OptionError

    given = {flag: value for flag, value in options.items() if value is not None}
    given.setdefault("mode", "fwd")
    given.setdefault("seqlen", "64k")
    given.setdefault("backend", "nsa-triton")
    spec = suites.build_spec(None, given)
    for flag, value in given.items():
        field = suites.OPTIONS[flag][0]
        parsed = getattr(spec, field)
        if isinstance(parsed, tuple) and len(parsed) != 1:
            raise OptionError(flag, value, "profile takes a single value")
    backend = spec.backends[0]
    known = tuple(registry())
    if backend not in known:
        raise OptionError("backend", backend, f"unknown (choose from {', '.join(known)})")
    points, invalid = spec.points()
    if not points:
        raise suites.InvalidConfiguration(invalid[0][1], options)
    return points[0], backend


def missing_requirements() -> list[str]:
    """What `profile` needs and this machine lacks (empty when it can run)."""
    import torch

    missing = []
    if shutil.which("ncu") is None:
        missing.append("ncu")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    return missing


# ------------------------------------------------------------------ parsing ncu's CSV
@dataclass(frozen=True)
class KernelRecord:
    """One kernel launch as ncu measured it."""

    part: str
    kernel: str
    duration_ns: float
    dram_read_bytes: float
    dram_write_bytes: float
    tensor_flops: float | None  # None: the tensor counters were not collected
    simt_flops: float
    gmma_inst: float | None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    cleaned = text.strip().replace(",", "")
    if cleaned in ("", "n/a", "N/A", "-"):
        return None
    try:
        return float(cleaned)
    except ValueError:
        return None


_NAME_COLUMNS = ("Kernel Name", "Function Name", "Name")


def parse_ncu_csv(text: str, part: str) -> list[KernelRecord]:
    """Kernel records from `ncu --import R --csv --page raw --print-units base` output.

    Tolerates ncu's units row (right after the header, empty ID) and thousands separators.
    """
    lines = [line for line in text.splitlines() if line.startswith('"')]  # drops ==PROF== and blank lines
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    if reader.fieldnames is None:
        return []
    name_col = next((c for c in _NAME_COLUMNS if c in reader.fieldnames), None)
    if name_col is None or DURATION not in reader.fieldnames:
        raise ProfileError(f"ncu CSV of part {part!r} lacks a kernel-name or {DURATION} column "
                           f"(columns: {', '.join(reader.fieldnames[:12])}...)")
    have_tensor = any(m in reader.fieldnames for m in TENSOR_FLOPS)
    records = []
    for row in reader:
        if not (row.get("ID") or "").strip():
            continue  # the units row
        tensor = sum(_number(row.get(m)) or 0.0 for m in TENSOR_FLOPS) if have_tensor else None
        simt = sum(weight * (_number(row.get(m)) or 0.0) for m, weight in SIMT_FLOPS.items())
        records.append(KernelRecord(
            part=part, kernel=row[name_col], duration_ns=_number(row.get(DURATION)) or 0.0,
            dram_read_bytes=_number(row.get(DRAM_READ)) or 0.0, dram_write_bytes=_number(row.get(DRAM_WRITE)) or 0.0,
            tensor_flops=tensor, simt_flops=simt, gmma_inst=_number(row.get(GMMA_INST)),
        ))
    return records


# ------------------------------------------------------------------ rows beside the cost model
@dataclass(frozen=True)
class ProfileRow:
    """One line of profile.csv: a kernel launch (or a part's sum) with the cost model's figures of its part."""

    part: str
    kernel: str
    duration_ms: float
    measured_bytes: float
    dram_read_bytes: float
    dram_write_bytes: float
    measured_flops: float
    tensor_flops: float | None
    simt_flops: float
    achieved_tflops: float | None
    achieved_gbps: float | None
    measured_intensity: float | None
    model_stages: str
    model_flops: float | None
    model_bytes: float | None
    model_intensity: float | None
    flops_note: str = ""


PROFILE_FIELDS = tuple(f.name for f in fields(ProfileRow))


@dataclass(frozen=True)
class Model:
    """The cost model's figures for one part."""

    stages: str
    flops: float
    bytes: float

    @property
    def intensity(self) -> float | None:
        return self.flops / self.bytes if self.bytes else None


def model_for(part: str, point: Any, family: str, stage_costs: Mapping[str, Sequence[str]]) -> Model | None:
    """Modelled FLOPs and bytes of `part` ("total" or a stage callable's name), None when the model has no such stage."""
    from nsa_bench.point_cost import cost_of

    work = cost_of(point, family)
    if part == PART_TOTAL:
        return Model("+".join(work.stage_names), work.flops, work.bytes)
    covered = tuple(stage_costs.get(part, (part,)))
    try:
        stage = work.merged(part, covered).stage(part)
    except ValueError:
        return None
    return Model("+".join(covered), stage.flops, stage.bytes)


def _note(records: Sequence[KernelRecord]) -> str:
    if any(r.tensor_flops is None for r in records):
        return "tensor FLOP counters unavailable: FLOPs are scalar (SASS) only"
    if any((r.gmma_inst or 0) > 0 and not r.tensor_flops for r in records):
        return "wgmma instructions ran but tensor FLOP counters read 0: tensor FLOPs missing"
    return ""


def _row(part: str, kernel: str, records: Sequence[KernelRecord], model: Model | None) -> ProfileRow:
    duration_ns = sum(r.duration_ns for r in records)
    read = sum(r.dram_read_bytes for r in records)
    write = sum(r.dram_write_bytes for r in records)
    tensor = None if any(r.tensor_flops is None for r in records) else sum(r.tensor_flops or 0.0 for r in records)
    simt = sum(r.simt_flops for r in records)
    flops = (tensor or 0.0) + simt
    seconds = duration_ns * 1e-9
    return ProfileRow(
        part=part, kernel=kernel, duration_ms=duration_ns * 1e-6, measured_bytes=read + write,
        dram_read_bytes=read, dram_write_bytes=write, measured_flops=flops, tensor_flops=tensor, simt_flops=simt,
        achieved_tflops=flops / seconds / 1e12 if seconds else None,
        achieved_gbps=(read + write) / seconds / 1e9 if seconds else None,
        measured_intensity=flops / (read + write) if read + write else None,
        model_stages=model.stages if model else "", model_flops=model.flops if model else None,
        model_bytes=model.bytes if model else None, model_intensity=model.intensity if model else None,
        flops_note=_note(records),
    )


def profile_rows(records: Sequence[KernelRecord], models: Mapping[str, Model | None]) -> list[ProfileRow]:
    """Per-kernel rows of each part, then the part's sum (kernel = "(all kernels)"), parts in `models` order."""
    rows: list[ProfileRow] = []
    for part, model in models.items():
        mine = [r for r in records if r.part == part]
        if not mine:
            continue
        rows += [_row(part, r.kernel, [r], model) for r in mine]
        rows.append(_row(part, ALL_KERNELS, mine, model))
    return rows


def write_csv(rows: Sequence[ProfileRow], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PROFILE_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return path


def plot_intensity(rows: Sequence[ProfileRow], folder: Path, title: str = "") -> list[Path]:
    """Measured vs modelled arithmetic intensity per part (and its kernels), with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [r for r in rows if r.model_intensity and r.measured_intensity]
    if not usable:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 5))
    values = [v for r in usable for v in (r.model_intensity, r.measured_intensity)]
    lo, hi = min(values) / 2, max(values) * 2
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=0.8, label="measured = modelled")
    for part in dict.fromkeys(r.part for r in usable):
        sums = [r for r in usable if r.part == part and r.kernel == ALL_KERNELS]
        kernels = [r for r in usable if r.part == part and r.kernel != ALL_KERNELS]
        points = ax.scatter([r.model_intensity for r in sums], [r.measured_intensity for r in sums], s=50, label=part,
                            marker="s" if part == PART_TOTAL else "o")
        if len(kernels) > 1:
            ax.scatter([r.model_intensity for r in kernels], [r.measured_intensity for r in kernels], s=12,
                       alpha=0.5, color=points.get_facecolor()[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("modelled intensity (useful FLOP / minimum HBM byte)")
    ax.set_ylabel("measured intensity (ncu FLOP / DRAM byte)")
    ax.set_title(title or "Measured vs modelled arithmetic intensity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    paths = [folder / f"{PLOT_NAME}.png", folder / f"{PLOT_NAME}.svg"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


# ------------------------------------------------------------------ the parent: running ncu
@dataclass(frozen=True)
class Outcome:
    csv: Path
    plots: list[Path]
    rows: list[ProfileRow]


Execute = Callable[..., subprocess.CompletedProcess]


def _child_command(point: Any, backend: str, part: str, parts_file: Path) -> list[str]:
    return [sys.executable, "-m", "nsa_bench.profile", "--backend", backend, "--point", json.dumps(point.as_dict()),
            "--part", part, "--parts-file", str(parts_file)]


def _ncu_failure(part: str, done: subprocess.CompletedProcess, log: Path) -> ProfileError:
    text = (done.stdout or "") + (done.stderr or "")
    if "ERR_NVGPUCTRPERM" in text:
        return ProfileError("ncu may not read the GPU's performance counters (ERR_NVGPUCTRPERM): run as root or "
                            "load the driver with NVreg_RestrictProfilingToAdminUsers=0")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "no output")
    return ProfileError(f"ncu failed on part {part!r} (exit {done.returncode}): {last[:300]} (log: {log})")


def _profile_part(ncu: str, point: Any, backend: str, part: str, out_dir: Path, execute: Execute,
                  metrics: tuple[str, ...]) -> subprocess.CompletedProcess:
    report = out_dir / "ncu" / part
    report.parent.mkdir(parents=True, exist_ok=True)
    command = [ncu, "--profile-from-start", "off", "--target-processes", "all", "--metrics", ",".join(metrics),
               "--force-overwrite", "--export", str(report),
               *_child_command(point, backend, part, out_dir / PARTS_FILE)]
    done = execute(command, capture_output=True, text=True)
    (out_dir / "ncu" / f"{part}.log").write_text((done.stdout or "") + (done.stderr or ""))
    return done


def _import_csv(ncu: str, report: Path, execute: Execute) -> str:
    done = execute([ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"],
                   capture_output=True, text=True)
    if done.returncode != 0:
        raise ProfileError(f"ncu could not read {report}: {(done.stderr or done.stdout or '').strip()[:300]}")
    return done.stdout


def run_profile(point: Any, backend_name: str, out_dir: Path, execute: Execute = subprocess.run,
                ncu: str | None = None) -> Outcome:
    """Profile every part of `backend_name` at `point` under ncu; write profile.csv and the plot into out_dir."""
    from nsa_bench.backends import registry

    missing = missing_requirements() if ncu is None else []
    if missing:
        raise ProfileError(_MISSING_HELP.format(" and ".join(missing)))
    ncu = ncu or shutil.which("ncu") or "ncu"
    backend = registry()[backend_name]
    if point.mode not in backend.modes:
        raise ProfileError(f"{backend_name} has no {point.mode} mode")
    why_not = backend.availability()
    if why_not:
        raise ProfileError(f"{backend_name} cannot run here: {why_not}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = CORE_METRICS + OPTIONAL_METRICS
    records: list[KernelRecord] = []
    parts = [PART_TOTAL]
    stage_costs: dict[str, list[str]] = {}
    index = 0
    while index < len(parts):
        part = parts[index]
        done = _profile_part(ncu, point, backend_name, part, out_dir, execute, metrics)
        if done.returncode != 0 and metrics != CORE_METRICS and "metric" in ((done.stdout or "") + (done.stderr or "")):
            metrics = CORE_METRICS  # this ncu/GPU lacks an optional counter: go on without them
            continue
        if done.returncode != 0:
            raise _ncu_failure(part, done, out_dir / "ncu" / f"{part}.log")
        if part == PART_TOTAL:
            listing = json.loads((out_dir / PARTS_FILE).read_text())
            parts += list(listing["stages"])
            stage_costs = listing.get("stage_costs", {})
        records += parse_ncu_csv(_import_csv(ncu, out_dir / "ncu" / f"{part}.ncu-rep", execute), part)
        index += 1
    models = {part: model_for(part, point, backend.family, stage_costs) for part in parts}
    rows = profile_rows(records, models)
    csv_path = write_csv(rows, out_dir / CSV_NAME)
    plots = plot_intensity(rows, out_dir, title=f"{backend_name} {point.label()}")
    return Outcome(csv_path, plots, rows)


def summary(outcome: Outcome) -> str:
    """One line per part: kernels, time, measured bytes/FLOPs, intensity measured vs modelled."""
    def fmt(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    lines = [f"{'part':<12}{'kernels':>8}{'ms':>10}{'GB':>9}{'TFLOP':>9}{'TFLOP/s':>9}{'I meas':>9}{'I model':>9}"]
    for row in outcome.rows:
        if row.kernel != ALL_KERNELS:
            continue
        count = sum(1 for r in outcome.rows if r.part == row.part and r.kernel != ALL_KERNELS)
        lines.append(f"{row.part:<12}{count:>8}{row.duration_ms:>10.3f}{row.measured_bytes / 1e9:>9.3f}"
                     f"{row.measured_flops / 1e12:>9.3f}{fmt(row.achieved_tflops, '9.1f'):>9}"
                     f"{fmt(row.measured_intensity, '9.1f'):>9}{fmt(row.model_intensity, '9.1f'):>9}")
    notes = sorted({r.flops_note for r in outcome.rows if r.flops_note})
    lines += [f"note: {n}" for n in notes]
    lines.append(f"-> {outcome.csv}" + "".join(f", {p}" for p in outcome.plots))
    return "\n".join(lines)


# ------------------------------------------------------------------ the child (runs under ncu)
def _part_callable(workload: Workload, part: str) -> Callable[[], Any]:
    if part == PART_TOTAL:
        return workload.run
    if part not in workload.stages:
        raise ProfileError(f"no stage {part!r} (stages: {', '.join(workload.stages) or 'none'})")
    return workload.stages[part]


def child(backend_name: str, point_json: str, part: str, parts_file: Path | None, warmup: int = 2) -> None:
    """Build the workload, warm it up, then run `part` once between cudaProfilerStart/Stop in an NVTX range."""
    import torch

    from nsa_bench.backends import registry
    from nsa_bench.inputs import make_inputs
    from nsa_bench.spec import Point

    point = Point(**json.loads(point_json))
    backend = registry()[backend_name]
    workload = backend.build(point, make_inputs(point, "cuda", seed=0))
    if parts_file is not None and part == PART_TOTAL:
        parts_file.write_text(json.dumps({"impl": workload.impl, "stages": list(workload.stages),
                                          "stage_costs": {k: list(v) for k, v in workload.stage_costs.items()}}))
    fn = _part_callable(workload, part)
    for call in range(warmup + 1):  # the last before_each prepares the profiled call
        if workload.before_each is not None:
            workload.before_each()
        if call < warmup:
            fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    with nvtx_range(f"{NVTX_PREFIX}:{backend_name}:{part}"):
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nsa_bench.profile",
                                     description="child of `nsa-bench profile`: run one part once under ncu")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--point", required=True, help="the Point as JSON")
    parser.add_argument("--part", default=PART_TOTAL)
    parser.add_argument("--parts-file", type=Path)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        child(args.backend, args.point, args.part, args.parts_file, args.warmup)
    except Exception as exc:  # one line for the parent's log, not a traceback
        print(f"nsa-bench profile child error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
