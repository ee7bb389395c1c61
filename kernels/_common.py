"""Small helpers shared by the Triton kernel modules: interpreter detection, sizes, limits."""
from __future__ import annotations

import os

import torch
import triton

from .config import NSAConfig

# Block parameters the Triton kernels are written for (powers of two keep tiles GPU-legal).
SUPPORTED_BLOCK_CMP = (16, 32, 64, 128)
SUPPORTED_STRIDE_CMP = (8, 16, 32, 64)
SUPPORTED_BLOCK_SLC = (32, 64, 128, 256)
MAX_N_SLC = 64
MAX_GROUP = 64
MAX_HEAD_DIM = 256
MIN_HEAD_DIM = 16


def interpreting() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1): one autotune config, fp32 tiles."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Autotune key arguments every tuned kernel takes (and does not read): log2 buckets of the sequence
# length and of batch x heads, the grid's other axis. Without them the correctness check's small
# problem would choose the configs of a 64k point. Kernels list them in do_not_specialize, so a
# bucket value never compiles a new variant.
TUNING_ARGS = ("SEQ_BUCKET", "ROWS_BUCKET")


def size_bucket(n: int) -> int:
    """Power-of-two bucket of a size (its bit length): 1k and 2k-1 share one, 64k has its own."""
    return max(int(n), 1).bit_length()


def tuning_buckets(seqlen: int, rows: int) -> dict[str, int]:
    """The TUNING_ARGS of one launch: buckets of the sequence length and of batch x heads."""
    return {"SEQ_BUCKET": size_bucket(seqlen), "ROWS_BUCKET": size_bucket(rows)}


def autotune(configs: list, key: list[str], **kwargs):
    """triton.autotune keyed also on TUNING_ARGS, its choices kept in Triton's on-disk cache, so a
    later process (or the sweep after `nsa-bench precompile`) reuses them instead of re-tuning."""
    return triton.autotune(configs=configs, key=[*key, *TUNING_ARGS], cache_results=True, **kwargs)


def next_pow2(x: int) -> int:
    """Smallest power of two >= max(x, 1)."""
    return 1 << max(0, int(x) - 1).bit_length()


def split_head_dim(dk: int) -> tuple[int, int]:
    """Two power-of-two column chunks covering Dk (192 -> 128 + 64, 128 -> 64 + 64, 16 -> 16 + 16 masked).

    A non-power-of-two Dk padded to one tile wastes up to half of every q.k dot and its registers
    (the paper's Dk = 192 would run as 256); two exact chunks summed into one accumulator do not.
    """
    if dk & (dk - 1) == 0:
        return (dk // 2, dk // 2) if dk >= 32 else (16, 16)
    first = 1 << (dk.bit_length() - 1)
    return first, max(16, next_pow2(dk - first))


def check_kernel_config(cfg: NSAConfig) -> None:
    """Refuse block parameters the Triton kernels do not implement, naming the field."""
    if cfg.block_cmp not in SUPPORTED_BLOCK_CMP:
        raise ValueError(f"block_cmp={cfg.block_cmp} unsupported by the Triton kernels (use one of {SUPPORTED_BLOCK_CMP})")
    if cfg.stride_cmp not in SUPPORTED_STRIDE_CMP:
        raise ValueError(f"stride_cmp={cfg.stride_cmp} unsupported by the Triton kernels (use one of {SUPPORTED_STRIDE_CMP})")
    if cfg.block_slc not in SUPPORTED_BLOCK_SLC:
        raise ValueError(f"block_slc={cfg.block_slc} unsupported by the Triton kernels (use one of {SUPPORTED_BLOCK_SLC})")
    if cfg.n_slc > MAX_N_SLC:
        raise ValueError(f"n_slc={cfg.n_slc} unsupported by the Triton kernels (at most {MAX_N_SLC})")


def check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Validate BTHD shapes for the kernels and return G = Hq // Hkv."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, T, H, D]")
    hq, hkv = q.shape[2], k.shape[2]
    if hq % hkv:
        raise ValueError(f"Hq={hq} must be a multiple of Hkv={hkv}")
    group = hq // hkv
    if group > MAX_GROUP:
        raise ValueError(f"group size G={group} unsupported by the Triton kernels (at most {MAX_GROUP})")
    for name, dim in (("Dk", q.shape[-1]), ("Dv", v.shape[-1])):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name}={dim} unsupported by the Triton kernels ({MIN_HEAD_DIM}..{MAX_HEAD_DIM})")
    return group


GATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_gated(q: torch.Tensor, out_shape: tuple[int, ...], out: torch.Tensor | None, gates: torch.Tensor | None,
                gate_index: int, accumulate: bool) -> bool:
    """Arguments of a branch forward's fused gated epilogue (out += gates[..., i] * o); True when it is on."""
    if isinstance(gate_index, bool) or not isinstance(gate_index, int) or not 0 <= gate_index <= 2:
        raise ValueError(f"gate_index={gate_index!r} must be an int in 0..2")
    if not isinstance(accumulate, bool):
        raise ValueError(f"accumulate={accumulate!r} must be a bool")
    if out is None:
        if gates is not None:
            raise ValueError("gates given without out: the gated epilogue needs both")
        if accumulate:
            raise ValueError("accumulate=True needs out (the tensor to accumulate into)")
        return False
    if gates is None:
        raise ValueError("gates is required when out is given")
    check_buffer("out", out, q, tuple(out_shape), GATE_DTYPES)
    check_buffer("gates", gates, q, (*out_shape[:3], 3), GATE_DTYPES)
    return True


def check_buffer(name: str, x: object, q: torch.Tensor, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    """A caller's buffer for a kernel to read or write: a contiguous tensor of `shape`, one of `dtypes`, on
    q's device (a ValueError naming the argument otherwise)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(x.shape)} must be {tuple(shape)}")
    if x.dtype not in dtypes:
        raise ValueError(f"{name} dtype={x.dtype} unsupported (one of {', '.join(map(str, dtypes))})")
    if x.device != q.device:
        raise ValueError(f"{name} is on {x.device}, q on {q.device}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {x.stride()})")


def check_dq_chain(q: torch.Tensor, dq_out: torch.Tensor | None, dq_add: torch.Tensor | None) -> torch.Tensor | None:
    """Where a branch backward writes dq (`dq_out`: q's shape, contiguous, any float dtype; None: a new
    tensor in q's dtype) and what it adds (`dq_add`: fp32, q's shape, contiguous; may be dq_out itself).
    NSA threads one fp32 accumulator through its branches this way instead of summing three dq tensors."""
    for name, x, dtypes in (("dq_out", dq_out, GATE_DTYPES), ("dq_add", dq_add, (torch.float32,))):
        if x is not None:
            check_buffer(name, x, q, tuple(q.shape), dtypes)
    return dq_out


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors start at the same address (meta tensors, which have none, only if identical)."""
    return a is b or (a.device.type != "meta" and a.data_ptr() == b.data_ptr())
