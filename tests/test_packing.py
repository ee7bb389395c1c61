"""kernels/packing.py: cu_seqlens read once per NSA call. A Packing given as cu_seqlens gives the same results
as the tensor and no kernel wrapper reads or copies the offsets again."""
from __future__ import annotations

import pytest
import torch

import nsa_kernels
from nsa_kernels import packing as packing_module
from nsa_kernels import varlen
from nsa_kernels.config import NSAConfig
from nsa_kernels.packing import Packing

pytestmark = pytest.mark.interpreter

CFG = NSAConfig(block_cmp=16, stride_cmp=8, block_slc=32, n_slc=3, window=24)
LENGTHS = (1, 0, 12, 29, 50)


def _inputs(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    total, hkv, g = sum(LENGTHS), 1, 2
    q = torch.randn(1, total, hkv * g, 16, generator=gen)
    k, v = torch.randn(1, total, hkv, 16, generator=gen), torch.randn(1, total, hkv, 16, generator=gen)
    return q, k, v, torch.rand(1, total, hkv * g, 3, generator=gen), torch.randn(1, total, hkv * g, 16, generator=gen)


def test_offsets_of_every_block_kind():
    cu = varlen.cu_seqlens_of(LENGTHS)
    packing = Packing.of(cu, sum(LENGTHS), 1, torch.device("cpu"), 16, 8, 32)
    assert packing.lengths == LENGTHS and packing.num_seqs == 5 and packing.max_len == 50
    assert packing.cmp_cu.tolist() == varlen.cmp_cu_seqlens(cu, CFG).tolist() == [0, 0, 0, 0, 2, 7]
    assert packing.slc_cu.tolist() == [0, 1, 1, 2, 3, 5]
    assert Packing.of(packing, sum(LENGTHS), 1, torch.device("cpu"), 16, 8, 32) is packing  # nothing to add
    assert Packing.of(packing, sum(LENGTHS), 1, torch.device("cpu"), block_slc=64).slc_cu.tolist() == [0, 1, 1, 2, 3, 4]


def test_a_packing_is_read_once_and_gives_the_tensors_results(monkeypatch):
    q, k, v, gates, do = _inputs()
    cu = varlen.cu_seqlens_of(LENGTHS)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, gates)]
    want = nsa_kernels.nsa_attention(*leaves, CFG, cu_seqlens=cu)
    want.backward(do)
    packing = Packing.of(cu, q.shape[1], 1, q.device, CFG.block_cmp, CFG.stride_cmp, CFG.block_slc)

    def no_read(*args, **kwargs):
        raise AssertionError("a kernel wrapper read cu_seqlens again")

    monkeypatch.setattr(varlen, "spans", no_read)
    monkeypatch.setattr(packing_module.varlen, "cu_seqlens_of", no_read)  # nor copies offsets to the device
    again = [x.clone().requires_grad_(True) for x in (q, k, v, gates)]
    got = nsa_kernels.nsa_attention(*again, CFG, cu_seqlens=packing)
    got.backward(do)
    assert torch.equal(got, want)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(again, leaves))


def test_a_packing_of_other_tensors_is_refused():
    q, k, v, gates, _ = _inputs()
    packing = Packing.of(varlen.cu_seqlens_of(LENGTHS), q.shape[1], 1, q.device)
    with pytest.raises(ValueError, match="cu_seqlens ends at 92 but the packed tensors hold 91"):
        nsa_kernels.nsa_attention(q[:, :-1], k[:, :-1], v[:, :-1], gates[:, :-1], CFG, cu_seqlens=packing)
    with pytest.raises(ValueError, match="cu_seqlens \\(a Packing\\) is on cpu"):
        packing.check(92, 1, torch.device("meta"))


def test_a_max_seqlen_hint_with_a_device_cu_seqlens_is_trusted():
    """flash_attention's hint path (docs/varlen.md): a cu_seqlens already on a device is not read back (a meta
    tensor has no values to read); the kernels that need the lengths refuse such a Packing by name."""
    cu = varlen.cu_seqlens_of(LENGTHS).to("meta")
    packing = Packing.of(cu, sum(LENGTHS), 1, torch.device("meta"), max_seqlen=50)
    assert packing.lengths is None and packing.num_seqs == 5 and packing.max_len == 50 and packing.cu.is_meta
    with pytest.raises(ValueError, match="cu_seqlens: this Packing trusted a max_seqlen hint"):
        packing.cmp_counts(16, 8)
    with pytest.raises(ValueError, match="1-D int32"):
        Packing.of(cu.to(torch.int64), sum(LENGTHS), 1, torch.device("meta"), max_seqlen=50)


def test_one_grid_limit_for_every_kernel():
    """CUDA's 65535 per grid axis, checked in one place: sequences alone (flash, selected: axis 2) or
    sequences x heads (the compressed kernels: axis 1), the message naming cu_seqlens and the limit."""
    packing = Packing.of(varlen.cu_seqlens_of([1] * 16384), 16384, 1, torch.device("cpu"))
    packing.check_grid("selected")
    with pytest.raises(ValueError, match="cu_seqlens holds 16384 sequences: the compressed kernels run sequences x 4 "
                                         "heads on one grid axis of at most 65535, so pack at most 16383 sequences"):
        packing.check_grid("compressed", heads=4)
