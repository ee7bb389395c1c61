"""SweepSpec (the axes of a sweep) and Point (one configuration of it).

The sweep is the plain product of the axes. Combinations that cannot be run (a stride that does not
divide a block, heads that do not divide) are returned beside the valid points with the reason, so the
runner reports them instead of dropping them silently.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields, replace

from nsa_bench.config import NSAConfig

MODES = ("fwd", "bwd", "fwdbwd", "decode")
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Point:
    """One configuration x mode: what a CSV row's key columns describe."""

    mode: str
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

    @property
    def cfg(self) -> NSAConfig:
        return NSAConfig(self.block_cmp, self.stride_cmp, self.block_slc, self.n_slc, self.window)

    @property
    def q_heads(self) -> int:
        return self.kv_heads * self.group_size

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "float32" else 2

    def label(self) -> str:
        return (
            f"{self.mode} T={self.seqlen} B={self.batch} Hkv={self.kv_heads} G={self.group_size} "
            f"D={self.head_dim_qk}-{self.head_dim_v} l={self.block_cmp} d={self.stride_cmp} "
            f"l'={self.block_slc} n={self.n_slc} w={self.window} {self.dtype}"
        )

    def with_seqlen(self, seqlen: int, batch: int | None = None) -> "Point":
        return replace(self, seqlen=seqlen, batch=self.batch if batch is None else batch)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SweepSpec:
    """The axes of a sweep plus how to measure it. Defaults: the paper's configuration (PAPER.md)."""

    seqlens: tuple[int, ...] = (8192, 16384, 32768, 65536)
    batches: tuple[int, ...] = (1,)
    kv_heads: tuple[int, ...] = (4,)
    group_sizes: tuple[int, ...] = (16,)
    head_dims: tuple[tuple[int, int], ...] = ((192, 128),)
    block_cmp: tuple[int, ...] = (32,)
    stride_cmp: tuple[int, ...] = (16,)
    block_slc: tuple[int, ...] = (64,)
    n_slc: tuple[int, ...] = (16,)
    window: tuple[int, ...] = (512,)
    modes: tuple[str, ...] = ("fwd", "bwd", "decode")
    dtypes: tuple[str, ...] = ("bfloat16",)
    backends: tuple[str, ...] = ("fa2", "nsa-triton")
    baseline: str = "fa2"
    reps: int = 30
    warmup: int = 5
    seed: int = 0
    gpu: str | None = None
    cuda_graph: bool = False
    check_seqlen: int = 1024

    def __post_init__(self) -> None:
        for name in ("reps", "warmup", "check_seqlen"):
            value = getattr(self, name)
            if value < (0 if name == "warmup" else 1):
                raise ValueError(f"{name}={value} must be {'>= 0' if name == 'warmup' else '>= 1'}")
        for name in ("seqlens", "batches", "kv_heads", "group_sizes", "block_cmp", "stride_cmp",
                     "block_slc", "n_slc", "window"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} is empty")
            bad = [v for v in values if v <= 0]
            if bad:
                raise ValueError(f"{name}: {bad[0]} must be positive")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} unknown (choose from {', '.join(MODES)})")
        for dtype in self.dtypes:
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r} unknown (choose from {', '.join(DTYPES)})")

    def all_points(self) -> list[tuple[Point, str | None]]:
        """Every point of the product in sweep order (mode outermost, seqlen innermost), each with why it is
        not a valid NSA configuration (None when it is)."""
        everything: list[tuple[Point, str | None]] = []
        for combo in itertools.product(
            self.modes, self.dtypes, self.batches, self.kv_heads, self.group_sizes, self.head_dims,
            self.block_cmp, self.stride_cmp, self.block_slc, self.n_slc, self.window, self.seqlens,
        ):
            mode, dtype, batch, hkv, group, (dqk, dv), l, d, lp, n, w, seqlen = combo
            point = Point(mode, seqlen, batch, hkv, group, dqk, dv, l, d, lp, n, w, dtype)
            try:
                point.cfg
            except ValueError as exc:
                everything.append((point, str(exc).removeprefix("NSAConfig.")))
                continue
            everything.append((point, None))
        return everything

    def points(self) -> tuple[list[Point], list[tuple[dict[str, object], str]]]:
        """(valid points, [(combination, why it is invalid)]) in sweep order: mode outermost, seqlen innermost."""
        everything = self.all_points()
        return ([p for p, why in everything if why is None],
                [(p.as_dict(), why) for p, why in everything if why is not None])

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
