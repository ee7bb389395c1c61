"""kernels/variants.py: NSA_KERNEL_VARIANT parsing, labels, and what the nsa-triton backend records."""
from __future__ import annotations

import dataclasses

import pytest

from nsa_kernels import variants
from nsa_kernels.variants import V1, V2, KernelVariants


def test_default_is_v2_everywhere():
    assert KernelVariants() == V2 and V2.label == "v2" and V1.label == "v1"
    assert all(getattr(V1, name) == variants.CHOICES[name][0] for name in variants.KERNELS)
    assert V1.slc_small_g == "padded" and V2.slc_small_g == "auto"


@pytest.mark.parametrize("text, expected", [
    ("v1", V1), ("v2", V2), (" v1 ", V1), ("", V2),
    ("v2,cmp_dkv=v1", KernelVariants(cmp_dkv="v1")), ("cmp_dkv=v1", KernelVariants(cmp_dkv="v1")),
    ("v1,cmp_dkv=v2", dataclasses.replace(V1, cmp_dkv="v2")), ("v2+cmp_dkv=v1", KernelVariants(cmp_dkv="v1")),
    ("v2,slc_small_g=padded", KernelVariants(slc_small_g="padded")),
    ("slc_small_g=small_g", KernelVariants(slc_small_g="small_g")),
    ("v1+slc_small_g=auto", dataclasses.replace(V1, slc_small_g="auto")),
])
def test_parse(text, expected):
    assert KernelVariants.parse(text) == expected


@pytest.mark.parametrize("text, match", [
    ("v3", "NSA_KERNEL_VARIANT='v3' is not a kernel variant"),
    ("cmp_dkv=v0", "NSA_KERNEL_VARIANT cmp_dkv='v0'"),
    ("nope=v1", "unknown kernel 'nope'"),
    ("cmp_dkv=v1,v2", "base variant 'v2' must come first"),
    ("slc_small_g=v1", "slc_small_g='v1' is not a kernel variant \\(use one of padded, auto, small_g\\)"),
    ("cmp_dkv=auto", "NSA_KERNEL_VARIANT cmp_dkv='auto'"),
])
def test_bad_values_name_the_variable(text, match):
    with pytest.raises(ValueError, match=match):
        KernelVariants.parse(text)


@pytest.mark.parametrize("kernel", list(variants.KERNELS))
def test_label_reads_back_as_the_same_choice(kernel):
    for base_name, base in (("v1", V1), ("v2", V2)):
        for other in variants.CHOICES[kernel]:
            if other == getattr(base, kernel):
                continue
            mixed = dataclasses.replace(base, **{kernel: other})
            assert KernelVariants.parse(mixed.label) == mixed
            assert mixed.label == f"{base_name}+{kernel}={other}"


@pytest.mark.parametrize("choice, group, small", [
    ("auto", 1, True), ("auto", 8, True), ("auto", 15, True), ("auto", 16, False), ("auto", 64, False),
    ("padded", 1, False), ("small_g", 16, True), ("small_g", 64, True),
])
def test_small_g_choice_by_group(choice, group, small):
    assert variants.runs_small_g(choice, group) is small


def test_impl_label_names_the_selected_path_that_ran():
    assert V2.impl_label(4) == "v2+slc_small_g=small_g" and V2.impl_label(16) == "v2"
    assert V1.impl_label(4) == "v1"
    forced = KernelVariants.parse(V2.impl_label(4))
    assert forced.slc_small_g == "small_g" and variants.runs_small_g(forced.slc_small_g, 4)
    with pytest.raises(ValueError, match="small_g='v2'"):
        variants.runs_small_g("v2", 4)


def test_backend_reads_the_environment(monkeypatch):
    from nsa_bench.backends import nsa_triton

    monkeypatch.delenv(variants.ENV_VAR, raising=False)
    assert nsa_triton._impl() == "triton:v2"
    monkeypatch.setenv(variants.ENV_VAR, "v1")
    assert nsa_triton._impl() == "triton:v1" and nsa_triton._variants() == V1
    monkeypatch.setenv(variants.ENV_VAR, "v9")
    assert "unusable" in nsa_triton._impl() and "v9" in nsa_triton._impl()
    with pytest.raises(ValueError, match="NSA_KERNEL_VARIANT='v9'"):
        nsa_triton._variants()
