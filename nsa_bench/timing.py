"""GPU timing by CUDA events: L2 flushed outside the timed window, warm-up by count, percentiles.

Each sample times one call between two events recorded on the stream; the flush (a write of a buffer
at least twice the L2 size) and any untimed `before_each` run before the start event. With
`cuda_graph`, the call is captured once and replayed, which removes launch overhead (decode).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


class GraphCaptureError(RuntimeError):
    """`fn` could not be captured in a CUDA graph (a host sync, an uncapturable op): time it eagerly."""


@dataclass(frozen=True)
class Timing:
    ms_median: float
    ms_p10: float
    ms_p90: float
    samples: int


def summarize(samples_ms: list[float]) -> Timing:
    """Median and p10/p90 (linear interpolation) of per-call times."""
    if not samples_ms:
        raise ValueError("no samples")
    values = torch.tensor(sorted(samples_ms), dtype=torch.float64)
    quantiles = torch.quantile(values, torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64))
    return Timing(float(quantiles[0]), float(quantiles[1]), float(quantiles[2]), len(samples_ms))


def time_wallclock(
    fn: Callable[[], Any], reps: int, warmup: int, before_each: Callable[[], None] | None = None,
    cuda_graph: bool = False,
) -> Timing:
    """Host wall-clock timing with the same contract as `time_cuda`: for CPU tests of the runner only."""
    for _ in range(warmup):
        if before_each is not None:
            before_each()
        fn()
    samples = []
    for _ in range(reps):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return summarize(samples)


def _l2_flush_buffer(l2_bytes: int) -> torch.Tensor:
    return torch.empty(max(2 * l2_bytes, 64 << 20) // 4, dtype=torch.int32, device="cuda")


def device_l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 50 << 20))


def time_cuda(
    fn: Callable[[], Any], reps: int, warmup: int, before_each: Callable[[], None] | None = None,
    cuda_graph: bool = False, flush_l2: bool = True,
) -> Timing:
    """Time `fn` on the current CUDA stream; `before_each` runs untimed before every call."""
    flush = _l2_flush_buffer(device_l2_bytes()) if flush_l2 else None
    call = fn
    if cuda_graph:
        try:
            call = _graphed(fn, before_each)
        except Exception as exc:  # the caller falls back to eager launches and says so
            torch.cuda.synchronize()
            raise GraphCaptureError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    for _ in range(warmup):
        if before_each is not None:
            before_each()
        call()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if before_each is not None:
            before_each()
        if flush is not None:
            flush.zero_()
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)])


def _graphed(fn: Callable[[], Any], before_each: Callable[[], None] | None) -> Callable[[], Any]:
    """Capture `fn` in a CUDA graph (after a side-stream warm-up, as capture requires); returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            if before_each is not None:
                before_each()
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    if before_each is not None:
        before_each()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
