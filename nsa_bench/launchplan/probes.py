"""Probes: the least host code that reaches each kernel's launches, the way the benchmark's workloads call
the kernel wrappers (kernels/nsa.py's branches, decode, the dense baseline).

A probe runs at a `ProbeShape` in two ways:

- recorded on `meta` tensors in a TRITON_INTERPRET=0 worker (`compile_entry`, through the compile check's
  recorder): which launches, code paths and tiles it makes with the GPU's host sizes;
- run for real (the CPU interpreter, or a GPU) with chosen configs pinned (`check`): every output against
  the float64 reference (`nsa_bench.reference`), as ||out - ref|| / ||ref||, and a selection by
  NSA_SPEC's validity rule.

Shapes are small: T not a multiple of any block, Dk=48 and Dv=32 (split and padded as 192/128 are), n=4,
and the group G of the launches to reach (kernels without a G constexpr run at G=2).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from nsa_bench import reference, selection
from nsa_bench.compilecheck import entries
from nsa_bench.compilecheck.case import PAPER_CFG, Case
from nsa_kernels import compressed, decode, flash, selected, varlen
from nsa_kernels.config import NSAConfig
from nsa_kernels.gated_sum import gated_sum_bwd, gated_sum_fwd
from nsa_kernels.packing import Packing

TEST_DK, TEST_DV, TEST_N = 48, 32, 4
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}  # NSA_SPEC, the CPU interpreter's
_PACKED = "/packed"


@dataclass(frozen=True)
class ProbeShape:
    """Where a probe runs: its sequence length, head group and heads, head dims, block config, and whether
    the batch is packed (one row of documents of lengths 1, l - 1, l' - 1, then halves of what is left)."""

    probe: str
    seqlen: int
    group: int
    kv_heads: int = 1
    batch: int = 1
    dk: int = TEST_DK
    dv: int = TEST_DV
    cfg: NSAConfig = dataclasses.replace(PAPER_CFG, n_slc=TEST_N)
    packed: bool = False

    @property
    def label(self) -> str:
        c = self.cfg
        extra = (" packed" if self.packed else "") + (f" B{self.batch}" if self.batch != 1 else "")
        extra += f" D{self.dk}-{self.dv}" if (self.dk, self.dv) != (TEST_DK, TEST_DV) else ""
        blocks = "" if c == ProbeShape.cfg else f" l{c.block_cmp}d{c.stride_cmp}ls{c.block_slc}n{c.n_slc}w{c.window}"
        return f"{self.probe} G{self.group} T{self.seqlen}{extra}{blocks}"

    def case(self, dtype: str = "float32") -> Case:
        """The compile case that records this probe (its entry names probe and packing)."""
        entry = f"{__name__}:{self.probe}{_PACKED if self.packed else ''}"
        return Case(entry, self.batch, self.seqlen, self.kv_heads, self.group, self.dk, self.dv, dtype, self.cfg)

    @staticmethod
    def of_case(case: Case) -> ProbeShape:
        name = case.entry.split(":", 1)[1]
        probe, packed = name.removesuffix(_PACKED), name.endswith(_PACKED)
        return ProbeShape(probe, case.seqlen, case.group, case.kv_heads, case.batch, case.dk, case.dv, case.cfg, packed)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cfg": dataclasses.asdict(self.cfg)}

    @staticmethod
    def from_dict(raw: Mapping[str, Any]) -> ProbeShape:
        return ProbeShape(**{**raw, "cfg": NSAConfig(**raw["cfg"])})


def doc_lengths(seqlen: int, cfg: NSAConfig) -> list[int]:
    """A packed probe's documents: the compile check's (1, l - 1 and l' - 1 tokens, then halves), none empty."""
    return [n for n in entries.doc_lengths(seqlen, cfg) if n > 0]


# ------------------------------------------------------------------ inputs
@dataclass
class ProbeInputs:
    """Every tensor a probe may take, at its shape, in one dtype on one device (meta: shapes only).
    The float64 copies and the reference's selection are made lazily (`ref`), never on meta."""

    shape: ProbeShape
    dtype: torch.dtype
    device: torch.device
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: torch.Tensor
    do: torch.Tensor
    acc: torch.Tensor  # an fp32 dq already summed by earlier branches (NSA's dq chain)
    out0: torch.Tensor  # what a gated-accumulate launch adds onto
    cu: torch.Tensor | None  # packed: int32 cu_seqlens on the CPU (the wrappers read lengths on the host)
    packing: Packing | None
    k_cmp: torch.Tensor
    v_cmp: torch.Tensor
    block_idx: torch.Tensor
    decode: tuple[torch.Tensor, ...]  # q1 [B,Hq,Dk], gates1 [B,Hq,3], cache_seqlens [B] int32
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.shape.dk ** -0.5

    def f64(self, name: str) -> torch.Tensor:
        return getattr(self, name).detach().to(torch.float64)


def make_inputs(shape: ProbeShape, dtype: str = "float32", device: str | torch.device = "cpu",
                seed: int = 0) -> ProbeInputs:
    """Seeded random inputs (never zeros); on `meta`, empty tensors of the same shapes."""
    dt, dev, cfg = TORCH_DTYPES[dtype], torch.device(device), shape.cfg
    b, t, hkv = shape.batch, shape.seqlen, shape.kv_heads
    hq = hkv * shape.group
    cu = None
    if shape.packed:
        if b != 1:
            raise ValueError(f"{shape.label}: a packed probe has batch 1")
        cu = varlen.cu_seqlens_of(doc_lengths(t, cfg))
    packing = None if cu is None else Packing.of(cu, t, 1, dev, cfg.block_cmp, cfg.stride_cmp, cfg.block_slc)
    tc = cfg.num_cmp_blocks(t) if cu is None else packing.num_cmp_blocks(cfg.block_cmp, cfg.stride_cmp)
    meta = dev.type == "meta"
    gen = torch.Generator().manual_seed(seed)

    def rand(*size: int, dtype: torch.dtype = dt, kind: str = "randn") -> torch.Tensor:
        if meta:
            return torch.empty(*size, dtype=dtype, device=dev)
        x = torch.rand(*size, generator=gen) if kind == "rand" else torch.randn(*size, generator=gen)
        return x.to(dtype=dtype, device=dev)

    q, k, v = rand(b, t, hq, shape.dk), rand(b, t, hkv, shape.dk), rand(b, t, hkv, shape.dv)
    gates = rand(b, t, hq, 3, kind="rand")
    do, out0 = rand(b, t, hq, shape.dv), rand(b, t, hq, shape.dv)
    acc = rand(b, t, hq, shape.dk, dtype=torch.float32)
    q1, g1 = rand(b, hq, shape.dk), rand(b, hq, 3, kind="rand")
    lengths = [max(1, t - 37 * i) for i in range(b)]  # every sequence another length
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=dev) if not meta else torch.empty(b, dtype=torch.int32,
                                                                                                device=dev)
    inp = ProbeInputs(shape, dt, dev, q, k, v, gates, do, acc, out0, cu, packing,
                      torch.empty(b, tc, hkv, shape.dk, dtype=dt, device=dev),
                      torch.empty(b, tc, hkv, shape.dv, dtype=dt, device=dev),
                      torch.empty(b, t, hkv, cfg.n_slc, dtype=torch.int32, device=dev), (q1, g1, seqlens))
    if not meta and shape.probe not in _CACHE_PROBES:  # the reference's compressed K/V and selection, shared
        k_cmp, v_cmp = reference.compress_kv(inp.f64("k"), inp.f64("v"), cfg, cu)
        inp.k_cmp, inp.v_cmp = k_cmp.to(dt), v_cmp.to(dt)
        if shape.probe in _SELECTING:
            inp.block_idx = reference.select_blocks(inp.f64("q"), k_cmp, cfg, cu_seqlens=cu).to(device=dev)
    return inp


