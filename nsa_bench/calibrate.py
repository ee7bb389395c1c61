"""`nsa-bench env --calibrate`: the GPU's achievable bf16 matmul FLOP/s and HBM copy bandwidth.

Datasheet peaks are upper bounds no kernel reaches; a roofline against measured ceilings says how far
a kernel is from what this card actually sustains. Matmul: large square bf16 matmuls (several sizes,
the best median wins), FLOPs = 2 n^3. Bandwidth: a device-to-device copy of a buffer far larger than
L2, bytes = read + written = 2 x buffer. Both are timed per call with CUDA events, median of `reps`.
Results live in results/calibration/<gpu key or sanitized device name>.json, read back by the plots.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from nsa_bench.gpus import GPUSpec, gpu_spec

MATMUL_SIZES = (4096, 8192, 16384)
COPY_MIN_BYTES = 1 << 30  # 1 GiB, and at least 16 x L2


class CalibrationError(Exception):
    """Calibration cannot run here (no GPU): the message says what is missing."""


@dataclass(frozen=True)
class Calibration:
    """Measured ceilings of one GPU (what `env --calibrate` stores)."""

    key: str
    device_name: str
    matmul_flops: float  # achievable dense bf16 FLOP/s
    copy_bytes_per_s: float  # HBM bytes read + written per second by a device-to-device copy
    matmul_size: int = 0  # n of the fastest n x n x n matmul
    copy_buffer_bytes: int = 0
    reps: int = 0
    timestamp: str = ""
    env: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("matmul_flops", "copy_bytes_per_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Calibration.{name} must be a positive number, got {value!r}")

    @property
    def ridge_intensity(self) -> float:
        return self.matmul_flops / self.copy_bytes_per_s


def sanitize(name: str) -> str:
    """A file-name-safe, lower-case form of a device name."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not cleaned:
        raise ValueError(f"device name {name!r} has no usable characters")
    return cleaned


def key_for(device_name: str) -> str:
    """The gpus.py key of a device name when it is a known GPU, else its sanitized name."""
    try:
        return gpu_spec(device_name).key
    except ValueError:
        return sanitize(device_name)


def calibration_dir() -> Path:
    """./results/calibration of the current directory: measured ceilings never go inside the install."""
    return Path.cwd() / "results" / "calibration"


def path_for(key: str, directory: Path | None = None) -> Path:
    return (directory or calibration_dir()) / f"{key}.json"


def save(calibration: Calibration, directory: Path | None = None) -> Path:
    path = path_for(calibration.key, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(calibration), indent=2, default=str) + "\n")
    return path


def load(key: str, directory: Path | None = None) -> Calibration | None:
    """The stored calibration for `key`, or None when there is none (or it is unreadable)."""
    path = path_for(key, directory)
    try:
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            return None
        known = set(Calibration.__dataclass_fields__)
        return Calibration(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, RecursionError):  # unreadable: as if never calibrated
        return None


def for_gpu(gpu: GPUSpec, directory: Path | None = None) -> Calibration | None:
    """The measured ceilings of the GPU a roofline is drawn for, when that GPU was calibrated."""
    return load(gpu.key, directory)


# ------------------------------------------------------------------ measuring (CUDA only)
def _median_ms(fn: Callable[[], object], reps: int, warmup: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def measure_matmul(sizes: tuple[int, ...] = MATMUL_SIZES, reps: int = 20) -> tuple[float, int]:
    """(best median FLOP/s, its n) over n x n bf16 matmuls."""
    import torch

    best = (0.0, 0)
    for n in sizes:
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
        ms = _median_ms(lambda: torch.matmul(a, b, out=out), reps, warmup=3)
        best = max(best, (2.0 * n**3 / (ms * 1e-3), n))
    return best


def measure_copy(reps: int = 20) -> tuple[float, int]:
    """(median bytes/s read + written, buffer bytes) of a device-to-device copy far larger than L2."""
    import torch

    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))
    nbytes = max(COPY_MIN_BYTES, 16 * l2)
    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), reps, warmup=3)
    return 2.0 * src.numel() * 4 / (ms * 1e-3), src.numel() * 4


def calibrate(reps: int = 20) -> Calibration:
    """Measure this machine's GPU (raises CalibrationError without one)."""
    import torch

    if not torch.cuda.is_available():
        raise CalibrationError(
            "no CUDA GPU: `nsa-bench env --calibrate` measures a GPU's matmul FLOP/s and copy bandwidth; "
            "run it on a machine with an NVIDIA GPU and a CUDA build of torch")
    from nsa_bench import environment

    name = torch.cuda.get_device_name(0)
    flops, size = measure_matmul(reps=reps)
    bandwidth, buffer = measure_copy(reps=reps)
    info = environment.collect()
    env = {k: info.get(k) for k in ("gpu", "torch", "cuda", "driver", "gpu_sms", "compute_capability",
                                    "max_sm_clock_mhz", "max_mem_clock_mhz", "power_limit_w", "host")}
    return Calibration(key=key_for(name), device_name=name, matmul_flops=flops, copy_bytes_per_s=bandwidth,
                       matmul_size=size, copy_buffer_bytes=buffer, reps=reps,
                       timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"), env=env)


def render(calibration: Calibration, path: Path | None = None) -> str:
    """Measured ceilings beside the datasheet figures of gpus.py (when the GPU is known)."""
    try:
        spec: GPUSpec | None = gpu_spec(calibration.device_name)
    except ValueError:
        spec = None
    title = f"GPU: {calibration.device_name}"
    title += f" (datasheet: {spec.name})" if spec else " (not in gpus.py: no datasheet figures)"

    def line(label: str, measured: float, sheet: float | None, unit: float) -> str:
        ratio = f"{measured / sheet:6.0%}" if sheet else "     -"
        sheet_text = f"{sheet / unit:10.1f}" if sheet else "         -"
        return f"  {label:<22}{measured / unit:10.1f}{sheet_text}  {ratio}"

    lines = [title, f"  {'':<22}{'measured':>10}{'datasheet':>10}  ratio",
             line("bf16 matmul TFLOP/s", calibration.matmul_flops, spec.peak_flops if spec else None, 1e12),
             line("HBM copy GB/s", calibration.copy_bytes_per_s, spec.hbm_bytes_per_s if spec else None, 1e9),
             f"  ridge point: {calibration.ridge_intensity:.0f} FLOP/byte measured"
             + (f", {spec.ridge_intensity:.0f} datasheet" if spec else ""),
             f"  (matmul n={calibration.matmul_size}, copy of {calibration.copy_buffer_bytes / 2**30:.2f} GiB, "
             f"median of {calibration.reps})"]
    if path is not None:
        lines.append(f"wrote {path}")
    return "\n".join(lines)


def run(directory: Path | None = None, reps: int = 20) -> str:
    """Calibrate, store, and return the text to print (CalibrationError without a GPU)."""
    calibration = calibrate(reps=reps)
    return render(calibration, save(calibration, directory))
