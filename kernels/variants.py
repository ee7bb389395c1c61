"""Which implementation of each kernel runs: "v1" (the kernels before their redesign) or "v2" (the default).

Every redesigned kernel keeps its old path until a GPU run has timed both, so each wrapper takes a
`variant=` argument and `nsa.py` passes them from one `KernelVariants`. The benchmark's nsa-triton
backend builds that from the environment variable NSA_KERNEL_VARIANT (`from_env`), so a sweep can time
either side: "v1" = every kernel as before, "v2" = every kernel redesigned (the default), and
per-kernel overrides such as "v2,cmp_dkv=v1" or "cmp_dkv=v1,slc_fwd=v1" (the base defaults to v2;
"+" separates as well as ",", so a row's `impl` label "v2+cmp_dkv=v1" reads back as the same choice).

`slc_small_g` picks the selected branch's path for small GQA groups and has its own values:
"auto" (the v2 default: the KV-block-outer kernels of selected_small_g.py when G < 16, the padded
kernels otherwise), "padded" (what v1 means for it: always the group padded to 16 MMA rows) and
"small_g" (always block-outer, also at G >= 16, so a GPU run can compare both there). `impl_label(G)`
names the path that ran: "auto" at G < 16 is recorded as "slc_small_g=small_g".
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
    "slc_small_g": "selected fwd/bwd at G < 16: KV-block-outer, gathered queries fill the MMA rows (padded: 16 rows)",
}
# The values of each kernel's field: the first is what base "v1" means, the second what "v2" means,
# further ones are only reachable by an override.
CHOICES: dict[str, tuple[str, ...]] = {
    **{name: VARIANTS for name in KERNELS},
    "slc_small_g": ("padded", "auto", "small_g"),
}
SMALL_G_BELOW = 16  # "auto" runs the small-group kernels for G below this
# kernels whose v2 takes packed batches (cu_seqlens, docs/varlen.md); their v1 does not. Decode takes a
# batch of the documents instead, and dq_sum is nsa.py's bookkeeping: neither limits packing.
PACKED_KERNELS = ("cmp_fwd", "cmp_dq", "select", "cmp_dkv", "slc_fwd", "slc_dq", "win")


def runs_small_g(choice: str, group: int) -> bool:
    """Whether the selected branch takes the block-outer path (selected_small_g.py) at group size G."""
    check_variant("small_g", choice, "slc_small_g")
    return choice == "small_g" or (choice == "auto" and group < SMALL_G_BELOW)


def check_variant(name: str, value: object, kernel: str | None = None) -> str:
    """`value` if it names a variant (of `kernel`, when given), else a ValueError naming the argument."""
    allowed = CHOICES[kernel] if kernel else VARIANTS
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not a kernel variant (use one of {', '.join(allowed)})")
    return value  # type: ignore[return-value]


def _base_value(kernel: str, base: str) -> str:
    """The value base variant "v1" / "v2" means for `kernel`."""
    return CHOICES[kernel][VARIANTS.index(base)]


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
    slc_small_g: str = "auto"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_variant(field.name, getattr(self, field.name), field.name)

    @classmethod
    def parse(cls, text: str, source: str = ENV_VAR) -> "KernelVariants":
        """"v1", "v2", or comma-separated tokens: one optional base variant, then kernel=variant overrides."""
        tokens = [t.strip() for t in str(text).replace("+", ",").split(",")]
        if any(not t for t in tokens) and str(text).strip():
            raise ValueError(f"{source}={text!r}: an empty item")
        tokens = [t for t in tokens if t]
        base, overrides = DEFAULT, {}
        for i, token in enumerate(tokens):
            if "=" not in token:
                if i != 0:
                    if "=" not in tokens[0]:
                        raise ValueError(f"{source}={text!r}: one base variant only ({tokens[0]!r} and {token!r})")
                    raise ValueError(f"{source}={text!r}: the base variant {token!r} must come first")
                base = check_variant(source, token)
                continue
            kernel, _, value = (part.strip() for part in token.partition("="))
            if kernel not in KERNELS:
                raise ValueError(f"{source}={text!r}: unknown kernel {kernel!r} (one of {', '.join(KERNELS)})")
            if kernel in overrides:
                raise ValueError(f"{source}={text!r}: {kernel} is set twice")
            overrides[kernel] = check_variant(f"{source} {kernel}", value, kernel)
        return cls(**{name: overrides.get(name, _base_value(name, base)) for name in KERNELS})

    @classmethod
    def from_env(cls) -> "KernelVariants":
        """The variants NSA_KERNEL_VARIANT asks for (all v2 when it is unset or empty)."""
        return cls.parse(os.environ.get(ENV_VAR, "") or DEFAULT)

    @classmethod
    def all(cls, variant: str) -> "KernelVariants":
        check_variant("variant", variant)
        return cls(**{name: _base_value(name, variant) for name in KERNELS})

    @property
    def label(self) -> str:
        """Short name for result rows: "v1", "v2", or the majority variant plus the exceptions
        ("v2+cmp_dkv=v1")."""
        def matches(base: str) -> list[bool]:
            return [getattr(self, name) == _base_value(name, base) for name in KERNELS]

        base = max(VARIANTS, key=lambda v: (sum(matches(v)), v == DEFAULT))
        exceptions = [f"{name}={getattr(self, name)}" for name, same in zip(KERNELS, matches(base)) if not same]
        return "+".join([base, *exceptions])

    def packed_refusal(self) -> str | None:
        """Why these variants cannot run a packed batch (None: they can): the kernels set to v1."""
        old = [name for name in PACKED_KERNELS if getattr(self, name) == "v1"]
        if not old:
            return None
        return (f"cu_seqlens: packed batches need the v2 kernels, and {', '.join(f'{n}=v1' for n in old)} "
                f"take none (kernels/variants.py)")

    def impl_label(self, group: int) -> str:
        """`label` as a result row records it at group size G: "auto" resolved where it takes the
        small-group path ("v2+slc_small_g=small_g" at G < 16; plain "v2" at G >= 16, where it runs
        the padded kernels as v2 always did). Reads back as a choice that runs the same kernels."""
        if self.slc_small_g == "auto" and runs_small_g("auto", group):
            return dataclasses.replace(self, slc_small_g="small_g").label
        return self.label


V1 = KernelVariants.all("v1")
V2 = KernelVariants.all("v2")
