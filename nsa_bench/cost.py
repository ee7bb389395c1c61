"""Exact FLOPs, minimum HBM bytes and roofline floors of NSA and dense causal attention.

Everything is closed form in Python integers, so it is exact and instant at any sequence length,
and a benchmark can set every measured time against the time no kernel could beat.

Conventions (stated once, used everywhere):
- FLOPs are useful FLOPs: a multiply-add is 2; only the (query, head, key) triples NSA_SPEC.md
  allows are counted (work a kernel does on masked-out keys is not); softmax exp/max/sum are not
  counted. Forward attention costs `2*Dk + 2*Dv` per visible triple (q.k and p.v); backward
  `6*Dk + 4*Dv` = recompute q.k, dP = dO.v, dV = P^T dO, dQ = dS k, dK = dS^T q (2.5x the
  forward when Dk = Dv). Mean compression costs one add per (block, token, channel); the gated
  sum 5 FLOPs per output element (3 mul, 2 add) forward, 9 backward; top-n compares count 0.
- Bytes are the minimum HBM traffic of each stage run as its own kernel: each tensor it needs is
  read once in full, each output written once, intermediates between stages go through HBM.
  `dtype_bytes` per element of q/k/v/o/gates and their gradients; 4 per log-sum-exp and block
  score (fp32) and per block_idx entry (int32). Mean compression reads only the tokens some block
  covers. Backward gradients of several branches accumulate in place: the first stage to produce
  dq (cmp_attn) or dk/dv (slc_attn) writes it, every later one reads and writes it.
- Scoring and top-n are separate stages, so the block scores S (fp32, only the candidate blocks
  j <= t // l' of each query and KV head) are written by `scoring` and read by `topn`; a kernel
  that fuses them saves that traffic.
- Decode assumes the compressed KV cache is kept up to date (at most one new block a step).
- Packed batches (`Shape.doc_lens`, docs/varlen.md): every per-sequence count (visible keys,
  compressed blocks, covered tokens, selection candidates) is summed over the sequences, each with its
  own length; per-token tensors are those of the B*T tokens. Decode of a packed batch is a decode
  batch of its N sequences, sequence i over a cache of L_i tokens.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from nsa_bench.gpus import GPUSpec
from nsa_kernels.config import NSAConfig

MODES = ("fwd", "bwd", "fwdbwd", "decode")
NSA_FWD_STAGES = ("compress", "cmp_attn", "scoring", "topn", "slc_attn", "win_attn", "gated_sum")
NSA_BWD_STAGES = ("compress", "cmp_attn", "slc_attn", "win_attn", "gated_sum")
NSA_DECODE_STAGES = ("cmp_attn", "topn", "slc_attn", "win_attn", "gated_sum")
DENSE_STAGE = "attention"

_FP32 = 4  # bytes of one log-sum-exp or block score
_INT32 = 4  # bytes of one block_idx entry


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Shape:
    """Problem size: q [B, T, Hkv*G, Dk], k [B, T, Hkv, Dk], v [B, T, Hkv, Dv] (decode: T = context)."""

    batch: int
    seqlen: int
    kv_heads: int
    group_size: int
    head_dim_qk: int
    head_dim_v: int
    dtype_bytes: int = 2
    doc_lens: tuple[int, ...] = ()  # a packed batch's sequence lengths (sum = batch * seqlen); (): B rows of T

    def __post_init__(self) -> None:
        for name in ("batch", "seqlen", "kv_heads", "group_size", "head_dim_qk", "head_dim_v", "dtype_bytes"):
            _check_positive_int("Shape", name, getattr(self, name))
        if self.doc_lens:
            for length in self.doc_lens:
                _check_positive_int("Shape", "doc_lens[i]", length)
            if sum(self.doc_lens) != self.batch * self.seqlen:
                raise ValueError(f"Shape.doc_lens sum to {sum(self.doc_lens)}, not batch * seqlen = "
                                 f"{self.batch * self.seqlen}")

    @property
    def sequences(self) -> tuple[tuple[int, int], ...]:
        """(length, how many sequences have it): the sequences attention runs over, each alone."""
        if not self.doc_lens:
            return ((self.seqlen, self.batch),)
        return tuple(sorted(Counter(self.doc_lens).items()))

    @property
    def num_sequences(self) -> int:
        return sum(count for _, count in self.sequences)

    @property
    def q_heads(self) -> int:
        return self.kv_heads * self.group_size


@dataclass(frozen=True)
class StageCost:
    """One kernel's useful FLOPs and minimum HBM bytes."""

    stage: str
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        """FLOPs per byte (0 for a stage that moves no bytes)."""
        return self.flops / self.bytes if self.bytes else 0.0


