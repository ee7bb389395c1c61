"""Cost model: visible-key counts against the reference's real masks and a plain loop, the paper's
FLOP ratios and Table 4, per-stage FLOPs/bytes wiring, floors, and input validation."""
import math
import random

import pytest
import torch

from nsa_bench import reference
from nsa_bench.cost import (
    MODES,
    PROJECTION_STAGES,
    Cost,
    Shape,
    StageCost,
    candidate_blocks,
    decode_tokens_exact,
    decode_tokens_read,
    dense_cost,
    floor_seconds,
    keys_at,
    layer_attention_stages,
    layer_cost,
    nsa_cost,
    stage_floor_seconds,
    visible_keys,
)
from nsa_bench.gpus import GPUS, GPUSpec
from nsa_kernels.config import NSAConfig

PAPER_CFG = NSAConfig()
PAPER_SHAPE = dict(batch=1, kv_heads=4, group_size=16, head_dim_qk=192, head_dim_v=128)

# (cfg, seqlens): T not a multiple of any block, T = 1, T < l, T < l', fewer blocks than n, l = l' = d
SMALL_CASES = [
    (NSAConfig(block_cmp=8, stride_cmp=4, block_slc=16, n_slc=3, window=10), (1, 5, 7, 8, 13, 37, 70)),
    (NSAConfig(block_cmp=16, stride_cmp=8, block_slc=16, n_slc=5, window=24), (3, 16, 41, 90)),
    (NSAConfig(block_cmp=8, stride_cmp=8, block_slc=8, n_slc=3, window=5), (2, 9, 33, 66)),
    (NSAConfig(block_cmp=4, stride_cmp=2, block_slc=8, n_slc=16, window=100), (1, 23, 61)),
]


# ---------------------------------------------------------------- brute force from the reference
def _probe_counts(o: torch.Tensor) -> torch.Tensor:
    """Rows of o are attention probabilities when v is the identity: count the keys with p > 0."""
    return (o > 0).sum(dim=-1)  # [B, T, Hq]


def _reference_counts(cfg: NSAConfig, seqlen: int, kv_heads: int, group: int, seed: int) -> dict[str, torch.Tensor]:
    """Per (batch, query, head) key counts of every branch, read off the reference's own masks.

    q and k are random; v is the identity over key positions, so each output row is the row of
    attention probabilities, and its non-zero entries are exactly the keys the query may see.
    """
    gen = torch.Generator().manual_seed(seed)
    batch, dk = 2, 8
    q = torch.randn(batch, seqlen, kv_heads * group, dk, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, seqlen, kv_heads, dk, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, seqlen, kv_heads, dk, generator=gen, dtype=torch.float64)
    k_cmp, _ = reference.compress_kv(k, v, cfg)
    eye_keys = torch.eye(seqlen, dtype=torch.float64).expand(batch, kv_heads, seqlen, seqlen).transpose(1, 2)
    tc = k_cmp.shape[1]
    eye_cmp = torch.eye(tc, dtype=torch.float64).expand(batch, kv_heads, tc, tc).transpose(1, 2)
    counts = {"cmp": _probe_counts(reference.compressed_attention(q, k_cmp, eye_cmp.contiguous(), cfg))}
    block_idx = reference.select_blocks(q, k_cmp, cfg)
    counts["slc"] = _probe_counts(reference.selected_attention(q, k, eye_keys.contiguous(), block_idx, cfg))
    counts["win"] = _probe_counts(reference.window_attention(q, k, eye_keys.contiguous(), cfg))
    counts["dense"] = _probe_counts(reference.causal_attention(q, k, eye_keys.contiguous()))
    counts["block_idx"] = block_idx
    return counts


@pytest.mark.parametrize("cfg, seqlens", SMALL_CASES)
def test_visible_keys_match_reference_masks(cfg, seqlens):
    for i, seqlen in enumerate(seqlens):
        kv_heads, group = (2, 2) if i % 2 else (1, 3)
        counts = _reference_counts(cfg, seqlen, kv_heads, group, seed=seqlen)
        totals = visible_keys(seqlen, cfg)
        for branch in ("cmp", "slc", "win", "dense"):
            expected_rows = torch.tensor([keys_at(t, cfg)[branch] for t in range(seqlen)])
            got = counts[branch]  # [B, T, Hq]: the count is the same for every batch element and head
            assert torch.equal(got, expected_rows[None, :, None].expand_as(got)), (cfg, seqlen, branch)
            assert int(got[0, :, 0].sum()) == totals[branch], (cfg, seqlen, branch)


