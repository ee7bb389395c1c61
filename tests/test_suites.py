"""Suites and flags become one SweepSpec; bad values name their flag."""
import pytest

from nsa_bench.spec import SweepSpec
from nsa_bench.suites import OptionError, build_spec, load_suite, suite_names


def test_shipped_suites_load():
    assert {"paper", "smoke"} <= set(suite_names())
    for name in suite_names():
        spec = build_spec(name, {})
        points, invalid = spec.points()
        assert points and not invalid


def test_paper_suite_is_the_paper_configuration():
    spec = build_spec("paper", {})
    assert spec.seqlens == (8192, 16384, 32768, 65536)
    assert (spec.kv_heads, spec.group_sizes, spec.head_dims) == ((4,), (16,), ((192, 128),))
    assert (spec.block_cmp, spec.stride_cmp, spec.block_slc, spec.n_slc, spec.window) == ((32,), (16,), (64,), (16,), (512,))
    assert set(spec.modes) == {"fwd", "bwd", "decode"}


def test_flags_override_suite_and_defaults():
    spec = build_spec("smoke", {"seqlen": "4k", "mode": "fwd", "dtype": "fp16", "batch": None})
    assert spec.seqlens == (4096,) and spec.modes == ("fwd",) and spec.dtypes == ("float16",)
    assert build_spec(None, {}) == SweepSpec()


@pytest.mark.parametrize(
    "flags,flag",
    [({"seqlen": "64k..8k"}, "seqlen"), ({"batch": "0"}, "batch"), ({"head-dim": "192x128"}, "head-dim"),
     ({"mode": "fwd,sideways"}, "mode"), ({"dtype": "int8"}, "dtype"), ({"reps": "0"}, "reps"),
     ({"kv-heads": "-1"}, "kv-heads")],
)
def test_bad_flags_name_the_flag(flags, flag):
    with pytest.raises(OptionError) as info:
        build_spec(None, flags)
    assert info.value.flag == flag
    assert f"--{flag}" in str(info.value)


def test_unknown_suite():
    with pytest.raises(OptionError, match="no such suite"):
        load_suite("nope")


def test_invalid_combinations_are_reported_not_dropped():
    spec = build_spec(None, {"stride-cmp": "16,24", "seqlen": "1k"})
    points, invalid = spec.points()
    assert len(points) == len(spec.modes)
    assert len(invalid) == len(spec.modes)
    assert "stride_cmp=24" in invalid[0][1]


def test_baseline_list_first_is_the_csv_baseline_and_all_run():
    spec = build_spec(None, {"baseline": "fa2,cudnn", "backend": "nsa-triton"})
    assert spec.baseline == "fa2" and spec.more_baselines == ("cudnn",)
    assert spec.baselines == ("fa2", "cudnn")
    assert spec.run_backends == ("nsa-triton", "fa2", "cudnn")  # baselines run even when --backend omits them
    assert build_spec(None, {"baseline": "cudnn"}).more_baselines == ()


def test_d_model_applies_to_layer_modes_only():
    spec = build_spec(None, {"mode": "fwd,layer-fwd,layer-bwd", "d-model": "1024,2560", "seqlen": "1k"})
    points, invalid = spec.points()
    assert not invalid
    assert [(p.mode, p.d_model) for p in points] == [
        ("fwd", 0), ("layer-fwd", 1024), ("layer-fwd", 2560), ("layer-bwd", 1024), ("layer-bwd", 2560)]
    assert "d_model=1024" in points[1].label() and "d_model" not in points[0].label()
    assert SweepSpec().d_models == (2560,)  # the NSA paper's model (spec.PAPER_D_MODEL)


def test_bad_d_model_names_its_flag():
    with pytest.raises(OptionError) as info:
        build_spec(None, {"d-model": "0"})
    assert info.value.flag == "d-model"