@dataclass(frozen=True)
class Cost:
    """An operation's cost as an ordered tuple of stages."""

    stages: tuple[StageCost, ...]

    def __post_init__(self) -> None:
        names = [s.stage for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Cost.stages has duplicate stage names: {names}")

    @property
    def flops(self) -> float:
        return float(sum(s.flops for s in self.stages))

    @property
    def bytes(self) -> float:
        return float(sum(s.bytes for s in self.stages))

    @property
    def intensity(self) -> float:
        total = self.bytes
        return self.flops / total if total else 0.0

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages)

    def stage(self, name: str) -> StageCost:
        for s in self.stages:
            if s.stage == name:
                return s
        raise ValueError(f"stage={name!r} not in this cost; stages are {list(self.stage_names)}")

    def merged(self, name: str, parts: Sequence[str]) -> Cost:
        """Replace the stages `parts` by one stage `name` (their sums), at the first part's place.

        Why: a backend that fuses kernels (e.g. scoring + topn) times them as one stage.
        """
        parts = tuple(parts)
        if not parts:
            raise ValueError("parts must name at least one stage")
        if len(set(parts)) != len(parts):
            raise ValueError(f"parts={list(parts)} repeats a stage")
        for part in parts:
            self.stage(part)  # raises for an unknown name
        if name in self.stage_names and name not in parts:
            raise ValueError(f"name={name!r} already names a stage that is not merged")
        chosen = [s for s in self.stages if s.stage in parts]
        joined = StageCost(name, float(sum(s.flops for s in chosen)), float(sum(s.bytes for s in chosen)))
        out: list[StageCost] = []
        for s in self.stages:
            if s.stage not in parts:
                out.append(s)
            elif s is chosen[0]:
                out.append(joined)
        return Cost(tuple(out))


# ---------------------------------------------------------------- visible keys (closed forms)
def _sum_floor_div(count: int, divisor: int) -> int:
    """sum_{u=0}^{count-1} u // divisor."""
    if count <= 0:
        return 0
    full, rest = divmod(count, divisor)
    return divisor * full * (full - 1) // 2 + rest * full


def _sum_min(count: int, cap: int) -> int:
    """sum_{j=0}^{count-1} min(cap, j)."""
    if count <= cap + 1:
        return count * (count - 1) // 2
    return cap * (cap + 1) // 2 + (count - cap - 1) * cap


def _check_seqlen(seqlen: int) -> None:
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
        raise ValueError(f"seqlen must be a positive int, got {seqlen!r}")