def test_selected_count_is_data_independent_across_groups():
    """Different groups select different blocks, yet every group sees the same number of keys."""
    cfg = NSAConfig(block_cmp=8, stride_cmp=4, block_slc=8, n_slc=5, window=4)
    counts = _reference_counts(cfg, 80, kv_heads=4, group=2, seed=7)
    selections = counts["block_idx"][:, -1].sort(dim=-1).values  # last query, [B, Hkv, n]
    assert len({tuple(s.tolist()) for s in selections.reshape(-1, cfg.n_slc)}) > 2  # data did differ
    assert torch.equal(counts["slc"], counts["slc"][:, :, :1].expand_as(counts["slc"]))


# ---------------------------------------------------------------- brute force: plain loops over the spec
def _loop_keys(t: int, cfg: NSAConfig, rng: random.Random) -> dict[str, int]:
    """Keys of query t by enumeration, with a random (spec-valid) selection of the non-forced blocks."""
    l, d, lsel, w = cfg.block_cmp, cfg.stride_cmp, cfg.block_slc, cfg.window
    tc = cfg.num_cmp_blocks(t + 1)
    cmp = sum(1 for i in range(tc) if i * d + l - 1 <= t)
    current = t // lsel
    forced = {j for j in (0, current, current - 1) if 0 <= j <= current}
    others = [j for j in range(current + 1) if j not in forced]
    chosen = forced | set(rng.sample(others, min(cfg.n_slc, current + 1) - len(forced)))
    slc = sum(1 for p in range(t + 1) if p // lsel in chosen)
    win = sum(1 for p in range(t + 1) if p > t - w)
    return {"cmp": cmp, "slc": slc, "win": win, "dense": t + 1}


@pytest.mark.parametrize(
    "cfg",
    [c for c, _ in SMALL_CASES] + [NSAConfig(), NSAConfig(block_cmp=64, stride_cmp=32, block_slc=32, n_slc=4, window=7)],
)
def test_visible_keys_match_loop(cfg):
    rng = random.Random(0)
    running = {"cmp": 0, "slc": 0, "win": 0, "dense": 0}
    cand = 0
    for t in range(300):
        row = _loop_keys(t, cfg, rng)
        assert keys_at(t, cfg) == row, (cfg, t)
        for name in running:
            running[name] += row[name]
        cand += t // cfg.block_slc + 1
        assert visible_keys(t + 1, cfg) == running, (cfg, t + 1)
        assert candidate_blocks(t + 1, cfg) == cand


@pytest.mark.parametrize("seqlen", [1000, 65537, 123457, 1 << 20])
def test_closed_forms_consistent_at_large_seqlen(seqlen):
    """visible_keys(T) - visible_keys(T-1) is exactly the last query's row, far past the loops above."""
    for cfg in (PAPER_CFG, NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=5, window=100)):
        now, before = visible_keys(seqlen, cfg), visible_keys(seqlen - 1, cfg)
        last = keys_at(seqlen - 1, cfg)
        assert {k: now[k] - before[k] for k in now} == last
        assert candidate_blocks(seqlen, cfg) - candidate_blocks(seqlen - 1, cfg) == (seqlen - 1) // cfg.block_slc + 1


# ---------------------------------------------------------------- the paper's figures
@pytest.mark.parametrize(
    "seqlen, ratio", [(8192, 2.43), (16384, 4.14), (32768, 6.53), (65536, 9.25), (131072, 11.71)]
)
def test_paper_flop_ratios(seqlen, ratio):
    shape = Shape(seqlen=seqlen, **PAPER_SHAPE)
    nsa = nsa_cost(shape, PAPER_CFG, "fwd")
    attention = sum(nsa.stage(s).flops for s in ("cmp_attn", "slc_attn", "win_attn"))
    assert round(dense_cost(shape, "fwd").flops / attention, 2) == ratio


