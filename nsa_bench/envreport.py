"""`nsa-bench env`: what this machine can measure, as text a person reads."""
from __future__ import annotations

from nsa_bench.backends import registry
from nsa_bench.telemetry import Telemetry


def backend_lines() -> list[str]:
    """One line per backend: available (and which implementation would run) or why not."""
    lines = []
    for backend in registry().values():
        why_not = backend.availability()
        impl = backend.impl_hint() if not why_not else ""
        state = f"available ({impl})" if not why_not else f"unavailable: {why_not}"
        lines.append(f"  {backend.name:<12} {backend.family:<6} {state} - {backend.description}")
    return lines


def render(env: dict[str, object]) -> str:
    git = env.get("git") or {}
    lines = [
        f"GPU:          {env.get('gpu') or 'none (CUDA not available: sweeps write cost-model predictions)'}",
    ]
    if env.get("gpu"):
        reading = Telemetry().read()
        lines += [
            f"  SMs {env.get('gpu_sms')}, {env.get('gpu_memory_gib')} GiB, compute capability {env.get('compute_capability')}",
            f"  driver {env.get('driver')}, power limit {env.get('power_limit_w')} W",
            f"  clocks now: SM {reading.sm_clock_mhz} MHz (max {env.get('max_sm_clock_mhz')}), "
            f"memory {reading.mem_clock_mhz} MHz (max {env.get('max_mem_clock_mhz')})",
            f"  temperature {reading.temp_c} C, power {reading.power_w} W, "
            f"throttling: {', '.join(reading.throttle_reasons) or 'none'}",
        ]
    lines += [
        f"CUDA:         {env.get('cuda') or 'none'}",
        f"torch:        {env.get('torch')}",
        f"triton:       {env.get('triton')}",
        f"flash-attn:   {env.get('flash_attn') or 'not installed (fa2 uses SDPA pinned to FlashAttention-2)'}",
        f"python:       {env.get('python')}",
        f"git commit:   {git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        "backends:",
        *backend_lines(),
    ]
    return "\n".join(lines)
