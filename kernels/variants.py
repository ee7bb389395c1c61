"""Which implementation of each kernel runs: "v1" (the kernels before issue 13) or "v2" (the default).

Every redesigned kernel keeps its old path until a GPU run has timed both, so each wrapper takes a
`variant=` argument and `nsa.py` passes them from one `KernelVariants`. The benchmark's nsa-triton
backend builds that from the environment variable NSA_KERNEL_VARIANT (`from_env`), so a sweep can time
either side: "v1" = every kernel as before, "v2" = every kernel redesigned (the default), and
per-kernel overrides such as "v2,cmp_dkv=v1" or "cmp_dkv=v1,slc_fwd=v1" (the base defaults to v2;
"+" separates as well as ",", so a row's `impl` label "v2+cmp_dkv=v1" reads back as the same choice).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

VARIANTS = ("v1", "v2")
DEFAULT = "v2"
ENV_VAR = "NSA_KERNEL_VARIANT"

# kernel -> what its v2 changes (kernels/README.md has the table)
KERNELS = {
    "cmp_fwd": "compressed forward: also tiles of 8-16 positions (fewer k_cmp/v_cmp passes through L2)",
    "cmp_dq": "compressed dq: also tiles of 4-8 positions (v1: 2)",
    "select": "block scoring + top-n: autotuned tile up to 8 positions (v1: fixed 4 positions, 4 warps)",
    "cmp_dkv": "compressed dK/dV backward: (key tile x query chunk) grid, fp32 partials summed in order",
    "slc_fwd": "selected forward: tiles of 1-4 positions over the union of their selections, Dk 128+64",
    "slc_dq": "selected dq: the forward's position tiles (1-2 positions), Dk 128+64",
    "win": "window (flash) kernels: a non-power-of-two Dk as 128+64 column chunks (v1: padded to 256)",
    "decode": "decode selection: scoring over many programs, top-n by ranking in the attention units",
    "dq_sum": "NSA backward: one fp32 dq accumulator threaded through the three dq kernels",
}


def check_variant(name: str, value: object) -> str:
    """`value` if it names a variant, else a ValueError naming the argument."""
    if value not in VARIANTS:
        raise ValueError(f"{name}={value!r} is not a kernel variant (use one of {', '.join(VARIANTS)})")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class KernelVariants:
    """The variant of every redesigned kernel; fields are the names of `KERNELS`."""

    cmp_fwd: str = DEFAULT
    cmp_dq: str = DEFAULT
    select: str = DEFAULT
    cmp_dkv: str = DEFAULT
    slc_fwd: str = DEFAULT
    slc_dq: str = DEFAULT
    win: str = DEFAULT
    dq_sum: str = DEFAULT
    decode: str = DEFAULT

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_variant(field.name, getattr(self, field.name))

    @classmethod
    def parse(cls, text: str, source: str = ENV_VAR) -> "KernelVariants":
        """"v1", "v2", or comma-separated tokens: one optional base variant, then kernel=variant overrides."""
        tokens = [t.strip() for t in str(text).replace("+", ",").split(",") if t.strip()]
        base, overrides = DEFAULT, {}
        for i, token in enumerate(tokens):
            if "=" not in token:
                if i != 0:
                    raise ValueError(f"{source}={text!r}: the base variant {token!r} must come first")
                base = check_variant(source, token)
                continue
            kernel, _, value = (part.strip() for part in token.partition("="))
            if kernel not in KERNELS:
                raise ValueError(f"{source}={text!r}: unknown kernel {kernel!r} (one of {', '.join(KERNELS)})")
            overrides[kernel] = check_variant(f"{source} {kernel}", value)
        return cls(**{name: overrides.get(name, base) for name in KERNELS})

    @classmethod
    def from_env(cls) -> "KernelVariants":
        """The variants NSA_KERNEL_VARIANT asks for (all v2 when it is unset or empty)."""
        return cls.parse(os.environ.get(ENV_VAR, "") or DEFAULT)

    @classmethod
    def all(cls, variant: str) -> "KernelVariants":
        return cls(**{name: check_variant("variant", variant) for name in KERNELS})

    @property
    def label(self) -> str:
        """Short name for result rows: "v1", "v2", or the majority variant plus the exceptions
        ("v2+cmp_dkv=v1")."""
        values = [getattr(self, name) for name in KERNELS]
        base = max(VARIANTS, key=lambda v: (values.count(v), v == DEFAULT))
        exceptions = [f"{name}={value}" for name, value in zip(KERNELS, values) if value != base]
        return "+".join([base, *exceptions])


V1 = KernelVariants.all("v1")
V2 = KernelVariants.all("v2")
