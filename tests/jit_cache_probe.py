"""Stand-in for the sweep's process on a GPU: do its JIT launches find what precompile compiled?

Run as `python tests/jit_cache_probe.py BACKEND MODE SEQLEN` without TRITON_INTERPRET (as a GPU run
is) and with the precompile's TRITON_CACHE_DIR. No GPU is needed: Triton's active driver is replaced
by one that reports an sm_90 device, the backend's workload is built on real (CPU) tensors from the
sweep's own seeded inputs, its kernel launches are recorded, and every config the autotuner would
try is passed to `JITFunction.run(..., warmup=True)` — JITFunction's own key computation and
compile-or-load path, stopping before a launch. Triton's compilation listener reports whether each
came from the on-disk cache. Prints one JSON line: {"hits": n, "misses": m}.
"""
from __future__ import annotations

import json
import os
import sys

from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver


class Sm90Driver:
    """Just enough of a CUDA driver for JITFunction.run with warmup=True (compile, no launch)."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)


def probe_spec(backend: str, mode: str, seqlen: int):
    """The one-point sweep both the precompile test and this probe use."""
    from nsa_bench.spec import SweepSpec

    return SweepSpec(seqlens=(seqlen,), kv_heads=(1,), group_sizes=(2,), head_dims=((16, 16),), modes=(mode,),
                     dtypes=("float16",), block_slc=(32,), n_slc=(3,), window=(32,), backends=(backend,),
                     baseline=backend, check_seqlen=seqlen)


def main(backend_name: str, mode: str, seqlen: int) -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "the probe stands in for a GPU run"
    from nsa_bench.backends import registry
    from nsa_bench.inputs import make_inputs
    from nsa_bench.compilecheck.entries import kernel_modules
    from nsa_bench.compilecheck.recorder import expand, record_launches

    spec = probe_spec(backend_name, mode, seqlen)
    point = spec.points()[0][0]
    backend = registry()[backend_name]
    inputs = make_inputs(point, "cpu", spec.seed)
    driver.set_active(Sm90Driver())

    def timed() -> None:  # what the runner does at a point: build (may launch), the timed call, each stage
        workload = backend.build(point, inputs)
        workload.run()
        for stage in workload.stages.values():
            stage()

    launches = record_launches(kernel_modules(), timed)
    outcomes: list[bool] = []
    knobs.compilation.listener = lambda **event: outcomes.append(bool(event["cache_hit"]))
    for launch in launches:
        for jit, kwargs in expand(launch):
            jit.run(*launch.args, grid=launch.grid, warmup=True, **kwargs)
    print(json.dumps({"hits": sum(outcomes), "misses": len(outcomes) - sum(outcomes), "launches": len(launches)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
