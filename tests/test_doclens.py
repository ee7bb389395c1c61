"""The --doc-lens syntax: canonical spellings, errors that name the value, packing rules, the distributions'
means, and lengths reproducible from the value alone."""
from __future__ import annotations

import pytest

from nsa_bench.doclens import DocLens, describe, documents, parse_doc_lens, parse_doc_lens_list, size_text


@pytest.mark.parametrize("text,canonical", [
    ("none", "none"), (" NONE ", "none"), ("fixed:2k", "fixed:2k"), ("fixed:2048@5", "fixed:2k"),
    ("uniform:4K", "uniform:4k"), ("uniform:1000@0", "uniform:1000"), ("uniform:4k@7", "uniform:4k@7"),
    ("lognormal:8k", "lognormal:8k"), ("lognormal:8k:1.0", "lognormal:8k"), ("lognormal:8192:1.5@3", "lognormal:8k:1.5@3"),
    ("uniform:1m", "uniform:1m"),
])
def test_canonical_spelling(text, canonical):
    assert parse_doc_lens(text).text() == canonical
    assert parse_doc_lens(canonical) == parse_doc_lens(text)


def test_list_keeps_order_without_repeats():
    assert parse_doc_lens_list("uniform:4k, none,uniform:4096,fixed:2k") == ("uniform:4k", "none", "fixed:2k")


@pytest.mark.parametrize("text,words", [
    ("gauss:4k", "not a document-length distribution"), ("uniform", "not a document-length"),
    ("uniform:0", "must be positive"), ("uniform:4q", "not a size"), ("uniform:4k:2", "only lognormal"),
    ("lognormal:8k:-1", "sigma must be in"), ("lognormal:8k:0", "sigma must be in"),
    ("lognormal:8k:abc", "not a number"), ("uniform:4k@x", "seed after @"),
])
def test_bad_values_name_themselves(text, words):
    with pytest.raises(ValueError, match=words):
        parse_doc_lens(text)
    with pytest.raises(ValueError):
        parse_doc_lens_list(f"none,{text}")


def test_empty_lists():
    for text in ("", " ", "none,,fixed:2k"):
        with pytest.raises(ValueError, match="empty"):
            parse_doc_lens_list(text)


@pytest.mark.parametrize("value", ["fixed:3000", "uniform:4k", "lognormal:8k", "lognormal:2k:2@9", "uniform:1"])
def test_every_row_is_filled_exactly_and_no_document_crosses_it(value):
    seqlen, rows = 16384, 3
    lengths = DocLens.lengths(parse_doc_lens(value), seqlen, rows)
    assert all(n >= 1 for n in lengths) and sum(lengths) == seqlen * rows
    ends, total = set(), 0
    for n in lengths:
        total += n
        ends.add(total)
    assert {seqlen * r for r in range(1, rows + 1)} <= ends  # a document ends at every row's end


def test_fixed_cuts_the_last_document_of_each_row():
    assert documents("fixed:3000", 8192, 2) == (3000, 3000, 2192) * 2
    assert documents("fixed:2k", 8192, 1) == (2048,) * 4
    assert documents("fixed:16k", 8192, 1) == (8192,)
    assert documents("none", 8192, 3) == (8192,) * 3


def test_uniform_range_and_means():
    draws = documents("uniform:4k", 10**8, 1)[:-1]  # the cut one left out
    assert min(draws) >= 1 and max(draws) <= 2 * 4096 - 1
    assert abs(sum(draws) / len(draws) / 4096 - 1) < 0.05
    logn = documents("lognormal:8k", 10**8, 1)[:-1]
    assert abs(sum(logn) / len(logn) / 8192 - 1) < 0.05  # mu = ln N - sigma^2/2 makes N the mean
    wide = documents("lognormal:8k:2", 10**8, 1)[:-1]
    assert max(wide) > 20 * 8192 and min(wide) < 100  # a heavier tail and more short documents


def test_lengths_come_from_the_value_alone():
    assert documents("uniform:4k", 16384, 1) == (6917, 6209, 3258)  # pinned: random.Random(0).random()
    assert documents("lognormal:8k", 65536, 1)[:4] == (13680, 10003, 4066, 2602)
    assert documents("uniform:4k@1", 16384, 1) != documents("uniform:4k", 16384, 1)
    one, three = documents("lognormal:8k", 65536, 1), documents("lognormal:8k", 65536, 3)
    assert three[: len(one)] == one  # row 0 does not depend on the batch size


def test_scaled_for_the_check_and_describe():
    assert parse_doc_lens("uniform:4k@2").scaled(1 / 8).text() == "uniform:512@2"
    assert parse_doc_lens("fixed:100").scaled(0.001).text() == "fixed:1"
    assert parse_doc_lens("none").scaled(0.5).text() == "none"
    assert size_text(1536) == "1536" and size_text(3 << 20) == "3m"
    assert describe((100, 2048, 3072)) == "3 documents, 100..3k tokens (mean 1.7k)"
