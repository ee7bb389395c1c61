"""The CSV row: the interface between measuring and everything after it (plots, reports, compare).

Column names are stable: CI gates and users' scripts read them. A row is one point x backend x
mode x stage; `stage == "total"` is the whole operation, other stages are a backend's breakdown
(e.g. NSA's compression, compressed attention, selection, ...).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Status values a row can carry.
STATUS_OK = "ok"  # measured on a GPU and checked against the reference
STATUS_PREDICTED = "predicted"  # no GPU: cost-model figures only
STATUS_CHECK_FAILED = "check_failed"  # output differs from the reference: not timed
STATUS_OOM = "oom"
STATUS_UNSUPPORTED = "unsupported"  # the backend cannot run this point (shape, missing package)
STATUS_ERROR = "error"  # anything else that went wrong at this point
STATUS_SKIPPED = "skipped"  # not run: it would not fit in the --time-budget (--resume runs it later)
STATUSES = (STATUS_OK, STATUS_PREDICTED, STATUS_CHECK_FAILED, STATUS_OOM, STATUS_UNSUPPORTED, STATUS_ERROR,
            STATUS_SKIPPED)

STAGE_TOTAL = "total"

# Columns that identify a configuration: rows of two runs match on these.
KEY_FIELDS = (
    "mode", "backend", "stage", "seqlen", "batch", "kv_heads", "group_size", "head_dim_qk",
    "head_dim_v", "block_cmp", "stride_cmp", "block_slc", "n_slc", "window", "dtype", "d_model", "doc_lens",
)


@dataclass(frozen=True)
class Row:
    """One CSV record. Measured columns are None (empty in the CSV) on predicted rows."""

    mode: str
    backend: str
    impl: str
    stage: str
    seqlen: int
    batch: int
    kv_heads: int
    group_size: int
    head_dim_qk: int
    head_dim_v: int
    block_cmp: int
    stride_cmp: int
    block_slc: int
    n_slc: int
    window: int
    dtype: str
    ms_median: float | None = None
    ms_p10: float | None = None
    ms_p90: float | None = None
    samples: int | None = None
    tflops: float | None = None
    gbps: float | None = None
    flops: float | None = None
    bytes: float | None = None
    intensity: float | None = None
    predicted_ms: float | None = None
    speedup: float | None = None
    baseline: str = ""
    max_rel_err: float | None = None
    status: str = STATUS_OK
    message: str = ""
    gpu: str = ""
    cuda_graph: bool | None = None  # measured rows only: decode timed by graph replay (empty when nothing was timed)
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    throttled: bool | None = None  # measured rows only (empty when nothing was timed)
    throttle_reasons: str = ""
    d_model: int = 0  # model width of a layer mode (layer-fwd, layer-bwd); 0 for attention-only modes
    doc_lens: str = "none"  # documents packed into each row (nsa_bench.doclens); "none": one dense sequence a row
    mem_bytes: float | None = None  # bytes resident on the device for this point and backend (nsa_bench.memory)
    host: str = ""  # the machine that ran (or predicted) the row
    device: str = ""  # the worker's device (cuda:3, cpu0) when points ran in worker processes, else ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Row))
