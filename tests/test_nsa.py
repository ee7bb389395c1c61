"""The public Triton NSA API (nsa_kernels) vs the float64 reference, forward and gradients, one shared selection."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from nsa_bench import reference as R
import nsa_kernels
from nsa_kernels import nsa as nsa_module
from nsa_kernels.config import NSAConfig
from nsa_kernels.variants import V1, V2

pytestmark = pytest.mark.interpreter

SMALL = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=24)


def make(seed: int, b: int, t: int, hkv: int, g: int, dk: int, dv: int):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, hkv * g, dk, generator=gen, dtype=torch.float64)
    k = torch.randn(b, t, hkv, dk, generator=gen, dtype=torch.float64)
    v = torch.randn(b, t, hkv, dv, generator=gen, dtype=torch.float64)
    gates = torch.rand(b, t, hkv * g, 3, generator=gen, dtype=torch.float64)
    do = torch.randn(b, t, hkv * g, dv, generator=gen, dtype=torch.float64)
    return q, k, v, gates, do


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a-b|| / ||b||; a reference that is exactly zero (dq at T=1) compares with an absolute floor."""
    diff = torch.linalg.vector_norm(a.double() - b.double()).item()
    return diff / max(torch.linalg.vector_norm(b.double()).item(), 1e-6 * b.numel() ** 0.5 * 1e3)


def shared_idx(q, k, v, cfg):
    k_cmp, _ = R.compress_kv(k, v, cfg)
    return R.select_blocks(q, k_cmp, cfg)


# Every kernel of both variants is checked branch by branch (test_compressed/selected/flash); here each
# variant is joined end to end, v1 on all but the slowest shape (G=1 runs 200 one-position programs).
_NSA_SHAPES = {"G2-Dk32-Dv16": (2, 77, 1, 2, 32, 16), "G1": (1, 100, 2, 1, 16, 16), "T1": (1, 1, 1, 2, 16, 32),
               "paper-heads": (1, 45, 1, 16, 192, 128)}  # the paper's head layout; T a multiple of no block
_NSA_RUNS = [pytest.param(*shape, variants, id=f"{name}-{variants.label}")
             for name, shape in _NSA_SHAPES.items() for variants in (V1, V2) if (name, variants) != ("G1", V1)]


@pytest.mark.parametrize("b,t,hkv,g,dk,dv,variants", _NSA_RUNS)
def test_forward_and_gradients_fp32(b, t, hkv, g, dk, dv, variants):
    q, k, v, gates, do = make(t + g, b, t, hkv, g, dk, dv)
    idx = shared_idx(q, k, v, SMALL)
    leaves64 = [x.clone().requires_grad_(True) for x in (q, k, v, gates)]
    want = R.nsa_attention(*leaves64, SMALL, block_idx=idx)
    want.backward(do)
    leaves32 = [x.float().requires_grad_(True) for x in (q, k, v, gates)]
    got = nsa_module.nsa_attention_variants(*leaves32, SMALL, variants, block_idx=idx)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel(got, want) < 1e-4
    got.backward(do.float())
    for name, a, w in zip("q k v gates".split(), leaves32, leaves64):
        assert rel(a.grad, w.grad) < 1e-3, name


def test_fp16_and_own_selection():
    q, k, v, gates, _ = make(5, 1, 96, 2, 2, 32, 32)
    got = nsa_kernels.nsa_attention(*(x.half() for x in (q, k, v, gates)), SMALL)
    idx = nsa_kernels.select_blocks(q.half(), nsa_kernels.compress_kv(k.half(), v.half(), SMALL)[0], SMALL)
    want = R.nsa_attention(q, k, v, gates, SMALL, block_idx=idx)
    assert got.dtype == torch.float16
    assert rel(got, want) < 1e-2


