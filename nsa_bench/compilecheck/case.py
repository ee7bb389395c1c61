"""What to compile: one public entry point at one shape. Plain Python, shared by the parent and its workers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nsa_kernels.config import NSAConfig

DEFAULT_CAPABILITY = 90  # sm_90 (H100, H200): what is compiled for when no GPU is present
PAPER_CFG = NSAConfig(block_cmp=32, stride_cmp=16, block_slc=64, n_slc=16, window=512)


@dataclass(frozen=True)
class Case:
    """One entry point at one shape: the unit a worker records and compiles."""

    entry: str  # a key of entries.ENTRIES, or "package.module:NAME" (a host code defined elsewhere)
    batch: int
    seqlen: int
    kv_heads: int
    group: int
    dk: int
    dv: int
    dtype: str  # "bfloat16" | "float16" | "float32"
    cfg: NSAConfig = PAPER_CFG

    @property
    def label(self) -> str:
        c = self.cfg
        return (f"{self.entry}-B{self.batch}-T{self.seqlen}-Hkv{self.kv_heads}-G{self.group}-Dk{self.dk}-Dv{self.dv}"
                f"-{self.dtype}-l{c.block_cmp}d{c.stride_cmp}ls{c.block_slc}n{c.n_slc}w{c.window}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(raw: dict) -> Case:
        return Case(**{**raw, "cfg": NSAConfig(**raw["cfg"])})
