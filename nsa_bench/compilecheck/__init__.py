"""Compile the kernels' real launches for a GPU (sm_90: H100, H200) without running them: no GPU needed.

Developer tooling of the suite, not part of the kernel package. Triton's CPU interpreter accepts code the
GPU compiler rejects (small or non-power-of-two dot tiles, shared-memory overflow) and says nothing about
register spills; this closes the gap, and is the one code path behind the sm_90 compile check
(tests/test_gpu_compile.py) and `nsa-bench precompile`:

- `case`: what to compile, one public entry point at one shape (`Case`);
- `results`: what comes back (`CompileResult`, `CaseReport`; a precompile's `CasePlan`s);
- `table`: the shapes the compile check compiles; `python -m nsa_bench.compilecheck [entry ...]` prints
  registers, spills and shared memory of every config of every case;
- `entries`: the host code of each entry point, run on `meta` tensors (shapes and dtypes only, so T = 64k
  costs nothing); `selftest`: kernels with known outcomes;
- `recorder`: runs host code with every kernel replaced by a recorder (`kernel[grid](...)` becomes a
  `Launch`) and expands a launch into every config the GPU autotuner would try;
- `compiler`: binds each config as `JITFunction.run` would, compiles it for the target and reads registers,
  spills (LOCAL/STACK) and shared memory from the cubin with the `cuobjdump` in Triton's wheel;
- `service`: the worker process that records and compiles, started with TRITON_INTERPRET=0 (a process
  that imported Triton under the interpreter holds `InterpretedFunction`s that `triton.compile` rejects);
  `protocol`: its JSON-lines requests and answers;
- `pool`: worker processes driven in parallel by one pool loop, for whole cases (the check) and for
  planned, deduplicated configs (precompile).
"""