def test_cmp_share_at_64k():
    nsa = nsa_cost(Shape(seqlen=65536, **PAPER_SHAPE), PAPER_CFG, "fwd")
    attention = sum(nsa.stage(s).flops for s in ("cmp_attn", "slc_attn", "win_attn"))
    assert round(nsa.stage("cmp_attn").flops / attention, 2) == 0.58


TABLE4 = [  # context, formula floor((s-32)/16) + 16*64 + 512, paper's NSA row, paper's speedup
    (8192, 2046, 2048, 4.0),
    (16384, 2558, 2560, 6.4),
    (32768, 3582, 3584, 9.1),
    (65536, 5630, 5632, 11.6),
]


@pytest.mark.parametrize("context, formula, paper_row, speedup", TABLE4)
def test_table4_decode_tokens(context, formula, paper_row, speedup):
    assert decode_tokens_read(context, PAPER_CFG) == formula
    assert abs(paper_row - formula) <= 2  # the table rounds (s - l) / d to s / d
    exact = decode_tokens_exact(context, PAPER_CFG)
    assert 0 <= exact - formula <= 2  # Tc = (s-l)//d + 1: one compressed block more
    assert round(context / exact, 1) == speedup


@pytest.mark.parametrize("context, formula, paper_row, speedup", TABLE4)
def test_table4_decode_bytes_ratio(context, formula, paper_row, speedup):
    shape = Shape(seqlen=context, **PAPER_SHAPE)
    nsa, dense = nsa_cost(shape, PAPER_CFG, "decode"), dense_cost(shape, "decode")
    kv_token_bytes = shape.kv_heads * (shape.head_dim_qk + shape.head_dim_v) * shape.dtype_bytes
    ratio = dense.bytes / nsa.bytes
    # NSA's bytes are its KV tokens plus per-query tensors (q, branch outputs, gates, scores) that
    # dense reads or writes only once: the ratio sits a little below the pure token ratio.
    assert nsa.bytes > decode_tokens_exact(context, PAPER_CFG) * kv_token_bytes
    assert ratio < context / decode_tokens_exact(context, PAPER_CFG)
    assert ratio == pytest.approx(speedup, abs=0.2)


# ---------------------------------------------------------------- stages and their wiring
def test_stage_names_and_order():
    shape = Shape(batch=1, seqlen=100, kv_heads=2, group_size=2, head_dim_qk=16, head_dim_v=8)
    fwd = ("compress", "cmp_attn", "scoring", "topn", "slc_attn", "win_attn", "gated_sum")
    bwd = ("compress", "cmp_attn", "slc_attn", "win_attn", "gated_sum")
    assert nsa_cost(shape, PAPER_CFG, "fwd").stage_names == fwd
    assert nsa_cost(shape, PAPER_CFG, "bwd").stage_names == bwd
    assert nsa_cost(shape, PAPER_CFG, "fwdbwd").stage_names == tuple(f"fwd.{s}" for s in fwd) + tuple(
        f"bwd.{s}" for s in bwd
    )
    assert nsa_cost(shape, PAPER_CFG, "decode").stage_names == ("cmp_attn", "topn", "slc_attn", "win_attn", "gated_sum")
    for mode in ("fwd", "bwd", "decode"):
        assert dense_cost(shape, mode).stage_names == ("attention",)
    assert dense_cost(shape, "fwdbwd").stage_names == ("fwd.attention", "bwd.attention")


def test_fwdbwd_is_fwd_plus_bwd():
    shape = Shape(batch=3, seqlen=777, kv_heads=2, group_size=4, head_dim_qk=64, head_dim_v=32)
    for cost in (lambda m: nsa_cost(shape, PAPER_CFG, m), lambda m: dense_cost(shape, m)):
        both, fwd, bwd = cost("fwdbwd"), cost("fwd"), cost("bwd")
        assert both.flops == fwd.flops + bwd.flops
        assert both.bytes == fwd.bytes + bwd.bytes


