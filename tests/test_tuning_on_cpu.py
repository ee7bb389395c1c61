"""The autotuners on the CPU (they never run there otherwise): under the interpreter the tuned wrappers keep
every GPU config and tune (kernels/overrides.py `tune`), Triton's benchmark stubbed so that each config runs
once. The prune hooks run; every accumulating kernel's result after tuning equals a run of the chosen config
without tuning (so `restore_value` and `reset_to_zero` hold); and the memory model counts the copies
tuning makes (nsa_bench.memory.tuning_clone_bytes)."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest
import torch
import triton

import nsa_kernels
from nsa_bench import memory
from nsa_bench.launchplan.probes import ProbeInputs, ProbeShape, make_inputs
from nsa_bench.spec import Point
from nsa_kernels import compressed, flash, nsa, selected
from nsa_kernels._common import Tuner
from nsa_kernels.config import NSAConfig
from nsa_kernels.overrides import kernel_name, overriding

pytestmark = pytest.mark.interpreter

CFG = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=3, window=40)


def _tuners() -> list[Tuner]:
    tuners = []
    for info in pkgutil.iter_modules(nsa_kernels.__path__):
        module = importlib.import_module(f"nsa_kernels.{info.name}")
        tuners += [v for v in vars(module).values() if isinstance(v, Tuner)]
    return list({id(t): t for t in tuners}.values())


@dataclass
class Tuning:
    """What tuning did: prune-hook calls and configs timed per kernel, the bytes each trial's restore copies
    took, and the config each kernel's last tuning chose."""

    pruned: Counter = field(default_factory=Counter)
    trials: Counter = field(default_factory=Counter)
    copies: list[int] = field(default_factory=list)
    chosen: dict[str, triton.Config] = field(default_factory=dict)


@contextlib.contextmanager
def tuning_on_cpu(monkeypatch: pytest.MonkeyPatch, run_trials: bool = True) -> Iterator[Tuning]:
    """Every autotuner tunes, from an empty cache; the stub benchmark runs each config once (or, with
    run_trials=False, not at all) and gives the k-th config timed 1 + 7k mod 5, so the choice is not simply
    the first config."""
    record = Tuning()
    tuners = _tuners()
    for tuner in tuners:
        name = kernel_name(tuner)
        monkeypatch.setattr(tuner, "cache", {})

        def bench(kernel_call: Callable[[], None], quantiles, tuner=tuner, name=name):
            record.copies.append(sum(tuner.nargs[n].numel() * tuner.nargs[n].element_size()
                                     for n in tuner.restore_value))
            if run_trials:
                kernel_call()
            t = 1.0 + (7 * record.trials[name]) % 5
            record.trials[name] += 1
            return [t, t, t]

        monkeypatch.setitem(tuner.__dict__, "do_bench", bench)  # Autotuner.do_bench is a cached_property
        if tuner.early_config_prune is not None:
            def prune(configs, named_args, prune=tuner.early_config_prune, name=name, **kwargs):
                record.pruned[name] += 1
                return prune(configs, named_args, **kwargs)

            monkeypatch.setattr(tuner, "early_config_prune", prune)
    with overriding(tune=True, gpu_sizes=True):
        yield record
    for tuner in tuners:
        for config in tuner.cache.values():
            record.chosen[kernel_name(tuner)] = config


def _inputs(group: int) -> ProbeInputs:
    """A few programs per launch: every config of the tuners runs once, so the shape is the least that has
    a compressed block and a partial selection block."""
    return make_inputs(ProbeShape("slc_bwd", 40, group, dk=32, dv=16, cfg=CFG))


def _flash_accumulate(inp: ProbeInputs) -> tuple[torch.Tensor, ...]:
    out = inp.out0.clone()
    return flash.attention_fwd(inp.q, inp.k, inp.v, inp.scale, CFG.window, out=out, gates=inp.gates, gate_index=2,
                               accumulate=True)


def _compressed_accumulate(inp: ProbeInputs) -> tuple[torch.Tensor, ...]:
    out = inp.out0.clone()
    return compressed.compressed_fwd(inp.q, inp.k_cmp, inp.v_cmp, CFG, inp.scale, out=out, gates=inp.gates,
                                     gate_index=0, accumulate=True)


