"""Peer NSA backends: fla-nsa (flash-linear-attention) and flex-nsa (PyTorch FlexAttention).

fla needs a GPU, so here: its availability message and the constraints it refuses. flex-nsa's block
masks are checked block by block against the token-level NSA masks, and its forward (flex runs
eagerly on the CPU) against the float64 reference with a shared selection.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from nsa_bench import check
from nsa_bench.backends import Unsupported, registry
from nsa_bench.backends import fla_nsa, flex_nsa
from nsa_bench.gpus import gpu_spec
from nsa_bench.inputs import make_inputs
from nsa_bench.execute import Measure, Task, rows_for
from nsa_bench.spec import Point, SweepSpec
from nsa_bench.timing import time_wallclock
from nsa_kernels.config import NSAConfig


def point(mode: str = "fwd", seqlen: int = 256, kv_heads: int = 1, group: int = 16, dk: int = 32, dv: int = 16,
          l: int = 32, d: int = 16, lsel: int = 64, n: int = 16, w: int = 64, dtype: str = "float32") -> Point:
    return Point(mode, seqlen, 1, kv_heads, group, dk, dv, l, d, lsel, n, w, dtype)


def cpu_rows(name: str, pt: Point):
    """Rows as a measured sweep makes them (CPU wall-clock 'measure' so availability is consulted)."""
    measure = Measure(device="cpu", timer=time_wallclock)
    spec = SweepSpec(seqlens=(pt.seqlen,), reps=1, warmup=0, check_seqlen=pt.seqlen)
    return rows_for(Task(pt, registry()[name]), spec, gpu_spec("h100"), measure, None)


def test_registered_as_nsa_family():
    for name in ("fla-nsa", "flex-nsa"):
        backend = registry()[name]
        assert backend.family == "nsa"
        assert "decode" not in backend.modes and "fwd" in backend.modes


# ------------------------------------------------------------------ fla-nsa
def test_fla_absent_gives_install_hint_row(monkeypatch):
    monkeypatch.setattr(fla_nsa, "fla_importable", lambda: False)
    assert fla_nsa.availability() == "pip install fla-core"
    rows = cpu_rows("fla-nsa", point())
    assert len(rows) == 1
    assert rows[0].status == "unsupported" and rows[0].message == "pip install fla-core"
    assert rows[0].backend == "fla-nsa" and rows[0].stage == "total"


def test_fla_present_without_gpu_says_so(monkeypatch):
    monkeypatch.setattr(fla_nsa, "fla_importable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fla_nsa.availability() == "needs a CUDA GPU"


def test_fla_import_check_is_real():
    importable = fla_nsa.fla_importable()
    try:
        import fla.ops.nsa  # noqa: F401
        expected = True
    except Exception:
        expected = False
    assert importable is expected


@pytest.mark.parametrize("changes,words", [
    ({}, ("block_cmp = stride_cmp = block_slc", "l=32", "d=16", "l'=64")),  # the paper's l=32, d=16, l'=64
    ({"l": 64, "d": 64, "group": 4}, ("group_size", "got 4")),
    ({"l": 64, "d": 64, "group": 24}, ("group_size", "got 24")),
    ({"l": 64, "d": 64, "n": 12}, ("n_slc", "power of two", "got 12")),
    ({"l": 16, "d": 16, "lsel": 16, "n": 16}, ("block_slc >= 2 * n_slc", "l'=16", "n=16")),
    ({"l": 48, "d": 48, "lsel": 48, "n": 8}, ("block_slc a power of two", "got 48")),
    ({"l": 64, "d": 64, "dk": 320}, ("head_dim_qk <= 256", "got 320")),
    ({"l": 64, "d": 64, "mode": "decode"}, ("decode",)),
])
def test_fla_constraints_name_the_failure(changes, words):
    pt = point(**changes)
    why = fla_nsa.constraint_failure(pt)
    assert why is not None
    for word in words:
        assert word in why, why
    with pytest.raises(Unsupported, match="fla-nsa"):
        fla_nsa.BACKEND.build(pt, make_inputs(pt, "cpu", 0))


@pytest.mark.parametrize("changes", [{"l": 64, "d": 64}, {"l": 64, "d": 64, "group": 32, "n": 8},
                                     {"l": 32, "d": 32, "lsel": 32, "n": 16, "dk": 192, "dv": 128}])
def test_fla_supported_points(changes):
    assert fla_nsa.constraint_failure(point(**changes)) is None


def test_fla_supported_point_without_fla_is_unsupported_with_hint(monkeypatch):
    monkeypatch.setattr(fla_nsa, "fla_importable", lambda: False)
    pt = point(l=64, d=64)
    with pytest.raises(Unsupported, match="pip install fla-core"):
        fla_nsa.BACKEND.build(pt, make_inputs(pt, "cpu", 0))


# ------------------------------------------------------------------ flex-nsa: availability
def test_flex_absent_gives_clear_row(monkeypatch):
    monkeypatch.setattr(flex_nsa, "flex_module", lambda: None)
    why = flex_nsa.availability()
    assert "flex_attention" in why and torch.__version__ in why
    rows = cpu_rows("flex-nsa", point())
    assert rows[0].status == "unsupported" and "flex_attention" in rows[0].message


def test_flex_present_on_cpu_needs_gpu_for_timing():
    assert flex_nsa.flex_module() is not None  # torch >= 2.5 is a project requirement
    if not torch.cuda.is_available():
        assert flex_nsa.availability() == "needs a CUDA GPU"
        assert cpu_rows("flex-nsa", point())[0].message == "needs a CUDA GPU"


# ------------------------------------------------------------------ flex-nsa: block masks
def _check_states(states: torch.Tensor, allowed: torch.Tensor, block: int) -> None:
    """states [NQB, NKB] must be SKIP/PARTIAL/FULL exactly as the token mask `allowed` [Tq, Tk] says
    (FULL only for blocks lying wholly inside both lengths)."""
    tq, tk = allowed.shape
    nqb, nkb = states.shape
    assert (nqb, nkb) == (-(-tq // block), -(-tk // block))
    for qb in range(nqb):
        for kb in range(nkb):
            tile = allowed[qb * block:(qb + 1) * block, kb * block:(kb + 1) * block]
            whole = tile.shape == (block, block)
            state = int(states[qb, kb])
            if not tile.any():
                assert state == flex_nsa.SKIP, (qb, kb)
            elif tile.all() and whole:
                assert state == flex_nsa.FULL, (qb, kb)
            else:
                assert state == flex_nsa.PARTIAL, (qb, kb)


@pytest.mark.parametrize("seqlen,l,d,block", [(1, 32, 16, 16), (200, 32, 16, 16), (333, 16, 8, 16),
                                              (300, 32, 16, 128), (64, 64, 64, 16)])
def test_cmp_states_match_token_mask(seqlen, l, d, block):
    cfg = NSAConfig(l, d, 64, 3, 8)
    num_cmp = cfg.num_cmp_blocks(seqlen)  # 0 at seqlen 1: a [1, 0] table, no key block to see
    t = torch.arange(seqlen)[:, None]
    i = torch.arange(num_cmp)[None, :]
    _check_states(flex_nsa.cmp_states(seqlen, num_cmp, cfg, block=block), i * d + l - 1 <= t, block)


@pytest.mark.parametrize("seqlen,window,block", [(1, 1, 16), (100, 1, 16), (100, 20, 16), (333, 40, 16),
                                                 (300, 512, 128), (260, 128, 16)])
def test_window_states_match_token_mask(seqlen, window, block):
    t = torch.arange(seqlen)[:, None]
    p = torch.arange(seqlen)[None, :]
    _check_states(flex_nsa.window_states(seqlen, window, block=block), (p <= t) & (t - p < window), block)


def _reference_selection(pt: Point, seed: int = 0) -> torch.Tensor:
    return check.shared_selection(make_inputs(pt, "cpu", seed)).block_idx


@pytest.mark.parametrize("seqlen,lsel,n,block", [(1, 16, 3, 16), (150, 16, 3, 16), (333, 32, 4, 16),
                                                 (300, 64, 3, 128), (200, 16, 16, 32)])
def test_selected_states_match_token_mask(seqlen, lsel, n, block):
    pt = point(seqlen=seqlen, kv_heads=2, group=2, l=16, d=8, lsel=lsel, n=n)
    block_idx = _reference_selection(pt)
    padded = -(-seqlen // block) * block
    table = flex_nsa.selection_table(block_idx, -(-padded // lsel), padded)
    assert table.shape == (1, 2, padded, -(-padded // lsel))
    assert not table[:, :, seqlen:].any()
    states = flex_nsa.selected_states(table, seqlen, lsel, block=block)
    t = torch.arange(seqlen)[:, None]
    p = torch.arange(seqlen)[None, :]
    for head in range(2):
        chosen = torch.zeros(seqlen, -(-seqlen // lsel) + 1, dtype=torch.bool)
        idx = block_idx[0, :, head].long()
        chosen.scatter_(1, torch.where(idx >= 0, idx, chosen.shape[1] - 1), True)
        allowed = chosen[t, p // lsel] & (p <= t)
        assert allowed.sum(1).min() >= 1  # every query sees at least itself
        _check_states(states[0, head], allowed, block)


def test_selection_table_ignores_padding():
    block_idx = torch.tensor([[[[0, -1, -1]], [[1, 0, -1]]]], dtype=torch.int32)  # [B=1, T=2, Hkv=1, n=3]
    table = flex_nsa.selection_table(block_idx, 2, 4)
    assert table.shape == (1, 1, 4, 2)
    assert table[0, 0].tolist() == [[True, False], [True, True], [False, False], [False, False]]


# ------------------------------------------------------------------ flex-nsa: forward vs the reference
@pytest.mark.parametrize("seqlen,kv_heads,group,dk,dv,l,d,lsel,n,w", [
    (200, 2, 2, 16, 8, 32, 16, 32, 3, 40),   # T not a multiple of any block, Dk != Dv
    (1, 1, 1, 16, 16, 32, 16, 64, 3, 8),     # T = 1, G = 1: no compressed block
    (130, 1, 3, 16, 8, 16, 8, 16, 6, 20),    # fewer selection blocks than... 9 blocks, n = 6
    (90, 1, 2, 16, 16, 16, 16, 32, 16, 8),   # fewer blocks than n
])
def test_flex_forward_matches_reference(seqlen, kv_heads, group, dk, dv, l, d, lsel, n, w):
    pt = point(seqlen=seqlen, kv_heads=kv_heads, group=group, dk=dk, dv=dv, l=l, d=d, lsel=lsel, n=n, w=w)
    inputs = check.shared_selection(make_inputs(pt, "cpu", 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workload = flex_nsa.BACKEND.build(pt, inputs)
        got = workload.result()
    assert check.max_rel_error(got, check.expected("nsa", inputs)) < 1e-4
    assert set(workload.stages) == {"cmp_attn", "slc_attn", "win_attn"}
    assert "outside the timed region" in workload.note


def test_flex_builds_its_own_selection_when_none_given():
    pt = point(seqlen=100, kv_heads=1, group=2, dk=16, dv=16, l=16, d=8, lsel=16, n=3, w=16)
    inputs = make_inputs(pt, "cpu", 5)
    assert inputs.block_idx is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workload = flex_nsa.BACKEND.build(pt, inputs)
        got = workload.result()
    # float32 inputs: its selection is the reference's, so the output equals the reference's own
    assert check.max_rel_error(got, check.expected("nsa", check.shared_selection(inputs))) < 1e-4
    assert "selection built outside" in workload.note


def test_flex_compress_is_the_spec_mean():
    k = torch.randn(1, 70, 2, 4, dtype=torch.float64)
    cfg = NSAConfig(32, 16, 64, 3, 8)
    got = flex_nsa.compress(k, cfg)
    assert got.shape == (1, 3, 2, 4)
    assert torch.allclose(got[0, 2], k[0, 32:64].mean(0))
    assert flex_nsa.compress(k[:, :10], cfg).shape == (1, 0, 2, 4)


def test_block_mask_lists_partial_and_full_blocks_as_the_states_say():
    states = flex_nsa.window_states(333, 40, block=16)
    mask = flex_nsa.block_mask(states, lambda b, h, q, kv: kv <= q, 333, 333, block=16)
    assert torch.equal(mask.to_dense()[0, 0].bool(), states != flex_nsa.SKIP)
    assert torch.equal(mask.kv_num_blocks[0, 0], (states == flex_nsa.PARTIAL).sum(-1).int())
    assert torch.equal(mask.full_kv_num_blocks[0, 0], (states == flex_nsa.FULL).sum(-1).int())
    for row in range(states.shape[0]):
        listed = mask.full_kv_indices[0, 0, row, :int(mask.full_kv_num_blocks[0, 0, row])]
        assert torch.equal(listed.long(), torch.nonzero(states[row] == flex_nsa.FULL).flatten())
