"""Inputs drawn on the device from a seeded generator: same seed and device, same inputs; never zeros."""
from __future__ import annotations

import pytest
import torch

from nsa_bench import inputs as inputs_mod
from nsa_bench.inputs import empty_inputs, input_samples, input_shapes, make_inputs
from nsa_bench.spec import SweepSpec

SPEC = SweepSpec(seqlens=(48,), kv_heads=(2,), group_sizes=(3,), head_dims=((16, 8),), modes=("fwd", "bwd", "decode"))
POINTS = {p.mode: p for p in SPEC.points()[0]}


@pytest.mark.parametrize("mode", ["fwd", "bwd", "decode"])
def test_same_seed_same_inputs_other_seed_other_inputs(mode):
    point = POINTS[mode]
    a, b, c = make_inputs(point, "cpu", 11), make_inputs(point, "cpu", 11), make_inputs(point, "cpu", 12)
    for name, shape in input_shapes(point).items():
        x, y, z = getattr(a, name), getattr(b, name), getattr(c, name)
        assert tuple(x.shape) == shape and x.dtype == torch.bfloat16 and x.device.type == "cpu"
        assert torch.equal(x, y) and not torch.equal(x, z)
        assert (x != 0).float().mean() > 0.9  # random, never zeros
    assert 0 <= float(a.gates.min()) and float(a.gates.max()) <= 1  # [0, 1) rounded to bf16
    if mode == "decode":
        assert a.cache_seqlens.tolist() == [48] and a.cache_seqlens.dtype == torch.int32
    assert (a.do is not None) == (mode == "bwd")


def test_numbers_come_from_a_generator_on_the_device(monkeypatch):
    """The generator is made for the inputs' device (a GPU run draws on the GPU, no host copy)."""
    made: list[object] = []
    real = torch.Generator

    def spy(device="cpu"):
        made.append(device)
        return real(device=device)

    monkeypatch.setattr(inputs_mod.torch, "Generator", spy)
    make_inputs(POINTS["fwd"], "cpu", 0)
    assert made == ["cpu"]


def test_empty_inputs_have_the_same_shapes_and_no_memory():
    point = POINTS["bwd"]
    meta = empty_inputs(point, "meta", with_block_idx=True)
    real = make_inputs(point, "cpu", 0)
    for name in input_shapes(point):
        assert getattr(meta, name).shape == getattr(real, name).shape and getattr(meta, name).is_meta
    assert tuple(meta.block_idx.shape) == (1, 48, 2, point.n_slc) and meta.block_idx.dtype == torch.int32
    assert input_samples(point) == sum(getattr(real, n).numel() for n in input_shapes(point))