def test_attention_flops_per_key_forward_and_backward():
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=4, window=50)
    for dk, dv in ((64, 64), (192, 128), (16, 96)):
        shape = Shape(batch=2, seqlen=301, kv_heads=3, group_size=2, head_dim_qk=dk, head_dim_v=dv)
        keys = visible_keys(301, cfg)
        heads = 2 * 6
        fwd, bwd = nsa_cost(shape, cfg, "fwd"), nsa_cost(shape, cfg, "bwd")
        for stage, branch in (("cmp_attn", "cmp"), ("slc_attn", "slc"), ("win_attn", "win")):
            assert fwd.stage(stage).flops == heads * keys[branch] * (2 * dk + 2 * dv)
            assert bwd.stage(stage).flops == heads * keys[branch] * (6 * dk + 4 * dv)
        assert fwd.stage("scoring").flops == heads * keys["cmp"] * (2 * dk + 2)  # l/d = 2 chunks
        assert dense_cost(shape, "fwd").flops == heads * keys["dense"] * (2 * dk + 2 * dv)
        if dk == dv:
            assert dense_cost(shape, "bwd").flops == 2.5 * dense_cost(shape, "fwd").flops


def test_bytes_of_a_small_case_by_hand():
    # B=2, T=100, Hkv=2, G=3 (Hq=6), Dk=16, Dv=8, fp16; l=16, d=8 -> Tc=11, covered 96 tokens; n=3
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=20)
    shape = Shape(batch=2, seqlen=100, kv_heads=2, group_size=3, head_dim_qk=16, head_dim_v=8)
    q, k, v, o, rows = 2 * 100 * 6 * 16, 2 * 100 * 2 * 16, 2 * 100 * 2 * 8, 2 * 100 * 6 * 8, 2 * 100 * 6
    kc, vc = 2 * 11 * 2 * 16, 2 * 11 * 2 * 8
    covered = 2 * 96 * 2 * (16 + 8)
    idx = 2 * 100 * 2 * 3
    scores = 2 * 2 * (32 * (1 + 2 + 3) + 4 * 4)  # queries 0..95 in blocks 0..2, 96..99 in block 3
    fwd = nsa_cost(shape, cfg, "fwd")
    assert fwd.stage("compress").bytes == 2 * (covered + kc + vc)
    assert fwd.stage("cmp_attn").bytes == 2 * (q + kc + vc + o) + 4 * rows
    assert fwd.stage("scoring").bytes == 2 * (q + kc) + 4 * (rows + scores)
    assert fwd.stage("topn").bytes == 4 * (scores + idx)
    assert fwd.stage("slc_attn").bytes == 2 * (q + k + v + o) + 4 * (idx + rows)
    assert fwd.stage("win_attn").bytes == 2 * (q + k + v + o) + 4 * rows
    assert fwd.stage("gated_sum").bytes == 2 * (4 * o + 3 * rows)
    bwd = nsa_cost(shape, cfg, "bwd")
    assert bwd.stage("compress").bytes == 2 * (kc + vc + 2 * covered)
    assert bwd.stage("cmp_attn").bytes == 2 * (2 * q + 2 * kc + 2 * vc + 2 * o) + 4 * rows
    assert bwd.stage("slc_attn").bytes == 2 * (3 * q + 2 * k + 2 * v + 2 * o) + 4 * (idx + rows)
    assert bwd.stage("win_attn").bytes == 2 * (3 * q + 3 * k + 3 * v + 2 * o) + 4 * rows
    assert bwd.stage("gated_sum").bytes == 2 * (7 * o + 6 * rows)
    assert dense_cost(shape, "fwd").bytes == 2 * (q + k + v + o) + 4 * rows
    assert dense_cost(shape, "bwd").bytes == 2 * (2 * (q + k + v) + 2 * o) + 4 * rows


