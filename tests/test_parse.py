"""The axis syntax: 8k..64k, lists, additive steps, head-dim pairs, and the errors for bad text."""
import pytest

from nsa_bench.parse import parse_head_dims, parse_names, parse_size, parse_sizes


def test_sizes():
    assert parse_size("8k") == 8192
    assert parse_size(" 1M ") == 1 << 20
    assert parse_size("100") == 100


def test_ranges_and_lists():
    assert parse_sizes("8k..64k") == (8192, 16384, 32768, 65536)
    assert parse_sizes("8k,16k,32k") == (8192, 16384, 32768)
    assert parse_sizes("1k..4k:+1k") == (1024, 2048, 3072, 4096)
    assert parse_sizes("1k..9k:*3") == (1024, 3072, 9216)
    assert parse_sizes("1k,1k..2k") == (1024, 2048)  # no repeats
    assert parse_sizes("8k..8k") == (8192,)


@pytest.mark.parametrize(
    "text,needle",
    [("64k..8k", "reversed"), ("8x", "not a size"), ("0", "positive"), ("-4", "not a size"), ("", "empty"),
     ("1k,,2k", "empty item"), ("1k..4k:1k", "step"), ("1k..4k:*1", "at least 2"), ("1..1m:+1", "more than")],
)
def test_bad_sizes(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_sizes(text)


def test_head_dims():
    assert parse_head_dims("192-128") == ((192, 128),)
    assert parse_head_dims("128, 192-128") == ((128, 128), (192, 128))
    for bad in ("192x128", "192-", "a-b", "0-128"):
        with pytest.raises(ValueError):
            parse_head_dims(bad)


def test_names():
    assert parse_names("fa2, nsa-triton,fa2") == ("fa2", "nsa-triton")
    with pytest.raises(ValueError, match="unknown 'x'"):
        parse_names("fwd,x", ("fwd", "bwd"))
