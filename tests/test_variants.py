"""kernels/variants.py: NSA_KERNEL_VARIANT parsing, labels, and what the nsa-triton backend records."""
from __future__ import annotations

import dataclasses

import pytest

from nsa_kernels import variants
from nsa_kernels.variants import V1, V2, KernelVariants


def test_default_is_v2_everywhere():
    assert KernelVariants() == V2 and V2.label == "v2" and V1.label == "v1"
    assert all(getattr(V1, name) == "v1" for name in variants.KERNELS)


@pytest.mark.parametrize("text, expected", [
    ("v1", V1), ("v2", V2), (" v1 ", V1), ("", V2),
    ("v2,cmp_dkv=v1", KernelVariants(cmp_dkv="v1")), ("cmp_dkv=v1", KernelVariants(cmp_dkv="v1")),
    ("v1,cmp_dkv=v2", dataclasses.replace(V1, cmp_dkv="v2")), ("v2+cmp_dkv=v1", KernelVariants(cmp_dkv="v1")),
])
def test_parse(text, expected):
    assert KernelVariants.parse(text) == expected


@pytest.mark.parametrize("text, match", [
    ("v3", "NSA_KERNEL_VARIANT='v3' is not a kernel variant"),
    ("cmp_dkv=v0", "NSA_KERNEL_VARIANT cmp_dkv='v0'"),
    ("nope=v1", "unknown kernel 'nope'"),
    ("cmp_dkv=v1,v2", "base variant 'v2' must come first"),
])
def test_bad_values_name_the_variable(text, match):
    with pytest.raises(ValueError, match=match):
        KernelVariants.parse(text)


@pytest.mark.parametrize("kernel", list(variants.KERNELS))
def test_label_reads_back_as_the_same_choice(kernel):
    for base in (V1, V2):
        other = "v1" if getattr(base, kernel) == "v2" else "v2"
        mixed = dataclasses.replace(base, **{kernel: other})
        assert KernelVariants.parse(mixed.label) == mixed
        if len(variants.KERNELS) > 2:
            assert mixed.label == f"{getattr(base, kernel)}+{kernel}={other}"


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