def test_compressed_kv_passed_in_gets_gradients():
    q, k, v, gates, do = make(6, 1, 64, 1, 2, 16, 16)
    idx = shared_idx(q, k, v, SMALL)
    kc64, vc64 = (x.clone().requires_grad_(True) for x in R.compress_kv(k, v, SMALL))
    R.nsa_attention(q, k, v, gates, SMALL, block_idx=idx, k_cmp=kc64, v_cmp=vc64).backward(do)
    kc32, vc32 = (x.detach().float().requires_grad_(True) for x in (kc64, vc64))
    nsa_kernels.nsa_attention(q.float(), k.float(), v.float(), gates.float(), SMALL, block_idx=idx, k_cmp=kc32,
                          v_cmp=vc32).backward(do.float())
    assert rel(kc32.grad, kc64.grad) < 1e-3 and rel(vc32.grad, vc64.grad) < 1e-3


def test_inference_forward_adds_gated_branches_in_place(monkeypatch):
    q, k, v, gates, _ = (x.float() for x in make(9, 2, 90, 2, 2, 32, 16))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, gates)]
    with_grad = nsa_kernels.nsa_attention(*leaves, SMALL).detach()

    def no_separate_gated_sum(*args):
        raise AssertionError("the inference forward must not materialise the branch outputs")

    monkeypatch.setattr(nsa_module, "gated_sum_fwd", no_separate_gated_sum)
    with torch.no_grad():
        in_place = nsa_kernels.nsa_attention(q, k, v, gates, SMALL)
    assert rel(in_place, with_grad) < 1e-5


def test_stage_callables_run():
    q, k, v, gates, do = (x.float() for x in make(7, 1, 70, 1, 2, 16, 16))
    fwd = nsa_module.forward_stages(q, k, v, gates, SMALL)
    assert list(fwd) == ["compress", "cmp_attn", "select", "slc_attn", "win_attn", "gated_sum"]
    out = fwd["gated_sum"]()
    assert rel(out, nsa_kernels.nsa_attention(q, k, v, gates, SMALL)) < 1e-6
    bwd = nsa_module.backward_stages(q, k, v, gates, do, SMALL)
    assert set(bwd) == {"gated_sum", "cmp_attn", "compress", "slc_attn", "win_attn"}
    for stage in bwd.values():
        stage()


def _tuners_launched(monkeypatch: pytest.MonkeyPatch, fn) -> set[int]:
    """The autotuners (by identity) whose kernels `fn` launches: through Tuner.run, or bypassed by the
    interpreter's fixed launch (`_selected_tiles.launcher`, `compressed.select_blocks`' v1 tile)."""
    from nsa_kernels import _common, _selected_tiles, compressed

    seen: set[int] = set()
    run, launcher, bypass = _common.Tuner.run, _selected_tiles.launcher, compressed.interpreter_config

    def record(kernel):
        seen.add(id(kernel))
        return kernel

    monkeypatch.setattr(_common.Tuner, "run", lambda self, *a, **kw: run(record(self), *a, **kw))
    monkeypatch.setattr(_selected_tiles, "launcher", lambda kernel, *a: launcher(record(kernel), *a))
    monkeypatch.setattr(compressed, "interpreter_config", lambda kernel: bypass(record(kernel)))
    fn()
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("g", [2, 16])
def test_stages_launch_the_autotuners_of_the_total(monkeypatch: pytest.MonkeyPatch, g: int):
    """A stage row explains the total it sits under: each stage runs the autotuners (so the configs) the
    timed total runs (the inference forward for fwd, the backward's dq chain for bwd), not twins of them."""
    q, k, v, gates, do = (x.float() for x in make(9, 1, 70, 1, g, 16, 16))
    fwd = nsa_module.forward_stages(q, k, v, gates, SMALL)
    stages = _tuners_launched(monkeypatch, lambda: [fwd[s]() for s in fwd if s != "gated_sum"])
    with torch.no_grad():
        total = _tuners_launched(monkeypatch, lambda: nsa_kernels.nsa_attention(q, k, v, gates, SMALL))
    assert stages == total and total
    bwd = nsa_module.backward_stages(q, k, v, gates, do, SMALL)
    stages = _tuners_launched(monkeypatch, lambda: [stage() for stage in bwd.values()])
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v, gates)]
    out = nsa_kernels.nsa_attention(*leaves, SMALL)
    total = _tuners_launched(monkeypatch, lambda: out.backward(do))
    assert stages == total and total


