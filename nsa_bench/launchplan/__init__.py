"""The GPU launch plan of a sweep and the interpreter tests that run it first.

Every kernel launch a sweep may time on a GPU (each kernel x code path x tile x warps x stages its
autotuners may pick, after pruning, at every timed shape and at the check shape) must first have run
in a correctness test, with that config pinned, on the CPU interpreter (DESIGN.md, "Test what the GPU
will run"). This package says which launches those are and which test runs each:

- `keys`: what one launch is (`LaunchKey`: kernel, code-path constexprs, tile, warps, stages);
- `probes`: the least host code reaching each kernel, runnable against the float64 reference with
  configs pinned (`check`), and recordable on meta tensors (what it launches);
- `executed`: the launches the interpreter actually runs (for tests);
- `planner`: a sweep's launches (recorded by the compile check's TRITON_INTERPRET=0 workers), and the
  probe runs (small shapes, configs pinned) that reach each of them;
- `planfile`: the committed plan of the shipped suites (tests/launch_plan.json), read and written;
- `coverage`: covered / total per kernel; `python -m nsa_bench.launchplan` prints it or rewrites the file.
"""
