"""The one `nsa-bench sweep` command that re-runs exactly one point, as a run measured it.

A gate that names a suspect should hand over the way to look at it again: every axis value of the point
(its Point fields, packed documents and layer width included) and the run's measurement settings (its
spec.json: reps, warmup, seed, check length, CUDA graphs, GPU spec, baseline), spelled with the sweep's
own flags and syntax, so that pasting the line into a shell reproduces the row and nothing else.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from nsa_bench.doclens import size_text
from nsa_bench.results import SPEC_NAME, ResultsError, read_json
from nsa_bench.spec import Point, SweepSpec

PROGRAM = "nsa-bench"

# Point field -> the sweep flag that sets it (head dims and d_model are spelled apart, see _axis_flags)
_SIZE_FLAGS = {"seqlen": "--seqlen", "batch": "--batch", "kv_heads": "--kv-heads", "group_size": "--group-size",
               "block_cmp": "--block-cmp", "stride_cmp": "--stride-cmp", "block_slc": "--block-slc",
               "n_slc": "--n-slc", "window": "--window"}
_TEXT_FLAGS = {"mode": "--mode", "dtype": "--dtype", "doc_lens": "--doc-lens"}
FLAG_OF_FIELD = {**_SIZE_FLAGS, **_TEXT_FLAGS, "head_dim_qk": "--head-dim", "head_dim_v": "--head-dim",
                 "d_model": "--d-model"}
"""Every Point field and the flag that carries it (a test keeps this complete as Point grows)."""


def settings_of(record: dict) -> SweepSpec:
    """A run's measurement settings (its spec.json as a dict) for re-running one point of it: one baseline,
    the one its speedups are against (further baselines do not change the point's own time)."""
    return replace(SweepSpec.from_dict(record), more_baselines=())


def run_settings(folder: Path) -> tuple[SweepSpec, str]:
    """The measurement settings of the run in `folder`, and, when they could not be read, why (the sweep's
    defaults stand in for them then, and whoever prints a command says so)."""
    try:
        record = read_json(Path(folder) / SPEC_NAME)
    except ResultsError as exc:
        return SweepSpec(), str(exc)
    if not record:
        return SweepSpec(), f"no {SPEC_NAME} in {folder}"
    try:
        return settings_of(record), ""
    except (ValueError, TypeError) as exc:
        return SweepSpec(), f"{Path(folder) / SPEC_NAME} is not a sweep's spec ({exc})"


def _axis_flags(point: Point) -> list[str]:
    """The flags that make a sweep of exactly `point` (its mode fixes whether d_model applies: a layer
    width on a layer point; attention-only points carry 0, which no flag spells)."""
    args = ["--mode", point.mode, "--dtype", point.dtype]
    for name, flag in _SIZE_FLAGS.items():
        args += [flag, size_text(int(getattr(point, name)))]
    args += ["--head-dim", f"{point.head_dim_qk}-{point.head_dim_v}", "--doc-lens", point.doc_lens]
    if point.is_layer:
        args += ["--d-model", str(point.d_model)]
    return args


def _setting_flags(settings: SweepSpec) -> list[str]:
    args = ["--reps", str(settings.reps), "--warmup", str(settings.warmup), "--seed", str(settings.seed),
            "--check-seqlen", size_text(settings.check_seqlen),
            "--cuda-graph" if settings.cuda_graph else "--no-cuda-graph"]
    return args + (["--gpu", settings.gpu] if settings.gpu else [])


def sweep_command(point: Point, backends: Sequence[str], settings: SweepSpec) -> str:
    """`nsa-bench sweep ...` for `point` on `backends` against `settings.baseline`, measured as `settings`
    says; shell-quoted. Without a GPU spec in the settings the sweep takes the GPU present (else h100), as
    the run did."""
    args = [PROGRAM, "sweep", *_axis_flags(point), "--backend", ",".join(dict.fromkeys(backends)),
            "--baseline", settings.baseline, *_setting_flags(settings)]
    return shlex.join(args)
