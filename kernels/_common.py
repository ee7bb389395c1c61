"""Small helpers shared by the Triton kernel modules: interpreter detection, sizes, limits, autotuning."""
from __future__ import annotations

from typing import Any

import torch
import triton
from triton.runtime.autotuner import Autotuner

from . import overrides
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
    """True under Triton's CPU interpreter: bf16 tiles are upcast, small sizes (`small_sizes`), one config.

    Asks Triton's own runtime knob (TRITON_INTERPRET as Triton reads it: `true` and `1` interpret,
    `0`, `false`, `off` and `2` compile), so the kernels and Triton never disagree about which runs.
    """
    return bool(triton.knobs.runtime.interpret)


def small_sizes() -> bool:
    """Whether host code picks the interpreter's small tile sizes and chunk lengths (so tests cross tiles
    and chunks at small shapes): under the interpreter, unless a caller asked for the GPU's
    (`overrides.overriding(gpu_sizes=True)`)."""
    return interpreting() and not overrides.current().gpu_sizes


def interpreter_config(kernel: Any) -> bool:
    """Whether a launch of an autotuned `kernel` runs its one interpreter config: under the interpreter,
    unless a caller pinned this kernel's config or tunes on the CPU (kernels/overrides.py)."""
    return interpreting() and not overrides.current().tune and overrides.pinned_config(kernel) is None


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


class Tuner(Autotuner):
    """triton's Autotuner, plus what kernels/overrides.py asks for at call time: a pinned config runs as
    given (no tuning, no hooks: one run, as a one-config autotuner makes); under the interpreter, unless
    pinned or tuning on the CPU, the one `interpreter` config runs. Otherwise it is Triton's autotuner."""

    def __init__(self, fn: Any, configs: list, key: list[str], interpreter: triton.Config | None,
                 **kwargs: Any) -> None:
        super().__init__(fn, fn.arg_names, configs, key, kwargs.pop("reset_to_zero", None),
                         kwargs.pop("restore_value", None), **kwargs)
        self.interpreter = interpreter

    def run(self, *args: Any, **kwargs: Any) -> Any:
        config = overrides.pinned_config(self)
        if config is None and interpreter_config(self):
            config = self.interpreter
        if config is None:
            return super().run(*args, **kwargs)
        self.best_config = config
        return self.fn.run(*args, **kwargs, **config.all_kwargs())


def autotune(configs: list, key: list[str], interpreter: triton.Config | None = None, **kwargs):
    """triton.autotune keyed also on TUNING_ARGS, its choices kept in Triton's on-disk cache, so a
    later process (or the sweep after `nsa-bench precompile`) reuses them instead of re-tuning.

    `configs` are the GPU's; `interpreter` is what a launch runs under the CPU interpreter (None: the
    wrapper launches the bare kernel there itself, e.g. `_selected_tiles.launcher`). A `Tuner`."""
    def decorate(fn: Any) -> Tuner:
        return Tuner(fn, configs, [*key, *TUNING_ARGS], interpreter, cache_results=True, **kwargs)

    return decorate


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