def _selected_accumulate(inp: ProbeInputs) -> tuple[torch.Tensor, ...]:
    out = inp.out0.clone()
    return selected.selected_fwd(inp.q, inp.k, inp.v, inp.block_idx, CFG.block_slc, inp.scale, out=out,
                                 gates=inp.gates, gate_index=1, accumulate=True, small_g="padded")


def _selected_bwd(small_g: str, deterministic: bool, in_place: bool) -> Callable[[ProbeInputs], tuple]:
    def run(inp: ProbeInputs) -> tuple[torch.Tensor, ...]:
        o, lse = inp.out0, torch.zeros(inp.q.shape[:3])
        acc = inp.acc.clone() if in_place else None
        return selected.selected_bwd(inp.q, inp.k, inp.v, o, lse, inp.do, inp.block_idx, CFG.block_slc, inp.scale,
                                     deterministic, dq_out=acc, dq_add=acc, small_g=small_g)
    return run


ACCUMULATING = {  # wrapper -> (its accumulating launch's tuner, what that tuner must keep right)
    "flash-gated-accumulate": (_flash_accumulate, "flash._fwd_kernel"),  # restore_value o
    "compressed-gated-accumulate": (_compressed_accumulate, "compressed._cmp_fwd_kernel"),  # restore_value O
    "selected-gated-accumulate": (_selected_accumulate, "selected._selected_fwd_tile_kernel"),  # restore o_ptr
    "selected-dq-in-place": (_selected_bwd("padded", True, True), "selected._selected_dq_tile_kernel"),  # dq_ptr
    "selected-dkdv-atomic": (_selected_bwd("padded", False, False), "selected._selected_dkdv_body"),  # reset
    "small-g-dkdv-atomic": (_selected_bwd("small_g", False, False),
                            "selected_small_g._block_outer_bwd_body"),  # reset_to_zero dk, dv
}


@pytest.mark.parametrize("name", list(ACCUMULATING))
def test_tuned_result_equals_the_chosen_config_untuned(monkeypatch: pytest.MonkeyPatch, name: str):
    run, kernel = ACCUMULATING[name]
    inp = _inputs(group=2)
    with tuning_on_cpu(monkeypatch) as tuning:
        tuned = run(inp)
    assert tuning.pruned[kernel] >= 1 and tuning.trials[kernel] >= 2, (kernel, tuning.pruned, tuning.trials)
    assert kernel in tuning.chosen
    with overriding(gpu_sizes=True, pins=tuning.chosen):
        untuned = run(inp)
    for i, (a, b) in enumerate(zip(tuned, untuned)):
        assert torch.equal(a, b), (f"{name}: output {i} after tuning {kernel} over {tuning.trials[kernel]} configs "
                                   f"differs from its chosen config [{tuning.chosen[kernel]}] run once: max "
                                   f"difference {(a.double() - b.double()).abs().max().item():.3g}")


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("group", [16, 4])
def test_memory_model_counts_what_tuning_copies(monkeypatch: pytest.MonkeyPatch, mode: str, group: int):
    """NSA as the benchmark runs it (fwd: the inference forward; bwd: the backward through the dq chain),
    tuned: the largest copy a trial makes is what the memory model adds for tuning."""
    point = Point(mode, 70, 1, 1, group, 48, 32, CFG.block_cmp, CFG.stride_cmp, CFG.block_slc, CFG.n_slc,
                  CFG.window, "float32")
    inp = make_inputs(ProbeShape("slc_bwd", 70, group, cfg=CFG))
    if mode == "fwd":
        with tuning_on_cpu(monkeypatch, run_trials=False) as tuning, torch.no_grad():
            nsa.nsa_attention(inp.q, inp.k, inp.v, inp.gates, CFG, block_idx=inp.block_idx)
    else:
        leaves = [t.detach().requires_grad_(True) for t in (inp.q, inp.k, inp.v, inp.gates)]
        out = nsa.nsa_attention(*leaves, CFG, block_idx=inp.block_idx)
        with tuning_on_cpu(monkeypatch, run_trials=False) as tuning:
            out.backward(inp.do)
    assert max(tuning.copies, default=0) == memory.tuning_clone_bytes(point), (tuning.copies, point)
    assert sum(tuning.trials.values()) > 0
