"""Locking a GPU's clocks for a measurement, when the plan asks and NVML permits it.

SAB locked a T4 at 1590 MHz to reproduce RF-DETR Nano's published latency; a GPU free to boost
and fall back moves its numbers with its temperature and power. Locking needs root (or an
administrator's permission); without it NVML answers NoPermission and the cell runs unlocked,
its record saying why. A lock is always released again (NVML's reset), also when the
measurement fails: the harness never leaves a GPU changed.
"""

from __future__ import annotations

from typing import Any

from harness.environment import nvml


class ClockLock:
    """`with ClockLock(gpu_index, requested) as lock:` ... `lock.record` says what happened."""

    def __init__(self, gpu_index: int | None, requested: bool | int):
        self.gpu_index = gpu_index
        self.requested = requested
        self.record: dict[str, Any] | None = None
        self._nv: Any = None
        self._handle: Any = None

    def __enter__(self) -> ClockLock:
        if self.requested is False or self.requested is None:
            return self
        self.record = {"requested": True, "locked": False}
        if self.gpu_index is None:
            self.record["reason"] = "no GPU in this cell"
            return self
        try:
            self._nv, self._handle, _ = nvml.open_cuda_device(self.gpu_index)
        except nvml.NvmlUnavailable as exc:
            self.record["reason"] = f"NVML unavailable: {exc}"
            return self
        mhz = self._target_mhz()
        if mhz is None:
            return self._give_up("the GPU's default applications clock is unknown")
        try:
            self._nv.nvmlDeviceSetGpuLockedClocks(self._handle, mhz, mhz)
        except Exception as exc:  # noqa: BLE001 -- NoPermission, NotSupported: recorded, not fatal
            return self._give_up(f"NVML refused to lock the clocks at {mhz} MHz: {nvml.describe_error(exc)}")
        self.record.update(locked=True, sm_mhz=mhz)
        return self

    def _target_mhz(self) -> int | None:
        if isinstance(self.requested, int) and not isinstance(self.requested, bool):
            return int(self.requested)
        for getter in ("nvmlDeviceGetDefaultApplicationsClock", "nvmlDeviceGetApplicationsClock"):
            try:
                return int(getattr(self._nv, getter)(self._handle, self._nv.NVML_CLOCK_SM))
            except Exception:  # noqa: BLE001,S112 -- try the next way of asking
                continue
        return None

    def _give_up(self, reason: str) -> ClockLock:
        assert self.record is not None
        self.record["reason"] = reason
        nvml.close_nvml(self._nv)
        self._nv = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._nv is None:
            return
        assert self.record is not None
        try:
            self._nv.nvmlDeviceResetGpuLockedClocks(self._handle)
            self.record["restored"] = True
        except Exception as error:  # noqa: BLE001 -- say so: the GPU stays locked
            self.record["restored"] = False
            self.record["reason"] = f"the lock could not be released: {nvml.describe_error(error)} (run nvidia-smi -rgc)"
        finally:
            nvml.close_nvml(self._nv)
            self._nv = None
