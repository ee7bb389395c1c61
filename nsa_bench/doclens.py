"""The `--doc-lens` sweep axis: seeded document lengths packed into each batch row (a varlen batch).

Syntax of one value (a comma list of them is the axis):

    none                          one dense sequence per batch row: no packing, no cu_seqlens (default)
    fixed:N                       every document has N tokens
    uniform:N[@SEED]              lengths uniform on the integers 1 .. 2N-1 (mean N)
    lognormal:N[:SIGMA][@SEED]    lengths max(1, round(exp(mu + SIGMA * z))), z standard normal,
                                  mu = ln N - SIGMA^2 / 2 (so the mean is N); SIGMA defaults to 1

N is a size as --seqlen writes it (512, 2k, 1m): the mean document length in tokens, before the cut
below. SEED (default 0) seeds the lengths only; --seed seeds the tensors' values, so the same
doc-lens value gives the same documents in every run, at every --seed, on every machine.

Packing: each batch row of T = --seqlen tokens is filled in order with documents drawn one after
another; the document that would pass T is cut to fill the row exactly, so every row holds T tokens
and no document crosses a row. The draws are one stream for the whole batch (row r continues where
row r-1 stopped), so a row's documents do not depend on the batch size. The B rows are then packed
into one sequence [1, B*T] with the documents' cu_seqlens (docs/varlen.md).

The draws use only Python's `random.Random(SEED).random()` (whose sequence Python keeps stable across
versions) and `statistics.NormalDist.inv_cdf`, so the lengths are reproducible from the value alone:
the cost model recomputes them from a CSV row's `doc_lens`, `seqlen` and `batch`.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace
from statistics import NormalDist

from nsa_bench.parse import parse_size

NONE = "none"
KINDS = ("fixed", "uniform", "lognormal")
DEFAULT_SIGMA = 1.0
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)", re.ASCII)  # a sigma as written: no exponent, no other digits
_FORM = re.compile(r"^(?P<kind>[a-z]+):(?P<mean>[^:@]+)(?::(?P<sigma>[^:@]+))?(?:@(?P<seed>[^:@]+))?$")


@dataclass(frozen=True)
class DocLens:
    """One value of the axis; `kind` "none" means one dense sequence per row."""

    kind: str = NONE
    mean: int = 0  # mean document length in tokens (fixed: the length)
    sigma: float = DEFAULT_SIGMA  # lognormal only
    seed: int = 0  # uniform and lognormal only

    @property
    def packed(self) -> bool:
        return self.kind != NONE

    def text(self) -> str:
        """The canonical spelling, as rows carry it: `uniform:4k`, `lognormal:8k:1.5@3`, `none`."""
        if not self.packed:
            return NONE
        out = f"{self.kind}:{size_text(self.mean)}"
        if self.kind == "lognormal" and self.sigma != DEFAULT_SIGMA:
            out += f":{self.sigma:g}"
        if self.kind != "fixed" and self.seed:
            out += f"@{self.seed}"
        return out

    def lengths(self, seqlen: int, rows: int = 1) -> tuple[int, ...]:
        """Document lengths of `rows` batch rows of `seqlen` tokens each, row after row (sum = rows * seqlen)."""
        if seqlen < 1 or rows < 1:
            raise ValueError(f"seqlen and rows must be >= 1, got {seqlen} and {rows}")
        if not self.packed:
            return (seqlen,) * rows
        draw = self._sampler()
        out: list[int] = []
        for _ in range(rows):
            left = seqlen
            while left:
                length = min(draw(), left)  # the last document of a row is cut to fill it
                out.append(length)
                left -= length
        return tuple(out)

    def scaled(self, factor: float) -> "DocLens":
        """The same distribution with the mean scaled (the correctness check runs at a shorter length)."""
        if not self.packed:
            return self
        return replace(self, mean=max(1, round(self.mean * factor)))

    def _sampler(self):
        if self.kind == "fixed":
            return lambda: self.mean
        rng = random.Random(self.seed)
        if self.kind == "uniform":
            span = 2 * self.mean - 1
            return lambda: 1 + min(span - 1, int(rng.random() * span))
        mu = math.log(self.mean) - self.sigma**2 / 2
        normal = NormalDist()

        def lognormal() -> int:
            u = rng.random()
            while u == 0.0:  # inv_cdf is undefined at 0
                u = rng.random()
            return max(1, round(math.exp(mu + self.sigma * normal.inv_cdf(u))))

        return lognormal


def size_text(value: int) -> str:
    """4096 -> 4k, 1048576 -> 1m, 1000 -> 1000 (what parse_size reads back)."""
    for unit, size in (("m", 1 << 20), ("k", 1 << 10)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def parse_doc_lens(text: str) -> DocLens:
    """One value (see the module doc); ValueError naming the value otherwise."""
    value = text.strip().lower()
    if value == NONE:
        return DocLens()
    match = _FORM.match(value)
    if not match or match.group("kind") not in KINDS:
        raise ValueError(f"{text.strip()!r} is not a document-length distribution (examples: none, fixed:2k, "
                         f"uniform:4k, lognormal:8k, lognormal:8k:1.5@3)")
    kind = match.group("kind")
    mean = parse_size(match.group("mean"))
    sigma, seed = DEFAULT_SIGMA, 0
    if match.group("sigma") is not None:
        if kind != "lognormal":
            raise ValueError(f"{text.strip()!r}: only lognormal takes a sigma")
        try:
            if not _DECIMAL.fullmatch(match.group("sigma")):
                raise ValueError
            sigma = float(match.group("sigma"))
        except ValueError:
            raise ValueError(f"{text.strip()!r}: sigma {match.group('sigma')!r} is not a number") from None
        if not (math.isfinite(sigma) and 0 < sigma <= 4):
            raise ValueError(f"{text.strip()!r}: sigma must be in (0, 4], got {sigma:g}")
    if match.group("seed") is not None:
        if not (match.group("seed").isascii() and match.group("seed").isdigit()):
            raise ValueError(f"{text.strip()!r}: the seed after @ must be a non-negative integer")
        seed = int(match.group("seed")) if kind != "fixed" else 0  # fixed draws nothing
    return DocLens(kind, mean, sigma, seed)


def parse_doc_lens_list(text: str) -> tuple[str, ...]:
    """A comma list of values -> their canonical spellings, in order, without repeats."""
    if not text or not text.strip():
        raise ValueError("empty list")
    values: list[str] = []
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"{text!r} has an empty item")
        canonical = parse_doc_lens(part).text()
        if canonical not in values:
            values.append(canonical)
    return tuple(values)


def documents(doc_lens: str, seqlen: int, rows: int) -> tuple[int, ...]:
    """Lengths of the documents of a point (`none`: one per row)."""
    return parse_doc_lens(doc_lens).lengths(seqlen, rows)


def describe(lengths: tuple[int, ...]) -> str:
    """`9 documents, 312..14k tokens (mean 7.3k)`: for messages and summaries."""
    def short(x: float) -> str:
        return f"{x / 1024:.3g}k" if x >= 1024 else f"{x:.3g}"

    return f"{len(lengths)} documents, {short(min(lengths))}..{short(max(lengths))} tokens (mean {short(sum(lengths) / len(lengths))})"