_CACHE_PROBES = ("decode", "dense_decode")  # they take k and v as caches and compress them themselves
_SELECTING = ("slc_fwd", "slc_bwd")  # they attend the reference's selection


# ------------------------------------------------------------------ float64 log-sum-exps (the kernels' lse)
def _positions(inp: ProbeInputs) -> torch.Tensor:
    """Each row's position within its own sequence [T]."""
    t = inp.shape.seqlen
    rows = torch.arange(t, device=inp.device)
    if inp.cu is None:
        return rows
    starts = inp.cu.to(device=inp.device, dtype=torch.int64)
    return rows - starts[torch.searchsorted(starts, rows, right=True) - 1]


def _sequence_ids(inp: ProbeInputs, t: int) -> torch.Tensor:
    rows = torch.arange(t, device=inp.device)
    if inp.cu is None:
        return torch.zeros_like(rows)
    return torch.searchsorted(inp.cu.to(device=inp.device, dtype=torch.int64), rows, right=True) - 1


def _lse(q: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor, scale: float, empty: float) -> torch.Tensor:
    """float64 log-sum-exp [B,T,Hq] of scale * q . key over the allowed keys ([B or 1, T, Hkv or 1, S]);
    `empty` where a row allows none (the kernels' convention: +inf compressed, -inf selected)."""
    b, t, hq, _ = q.shape
    hkv, group = keys.shape[2], hq // keys.shape[2]
    allowed = allowed.expand(b, t, hkv, keys.shape[1])
    logits = torch.einsum("bthgd,bshd->bthgs", q.reshape(b, t, hkv, group, -1), keys) * scale
    lse = torch.logsumexp(logits.masked_fill(~allowed[:, :, :, None, :], float("-inf")), dim=-1)
    seen = allowed.any(-1)[..., None].expand(b, t, hkv, group)
    return torch.where(seen, lse, torch.full_like(lse, empty)).reshape(b, t, hq)


