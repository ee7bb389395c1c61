"""The cost model's device memory: the bytes a point holds resident on one backend, and whether it fits.

A sweep at 128k..1M tokens runs past what one GPU holds; a point that would not fit becomes an `oom`
row before anything is allocated, instead of a crash or a CUDA context left half-full for the next point.
The count is of what our wrappers allocate for the timed call and its stage calls, all alive at once:
inputs, outputs, gradients, per-branch outputs and log-sum-exps, the kernels' scratch (fp32 partial
buffers, compressed K/V, selected block indices), the copy an accumulating kernel's autotuner makes of
what it adds into (`tuning_clone_bytes`); plus the timer's L2-flush buffer. It is an estimate (the
allocator rounds up, the correctness check adds a little): `fits` keeps a margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nsa_bench.gpus import GPUSpec
from nsa_bench.spec import Point

FLUSH_BYTES = 100 << 20  # the timer's L2-flush buffer (2 x 50 MB L2)
MARGIN = 1.10  # allocator rounding and fragmentation: a point needs 10% more than it counts
RESERVE_BYTES = 1 << 30  # cuBLAS workspace, autotuning's scratch, the correctness check at its short length
_F32 = 4
_I32 = 4


@dataclass(frozen=True)
class _Dims:
    b: int
    t: int
    hq: int
    hkv: int
    dk: int
    dv: int
    e: int  # element bytes of the inputs

    def qkv(self) -> int:
        return self.b * self.t * (self.hq * self.dk + self.hkv * (self.dk + self.dv)) * self.e

    def out(self, dv: int | None = None) -> int:
        return self.b * self.t * self.hq * (dv or self.dv) * self.e

    def per_row_f32(self) -> int:  # an LSE or delta: one fp32 per query row
        return self.b * self.t * self.hq * _F32


def _dims(point: Point) -> _Dims:
    return _Dims(point.batch, point.seqlen, point.q_heads, point.kv_heads, point.head_dim_qk, point.head_dim_v,
                 point.dtype_bytes)


def dense_bytes(point: Point, padded_v: bool = False) -> int:
    """Dense attention (FlashAttention-2 layout): q, k, v, o, LSE; backward adds dO, dq/dk/dv, the fp32
    dq accumulator and delta; decode holds the KV cache and split-KV partials. `padded_v`: V (and O)
    zero-padded to Dk (fa2 at Dk != Dv), so both are stored at Dk."""
    d = _dims(point)
    dv = d.dk if padded_v else d.dv
    if point.mode == "decode":
        cache = d.b * d.t * d.hkv * (d.dk + dv) * d.e
        splits = max(1, math.ceil(d.t / 4096))
        return cache + d.b * d.hq * (d.dk + dv) * d.e + d.b * d.hq * splits * (dv + 1) * _F32
    qkv = d.b * d.t * (d.hq * d.dk + d.hkv * (d.dk + dv)) * d.e
    forward = qkv + d.out(dv) + d.per_row_f32()
    if point.mode == "fwd":
        return forward
    grads = qkv + d.out(dv) + d.b * d.t * d.hq * d.dk * _F32 + d.per_row_f32()
    return forward + grads


def nsa_bytes(point: Point) -> int:
    """NSA (our kernels): q, k, v, gates; compressed K/V; the selected blocks [B, T, Hkv, n] int32; the
    three branch outputs (stage calls) and their LSEs besides the gated output. Backward adds dO, dq (and
    its fp32 sum over branches), dk/dv, d(compressed K/V), the fp32 dK/dV partials of selected attention,
    d_gates and the three branch gradients. At G < 16 the small-group selected kernels' partials too. Decode: the KV cache, the compressed cache and partials."""
    d = _dims(point)
    cfg = point.cfg
    tc = max(0, (d.t - cfg.block_cmp) // cfg.stride_cmp + 1)
    cmp_kv = d.b * tc * d.hkv * (d.dk + d.dv) * d.e
    if point.mode == "decode":
        cache = d.b * d.t * d.hkv * (d.dk + d.dv) * d.e
        units = cfg.n_slc + math.ceil(cfg.window / cfg.block_slc) + math.ceil(tc / 256) + 1
        partials = d.b * d.hq * units * (d.dv + 1) * _F32
        scores = d.b * d.hkv * math.ceil(d.t / cfg.block_slc) * _F32
        return cache + cmp_kv + d.b * d.hq * (d.dk + d.dv + 3) * d.e + partials + scores
    gates = d.b * d.t * d.hq * 3 * d.e
    blocks = d.b * d.t * d.hkv * cfg.n_slc * _I32
    forward = d.qkv() + gates + cmp_kv + blocks + 4 * d.out() + 3 * d.per_row_f32()
    fwd_partials, dq_partials = small_group_partials(point)
    if point.mode == "fwd":
        return forward + fwd_partials + tuning_clone_bytes(point)
    grads = (d.out() + d.qkv() + d.b * d.t * d.hq * d.dk * _F32 + cmp_kv + gates + 3 * d.out()
             + 3 * d.per_row_f32() + d.b * d.t * d.hkv * (d.dk + d.dv) * _F32)
    # each call frees its partials on return; tuning (the first call) clones while they are alive
    return forward + grads + max(fwd_partials, dq_partials) + tuning_clone_bytes(point)


SMALL_GROUP_BELOW = 16  # kernels/variants.py SMALL_G_BELOW: where the default ("auto") takes the path


def tuning_clone_bytes(point: Point) -> int:
    """The copy autotuning makes of what an accumulating kernel adds into (its autotuner's `restore_value`,
    cloned before each trial and put back after: one copy alive at a time), on the first call of a point.
    fwd (the inference forward, every branch adding into one output): the output, for the window branch
    and, at G >= 16, the selected branch (1 GiB at 64k, the paper heads); bwd and fwdbwd at G >= 16: the
    fp32 dq sum, which the selected dq kernel reads and writes in place (3 GiB at 64k). The small-group
    path (G < 16) and decode tune nothing that accumulates. tests/test_tuning_on_cpu.py measures them."""
    d = _dims(point)
    if point.mode == "fwd":
        return d.out()
    if point.mode in ("bwd", "fwdbwd") and point.group_size >= SMALL_GROUP_BELOW:
        return d.b * d.t * d.hq * d.dk * _F32
    return 0


def small_group_partials(point: Point) -> tuple[int, int]:
    """(forward, backward) partial buffers of the small-group selected kernels (kernels/selected_small_g.py),
    which the default variant runs at G < 16: one partial per (query, head, selected block, 64-key chunk) --
    o in the input dtype plus an fp32 lse forward, dq in the input dtype backward. They grow as T x n, n
    times the output: 17 GB forward at 64k tokens and the paper heads with G = 4. (0, 0) at G >= 16."""
    if point.group_size >= SMALL_GROUP_BELOW:
        return 0, 0
    d, cfg = _dims(point), point.cfg
    slots = d.b * d.t * d.hq * cfg.n_slc * max(1, cfg.block_slc // 64)
    return slots * (d.dv * d.e + _F32), slots * d.dk * d.e


def layer_bytes(point: Point, attention: int) -> int:
    """A layer mode: x, the projection weights and their outputs around the attention (backward: grads
    of each, and of x)."""
    d = _dims(point)
    width = point.d_model
    proj = d.hq * d.dk + d.hkv * (d.dk + d.dv) + 3 * d.hq
    weights = width * (proj + d.hq * d.dv) * d.e
    activations = d.b * d.t * (2 * width + proj) * d.e
    total = attention + weights + activations
    return total * 2 - attention if point.mode == "layer-bwd" else total


def _attention_point(point: Point) -> Point:
    from dataclasses import replace

    mode = {"layer-fwd": "fwd", "layer-bwd": "bwd"}.get(point.mode, point.mode)
    return replace(point, mode=mode, d_model=0)


def bytes_resident(point: Point, family: str, padded_v: bool = False) -> int:
    """Bytes on the device while `point` runs on a backend of `family` ("nsa" or "dense")."""
    inner = _attention_point(point)
    attention = nsa_bytes(inner) if family == "nsa" else dense_bytes(inner, padded_v)
    total = layer_bytes(point, attention) if point.is_layer else attention
    return total + FLUSH_BYTES


def needed_bytes(resident: int) -> int:
    """What must be free to run a point of `resident` bytes (margin and reserve included)."""
    return int(resident * MARGIN) + RESERVE_BYTES


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def oom_reason(resident: int, free_bytes: int, where: str) -> str | None:
    """Why a point of `resident` bytes cannot run with `free_bytes` free on `where` (None: it fits)."""
    need = needed_bytes(resident)
    if need <= free_bytes:
        return None
    return (f"needs {gib(resident)} resident by the cost model ({gib(need)} with margin and reserve), "
            f"{gib(free_bytes)} free on {where}: not run")


def spec_free_bytes(gpu: GPUSpec) -> int:
    """Free memory a predicted row assumes: the spec's total less the CUDA context (~0.5 GiB)."""
    return gpu.memory_bytes - (512 << 20)