def test_decode_by_hand_and_against_forward_rows():
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=20)
    b, hkv, g, dk, dv = 2, 2, 3, 16, 8
    per_key = 2 * dk + 2 * dv
    fwd = nsa_cost(Shape(1, 100, hkv, g, dk, dv), cfg, "fwd")
    sums = {"slc_attn": 0.0, "win_attn": 0.0, "dense": 0.0}
    for context in range(1, 101):
        shape = Shape(b, context, hkv, g, dk, dv)
        dec, keys = nsa_cost(shape, cfg, "decode"), keys_at(context - 1, cfg)
        kv_token = hkv * (dk + dv)
        q1, o1 = b * hkv * g * dk, b * hkv * g * dv
        assert dec.stage("win_attn").bytes == 2 * (q1 + b * keys["win"] * kv_token + o1)
        assert dec.stage("slc_attn").bytes == 2 * (q1 + b * keys["slc"] * kv_token + o1) + 4 * b * hkv * 3
        assert dec.stage("cmp_attn").bytes == 2 * (q1 + b * cfg.num_cmp_blocks(context) * kv_token + o1) + (
            4 * b * hkv * math.ceil(context / 32)
        )
        assert dec.stage("cmp_attn").flops == b * hkv * g * keys["cmp"] * (per_key + 2)
        assert dec.stage("topn").bytes == 4 * b * hkv * (math.ceil(context / 32) + 3)
        assert dec.stage("gated_sum").bytes == 2 * (4 * o1 + 3 * b * hkv * g)
        assert dec.stage("gated_sum").flops == 5 * o1
        assert dense_cost(shape, "decode").bytes == 2 * (q1 + b * context * kv_token + o1)
        sums["slc_attn"] += dec.stage("slc_attn").flops / b
        sums["win_attn"] += dec.stage("win_attn").flops / b
        sums["dense"] += dense_cost(shape, "decode").flops / b
    # decoding every position one by one does exactly the forward pass's attention work
    assert sums["slc_attn"] == fwd.stage("slc_attn").flops
    assert sums["win_attn"] == fwd.stage("win_attn").flops
    assert sums["dense"] == dense_cost(Shape(1, 100, hkv, g, dk, dv), "fwd").flops


def test_scales_linearly_with_batch():
    cfg = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=20)
    for mode in MODES:
        one = nsa_cost(Shape(1, 333, 2, 2, 32, 16), cfg, mode)
        five = nsa_cost(Shape(5, 333, 2, 2, 32, 16), cfg, mode)
        for a, b in zip(one.stages, five.stages):
            assert (b.flops, b.bytes) == (5 * a.flops, 5 * a.bytes)


def test_instant_at_one_million_tokens():
    shape = Shape(batch=1, seqlen=1 << 20, **{k: v for k, v in PAPER_SHAPE.items() if k != "batch"})
    for mode in MODES:
        for cost in (nsa_cost(shape, PAPER_CFG, mode), dense_cost(shape, mode)):
            assert cost.flops > 0 and cost.bytes > 0
            assert math.isfinite(cost.intensity)
            assert floor_seconds(cost, GPUS["h100"]) > 0


def test_tiny_sequences_have_no_compressed_work():
    shape = Shape(batch=1, seqlen=1, kv_heads=1, group_size=1, head_dim_qk=16, head_dim_v=16)
    fwd = nsa_cost(shape, PAPER_CFG, "fwd")
    assert fwd.stage("compress").flops == 0 and fwd.stage("compress").bytes == 0
    assert fwd.stage("compress").intensity == 0.0
    assert fwd.stage("cmp_attn").flops == 0
    assert fwd.stage("slc_attn").flops == fwd.stage("win_attn").flops == 64  # one key each


# ---------------------------------------------------------------- Cost, merged, floors
def _toy_cost() -> Cost:
    return Cost((StageCost("a", 10.0, 100.0), StageCost("b", 1000.0, 1.0), StageCost("c", 4.0, 4.0)))


def test_cost_sums_and_lookup():
    cost = _toy_cost()
    assert (cost.flops, cost.bytes) == (1014.0, 105.0)
    assert cost.intensity == pytest.approx(1014 / 105)
    assert cost.stage("b").intensity == 1000.0
    with pytest.raises(ValueError, match="nope"):
        cost.stage("nope")
    with pytest.raises(ValueError, match="duplicate"):
        Cost((StageCost("a", 1.0, 1.0), StageCost("a", 1.0, 1.0)))