def _cmp_lse(inp: ProbeInputs) -> torch.Tensor:
    cfg, pos = inp.shape.cfg, _positions(inp)
    tc = inp.k_cmp.shape[1]
    if inp.cu is None:
        ends = torch.arange(tc, device=inp.device) * cfg.stride_cmp + cfg.block_cmp - 1
        allowed = ends[None, :] <= pos[:, None]
    else:
        counts = inp.packing.cmp_counts(cfg.block_cmp, cfg.stride_cmp)
        seq_of_block = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(inp.device)
        local = torch.arange(tc, device=inp.device) - torch.tensor([0, *counts], device=inp.device).cumsum(0)[seq_of_block]
        ends = local * cfg.stride_cmp + cfg.block_cmp - 1
        allowed = (ends[None, :] <= pos[:, None]) & (seq_of_block[None, :] == _sequence_ids(inp, inp.shape.seqlen)[:, None])
    return _lse(inp.f64("q"), inp.f64("k_cmp"), allowed[None, :, None, :], inp.scale, float("inf"))


def _slc_lse(inp: ProbeInputs) -> torch.Tensor:
    cfg, pos, t = inp.shape.cfg, _positions(inp), inp.shape.seqlen
    seq = _sequence_ids(inp, t)
    key_pos = pos  # keys are the same rows: their positions and sequences
    idx = inp.block_idx.long()  # [B, T, Hkv, n], block numbers local to the row's sequence
    block_of_key = key_pos // cfg.block_slc
    picked = (idx[..., None] == block_of_key[None, None, None, None, :]) & (idx[..., None] >= 0)
    chosen = picked.any(dim=3)  # [B, T, Hkv, S]
    causal = (key_pos[None, :] <= pos[:, None]) & (seq[None, :] == seq[:, None])
    return _lse(inp.f64("q"), inp.f64("k"), chosen & causal[None, :, None, :], inp.scale, float("-inf"))


def _win_lse(inp: ProbeInputs, window: int | None) -> torch.Tensor:
    pos, t = _positions(inp), inp.shape.seqlen
    seq = _sequence_ids(inp, t)
    allowed = (pos[None, :] <= pos[:, None]) & (seq[None, :] == seq[:, None])
    if window is not None:
        allowed &= pos[None, :] > pos[:, None] - window
    return _lse(inp.f64("q"), inp.f64("k"), allowed[None, :, None, :], inp.scale, float("-inf"))


# ------------------------------------------------------------------ the probes
Outputs = dict[str, torch.Tensor]
Expected = dict[str, Any]  # a float64 tensor, or for a selection its violation (None: valid)


@dataclass(frozen=True)
class Probe:
    """One probe: what it launches (`run`), what the float64 reference says (`expect`, given the kernels'
    outputs where the reference needs them, e.g. a selection), which kernels it tests, and which of them
    each output depends on (a failure names those, with the configs pinned)."""

    name: str
    kernels: tuple[str, ...]
    run: Callable[[ProbeInputs], Outputs]
    expect: Callable[[ProbeInputs, Outputs], Expected]
    made_by: Mapping[str, tuple[str, ...]]
    group_free: bool = False  # its kernels take no G constexpr: run at G=2 whatever the plan's G


