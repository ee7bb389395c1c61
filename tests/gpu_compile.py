"""The shapes the sm_90 compile check compiles (tests/test_gpu_compile.py), and a printer.

The machinery is `nsa_kernels.compile_check`; `python tests/gpu_compile.py [entry ...]` prints every
compile of every case (registers, spills, shared memory per kernel and config).
"""
from __future__ import annotations

import sys

from nsa_kernels.config import NSAConfig
from nsa_kernels.compile_check import PAPER_CFG, Case, compile_cases

LARGE_BLOCK_CFG = NSAConfig(block_cmp=128, stride_cmp=64, block_slc=256, n_slc=64, window=512)


def paper_shape(entry: str, cfg: NSAConfig = PAPER_CFG) -> Case:
    """NSA paper setting: B=1, Hkv=4, G=16, Dk=192, Dv=128, T=64k, bf16."""
    return Case(entry, 1, 65536, 4, 16, 192, 128, "bfloat16", cfg)


def small_head_shape(entry: str) -> Case:
    """G=1 (no head group to fill tl.dot rows), Dk=Dv=64, fp16."""
    return Case(entry, 1, 65536, 4, 1, 64, 64, "float16", PAPER_CFG)


def small_group_shape(group: int, entry: str = "selected_small_g", cfg: NSAConfig = PAPER_CFG) -> Case:
    """The gqa suite's layout (Hq = 64, Hkv = 64 / G) at the paper heads Dk=192, Dv=128, T=64k, bf16."""
    return Case(entry, 1, 65536, 64 // group, group, 192, 128, "bfloat16", cfg)


LONG_SEQLEN = 1 << 20


def long_shape(entry: str) -> Case:
    """Issue 15: the paper setting at T = 1M, where row x stride passes 2^31 (q [1, 1M, 64, 192] spans
    1.3e10 elements): the int64-offset builds (flash ROW64) and decode over 16384 selection blocks."""
    return Case(entry, 1, LONG_SEQLEN, 4, 16, 192, 128, "bfloat16", PAPER_CFG)


SELFTEST = Case("selftest", 1, 1, 1, 1, 16, 16, "float16")
SMALL_GROUPS = (1, 2, 4, 8)
NSA_ENTRIES = ("nsa_attention", "nsa_attention_v1", "select_blocks", "selected_bwd_atomic", "nsa_decode", "nsa_decode_v1",
               "nsa_decode_cmp_cache")
DENSE_ENTRIES = ("flash_attention", "flash_attention_decode")
PAPER_ONLY_ENTRIES = ("selected_bwd_atomic",)  # off nsa_attention's path: one shape keeps the run short
VARLEN_ENTRIES = ("nsa_attention_varlen", "flash_attention_varlen")
LONG_ENTRIES = ("nsa_attention", "nsa_attention_v1", "nsa_decode", "nsa_decode_v1", *DENSE_ENTRIES)
CASES: tuple[Case, ...] = (
    *(paper_shape(e) for e in NSA_ENTRIES + DENSE_ENTRIES),
    *(small_head_shape(e) for e in NSA_ENTRIES + DENSE_ENTRIES if e not in PAPER_ONLY_ENTRIES),
    *(paper_shape(e, LARGE_BLOCK_CFG) for e in NSA_ENTRIES if e not in PAPER_ONLY_ENTRIES),
    # issue 17: the small-group selected kernels at G = 1, 2, 4, 8 (also l' = 256 at G = 4), and
    # the whole NSA forward/backward at G = 4, where the default ("auto") takes them
    *(small_group_shape(g) for g in SMALL_GROUPS),
    small_group_shape(4, cfg=LARGE_BLOCK_CFG),
    small_group_shape(4, "nsa_attention"),
    *(long_shape(e) for e in LONG_ENTRIES),
    # issue 17: the VARLEN builds (packed batches) of every kernel, padded (G = 16) and small-group (G = 4)
    *(paper_shape(e) for e in VARLEN_ENTRIES),
    small_group_shape(4, "nsa_attention_varlen"),
)


if __name__ == "__main__":
    chosen = tuple(c for c in CASES if not sys.argv[1:] or c.entry in sys.argv[1:])
    for report in compile_cases(chosen).values():
        print(report.describe(), flush=True)