def test_merged_replaces_parts_at_first_position():
    merged = _toy_cost().merged("ab", ["b", "a"])
    assert merged.stage_names == ("ab", "c")
    assert (merged.stage("ab").flops, merged.stage("ab").bytes) == (1010.0, 101.0)
    assert (merged.flops, merged.bytes) == (_toy_cost().flops, _toy_cost().bytes)
    assert _toy_cost().merged("c", ["c"]).stage_names == ("a", "b", "c")
    nsa = nsa_cost(Shape(1, 4096, 4, 16, 192, 128), PAPER_CFG, "fwd").merged("select", ("scoring", "topn"))
    assert nsa.stage_names == ("compress", "cmp_attn", "select", "slc_attn", "win_attn", "gated_sum")
    for parts, pattern in (([], "parts"), (["a", "x"], "x"), (["a", "a"], "repeats")):
        with pytest.raises(ValueError, match=pattern):
            _toy_cost().merged("m", parts)
    with pytest.raises(ValueError, match="name"):
        _toy_cost().merged("c", ["a", "b"])


def test_floor_is_max_per_stage_summed():
    gpu = GPUSpec("toy", "Toy", peak_flops=100.0, hbm_bytes_per_s=10.0, l2_bytes=1, match=("toy",))
    cost = _toy_cost()
    assert stage_floor_seconds(cost.stage("a"), gpu) == 10.0  # memory-bound: 100 B / 10 B/s
    assert stage_floor_seconds(cost.stage("b"), gpu) == 10.0  # compute-bound: 1000 / 100
    assert stage_floor_seconds(cost.stage("c"), gpu) == 0.4
    assert floor_seconds(cost, gpu) == pytest.approx(20.4)
    # one fused stage can only be faster than its parts run one after another
    assert floor_seconds(cost.merged("all", ["a", "b", "c"]), gpu) == pytest.approx(max(1014 / 100, 105 / 10))


def test_dense_forward_is_compute_bound_on_h100():
    gpu = GPUS["h100"]
    dense = dense_cost(Shape(seqlen=16384, **PAPER_SHAPE), "fwd")
    assert dense.intensity > gpu.ridge_intensity
    assert floor_seconds(dense, gpu) == pytest.approx(dense.flops / gpu.peak_flops)
    decode = dense_cost(Shape(seqlen=16384, **PAPER_SHAPE), "decode")
    assert floor_seconds(decode, gpu) == pytest.approx(decode.bytes / gpu.hbm_bytes_per_s)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "field", ["batch", "seqlen", "kv_heads", "group_size", "head_dim_qk", "head_dim_v", "dtype_bytes"]
)
@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_shape_rejects_bad_fields(field, bad):
    values = dict(batch=1, seqlen=8, kv_heads=1, group_size=1, head_dim_qk=16, head_dim_v=16, dtype_bytes=2)
    values[field] = bad
    with pytest.raises(ValueError, match=field):
        Shape(**values)


def test_bad_mode_and_seqlen_raise():
    shape = Shape(1, 8, 1, 1, 16, 16)
    for bad in ("train", "", "FWD"):
        with pytest.raises(ValueError, match="mode"):
            nsa_cost(shape, PAPER_CFG, bad)
        with pytest.raises(ValueError, match="mode"):
            dense_cost(shape, bad)
    for func in (visible_keys, decode_tokens_read, decode_tokens_exact, candidate_blocks):
        with pytest.raises(ValueError, match="seqlen"):
            func(0, PAPER_CFG)
    with pytest.raises(ValueError, match="position"):
        keys_at(-1, PAPER_CFG)


