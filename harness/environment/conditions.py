"""Optional conditions before a cell starts: a cool-down, then an idle and cool enough GPU.

A GPU that just finished a long cell starts the next one hot, with its boost clocks already
limited; another process's work skews the numbers too. A plan can ask (plan `gpu:` section,
`harness.plan.schema.GpuConditions`) for a pause between cells and for the GPU to be idle and
at or below a temperature before the cell starts. Waiting never fails a cell: on timeout it
goes ahead and the record says so. Nothing here changes a GPU setting; NVML is only read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from harness.environment import nvml

if TYPE_CHECKING:
    from harness.plan.schema import GpuConditions

# Utilisation (% of the last sample period with a kernel running) at or below which the GPU
# counts as idle. Not 0: display servers and monitoring tools touch it now and then.
IDLE_UTILIZATION_PCT = 5
POLL_S = 0.5

# Returns {"util_gpu": percent or None, "temp_c": degrees or None}.
StateReader = Callable[[], dict[str, Any]]


def wait_for_gpu(
    device_index: int | None,
    conditions: GpuConditions,
    log: TextIO,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    read_state: StateReader | None = None,
) -> dict[str, Any]:
    """Apply the plan's GPU conditions before a cell; return what happened:

    {"cooldown_s", "waited_s", "start_temperature_c", "start_util_gpu", "timed_out",
     "unchecked": [conditions that could not be read], "skipped_reason": str | None}

    Without a GPU (device_index None) or without NVML this is a no-op with the reason.
    `read_state` replaces NVML (tests); `clock`/`sleep` replace time (tests).
    """
    result: dict[str, Any] = {
        "cooldown_s": 0.0,
        "waited_s": 0.0,
        "start_temperature_c": None,
        "start_util_gpu": None,
        "timed_out": False,
        "unchecked": [],
        "skipped_reason": None,
    }
    if device_index is None and read_state is None:
        result["skipped_reason"] = "no GPU: the cell runs on the CPU"
        return result

    def close() -> None:
        pass

    if read_state is None:
        try:
            read_state, close = _nvml_reader(device_index or 0)
        except nvml.NvmlUnavailable as exc:
            result["skipped_reason"] = f"GPU conditions not applied: {exc}"
            return result
    try:
        _apply(conditions, log, clock, sleep, read_state, result)
    finally:
        close()
    return result


def _apply(
    conditions: GpuConditions,
    log: TextIO,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    read_state: StateReader,
    result: dict[str, Any],
) -> None:
    if conditions.cooldown_s > 0:
        _say(log, f"cooling down for {conditions.cooldown_s:g} s before the cell")
        began = clock()
        sleep(conditions.cooldown_s)
        result["cooldown_s"] = round(clock() - began, 3)

    max_temp = conditions.max_start_temperature_c
    state = read_state()
    if conditions.wait_idle or max_temp is not None:
        began = clock()
        deadline = began + conditions.wait_timeout_s
        unchecked: list[str] = result["unchecked"]
        if conditions.wait_idle and state.get("util_gpu") is None:
            unchecked.append("idle")
            _say(log, "GPU utilisation is not readable here; not waiting for idle")
        if max_temp is not None and state.get("temp_c") is None:
            unchecked.append("temperature")
            _say(log, "GPU temperature is not readable here; not waiting for it to cool")
        announced = False
        while True:
            not_yet = _unmet(state, conditions)
            if not not_yet:
                break
            now = clock()
            if now >= deadline:
                result["timed_out"] = True
                _say(
                    log,
                    f"gave up waiting after {conditions.wait_timeout_s:g} s "
                    f"({'; '.join(not_yet)}); starting the cell anyway",
                )
                break
            if not announced:
                _say(log, f"waiting for the GPU: {'; '.join(not_yet)}")
                announced = True
            sleep(min(POLL_S, deadline - now))
            state = read_state()
        result["waited_s"] = round(clock() - began, 3)
        if announced and not result["timed_out"]:
            _say(log, f"GPU ready after {result['waited_s']:g} s")
    result["start_temperature_c"] = state.get("temp_c")
    result["start_util_gpu"] = state.get("util_gpu")


def _unmet(state: dict[str, Any], conditions: GpuConditions) -> list[str]:
    """Conditions not met yet, in words. A value that can't be read doesn't hold the cell."""
    unmet: list[str] = []
    util, temp = state.get("util_gpu"), state.get("temp_c")
    if conditions.wait_idle and util is not None and util > IDLE_UTILIZATION_PCT:
        unmet.append(f"{util}% busy, waiting for <= {IDLE_UTILIZATION_PCT}%")
    limit = conditions.max_start_temperature_c
    if limit is not None and temp is not None and temp > limit:
        unmet.append(f"{temp} C, waiting for <= {limit:g} C")
    return unmet


def _say(log: TextIO, message: str) -> None:
    log.write(f"[gpu conditions] {message}\n")
    log.flush()


def _nvml_reader(cuda_index: int) -> tuple[StateReader, Callable[[], None]]:
    nv, handle, _ = nvml.open_cuda_device(cuda_index)

    def read() -> dict[str, Any]:
        why: dict[str, str] = {}
        util = nvml.call(why, "util", nv.nvmlDeviceGetUtilizationRates, handle)
        temp = nvml.call(why, "temp", nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
        return {"util_gpu": util.gpu if util is not None else None, "temp_c": temp}

    return read, lambda: nvml.close_nvml(nv)
