"""GPU spec table: datasheet values, immutability, lookup by key and by torch device name."""
import pytest

from nsa_bench.gpus import DEFAULT_GPU, GPUS, GPUSpec, gpu_spec


def test_table_has_the_required_gpus_and_default():
    assert {"h100", "h100-pcie", "h200", "a100", "a100-40gb"} <= set(GPUS)
    assert DEFAULT_GPU == "h100"
    assert all(key == spec.key for key, spec in GPUS.items())


@pytest.mark.parametrize(
    "key, tflops, tbps, l2_mib",
    [
        ("h100", 989.4, 3.35, 50),
        ("h100-pcie", 756.0, 2.0, 50),
        ("h200", 989.4, 4.8, 50),
        ("a100", 312.0, 2.039, 40),
        ("a100-40gb", 312.0, 1.555, 40),
    ],
)
def test_datasheet_figures(key, tflops, tbps, l2_mib):
    spec = GPUS[key]
    assert spec.peak_flops == pytest.approx(tflops * 1e12)
    assert spec.hbm_bytes_per_s == pytest.approx(tbps * 1e12)
    assert spec.l2_bytes == l2_mib * 2**20
    assert spec.ridge_intensity == pytest.approx(tflops / tbps)


def test_table_is_immutable():
    with pytest.raises(TypeError):
        GPUS["h100"] = GPUS["a100"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        GPUS["h100"].peak_flops = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("key", ["h100", "H100", " h200 ", "a100-40gb", "H100-PCIE"])
def test_lookup_by_key(key):
    assert gpu_spec(key) is GPUS[key.strip().lower()]


@pytest.mark.parametrize(
    "device_name, key",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ],
)
def test_lookup_by_device_name_prefers_most_specific(device_name, key):
    assert gpu_spec(device_name).key == key


def test_each_spec_name_resolves_to_itself():
    for spec in GPUS.values():
        assert gpu_spec(spec.name) is spec


def test_no_fragment_is_shared_between_entries():
    seen: dict[str, str] = {}
    for spec in GPUS.values():
        for fragment in spec.match:
            assert fragment == fragment.lower()
            assert seen.setdefault(fragment, spec.key) == spec.key


@pytest.mark.parametrize("bad", ["Tesla T4", "NVIDIA GH200 480GB", "h10", "", "   "])
def test_unknown_gpu_raises_listing_keys(bad):
    with pytest.raises(ValueError, match="h100"):
        gpu_spec(bad)


def test_spec_is_a_frozen_dataclass():
    spec = GPUSpec("x", "X", 1.0, 1.0, 1, ("x",))
    with pytest.raises(AttributeError):
        spec.key = "y"  # type: ignore[misc]