# ---------------------------------------------------------------- one attention layer
def _projection_flops(shape: Shape, d_model: int, gated: bool, backward: bool) -> dict[str, float]:
    """FLOPs of the layer's projections as torch counts them (FlopCounterMode) on the real GEMMs."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = shape.batch * shape.seqlen
    widths = {"qkv_proj": [shape.q_heads * shape.head_dim_qk, shape.kv_heads * shape.head_dim_qk,
                           shape.kv_heads * shape.head_dim_v],
              "gate_mlp": [3 * shape.q_heads] if gated else [], "out_proj": []}
    counted = {}
    for stage, outs in widths.items():
        d_in = shape.q_heads * shape.head_dim_v if stage == "out_proj" else d_model
        outs = [d_model] if stage == "out_proj" else outs
        if not outs:
            continue
        x = torch.randn(rows, d_in, requires_grad=backward)
        weights = [torch.randn(d_in, n, requires_grad=backward) for n in outs]
        ys = [x @ w for w in weights]
        counter = FlopCounterMode(display=False)
        with counter:
            if backward:
                torch.autograd.backward(ys, [torch.ones_like(y) for y in ys])
            else:
                [x @ w for w in weights]
        counted[stage] = counter.get_total_flops()
    return counted


@pytest.mark.parametrize("mode", ["layer-fwd", "layer-bwd"])
@pytest.mark.parametrize("gated", [True, False])
def test_layer_projection_flops_are_torchs_gemm_count(mode, gated):
    shape = Shape(batch=2, seqlen=37, kv_heads=2, group_size=3, head_dim_qk=24, head_dim_v=16)
    cost = layer_cost(shape, 40, mode, PAPER_CFG if gated else None)
    counted = _projection_flops(shape, 40, gated, mode == "layer-bwd")
    for stage, flops in counted.items():
        extra = 3 * 2 * 37 * 3 * 6 if (stage == "gate_mlp" and mode == "layer-bwd") else 0  # sigmoid' = 3 FLOPs/elt
        assert cost.stage(stage).flops == flops + extra
    assert ("gate_mlp" in cost.stage_names) is gated


@pytest.mark.parametrize("mode,inner", [("layer-fwd", "fwd"), ("layer-bwd", "bwd")])
def test_layer_cost_is_projections_plus_the_attention_cost(mode, inner):
    shape = Shape(batch=1, seqlen=1000, kv_heads=2, group_size=4, head_dim_qk=64, head_dim_v=32)
    for cfg, attention in ((PAPER_CFG, nsa_cost(shape, PAPER_CFG, inner)), (None, dense_cost(shape, inner))):
        layer = layer_cost(shape, 256, mode, cfg)
        assert layer.stage_names[0] == "qkv_proj" and layer.stage_names[-1] == "out_proj"
        inside = [s for s in layer.stages if s.stage not in PROJECTION_STAGES]
        assert tuple(inside) == attention.stages
        assert tuple(s.stage for s in inside) == layer_attention_stages(mode, nsa=cfg is not None)
        assert floor_seconds(layer, GPUS["h100"]) > floor_seconds(attention, GPUS["h100"])


def test_layer_projection_bytes_by_hand():
    e, rows, d = 2, 10, 8  # B*T = 10 rows, d_model 8; Hq = 2, Hkv = 1, Dk = 4, Dv = 2
    shape = Shape(batch=2, seqlen=5, kv_heads=1, group_size=2, head_dim_qk=4, head_dim_v=2)
    qkv_width, gates, o_width = 2 * 4 + 4 + 2, 6, 2 * 2
    fwd = layer_cost(shape, d, "layer-fwd", PAPER_CFG)
    assert fwd.stage("qkv_proj").bytes == e * (rows * d + d * qkv_width + rows * qkv_width)
    assert fwd.stage("gate_mlp").bytes == e * (rows * d + d * gates + rows * gates)
    assert fwd.stage("out_proj").bytes == e * (rows * o_width + o_width * d + rows * d)
    bwd = layer_cost(shape, d, "layer-bwd", PAPER_CFG)
    # reads dq/dk/dv, x, W; writes dW and dx (the first gradient of x)
    assert bwd.stage("qkv_proj").bytes == e * (rows * qkv_width + rows * d + 2 * d * qkv_width + rows * d)
    # reads dgates, the saved gates, x, W_g; writes dW_g; adds into dx (read + write)
    assert bwd.stage("gate_mlp").bytes == e * (2 * rows * gates + rows * d + 2 * d * gates + 2 * rows * d)
    assert bwd.stage("out_proj").bytes == e * (rows * d + rows * o_width + 2 * o_width * d + rows * o_width)


def test_layer_cost_rejects_bad_input():
    shape = Shape(1, 64, 1, 1, 16, 16)
    with pytest.raises(ValueError, match="mode"):
        layer_cost(shape, 32, "fwd", None)
    with pytest.raises(ValueError, match="d_model"):
        layer_cost(shape, 0, "layer-fwd", None)
    with pytest.raises(ValueError, match="mode"):
        layer_attention_stages("decode", nsa=True)