def _cached(inp: ProbeInputs, name: str, make: Callable[[], Any]) -> Any:
    if name not in inp.cache:
        inp.cache[name] = make()
    return inp.cache[name]


def _grads(fn: Callable[..., torch.Tensor], inp: ProbeInputs, names: tuple[str, ...], grad: torch.Tensor
           ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn's float64 output and the gradients of `names` for the upstream gradient `grad`."""
    leaves = [inp.f64(n).requires_grad_(True) for n in names]
    out = fn(*leaves)
    out.backward(grad.to(torch.float64))
    return out.detach(), [x.grad for x in leaves]


# compression (section 1)
def _run_compress(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    k_cmp = compressed.compress_fwd(inp.k, cfg.block_cmp, cfg.stride_cmp, packing=inp.packing)
    dk = compressed.compress_bwd(inp.k_cmp, inp.shape.seqlen, cfg.block_cmp, cfg.stride_cmp, packing=inp.packing)
    return {"k_cmp": k_cmp, "dk": dk}


def _expect_compress(inp: ProbeInputs, got: Outputs) -> Expected:
    cfg = inp.shape.cfg
    out, (dk,) = _grads(lambda k: reference.compress_kv(k, k, cfg, inp.cu)[0], inp, ("k",), inp.k_cmp)
    return {"k_cmp": out, "dk": dk}


# compressed attention forward (section 2): the training forward, NSA's gated inference forward, and the
# lse-only pass select_blocks makes when it has no lse
def _run_cmp_fwd(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    o, lse = compressed.compressed_fwd(inp.q, inp.k_cmp, inp.v_cmp, cfg, inp.scale, packing=inp.packing)
    out = torch.empty_like(inp.out0)
    compressed.compressed_fwd(inp.q, inp.k_cmp, inp.v_cmp, cfg, inp.scale, out=out, gates=inp.gates, gate_index=0,
                              packing=inp.packing)
    lse_only = compressed.compressed_lse(inp.q, inp.k_cmp, cfg, inp.scale, packing=inp.packing)
    return {"o": o, "lse": lse, "out": out, "lse_only": lse_only}


def _o_cmp(inp: ProbeInputs) -> torch.Tensor:
    return _cached(inp, "o_cmp", lambda: reference.compressed_attention(
        inp.f64("q"), inp.f64("k_cmp"), inp.f64("v_cmp"), inp.shape.cfg, inp.scale, inp.cu))


def _finite_lse(lse: torch.Tensor) -> torch.Tensor:
    """lse compared where finite (rows with no key hold +-inf by convention, checked for equality apart)."""
    return torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _expect_cmp_fwd(inp: ProbeInputs, got: Outputs) -> Expected:
    o, lse = _o_cmp(inp), _cached(inp, "cmp_lse", lambda: _cmp_lse(inp))
    return {"o": o, "lse": lse, "out": inp.f64("gates")[..., 0:1] * o, "lse_only": lse}


# scoring and selection (section 3): the top-n kernel, given the reference's lse (the lse-only pass is cmp_fwd's)
def _run_select(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    lse = _cached(inp, "cmp_lse", lambda: _cmp_lse(inp)).to(torch.float32)
    return {"block_idx": compressed.select_blocks(inp.q, inp.k_cmp, cfg, inp.scale, lse=lse, packing=inp.packing)}


def _expect_select(inp: ProbeInputs, got: Outputs) -> Expected:
    cfg = inp.shape.cfg
    scores = reference.block_scores(inp.f64("q"), inp.f64("k_cmp"), cfg, cu_seqlens=inp.cu)
    dtype = str(inp.dtype).removeprefix("torch.")
    return {"block_idx": selection.violation(got["block_idx"], scores, cfg, selection.SCORE_TOLERANCE[dtype], inp.cu)}


# compressed attention backward, into NSA's fp32 dq accumulator
def _run_cmp_bwd(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    o, lse = _cached(inp, "cmp_fwd", lambda: compressed.compressed_fwd(inp.q, inp.k_cmp, inp.v_cmp, cfg, inp.scale,
                                                                         packing=inp.packing))
    dq = torch.empty_like(inp.acc)
    _, dk_cmp, dv_cmp = compressed.compressed_bwd(inp.q, inp.k_cmp, inp.v_cmp, o, lse, inp.do, cfg, inp.scale,
                                                  dq_out=dq, packing=inp.packing)
    return {"dq": dq, "dk_cmp": dk_cmp, "dv_cmp": dv_cmp}


def _expect_cmp_bwd(inp: ProbeInputs, got: Outputs) -> Expected:
    cfg = inp.shape.cfg
    _, (dq, dk, dv) = _grads(lambda q, k, v: reference.compressed_attention(q, k, v, cfg, inp.scale, inp.cu),
                             inp, ("q", "k_cmp", "v_cmp"), inp.do)
    return {"dq": dq, "dk_cmp": dk, "dv_cmp": dv}


# selected attention (section 4), the reference's selection shared
def _run_slc_fwd(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    o, lse = selected.selected_fwd(inp.q, inp.k, inp.v, inp.block_idx, cfg.block_slc, inp.scale, packing=inp.packing)
    out = inp.out0.clone()
    selected.selected_fwd(inp.q, inp.k, inp.v, inp.block_idx, cfg.block_slc, inp.scale, out=out, gates=inp.gates,
                          gate_index=1, accumulate=True, packing=inp.packing)
    return {"o": o, "lse": lse, "out": out}


def _o_slc(inp: ProbeInputs) -> torch.Tensor:
    return _cached(inp, "o_slc", lambda: reference.selected_attention(
        inp.f64("q"), inp.f64("k"), inp.f64("v"), inp.block_idx, inp.shape.cfg, inp.scale, inp.cu))


def _expect_slc_fwd(inp: ProbeInputs, got: Outputs) -> Expected:
    o = _o_slc(inp)
    return {"o": o, "lse": _slc_lse(inp), "out": inp.f64("out0") + inp.f64("gates")[..., 1:2] * o}


def _run_slc_bwd(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    o, lse = _cached(inp, "slc_fwd", lambda: selected.selected_fwd(inp.q, inp.k, inp.v, inp.block_idx, cfg.block_slc,
                                                                     inp.scale, packing=inp.packing))
    dq = inp.acc.clone()  # NSA passes its fp32 sum as both dq_out and dq_add
    _, dk, dv = selected.selected_bwd(inp.q, inp.k, inp.v, o, lse, inp.do, inp.block_idx, cfg.block_slc, inp.scale,
                                      dq_out=dq, dq_add=dq, packing=inp.packing)
    return {"dq": dq, "dk": dk, "dv": dv}


def _expect_slc_bwd(inp: ProbeInputs, got: Outputs) -> Expected:
    cfg = inp.shape.cfg
    _, (dq, dk, dv) = _grads(lambda q, k, v: reference.selected_attention(q, k, v, inp.block_idx, cfg, inp.scale,
                                                                            inp.cu), inp, ("q", "k", "v"), inp.do)
    return {"dq": inp.f64("acc") + dq, "dk": dk, "dv": dv}


# sliding window (section 5) and the dense causal baseline: flash.py
def _flash_fwd(inp: ProbeInputs, window: int | None) -> Outputs:
    o, lse = flash.attention_fwd(inp.q, inp.k, inp.v, inp.scale, window, packing=inp.packing)
    out = inp.out0.clone()
    flash.attention_fwd(inp.q, inp.k, inp.v, inp.scale, window, out=out, gates=inp.gates, gate_index=2,
                        accumulate=True, packing=inp.packing)
    return {"o": o, "lse": lse, "out": out}


def _flash_reference(inp: ProbeInputs, window: int | None) -> Callable[..., torch.Tensor]:
    if window is None:
        return lambda q, k, v: reference.causal_attention(q, k, v, inp.scale, inp.cu)
    return lambda q, k, v: reference.window_attention(q, k, v, window, inp.scale, inp.cu)


def _expect_flash_fwd(inp: ProbeInputs, window: int | None) -> Expected:
    o = _flash_reference(inp, window)(inp.f64("q"), inp.f64("k"), inp.f64("v"))
    return {"o": o, "lse": _win_lse(inp, window), "out": inp.f64("out0") + inp.f64("gates")[..., 2:3] * o}


def _flash_bwd(inp: ProbeInputs, window: int | None) -> Outputs:
    o, lse = _cached(inp, f"flash_fwd{window}", lambda: flash.attention_fwd(inp.q, inp.k, inp.v, inp.scale, window,
                                                                             packing=inp.packing))
    add = inp.acc if window is not None else None  # the window branch ends NSA's dq chain
    dq, dk, dv = flash.attention_bwd(inp.q, inp.k, inp.v, o, lse, inp.do, inp.scale, window, dq_add=add,
                                     packing=inp.packing)
    return {"dq": dq, "dk": dk, "dv": dv}


def _expect_flash_bwd(inp: ProbeInputs, window: int | None) -> Expected:
    _, (dq, dk, dv) = _grads(_flash_reference(inp, window), inp, ("q", "k", "v"), inp.do)
    return {"dq": dq + inp.f64("acc") if window is not None else dq, "dk": dk, "dv": dv}


def _window(inp: ProbeInputs) -> int:
    return inp.shape.cfg.window


# the gated sum (section 6)
def _run_gated_sum(inp: ProbeInputs) -> Outputs:
    branches = (inp.out0, inp.do, inp.q[..., :inp.shape.dv].contiguous())
    out = gated_sum_fwd(inp.gates, *branches)
    d_gates, *d_branches = gated_sum_bwd(inp.gates, *branches, inp.do)
    return {"out": out, "d_gates": d_gates, **{f"d_o{i}": d for i, d in enumerate(d_branches)}}


def _expect_gated_sum(inp: ProbeInputs, got: Outputs) -> Expected:
    g, do = inp.f64("gates"), inp.f64("do")
    branches = (inp.f64("out0"), do, inp.f64("q")[..., :inp.shape.dv])
    out = sum(g[..., i:i + 1] * o for i, o in enumerate(branches))
    d_gates = torch.stack([(do * o).sum(-1) for o in branches], dim=-1)
    return {"out": out, "d_gates": d_gates, **{f"d_o{i}": g[..., i:i + 1] * do for i in range(3)}}


# decode (section 7), as the benchmark's nsa-triton decode: a compressed cache made by compress_kv
def _run_decode(inp: ProbeInputs) -> Outputs:
    cfg = inp.shape.cfg
    q1, g1, seqlens = inp.decode
    k_cmp = compressed.compress_fwd(inp.k, cfg.block_cmp, cfg.stride_cmp)
    v_cmp = compressed.compress_fwd(inp.v, cfg.block_cmp, cfg.stride_cmp)
    out, block_idx = decode.nsa_decode_with_selection(q1, inp.k, inp.v, g1, seqlens, cfg, k_cmp_cache=k_cmp,
                                                      v_cmp_cache=v_cmp)
    return {"out": out, "block_idx": block_idx}


def _expect_decode(inp: ProbeInputs, got: Outputs) -> Expected:
    """Each sequence's output is its decode row over the blocks the kernel chose (a legitimate near-tie cannot
    fail it), and that choice must be valid (NSA_SPEC) against the float64 scores of the row."""
    cfg = inp.shape.cfg
    q1, g1, seqlens = (x.cpu() for x in inp.decode)
    k, v, idx = inp.f64("k").cpu(), inp.f64("v").cpu(), got["block_idx"].cpu()
    out = reference.nsa_decode(q1.double(), k, v, g1.double(), seqlens, cfg, inp.scale, block_idx=idx)
    tolerance = selection.SCORE_TOLERANCE[str(inp.dtype).removeprefix("torch.")]
    problems = [selection.violation(idx[b][None, None], scores[None, None], cfg, tolerance,
                                    positions=torch.tensor([length - 1]))
                for b, (length, scores) in enumerate(zip(seqlens.tolist(),
                                                         reference.decode_block_scores(q1, k, seqlens, cfg, inp.scale)))]
    return {"out": out, "block_idx": next((p for p in problems if p), None)}


def _run_dense_decode(inp: ProbeInputs) -> Outputs:
    q1, _, seqlens = inp.decode
    return {"out": flash.flash_attention_decode(q1, inp.k, inp.v, seqlens)}


def _expect_dense_decode(inp: ProbeInputs, got: Outputs) -> Expected:
    q1, _, seqlens = inp.decode
    outs = []
    for b, length in enumerate(seqlens.tolist()):
        q = torch.zeros(1, length, *q1.shape[1:], dtype=torch.float64)
        q[0, -1] = q1[b].double()
        k, v = inp.f64("k")[b:b + 1, :length], inp.f64("v")[b:b + 1, :length]
        outs.append(reference.causal_attention(q, k, v, inp.scale)[0, -1])
    return {"out": torch.stack(outs)}


_SLC_FWD = ("selected._selected_fwd_tile_kernel", "selected_small_g._block_outer_fwd_kernel",
            "selected_small_g._merge_kernel")
_SLC_BWD = ("selected._selected_dq_tile_kernel", "selected._selected_dkdv_body", "_selected_tiles._delta_kernel",
            "_selected_tiles._dkdv_reduce_kernel", "selected_small_g._block_outer_bwd_body",
            "selected_small_g._dq_reduce_kernel")
_CMP_BWD = ("compressed._cmp_bwd_dq_kernel", "compressed._cmp_bwd_dkv_chunk_kernel", "compressed._cmp_dkv_reduce_kernel",
            "compressed._delta_kernel")
_DECODE = ("decode._cmp_partial_kernel", "decode._score_kernel", "decode._slc_win_rank_kernel", "decode._combine_kernel")
_WIN_BWD = ("flash._bwd_preprocess_kernel", "flash._bwd_dkdv_kernel", "flash._bwd_dq_kernel")

PROBES: dict[str, Probe] = {p.name: p for p in (
    Probe("compress", ("compressed._compress_fwd_kernel", "compressed._compress_bwd_kernel"), _run_compress,
          _expect_compress, {"k_cmp": ("compressed._compress_fwd_kernel",), "dk": ("compressed._compress_bwd_kernel",)},
          group_free=True),
    Probe("cmp_fwd", ("compressed._cmp_fwd_kernel",), _run_cmp_fwd, _expect_cmp_fwd,
          {n: ("compressed._cmp_fwd_kernel",) for n in ("o", "lse", "out", "lse_only")}),
    Probe("select", ("compressed._select_kernel",), _run_select, _expect_select,
          {"block_idx": ("compressed._select_kernel",)}),
    Probe("cmp_bwd", _CMP_BWD, _run_cmp_bwd, _expect_cmp_bwd,
          {"dq": ("compressed._cmp_bwd_dq_kernel", "compressed._delta_kernel"),
           "dk_cmp": _CMP_BWD[1:], "dv_cmp": _CMP_BWD[1:]}),
    Probe("slc_fwd", _SLC_FWD, _run_slc_fwd, _expect_slc_fwd, {"o": _SLC_FWD, "lse": _SLC_FWD, "out": _SLC_FWD}),
    Probe("slc_bwd", _SLC_BWD, _run_slc_bwd, _expect_slc_bwd,
          {"dq": ("selected._selected_dq_tile_kernel", "_selected_tiles._delta_kernel",
                  "selected_small_g._block_outer_bwd_body", "selected_small_g._dq_reduce_kernel"),
           "dk": _SLC_BWD[1:5], "dv": _SLC_BWD[1:5]}),
    Probe("win_fwd", ("flash._fwd_kernel",), lambda inp: _flash_fwd(inp, _window(inp)),
          lambda inp, got: _expect_flash_fwd(inp, _window(inp)),
          {"o": ("flash._fwd_kernel",), "lse": ("flash._fwd_kernel",), "out": ("flash._fwd_kernel",)}, group_free=True),
    Probe("win_bwd", _WIN_BWD, lambda inp: _flash_bwd(inp, _window(inp)),
          lambda inp, got: _expect_flash_bwd(inp, _window(inp)),
          {"dq": ("flash._bwd_preprocess_kernel", "flash._bwd_dq_kernel"),
           "dk": ("flash._bwd_preprocess_kernel", "flash._bwd_dkdv_kernel"),
           "dv": ("flash._bwd_preprocess_kernel", "flash._bwd_dkdv_kernel")}, group_free=True),
    Probe("gated_sum", ("gated_sum._gated_sum_fwd_kernel", "gated_sum._gated_sum_bwd_kernel"), _run_gated_sum,
          _expect_gated_sum, {"out": ("gated_sum._gated_sum_fwd_kernel",),
                              **{n: ("gated_sum._gated_sum_bwd_kernel",) for n in ("d_gates", "d_o0", "d_o1", "d_o2")}},
          group_free=True),
    Probe("decode", _DECODE, _run_decode, _expect_decode, {"out": _DECODE, "block_idx": _DECODE[:3]}),
    Probe("dense_fwd", ("flash._fwd_kernel",), lambda inp: _flash_fwd(inp, None),
          lambda inp, got: _expect_flash_fwd(inp, None),
          {"o": ("flash._fwd_kernel",), "lse": ("flash._fwd_kernel",), "out": ("flash._fwd_kernel",)}, group_free=True),
    Probe("dense_bwd", _WIN_BWD, lambda inp: _flash_bwd(inp, None), lambda inp, got: _expect_flash_bwd(inp, None),
          {"dq": ("flash._bwd_preprocess_kernel", "flash._bwd_dq_kernel"),
           "dk": ("flash._bwd_preprocess_kernel", "flash._bwd_dkdv_kernel"),
           "dv": ("flash._bwd_preprocess_kernel", "flash._bwd_dkdv_kernel")}, group_free=True),
    Probe("dense_decode", ("flash._decode_split_kernel", "flash._decode_combine_kernel"), _run_dense_decode,
          _expect_dense_decode, {"out": ("flash._decode_split_kernel", "flash._decode_combine_kernel")}),
)}


# ------------------------------------------------------------------ recording (the compile check's entry)
def compile_entry(name: str) -> Callable[[Case], None]:
    """Host code of probe `name` ("PROBE" or "PROBE/packed") for the compile check's recorder: the probe's
    launches on meta tensors at the case's shape."""
    probe = PROBES[name.removesuffix(_PACKED)]

    def host(case: Case) -> None:
        probe.run(make_inputs(ProbeShape.of_case(case), case.dtype, "meta"))

    return host


# ------------------------------------------------------------------ checking
@dataclass(frozen=True)
class OutputCheck:
    """One output of a probe run: its relative error (or, for a selection, whether it is valid)."""

    output: str
    error: float  # ||out - ref|| / ||ref||; 0 or inf for a selection
    tolerance: float
    made_by: tuple[str, ...]
    problem: str | None = None  # what is wrong, when something is

    @property
    def ok(self) -> bool:
        return self.problem is None


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are 0)."""
    out, ref = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    if out.shape != ref.shape:
        return float("inf")
    diff = (out - ref).norm().item()
    return diff / max(ref.norm().item(), 1e-30) if diff else 0.0


def _check_output(name: str, got: torch.Tensor, want: Any, tol: float, made_by: tuple[str, ...]) -> OutputCheck:
    if want is None or isinstance(want, str):  # a selection's violation
        return OutputCheck(name, 0.0 if want is None else float("inf"), tol, made_by, want)
    got64 = got.detach().to(torch.float64).cpu()
    want = want.cpu()
    if name == "lse" or name.startswith("lse"):
        same_inf = torch.equal(torch.isinf(got64) & (got64 > 0), torch.isinf(want) & (want > 0)) and torch.equal(
            torch.isinf(got64) & (got64 < 0), torch.isinf(want) & (want < 0))
        if not same_inf:
            return OutputCheck(name, float("inf"), tol, made_by, "rows with no key differ from the reference (+-inf)")
        got64, want = _finite_lse(got64), _finite_lse(want)
    if not torch.isfinite(got64).all():
        return OutputCheck(name, float("inf"), tol, made_by, "non-finite values")
    error = relative_error(got64, want)
    return OutputCheck(name, error, tol, made_by, None if error < tol else f"relative error {error:.3g} >= {tol:g}")


def check(shape: ProbeShape, dtype: str = "float32", device: str | torch.device = "cpu", seed: int = 0,
          inputs: ProbeInputs | None = None) -> list[OutputCheck]:
    """Run the probe at `shape` (with whatever kernels/overrides.py has in force: pins, GPU sizes) and check
    every output against the float64 reference. `inputs` (same shape and dtype) lets runs share them and
    what they cache (the reference, a forward the backward starts from)."""
    probe = PROBES[shape.probe]
    inp = inputs if inputs is not None else make_inputs(shape, dtype, device, seed)
    got = probe.run(inp)
    want = probe.expect(inp, got)
    tol = TOLERANCE[dtype]
    return [_check_output(name, got[name], want[name], tol, tuple(probe.made_by[name])) for name in got]
