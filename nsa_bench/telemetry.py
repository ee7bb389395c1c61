"""NVML readings around each point: clocks, temperature, power, throttle reasons (read, never set)."""
from __future__ import annotations

from dataclasses import dataclass

# Throttle reasons that mean the card slowed itself (idle and application-clock settings do not).
_SLOWDOWN_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}


@dataclass(frozen=True)
class Reading:
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    throttle_reasons: tuple[str, ...] = ()

    @property
    def throttled(self) -> bool:
        return bool(self.throttle_reasons)


def _safe(fn, *args):
    """An NVML query, or None where the card or driver does not support it."""
    try:
        value = fn(*args)
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


class Telemetry:
    """A handle on one GPU through nvidia-ml-py; every method degrades to empty readings without NVML."""

    def __init__(self, device_index: int = 0) -> None:
        self._handle = None
        self.error = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as exc:  # no driver, no package, no GPU: telemetry is optional
            self.error = f"NVML unavailable: {exc}"

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read(self) -> Reading:
        if self._handle is None:
            return Reading()
        nv, h, safe = self._nvml, self._handle, _safe
        power = safe(nv.nvmlDeviceGetPowerUsage, h)
        mask = safe(nv.nvmlDeviceGetCurrentClocksThrottleReasons, h) or 0
        return Reading(
            sm_clock_mhz=safe(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
            mem_clock_mhz=safe(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
            temp_c=safe(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            power_w=None if power is None else power / 1000.0,
            throttle_reasons=tuple(name for bit, name in _SLOWDOWN_REASONS.items() if mask & bit),
        )

    def describe(self) -> dict[str, object]:
        """Static facts for env.json: driver, max clocks, power limit."""
        if self._handle is None:
            return {"nvml": self.error}
        nv, h, safe = self._nvml, self._handle, _safe
        limit = safe(nv.nvmlDeviceGetPowerManagementLimit, h)
        return {
            "driver": safe(nv.nvmlSystemGetDriverVersion),
            "max_sm_clock_mhz": safe(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": safe(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
            "power_limit_w": None if limit is None else limit / 1000.0,
        }


def combine(before: Reading, after: Reading) -> Reading:
    """One reading for a point: clocks/temperature/power after it ran, throttle reasons from either."""
    reasons = tuple(dict.fromkeys(before.throttle_reasons + after.throttle_reasons))
    return Reading(after.sm_clock_mhz, after.mem_clock_mhz, after.temp_c, after.power_w, reasons)
