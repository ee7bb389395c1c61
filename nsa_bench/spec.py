"""SweepSpec (the axes of a sweep) and Point (one configuration of it).

The sweep is the plain product of the axes. Combinations that cannot be run (a stride that does not
divide a block, heads that do not divide) are returned beside the valid points with the reason, so the
runner reports them instead of dropping them silently.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, Sequence

from nsa_bench import doclens
from nsa_kernels.config import NSAConfig

ATTENTION_MODES = ("fwd", "bwd", "fwdbwd", "decode")
# One attention layer of a model: x [B, T, d_model] -> q/k/v projections (NSA: and its gate MLP) ->
# attention -> output projection. Points of other modes carry d_model = 0 (not applicable).
LAYER_MODES = ("layer-fwd", "layer-bwd")
MODES = ATTENTION_MODES + LAYER_MODES
# The NSA paper's model (arXiv 2502.11089, section 4.1 "Pretraining Setup"): 30 layers, hidden
# dimension 2560, 64 heads in 4 GQA groups, Dk = 192, Dv = 128.
PAPER_D_MODEL = 2560
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
    d_model: int = 0  # model width of a layer mode; 0 for attention-only modes
    doc_lens: str = doclens.NONE  # documents packed into each row (nsa_bench.doclens); "none": one sequence a row

    @property
    def is_layer(self) -> bool:
        return self.mode in LAYER_MODES

    @property
    def cfg(self) -> NSAConfig:
        return NSAConfig(self.block_cmp, self.stride_cmp, self.block_slc, self.n_slc, self.window)

    @property
    def packed(self) -> bool:
        """Whether the batch is packed documents (a varlen batch with cu_seqlens)."""
        return self.doc_lens != doclens.NONE

    def documents(self) -> tuple[int, ...]:
        """The sequence lengths of this point: its documents, row after row (dense: B rows of T)."""
        return doclens.documents(self.doc_lens, self.seqlen, self.batch)

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
            + (f" d_model={self.d_model}" if self.is_layer else "")
            + (f" docs={self.doc_lens}" if self.packed else "")
        )

    @classmethod
    def from_label(cls, text: str) -> Point:
        """The point `label()` prints (what progress bars, reports and compare show), read back: the mode, then
        T= B= Hkv= G= D=qk-v l= d= l'= n= w=, the dtype, and d_model= / docs= where they apply. Every field
        must be there once; a ValueError names what is missing or not understood."""
        words = str(text).split()
        if not words or words[0] not in MODES:
            raise ValueError(f"{text.strip()[:80]!r} does not start with a mode ({', '.join(MODES)})")
        fields_of: dict[str, str] = {}
        dtype = ""
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if not sep:
                if word not in DTYPES or dtype:
                    raise ValueError(f"{word[:40]!r}: expected NAME=VALUE or one dtype ({', '.join(DTYPES)})")
                dtype = word
                continue
            if name not in _LABEL_FIELDS or name in fields_of:
                raise ValueError(f"{word[:40]!r}: {'repeated' if name in fields_of else 'unknown'} field "
                                 f"(fields: {', '.join(_LABEL_FIELDS)})")
            fields_of[name] = value
        missing = [name for name in _LABEL_FIELDS if name not in fields_of and name not in ("d_model", "docs")]
        if missing or not dtype:
            raise ValueError(f"the point lacks {', '.join(missing + ([] if dtype else ['its dtype']))}")
        qk, _, v = fields_of["D"].partition("-")
        record: dict[str, object] = {"mode": words[0], "dtype": dtype, "head_dim_qk": qk, "head_dim_v": v or qk,
                                     "doc_lens": fields_of.get("docs", doclens.NONE),
                                     "d_model": fields_of.get("d_model", "0")}
        for name, field in _LABEL_FIELDS.items():
            if field not in record:
                record[field] = fields_of[name]
        for name in (f.name for f in fields(cls)):
            value = str(record[name])
            if name not in _TEXT_FIELDS and not (value.isascii() and value.isdigit()):
                raise ValueError(f"{name}={value[:20]!r} is not a whole number")
        point = cls.from_record(record)
        if point.is_layer and point.d_model < 1:
            raise ValueError(f"{point.mode} needs d_model= (the model width of the layer), got {point.d_model}")
        if not point.is_layer and point.d_model:
            raise ValueError(f"d_model= goes with the layer modes only, not {point.mode}")
        doclens.parse_doc_lens(point.doc_lens)
        return point

    def with_seqlen(self, seqlen: int, batch: int | None = None) -> "Point":
        """The point at another length (and batch); a packed point's mean document length scales with it,
        so a short correctness check sees about as many documents per row as the point itself."""
        docs = doclens.parse_doc_lens(self.doc_lens).scaled(seqlen / self.seqlen).text()
        return replace(self, seqlen=seqlen, batch=self.batch if batch is None else batch, doc_lens=docs)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> Point:
        """The point a CSV row's key cells describe (text or numbers); a row without d_model or doc_lens is an
        attention-only, dense point, as older CSVs are read."""
        values: dict[str, object] = {}
        for field in fields(cls):
            value = record.get(field.name, field.default)
            values[field.name] = str(value) if field.name in _TEXT_FIELDS else int(float(str(value) or 0))
        return cls(**values)


_TEXT_FIELDS = ("mode", "dtype", "doc_lens")
# label() word -> Point field (D= carries both head dims)
_LABEL_FIELDS = {"T": "seqlen", "B": "batch", "Hkv": "kv_heads", "G": "group_size", "D": "head_dim_qk",
                 "l": "block_cmp", "d": "stride_cmp", "l'": "block_slc", "n": "n_slc", "w": "window",
                 "d_model": "d_model", "docs": "doc_lens"}
# the SweepSpec axis each Point field is drawn from (head_dim_qk and head_dim_v come as one pair)
POINT_AXES = {"mode": "modes", "seqlen": "seqlens", "batch": "batches", "kv_heads": "kv_heads",
              "group_size": "group_sizes", "head_dim_qk": "head_dims", "head_dim_v": "head_dims",
              "block_cmp": "block_cmp", "stride_cmp": "stride_cmp", "block_slc": "block_slc", "n_slc": "n_slc",
              "window": "window", "dtype": "dtypes", "d_model": "d_models", "doc_lens": "doc_lens"}


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
    baseline: str = "fa2"  # the CSV's speedup/baseline columns are relative to this one
    more_baselines: tuple[str, ...] = ()  # further baselines (--baseline fa2,cudnn): run, and shown in summaries
    d_models: tuple[int, ...] = (PAPER_D_MODEL,)
    doc_lens: tuple[str, ...] = (doclens.NONE,)  # canonical nsa_bench.doclens values
    q_heads: tuple[int, ...] = ()  # when given, Hkv = Hq // G per point instead of the kv_heads axis
    reps: int = 30
    warmup: int = 5
    seed: int = 0
    gpu: str | None = None
    cuda_graph: bool = True  # decode by CUDA-graph replay (--no-cuda-graph: eager launches)
    check_seqlen: int = 1024

    def __post_init__(self) -> None:
        for name, kinds in (("reps", int), ("warmup", int), ("seed", int), ("check_seqlen", int), ("baseline", str),
                            ("gpu", (str, type(None))), ("cuda_graph", bool)):
            value = getattr(self, name)
            if not isinstance(value, kinds) or (kinds is int and isinstance(value, bool)):
                raise ValueError(f"{name}={value!r} is not a {getattr(kinds, '__name__', 'name')}")
        for name in ("reps", "warmup", "check_seqlen"):
            value = getattr(self, name)
            if value < (0 if name == "warmup" else 1):
                raise ValueError(f"{name}={value} must be {'>= 0' if name == 'warmup' else '>= 1'}")
        for name in ("seqlens", "batches", "kv_heads", "group_sizes", "block_cmp", "stride_cmp",
                     "block_slc", "n_slc", "window", "d_models", "doc_lens"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} is empty")
            if name == "doc_lens":
                for value in values:
                    doclens.parse_doc_lens(value)
                continue
            bad = [v for v in values if v <= 0]
            if bad:
                raise ValueError(f"{name}: {bad[0]} must be positive")
        if any(h <= 0 for h in self.q_heads):
            raise ValueError(f"q_heads: {min(self.q_heads)} must be positive")
        uneven = [(h, g) for h in self.q_heads for g in self.group_sizes if h % g]
        if uneven:  # Hkv = Hq // G must be whole for every combination
            raise ValueError(f"group_sizes: {uneven[0][1]} does not divide q_heads {uneven[0][0]} (Hkv = Hq / G must "
                             "be a whole number of KV heads)")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} unknown (choose from {', '.join(MODES)})")
        for dtype in self.dtypes:
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r} unknown (choose from {', '.join(DTYPES)})")

    @property
    def baselines(self) -> tuple[str, ...]:
        """Every baseline, the CSV's (`baseline`) first."""
        return tuple(dict.fromkeys((self.baseline, *self.more_baselines)))

    @property
    def run_backends(self) -> tuple[str, ...]:
        """The backends a sweep runs: --backend plus any baseline it does not name."""
        return tuple(dict.fromkeys((*self.backends, *self.baselines)))

    def all_points(self) -> list[tuple[Point, str | None]]:
        """Every point of the product in sweep order (mode outermost, seqlen innermost), each with why it is
        not a valid NSA configuration (None when it is)."""
        everything: list[tuple[Point, str | None]] = []
        seen: set[Point] = set()
        for combo in itertools.product(
            self.modes, self.dtypes, self.batches, self.q_heads or self.kv_heads, self.group_sizes, self.head_dims,
            self.block_cmp, self.stride_cmp, self.block_slc, self.n_slc, self.window, self.d_models, self.doc_lens,
            self.seqlens,
        ):
            mode, dtype, batch, heads, group, (dqk, dv), l, d, lp, n, w, width, docs, seqlen = combo
            hkv = heads // group if self.q_heads else heads
            point = Point(mode, seqlen, batch, hkv, group, dqk, dv, l, d, lp, n, w, dtype,
                          width if mode in LAYER_MODES else 0, docs)
            if point in seen:
                continue
            seen.add(point)
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

    @classmethod
    def for_point(cls, point: Point, backends: Sequence[str], like: SweepSpec | None = None) -> SweepSpec:
        """The sweep of exactly `point` on `backends` (and the baselines), measured as `like` is (reps, warmup,
        seed, GPU, CUDA graphs, check length, baselines). Every axis comes from the point (POINT_AXES names
        each field's), so re-running a point can leave none of its values out."""
        like = like or cls()
        axes: dict[str, object] = {axis: (getattr(point, name),) for name, axis in POINT_AXES.items()}
        axes["head_dims"] = ((point.head_dim_qk, point.head_dim_v),)
        axes["d_models"] = (point.d_model,) if point.is_layer else like.d_models  # 0 on attention-only points
        return replace(like, **axes, q_heads=(), backends=tuple(dict.fromkeys(backends)))

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> SweepSpec:
        """A spec.json as a SweepSpec (lists back to tuples); fields it lacks take their defaults."""
        known = {f.name for f in fields(cls)}
        values = {name: _tuples(value) for name, value in record.items() if name in known}
        return cls(**values)


def _tuples(value: object) -> object:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
