"""The small-G traffic model of docs/tuning-notes.md (issue 17), recomputed: `python docs/small_g_model.py`.

Selected-attention forward (and dq) at T = 64k, B = 1, Hq = 64 query heads, Hkv = 64 / G (the gqa suite's
shape), Dk = 192, Dv = 128, l' = 64, n = 16, bf16, on an H200. Selections are simulated the way the
benchmark's random inputs make them (block 0 and the two local blocks forced, the other 13 uniform among
the remaining candidates), one KV head at a time (every head has the same statistics), by summing over
the actual tiles and lists, not averages.

Time rule (issue 13's, so the two notes compare): t = max(HBM bytes / 4.08 TB/s (85% of 4.8),
L2->SM bytes / 8 TB/s (assumed, unmeasured), executed MMA FLOPs / (989 TFLOP/s x e)), e = 0.475 for
M = 16 MMAs, 0.6 for M = 64 with N = 16..64, 0.65 for M = 64, N = 64.
"""
from __future__ import annotations

import numpy as np

T, HQ, DK, DV, LSLC, NSLC = 65536, 64, 192, 128, 64, 16
HBM, L2, PEAK = 4.08e12, 8e12, 989e12
BLOCK_BYTES = LSLC * (DK + DV) * 2  # one selected block's K and V: 40 KB
SEED = 0


def selections(rng: np.random.Generator) -> list[np.ndarray]:
    """Per position t, the selected blocks of one KV head (NSA_SPEC section 3, random scores)."""
    out = []
    for t in range(T):
        cur = t // LSLC
        forced = {0, cur, max(cur - 1, 0)}
        rest = np.setdiff1d(np.arange(cur + 1), list(forced), assume_unique=False)
        take = min(NSLC, cur + 1) - len(forced)
        free = rng.choice(rest, size=take, replace=False) if take > 0 else np.empty(0, dtype=int)
        out.append(np.concatenate([np.array(sorted(forced)), free]).astype(np.int64))
    return out


def union_blocks(sel: list[np.ndarray], positions: int) -> int:
    """Blocks a tile of `positions` consecutive positions loads (the union of their selections), summed."""
    return sum(len(np.unique(np.concatenate(sel[t0:t0 + positions]))) for t0 in range(0, T, positions))


def list_lengths(sel: list[np.ndarray]) -> np.ndarray:
    """Queries per selection block (the inverted selection's list lengths) of one KV head."""
    return np.bincount(np.concatenate(sel), minlength=T // LSLC)


def timing(hbm: float, l2: float, mma: float, e: float) -> tuple[float, str]:
    parts = {"HBM": hbm / HBM, "L2": l2 / L2, "MMA": mma / (PEAK * e)}
    bound = max(parts, key=parts.get)
    return parts[bound] * 1e3, bound


def main() -> None:
    sel = selections(np.random.default_rng(SEED))
    blocks = sum(len(s) for s in sel)  # (position, block) pairs of one KV head
    lengths = list_lengths(sel)
    print(f"pairs per KV head {blocks} ({blocks / T:.2f} blocks per position); lists: block 0 {lengths[0]}, "
          f"median {int(np.median(lengths))}, max of the others {lengths[1:].max()}")
    q, o, lse = T * HQ * DK * 2, T * HQ * DV * 2, T * HQ * 4
    rows = []
    for g in (1, 2, 4, 8, 16):
        hkv = HQ // g
        kv_once, idx = T * hkv * (DK + DV) * 2, T * hkv * NSLC * 4
        # A: padded, as written (selected.py): program per (t, KV head); G_PAD = 16 rows, Dk 192 run as 256,
        # all n slots run their MMAs (unused ones on masked tiles); every used block gathered per position.
        hbm = q + o + lse + idx + kv_once
        l2 = hkv * blocks * BLOCK_BYTES + q + o + idx
        mma = T * hkv * NSLC * LSLC * 2 * 16 * (256 + DV)
        rows.append((g, "A padded (as written)", hbm, l2, mma, 0.475, T * hkv, "16 x 256 x 64"))
        # B: P-position union tiles: P*G = 16 rows (and 64), Dk = 128 + 64, a block of the tile's union
        # loaded once and run against all its rows (masked where a row did not select it)
        for tile_rows, e in ((16, 0.475), (64, 0.6)):
            p = tile_rows // g
            if p < 1 or p > 64:
                continue
            union = union_blocks(sel, p) if p > 1 else blocks
            l2b = hkv * union * BLOCK_BYTES + q + o + idx
            mmab = hkv * union * LSLC * 2 * tile_rows * (DK + DV)
            rows.append((g, f"B {p}-position tiles", hbm, l2b, mmab, e, T // p * hkv, f"{tile_rows} x 192 x 64"))
        # C: KV-block-outer: program per (block j, KV head, segment of 256 rows of j's query list); K/V of j
        # loaded once per program; 64-row tiles (64/G queries x G heads) of gathered q; partial (o bf16,
        # lse fp32) per (query, head, slot) written, then merged per (query, head) by a second kernel.
        pairs = blocks * hkv  # (position, block, KV head)
        gathers = pairs * g * DK * 2
        partials = 2 * pairs * g * (DV * 2 + 4)  # written by the block kernel, read by the merge
        inversion = idx + 3 * pairs * 4  # block_idx read; sort keys/values and the lists, int32
        seg_rows = 256
        programs = hkv * int(np.sum(np.ceil(lengths * g / seg_rows)))
        tiles = hkv * int(np.sum(np.ceil(lengths * g / 64)))
        hbmc = gathers + partials + kv_once + o + lse + inversion
        l2c = gathers + partials + programs * BLOCK_BYTES + o + inversion
        mmac = tiles * 64 * LSLC * 2 * (DK + DV)
        rows.append((g, "C KV-block-outer", hbmc, l2c, mmac, 0.65, programs, "64 x 192 x 64"))
    print(f"{'G':>3} {'Hkv':>4} {'path':<24} {'HBM GB':>7} {'L2 GB':>7} {'MMA TF':>7} {'e':>5} {'programs':>9} "
          f"{'MMA (MxKxN)':>14} {'ms':>7} bound")
    for g, name, hbm, l2, mma, e, programs, shape in rows:
        ms, bound = timing(hbm, l2, mma, e)
        print(f"{g:>3} {HQ // g:>4} {name:<24} {hbm / 1e9:7.1f} {l2 / 1e9:7.1f} {mma / 1e12:7.2f} {e:5.3f} "
              f"{programs:>9} {shape:>14} {ms:7.1f} {bound}")


if __name__ == "__main__":
    main()
