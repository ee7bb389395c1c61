"""Predicted 64k times of the small-G selected kernels as built (kernels/selected_small_g.py) beside the
padded path they replace at G < 16 (selected.py v2: union tiles of P positions x 16 padded head rows).
`python docs/small_g_built.py`; same shape, selections and time rule as docs/small_g_model.py.

What differs from the model's path C: lists are cut into segments of `_selected_tiles.segment_len` = 4n l'
queries (4096 at the paper blocks), not 256 rows, so fewer programs reload K_j/V_j; the forward tile is
autotuned over 16-64 gathered rows (64 counted here, e = 0.65), the backward over 16-32 (32 counted,
e = 0.55); the merge also reads the row-sorted block_idx; dq is not a query-centric kernel but the dS K
of the dk/dv kernel, written as bf16 partials per (entry, head) and summed by a reduce kernel.
"""
from __future__ import annotations

import numpy as np

from small_g_model import BLOCK_BYTES, DK, DV, HQ, LSLC, NSLC, SEED, T, list_lengths, selections, timing, union_blocks

SEGMENT = 4 * NSLC * LSLC  # queries per block-outer program (_selected_tiles.segment_len)


def main() -> None:
    sel = selections(np.random.default_rng(SEED))
    blocks = sum(len(s) for s in sel)
    lengths = list_lengths(sel)
    unions = {p: (union_blocks(sel, p) if p > 1 else blocks) for p in (1, 2, 4)}
    q, o, lse = T * HQ * DK * 2, T * HQ * DV * 2, T * HQ * 4
    print(f"{'G':>2} {'pass':<5} {'path':<34} {'HBM GB':>7} {'L2 GB':>7} {'MMA TF':>7} {'ms':>7} bound")
    for g in (1, 2, 4, 8):
        hkv = HQ // g
        kv_once, idx = T * hkv * (DK + DV) * 2, T * hkv * NSLC * 4
        pairs = blocks * hkv
        # padded v2 forward: P positions x 16 rows over the union of their blocks (P = 1, 2, 4 tuned)
        best = None
        for p, e in ((1, 0.475), (2, 0.55), (4, 0.6)):
            l2 = hkv * unions[p] * BLOCK_BYTES + q + o + idx
            mma = hkv * unions[p] * LSLC * 2 * 16 * p * (DK + DV)
            ms, bound = timing(q + o + lse + idx + kv_once, l2, mma, e)
            if best is None or ms < best[0]:
                best = (ms, bound, p, q + o + lse + idx + kv_once, l2, mma)
        ms, bound, p, hbm, l2, mma = best
        print(f"{g:>2} fwd   padded v2 ({p}-position tiles, 16 rows/pos) {hbm / 1e9:7.1f} {l2 / 1e9:7.1f} "
              f"{mma / 1e12:7.2f} {ms:7.1f} {bound}")
        # small-G forward as built
        programs = hkv * int(np.sum(np.ceil(lengths / SEGMENT)))
        tiles = hkv * int(np.sum(np.ceil(lengths * g / 64)))
        gathers = pairs * g * DK * 2
        partials = 2 * pairs * g * (DV * 2 + 4)
        inversion = idx + 3 * pairs * 4 + idx  # + the merge's read of the sorted block_idx
        hbm = gathers + partials + kv_once + o + lse + inversion
        l2 = gathers + partials + programs * BLOCK_BYTES + o + inversion
        mma = tiles * 64 * LSLC * 2 * (DK + DV)
        ms_fwd, bound = timing(hbm, l2, mma, 0.65)
        print(f"{g:>2} fwd   small-G (block-outer + merge)      {hbm / 1e9:7.1f} {l2 / 1e9:7.1f} "
              f"{mma / 1e12:7.2f} {ms_fwd:7.1f} {bound}   ({programs} busy programs)")
        # dq: padded v2 dq tiles (P = 1, 2 positions x 16 rows; 3 dots per block) vs small-G's extra work in
        # the dk/dv kernel (one more dot, dS K) plus the bf16 dq partials written and read back
        best = None
        for p, e in ((1, 0.475), (2, 0.55)):
            l2 = hkv * unions[p] * BLOCK_BYTES + q + o + idx + lse * 2
            mma = hkv * unions[p] * LSLC * 2 * 16 * p * (2 * DK + DV)
            ms, bound = timing(q + o + 2 * lse + idx + kv_once, l2, mma, e)
            if best is None or ms < best[0]:
                best = (ms, bound, p, q + o + 2 * lse + idx + kv_once, l2, mma)
        ms, bound, p, hbm, l2, mma = best
        print(f"{g:>2} dq    padded v2 ({p}-position tiles)               {hbm / 1e9:7.1f} {l2 / 1e9:7.1f} "
              f"{mma / 1e12:7.2f} {ms:7.1f} {bound}")
        dq_partials = 2 * pairs * g * DK * 2
        tiles32 = hkv * int(np.sum(np.ceil(lengths * g / 32)))
        extra_mma = tiles32 * 32 * LSLC * 2 * DK
        hbm = dq_partials + idx
        ms_hbm, ms_mma = hbm / 4.08e12 * 1e3, extra_mma / (989e12 * 0.55) * 1e3
        print(f"{g:>2} dq    small-G (dS K in dk/dv + reduce)   {hbm / 1e9:7.1f} {hbm / 1e9:7.1f} "
              f"{extra_mma / 1e12:7.2f} {ms_hbm + ms_mma:7.1f} HBM+MMA (added to the dk/dv kernel)")


if __name__ == "__main__":
    main()