def keys_at(position: int, cfg: NSAConfig) -> dict[str, int]:
    """Keys query `position` sees in each branch ("cmp" counts compressed blocks), per head.

    The selected count needs no data: the current block position // l' is always selected and
    holds position % l' + 1 keys <= position; every other selected block is complete.
    """
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be a non-negative int, got {position!r}")
    t = position
    l, d, lsel = cfg.block_cmp, cfg.stride_cmp, cfg.block_slc
    cmp = (t - l + 1) // d + 1 if t >= l - 1 else 0
    slc = (min(cfg.n_slc, t // lsel + 1) - 1) * lsel + t % lsel + 1
    return {"cmp": cmp, "slc": slc, "win": min(cfg.window, t + 1), "dense": t + 1}


def visible_keys(seqlen: int, cfg: NSAConfig) -> dict[str, int]:
    """Sum over queries 0..seqlen-1 of the keys each sees, per branch and per head (closed form)."""
    _check_seqlen(seqlen)
    t_count = seqlen
    l, d, lsel, w = cfg.block_cmp, cfg.stride_cmp, cfg.block_slc, cfg.window
    # cmp: queries t >= l-1 see (t-l+1)//d + 1 blocks
    shifted = t_count - l + 1
    cmp = _sum_floor_div(shifted, d) + max(shifted, 0)
    # slc: (min(n, j+1) - 1) * l' + (t % l' + 1) for t in block j
    full, rest = divmod(t_count, lsel)
    in_block = full * lsel * (lsel + 1) // 2 + rest * (rest + 1) // 2
    cap = cfg.n_slc - 1
    earlier = lsel * (lsel * _sum_min(full, cap) + rest * min(cap, full))
    slc = earlier + in_block
    win = t_count * (t_count + 1) // 2 if t_count <= w else w * (w + 1) // 2 + (t_count - w) * w
    return {"cmp": cmp, "slc": slc, "win": win, "dense": t_count * (t_count + 1) // 2}


def candidate_blocks(seqlen: int, cfg: NSAConfig) -> int:
    """Sum over queries of the selection candidates j <= t // l' (the scores `topn` ranks), per KV head."""
    _check_seqlen(seqlen)
    full, rest = divmod(seqlen, cfg.block_slc)
    return cfg.block_slc * full * (full + 1) // 2 + rest * (full + 1)


def decode_tokens_read(seqlen: int, cfg: NSAConfig) -> int:
    """KV tokens one decode step reads, by the paper's Table 4 formula floor((s-l)/d) + n*l' + w.

    The formula is for long contexts: it counts one compressed block fewer than Tc and full
    selected blocks. `decode_tokens_exact` is the exact count under NSA_SPEC.md.
    """
    _check_seqlen(seqlen)
    return (seqlen - cfg.block_cmp) // cfg.stride_cmp + cfg.n_slc * cfg.block_slc + cfg.window


def decode_tokens_exact(seqlen: int, cfg: NSAConfig) -> int:
    """KV tokens (compressed + selected + window) the query at seqlen-1 reads, per KV head."""
    _check_seqlen(seqlen)
    keys = keys_at(seqlen - 1, cfg)
    return keys["cmp"] + keys["slc"] + keys["win"]


def _summed(shape: Shape, per_sequence: Callable[[int], int]) -> int:
    """sum over the shape's sequences of per_sequence(length)."""
    return sum(count * per_sequence(length) for length, count in shape.sequences)


def _summed_keys(shape: Shape, per_sequence: Callable[[int], dict[str, int]]) -> dict[str, int]:
    """Branch-wise sums over the shape's sequences of per_sequence(length) (visible keys, decode keys)."""
    total: dict[str, int] = {}
    for length, count in shape.sequences:
        for name, value in per_sequence(length).items():
            total[name] = total.get(name, 0) + count * value
    return total


# ---------------------------------------------------------------- stage costs
@dataclass(frozen=True)
class _Elements:
    """Element counts (batch included) of the tensors the stages move."""

    q: int
    k: int
    v: int
    o: int
    rows: int  # one per (batch, query, q head): lse, gates / 3
    k_cmp: int
    v_cmp: int
    k_covered: int  # k elements inside some compressed block
    v_covered: int
    block_idx: int
    scores: int


def _elements(shape: Shape, cfg: NSAConfig) -> _Elements:
    b, t, hkv, hq = shape.batch, shape.seqlen, shape.kv_heads, shape.q_heads
    dk, dv = shape.head_dim_qk, shape.head_dim_v

    def covered_tokens(length: int) -> int:
        tc = cfg.num_cmp_blocks(length)
        return (tc - 1) * cfg.stride_cmp + cfg.block_cmp if tc else 0

    tc = _summed(shape, cfg.num_cmp_blocks)  # compressed blocks of all sequences
    covered = _summed(shape, covered_tokens)
    return _Elements(
        q=b * t * hq * dk, k=b * t * hkv * dk, v=b * t * hkv * dv, o=b * t * hq * dv, rows=b * t * hq,
        k_cmp=tc * hkv * dk, v_cmp=tc * hkv * dv,
        k_covered=covered * hkv * dk, v_covered=covered * hkv * dv,
        block_idx=b * t * hkv * cfg.n_slc, scores=hkv * _summed(shape, lambda n: candidate_blocks(n, cfg)),
    )


def _fwd_per_key(shape: Shape) -> int:
    return 2 * shape.head_dim_qk + 2 * shape.head_dim_v


def _bwd_per_key(shape: Shape) -> int:
    return 6 * shape.head_dim_qk + 4 * shape.head_dim_v


def _stage_cost(name: str, flops: int, nbytes: int) -> StageCost:
    return StageCost(name, float(flops), float(nbytes))


def _nsa_forward(shape: Shape, cfg: NSAConfig) -> tuple[StageCost, ...]:
    e, el = shape.dtype_bytes, _elements(shape, cfg)
    heads = shape.q_heads  # keys are summed over the sequences (batch included)
    keys = _summed_keys(shape, lambda n: visible_keys(n, cfg))
    per_key = _fwd_per_key(shape)
    chunks_per_cmp = cfg.block_cmp // cfg.stride_cmp  # d-chunks a compressed block adds its p to
    attn_out = e * el.o + _FP32 * el.rows  # o and lse written
    return (
        _stage_cost("compress", cfg.block_cmp * (el.k_cmp + el.v_cmp),
               e * (el.k_covered + el.v_covered + el.k_cmp + el.v_cmp)),
        _stage_cost("cmp_attn", heads * keys["cmp"] * per_key, e * (el.q + el.k_cmp + el.v_cmp) + attn_out),
        _stage_cost("scoring", heads * keys["cmp"] * (2 * shape.head_dim_qk + chunks_per_cmp),
               e * (el.q + el.k_cmp) + _FP32 * (el.rows + el.scores)),
        _stage_cost("topn", 0, _FP32 * el.scores + _INT32 * el.block_idx),
        _stage_cost("slc_attn", heads * keys["slc"] * per_key,
               e * (el.q + el.k + el.v) + _INT32 * el.block_idx + attn_out),
        _stage_cost("win_attn", heads * keys["win"] * per_key, e * (el.q + el.k + el.v) + attn_out),
        _stage_cost("gated_sum", 5 * el.o, e * (3 * el.o + 3 * el.rows + el.o)),
    )


def _nsa_backward(shape: Shape, cfg: NSAConfig) -> tuple[StageCost, ...]:
    e, el = shape.dtype_bytes, _elements(shape, cfg)
    heads = shape.q_heads  # keys are summed over the sequences (batch included)
    keys = _summed_keys(shape, lambda n: visible_keys(n, cfg))
    per_key = _bwd_per_key(shape)
    saved = e * 2 * el.o + _FP32 * el.rows  # o and do of the branch, lse
    return (
        # reads dk_cmp, dv_cmp; adds into dk, dv (read + write the covered tokens)
        _stage_cost("compress", cfg.block_cmp * (el.k_cmp + el.v_cmp),
               e * (el.k_cmp + el.v_cmp + 2 * (el.k_covered + el.v_covered))),
        # reads q, k_cmp, v_cmp; writes dq, dk_cmp, dv_cmp
        _stage_cost("cmp_attn", heads * keys["cmp"] * per_key, e * 2 * (el.q + el.k_cmp + el.v_cmp) + saved),
        # reads q, k, v, block_idx; accumulates dq; writes dk, dv
        _stage_cost("slc_attn", heads * keys["slc"] * per_key,
               e * (3 * el.q + 2 * (el.k + el.v)) + _INT32 * el.block_idx + saved),
        # reads q, k, v; accumulates dq, dk, dv
        _stage_cost("win_attn", heads * keys["win"] * per_key, e * 3 * (el.q + el.k + el.v) + saved),
        # reads do, the three branch outputs, gates; writes the three branch grads, dgates
        _stage_cost("gated_sum", 9 * el.o, e * (7 * el.o + 6 * el.rows)),
    )


def _nsa_decode(shape: Shape, cfg: NSAConfig) -> tuple[StageCost, ...]:
    e, b, hkv, hq = shape.dtype_bytes, shape.num_sequences, shape.kv_heads, shape.q_heads
    dk, dv = shape.head_dim_qk, shape.head_dim_v
    keys = _summed_keys(shape, lambda n: keys_at(n - 1, cfg))  # the new token of each sequence, summed
    per_key = _fwd_per_key(shape)
    q1, o1, gates1 = b * hq * dk, b * hq * dv, 3 * b * hq
    scores = hkv * _summed(shape, cfg.num_slc_blocks)
    block_idx = b * hkv * cfg.n_slc
    kv_token = hkv * (dk + dv)  # elements of one token's K and V, all KV heads
    chunks_per_cmp = cfg.block_cmp // cfg.stride_cmp
    return (
        # attention + scoring fused: reads q and the whole compressed cache, writes o_cmp and S
        _stage_cost("cmp_attn", hq * keys["cmp"] * (per_key + chunks_per_cmp),
               e * (q1 + keys["cmp"] * kv_token + o1) + _FP32 * scores),
        _stage_cost("topn", 0, _FP32 * scores + _INT32 * block_idx),
        _stage_cost("slc_attn", hq * keys["slc"] * per_key,
               e * (q1 + keys["slc"] * kv_token + o1) + _INT32 * block_idx),
        _stage_cost("win_attn", hq * keys["win"] * per_key, e * (q1 + keys["win"] * kv_token + o1)),
        _stage_cost("gated_sum", 5 * o1, e * (4 * o1 + gates1)),
    )


def _prefixed(prefix: str, stages: tuple[StageCost, ...]) -> tuple[StageCost, ...]:
    return tuple(StageCost(f"{prefix}.{s.stage}", s.flops, s.bytes) for s in stages)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")


def nsa_cost(shape: Shape, cfg: NSAConfig, mode: str) -> Cost:
    """NSA's per-stage cost; `fwdbwd` = forward stages as `fwd.*` then backward ones as `bwd.*`."""
    _check_mode(mode)
    if mode == "fwd":
        return Cost(_nsa_forward(shape, cfg))
    if mode == "bwd":
        return Cost(_nsa_backward(shape, cfg))
    if mode == "fwdbwd":
        return Cost(_prefixed("fwd", _nsa_forward(shape, cfg)) + _prefixed("bwd", _nsa_backward(shape, cfg)))
    return Cost(_nsa_decode(shape, cfg))


def dense_cost(shape: Shape, mode: str) -> Cost:
    """Causal dense attention (the FlashAttention-2 baseline) as one stage "attention".

    `fwdbwd` has two stages, "fwd.attention" and "bwd.attention", as nsa_cost prefixes them:
    they are two kernels, each with its own floor.
    """
    _check_mode(mode)
    e, b, t, hkv, hq = shape.dtype_bytes, shape.batch, shape.seqlen, shape.kv_heads, shape.q_heads
    dk, dv = shape.head_dim_qk, shape.head_dim_v
    q, k, v, o, rows = b * t * hq * dk, b * t * hkv * dk, b * t * hkv * dv, b * t * hq * dv, b * t * hq
    pairs = hq * _summed(shape, lambda n: n * (n + 1) // 2)  # causal within each sequence
    forward = _stage_cost(DENSE_STAGE, pairs * _fwd_per_key(shape), e * (q + k + v + o) + _FP32 * rows)
    # reads q, k, v, o, do, lse; writes dq, dk, dv
    backward = _stage_cost(DENSE_STAGE, pairs * _bwd_per_key(shape), e * (2 * (q + k + v) + 2 * o) + _FP32 * rows)
    if mode == "fwd":
        return Cost((forward,))
    if mode == "bwd":
        return Cost((backward,))
    if mode == "fwdbwd":
        return Cost(_prefixed("fwd", (forward,)) + _prefixed("bwd", (backward,)))
    # decode: the query at t-1 reads the whole K and V cache once
    # (packed: each of the N sequences' new token reads its own cache)
    n = shape.num_sequences
    decode = _stage_cost(DENSE_STAGE, hq * b * t * _fwd_per_key(shape),
                    e * (n * hq * dk + b * t * hkv * (dk + dv) + n * hq * dv))
    return Cost((decode,))


# ---------------------------------------------------------------- one attention layer
LAYER_MODES = ("layer-fwd", "layer-bwd")
PROJECTION_STAGES = ("qkv_proj", "gate_mlp", "out_proj")  # a layer's stages other than attention


def layer_attention_stages(mode: str, nsa: bool) -> tuple[str, ...]:
    """The attention stages inside a layer mode's cost (what a measured "attention" stage covers)."""
    if mode not in LAYER_MODES:
        raise ValueError(f"mode={mode!r} is not one of {LAYER_MODES}")
    if not nsa:
        return (DENSE_STAGE,)
    return NSA_FWD_STAGES if mode == "layer-fwd" else NSA_BWD_STAGES


def _linear(name: str, rows: int, d_in: int, d_out: int, e: int, backward: bool,
            dx_accumulates: bool = False) -> StageCost:
    """Y [rows, d_out] = X [rows, d_in] @ W [d_in, d_out], forward or backward (dX and dW).

    Backward reads dY, X and W, writes dW, and writes dX (or reads and writes it when an earlier
    stage already wrote that gradient).
    """
    flops = 2 * rows * d_in * d_out
    if not backward:
        return _stage_cost(name, flops, e * (rows * d_in + d_in * d_out + rows * d_out))
    dx = (2 if dx_accumulates else 1) * rows * d_in
    return _stage_cost(name, 2 * flops, e * (rows * d_out + rows * d_in + 2 * d_in * d_out + dx))


def _projections(shape: Shape, d_model: int, gated: bool, backward: bool) -> tuple[StageCost, ...]:
    """q/k/v projections (one stage: three GEMMs over the same x), the gate MLP, the output projection."""
    e, rows, hq, hkv = shape.dtype_bytes, shape.batch * shape.seqlen, shape.q_heads, shape.kv_heads
    dk, dv = shape.head_dim_qk, shape.head_dim_v
    qkv_width = hq * dk + hkv * dk + hkv * dv
    out = [_linear("qkv_proj", rows, d_model, qkv_width, e, backward)]  # x (and dx) moved once
    if gated:
        gate = _linear("gate_mlp", rows, d_model, 3 * hq, e, backward, dx_accumulates=True)
        if backward:  # dz = dg * g * (1 - g): 3 FLOPs an element, reading the saved sigmoid output g
            gate = _stage_cost("gate_mlp", int(gate.flops) + 3 * rows * 3 * hq, int(gate.bytes) + e * rows * 3 * hq)
        out.append(gate)
    out.append(_linear("out_proj", rows, hq * dv, d_model, e, backward))
    return tuple(out)


def layer_cost(shape: Shape, d_model: int, mode: str, cfg: NSAConfig | None) -> Cost:
    """One attention layer: x [B, T, d_model] -> qkv_proj (-> gate_mlp, NSA only) -> attention -> out_proj.

    `cfg` given: NSA's attention stages (nsa_cost) and its gate MLP, a linear d_model -> 3 * Hq with a
    sigmoid (the sigmoid, like softmax's exp, counts no FLOPs); None: dense causal attention
    (dense_cost). Projections are GEMMs, 2 FLOPs per multiply-add; forward reads x and W and writes Y
    once; backward computes dX and dW (2x the forward FLOPs), qkv_proj writes dx and gate_mlp adds
    into it. Stages are listed in forward order in both modes.
    """
    if mode not in LAYER_MODES:
        raise ValueError(f"mode={mode!r} is not one of {LAYER_MODES}")
    _check_positive_int("layer_cost", "d_model", d_model)
    inner = "fwd" if mode == "layer-fwd" else "bwd"
    attention = nsa_cost(shape, cfg, inner) if cfg is not None else dense_cost(shape, inner)
    proj = _projections(shape, d_model, gated=cfg is not None, backward=inner == "bwd")
    *before, out_proj = proj
    return Cost((*before, *attention.stages, out_proj))


# ---------------------------------------------------------------- roofline floors
def stage_floor_seconds(stage: StageCost, gpu: GPUSpec) -> float:
    """The least time a stage can take: compute-bound or memory-bound, whichever is slower."""
    return max(stage.flops / gpu.peak_flops, stage.bytes / gpu.hbm_bytes_per_s)


def floor_seconds(cost: Cost, gpu: GPUSpec) -> float:
    """Sum of the stage floors (stages run one after another, each with its own bound)."""
    return sum(stage_floor_seconds(s, gpu) for s in cost.stages)
