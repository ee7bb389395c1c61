"""The case table: the shapes the sm_90 compile check compiles (tests/test_gpu_compile.py).

CASES run every config the GPU autotuner would try, checked for compile errors, spills and an H100's
limits; `python -m nsa_bench.compilecheck [entry ...]` prints them. BUILD_CASES only have to compile: the
first config of each launch (and the last too at T = 64k), for kernels and shapes outside CASES.
"""
from __future__ import annotations

from nsa_bench.compilecheck.case import PAPER_CFG, Case
from nsa_kernels.config import NSAConfig

LARGE_BLOCK_CFG = NSAConfig(block_cmp=128, stride_cmp=64, block_slc=256, n_slc=64, window=512)
LONG_SEQLEN = 1 << 20


def paper_shape(entry: str, cfg: NSAConfig = PAPER_CFG) -> Case:
    """NSA paper setting: B=1, Hkv=4, G=16, Dk=192, Dv=128, T=64k, bf16."""
    return Case(entry, 1, 65536, 4, 16, 192, 128, "bfloat16", cfg)


def small_head_shape(entry: str) -> Case:
    """G=1 (no head group to fill tl.dot rows), Dk=Dv=64, fp16."""
    return Case(entry, 1, 65536, 4, 1, 64, 64, "float16", PAPER_CFG)


def small_group_shape(group: int, entry: str = "selected_small_g", cfg: NSAConfig = PAPER_CFG) -> Case:
    """The gqa suite's layout (Hq = 64, Hkv = 64 / G) at the paper heads Dk=192, Dv=128, T=64k, bf16."""
    return Case(entry, 1, 65536, 64 // group, group, 192, 128, "bfloat16", cfg)


def long_shape(entry: str) -> Case:
    """The paper setting at T = 1M, where row x stride passes 2^31 (q [1, 1M, 64, 192] spans 1.3e10
    elements): the int64-offset builds (flash ROW64) and decode over 16384 selection blocks."""
    return Case(entry, 1, LONG_SEQLEN, 4, 16, 192, 128, "bfloat16", PAPER_CFG)


SELFTEST = Case("selftest", 1, 1, 1, 1, 16, 16, "float16")
SMALL_GROUPS = (1, 2, 4, 8)
NSA_ENTRIES = ("nsa_attention", "nsa_attention_v1", "select_blocks", "selected_bwd_atomic", "nsa_decode",
               "nsa_decode_v1", "nsa_decode_cmp_cache")
DENSE_ENTRIES = ("flash_attention", "flash_attention_decode")
PAPER_ONLY_ENTRIES = ("selected_bwd_atomic",)  # off nsa_attention's path: one shape keeps the run short
VARLEN_ENTRIES = ("nsa_attention_varlen", "flash_attention_varlen")
LONG_ENTRIES = ("nsa_attention", "nsa_attention_v1", "nsa_decode", "nsa_decode_v1", *DENSE_ENTRIES)
CASES: tuple[Case, ...] = (
    *(paper_shape(e) for e in NSA_ENTRIES + DENSE_ENTRIES),
    *(small_head_shape(e) for e in NSA_ENTRIES + DENSE_ENTRIES if e not in PAPER_ONLY_ENTRIES),
    *(paper_shape(e, LARGE_BLOCK_CFG) for e in NSA_ENTRIES if e not in PAPER_ONLY_ENTRIES),
    # the small-group selected kernels at G = 1, 2, 4, 8 (also l' = 256 at G = 4), and the whole NSA
    # forward/backward at G = 4, where the default ("auto") takes them
    *(small_group_shape(g) for g in SMALL_GROUPS),
    small_group_shape(4, cfg=LARGE_BLOCK_CFG),
    small_group_shape(4, "nsa_attention"),
    *(long_shape(e) for e in LONG_ENTRIES),
    # the VARLEN builds (packed batches) of every kernel, padded (G = 16) and small-group (G = 4)
    *(paper_shape(e) for e in VARLEN_ENTRIES),
    small_group_shape(4, "nsa_attention_varlen"),
)


def _selected_cfg(block_slc: int, n_slc: int) -> NSAConfig:
    return NSAConfig(block_cmp=32, stride_cmp=16, block_slc=block_slc, n_slc=n_slc, window=512)


BUILD_CASES: tuple[Case, ...] = (
    # the window branch's kernels one by one (dense, gated, dq chain, packed) and split-KV decode: Dk = 128
    # (one tile), 192 in v1 (padded to 256) and in v2 (128 + 64)
    Case("window_kernels", 1, 4096, 2, 2, 128, 128, "bfloat16"),
    Case("window_kernels_v1", 1, 4096, 2, 2, 192, 128, "bfloat16"),
    Case("window_kernels", 1, 4096, 2, 2, 192, 128, "bfloat16"),
    # the selected kernels: the paper setting (and packed), G = 3 in fp16 with batch 2 and Dk = 48, and
    # G = 64 in fp32 at l' = 256, n = 64
    Case("selected_kernels", 1, 65536, 4, 16, 192, 128, "bfloat16", _selected_cfg(64, 16)),
    Case("selected_kernels", 2, 1000, 2, 3, 48, 32, "float16", _selected_cfg(32, 3)),
    Case("selected_kernels", 1, 4096, 1, 64, 128, 128, "float32", _selected_cfg(256, 64)),
)
