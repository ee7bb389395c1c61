"""Autotune keys hold size buckets, so the 1k correctness check never picks a 64k point's config."""
from __future__ import annotations

import pytest

import torch

from nsa_bench.compilecheck.entries import kernel_modules
from nsa_bench.compilecheck.recorder import record_launches
from nsa_kernels import tuning
from nsa_kernels._common import TUNING_ARGS, size_bucket, tuning_buckets
from nsa_kernels.config import NSAConfig

pytestmark = pytest.mark.interpreter

CFG = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=4, window=64)


def test_size_bucket_is_the_bit_length():
    assert [size_bucket(n) for n in (0, 1, 1023, 1024, 2047, 65536)] == [1, 1, 10, 11, 11, 17]
    assert tuning_buckets(65536, 64) == {"SEQ_BUCKET": 17, "ROWS_BUCKET": 7}


def test_every_autotuned_kernel_keys_on_the_buckets_without_specialising_them():
    found = dict(tuning.autotuners())
    assert len(found) >= 10, sorted(found)
    assert tuning.keys_hold_size_buckets() == []
    for name, tuner in found.items():
        jit = tuner.fn  # the interpreter's InterpretedFunction keeps the jit decorator's arguments
        for arg in TUNING_ARGS:
            assert arg in jit.arg_names, f"{name} takes no {arg}"
            assert arg in jit.kwargs["do_not_specialize"], f"{name} specialises {arg} (a new compile per bucket)"


def _tuning_keys(seqlen: int) -> dict[str, tuple]:
    """The key each autotuned launch of a forward + backward would look up, at `seqlen`."""
    from nsa_kernels import nsa

    gen = torch.Generator().manual_seed(0)
    b, hkv, group, dk, dv = 1, 1, 2, 16, 16
    q = torch.randn(b, seqlen, hkv * group, dk, generator=gen, requires_grad=True)
    k = torch.randn(b, seqlen, hkv, dk, generator=gen, requires_grad=True)
    v = torch.randn(b, seqlen, hkv, dv, generator=gen, requires_grad=True)
    gates = torch.rand(b, seqlen, hkv * group, 3, generator=gen, requires_grad=True)
    block_idx = torch.zeros(b, seqlen, hkv, CFG.n_slc, dtype=torch.int32)

    def host() -> None:
        out = nsa.nsa_attention(q, k, v, gates, CFG, block_idx=block_idx)
        out.backward(torch.ones_like(out))

    keys: dict[str, tuple] = {}
    for launch in record_launches(kernel_modules(), host):
        tuner = launch.kernel
        if not hasattr(tuner, "keys"):
            continue
        named = {**dict(zip(tuner.arg_names, launch.args)), **launch.kwargs}
        keys[tuner.base_fn.__name__] = tuple(named[name] for name in tuner.keys)
        assert named["SEQ_BUCKET"] == size_bucket(seqlen)
        assert named["ROWS_BUCKET"] == size_bucket(b * hkv * group)
    return keys


def test_a_short_check_and_a_long_point_look_up_different_configs():
    short, long = _tuning_keys(1024), _tuning_keys(65536)
    assert set(short) == set(long) and len(short) >= 5, sorted(short)
    assert all(short[name] != long[name] for name in short)


def test_chosen_configs_report_each_key(monkeypatch):
    """Under the interpreter nothing is tuned (one config), so a choice is planted in one tuner's cache: it
    comes back named by the tuner's key arguments, the tensor dtypes apart, and the config as Triton prints it."""
    name, tuner = next(iter(tuning.autotuners()))
    key = tuple(range(len(tuner.keys))) + ("torch.float16",)
    monkeypatch.setattr(tuner, "cache", {key: tuner.configs[0]})
    (choice,) = [c for c in tuning.chosen_configs() if c.kernel == name]
    assert choice.as_dict() == {"kernel": name, "key": {**dict(zip(tuner.keys, range(len(tuner.keys)))),
                                                         "dtypes": ["torch.float16"]}, "config": str(tuner.configs[0])}


def test_tuning_json_lists_every_autotuner_of_the_kernel_package():
    """tuning.json is written from `tuning.autotuners()`: a tuned kernel in a module it does not list would
    run with a config no run folder records."""
    import importlib
    import pkgutil

    from triton.runtime.autotuner import Autotuner

    import nsa_kernels

    everywhere = {id(value) for info in pkgutil.iter_modules(nsa_kernels.__path__)
                  for value in vars(importlib.import_module(f"nsa_kernels.{info.name}")).values()
                  if isinstance(value, Autotuner)}
    assert everywhere and everywhere == {id(tuner) for _, tuner in tuning.autotuners()}