def test_bad_inputs_raise_value_error():
    q, k, v, gates, _ = (x.float() for x in make(8, 1, 40, 1, 2, 16, 16))
    with pytest.raises(ValueError, match="block_slc"):
        nsa_kernels.nsa_attention(q, k, v, gates, NSAConfig(block_cmp=16, stride_cmp=8, block_slc=48, n_slc=3))
    with pytest.raises(ValueError, match="gates"):
        nsa_kernels.nsa_attention(q, k, v, gates[..., :2], SMALL)
    with pytest.raises(ValueError, match="k_cmp"):
        nsa_kernels.nsa_attention(q, k, v, gates, SMALL, k_cmp=k[:, :3])


def test_backward_is_bit_reproducible_and_dq_sum_variants_agree():
    """The default backward (no atomics anywhere) gives identical bits twice; the in-kernel dq sum (v2)
    matches the summed branch dq (dq_sum=v1) to rounding."""
    q, k, v, gates, do = (x.float() for x in make(12, 1, 40, 1, 2, 16, 16))

    def grads(variants):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, gates)]
        nsa_module.nsa_attention_variants(*leaves, SMALL, variants).backward(do)
        return [x.grad for x in leaves]

    first, again = grads(V2), grads(V2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    summed = grads(dataclasses.replace(V2, dq_sum="v1"))
    assert rel(first[0], summed[0]) < 1e-6 and all(torch.equal(a, b) for a, b in zip(first[1:], summed[1:]))


# ------------------------------------------------------------------ packed batches (cu_seqlens, docs/varlen.md)
# With SMALL (l=16, d=8, l'=32): a length-1 document, an empty one, one shorter than l, one shorter than l', and
# longer ones whose boundaries fall inside compression and selection blocks (offsets 1, 13, 42, 112 are no
# multiple of 8, 16 or 32); 157 tokens in all.
PACKING = (1, 0, 12, 29, 70, 45)


def packed(seed: int, hkv: int, g: int, dk: int, dv: int, lengths: tuple[int, ...] = PACKING):
    from nsa_kernels import varlen

    return (*make(seed, 1, sum(lengths), hkv, g, dk, dv), varlen.cu_seqlens_of(lengths))


def packed_idx(q, k, v, cfg, cu):
    k_cmp, _ = R.compress_kv(k, v, cfg, cu)
    return R.select_blocks(q, k_cmp, cfg, cu_seqlens=cu)


@pytest.mark.parametrize("hkv,g,dk,dv", [(1, 2, 32, 16), (2, 1, 16, 16), (1, 16, 64, 32)],
                         ids=["G2-small-g", "G1", "G16-padded"])
def test_packed_forward_and_gradients_fp32(hkv, g, dk, dv):
    q, k, v, gates, do, cu = packed(20 + g, hkv, g, dk, dv)
    idx = packed_idx(q, k, v, SMALL, cu)
    leaves64 = [x.clone().requires_grad_(True) for x in (q, k, v, gates)]
    want = R.nsa_attention(*leaves64, SMALL, block_idx=idx, cu_seqlens=cu)
    want.backward(do)
    leaves32 = [x.float().requires_grad_(True) for x in (q, k, v, gates)]
    got = nsa_kernels.nsa_attention(*leaves32, SMALL, block_idx=idx, cu_seqlens=cu)
    assert got.shape == want.shape and rel(got, want) < 1e-4
    got.backward(do.float())
    for name, a, w in zip("q k v gates".split(), leaves32, leaves64):
        assert rel(a.grad, w.grad) < 1e-3, name
    with torch.no_grad():  # the inference forward (gated epilogues accumulating in place) too
        in_place = nsa_kernels.nsa_attention(*(x.float() for x in (q, k, v, gates)), SMALL, block_idx=idx,
                                             cu_seqlens=cu)
    assert rel(in_place, want) < 1e-4


def test_packed_equals_each_sequence_alone_and_own_selection_is_valid():
    from nsa_bench import selection
    from nsa_kernels import varlen

    q, k, v, gates, _, cu = (x.float() if x.is_floating_point() else x for x in packed(31, 1, 4, 32, 16))
    k_cmp, _ = nsa_kernels.compress_kv(k, v, SMALL, cu)
    idx = nsa_kernels.select_blocks(q, k_cmp, SMALL, cu_seqlens=cu)
    scores = R.block_scores(q.double(), R.compress_kv(k.double(), v.double(), SMALL, cu)[0], SMALL, cu_seqlens=cu)
    assert selection.violation(idx, scores, SMALL, selection.SCORE_TOLERANCE["float32"], cu) is None
    got = nsa_kernels.nsa_attention(q, k, v, gates, SMALL, block_idx=idx, cu_seqlens=cu)
    for s, e in varlen.spans(cu, q.shape[1]):
        if e > s:
            alone = nsa_kernels.nsa_attention(q[:, s:e], k[:, s:e], v[:, s:e], gates[:, s:e], SMALL,
                                              block_idx=idx[:, s:e])
            assert rel(got[:, s:e], alone) < 1e-5, (s, e)


def test_packed_decode_is_the_last_row_of_each_sequence():
    from nsa_kernels import varlen

    lengths = (1, 12, 29, 70, 45)  # decode batches have no empty sequence: cache_seqlens lie in 1..Tmax
    q, k, v, gates, _, cu = packed(40, 1, 2, 32, 16, lengths)
    want = varlen.last_rows(R.nsa_attention(q, k, v, gates, SMALL, cu_seqlens=cu), cu)
    q1, gates1 = (varlen.last_rows(x.float(), cu) for x in (q, gates))
    caches = (varlen.pad_packed(x.float(), cu) for x in (k, v))
    got = nsa_kernels.nsa_decode(q1, *caches, gates1, torch.tensor(lengths, dtype=torch.int32), SMALL)
    assert got.shape == want.shape and rel(got, want) < 1e-4


def test_packed_stage_callables_run():
    q, k, v, gates, do, cu = (x.float() if x.is_floating_point() else x for x in packed(50, 1, 2, 16, 16))
    fwd = nsa_module.forward_stages(q, k, v, gates, SMALL, cu_seqlens=cu)
    assert rel(fwd["gated_sum"](), nsa_kernels.nsa_attention(q, k, v, gates, SMALL, cu_seqlens=cu)) < 1e-6
    for stage in nsa_module.backward_stages(q, k, v, gates, do, SMALL, cu_seqlens=cu).values():
        stage()


def test_packed_bad_inputs_name_the_argument():
    from nsa_kernels import varlen

    q, k, v, gates, _, cu = (x.float() if x.is_floating_point() else x for x in packed(60, 1, 2, 16, 16))
    with pytest.raises(ValueError, match="cu_seqlens ends at"):
        nsa_kernels.nsa_attention(q, k, v, gates, SMALL, cu_seqlens=varlen.cu_seqlens_of((3, 4)))
    with pytest.raises(ValueError, match="batch size 1"):
        two = [torch.cat([x, x]) for x in (q, k, v, gates)]
        nsa_kernels.nsa_attention(*two, SMALL, cu_seqlens=cu)
    with pytest.raises(ValueError, match="v2 kernels.*win=v1"):
        nsa_module.nsa_attention_variants(q, k, v, gates, SMALL, dataclasses.replace(V2, win="v1"), cu_seqlens=cu)
    with pytest.raises(ValueError, match="v2 kernels"):
        nsa_module.nsa_attention_variants(q, k, v, gates, SMALL, V1, cu_seqlens=cu)
    dense_cmp = nsa_kernels.compress_kv(k, v, SMALL)  # Tc of the whole row: not the packed layout
    with pytest.raises(ValueError, match="k_cmp"):
        nsa_kernels.nsa_attention(q, k, v, gates, SMALL, k_cmp=dense_cmp[0], v_cmp=dense_cmp[1], cu_seqlens=cu)
