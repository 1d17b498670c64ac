"""Memory, energy and artifact size of a cell: RAPL on a fake sysfs tree and for real, NVML's
energy counter and its power-integration fallback on a fake NVML, the device memory's three
ways (NVML's process entry above its baseline for every runtime, the torch allocator where NVML
does not list the process, the device's used memory),
the artifact on disk against os.stat, the over-processes figures, and a figure that cannot be
had is None with its reason, never 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakeGpu, FakeNvml
from record_factory import record

from harness.environment.energy import (
    EnergyInputs,
    RaplMeter,
    RaplUnavailable,
    energy_figures,
    find_rapl_zones,
    integrate_power,
)
from harness.environment.monitor import GpuMonitor
from harness.measure.resources import resources_over_processes
from harness.results import Monitor, Resources
from harness.run.resources import (
    HostPeak,
    TorchPeak,
    artifact_size,
    device_memory,
    device_memory_baseline,
    host_memory_now,
    resources_block,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- RAPL


def _zone(root: Path, name: str, label: str, uj: int, max_range: int | None = 262_143_328_850) -> Path:
    zone = root / "sys" / "class" / "powercap" / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{uj}\n")
    if max_range is not None:
        (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_rapl_reads_the_package_zones_of_a_fake_sysfs_tree(tmp_path: Path) -> None:
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5_000)  # a sub-zone: inside package 0, never counted
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 262_143_000_000, max_range=262_143_328_850)
    zones = find_rapl_zones(tmp_path)
    assert [z.name for z in zones] == ["package-0", "package-1"]
    clock = FakeClock()
    meter = RaplMeter(tmp_path, clock=clock)
    meter.phase("warmup")
    (p0 / "energy_uj").write_text("2000000\n")  # warm-up energy: before the phase, not counted
    meter.phase("measure")
    (p0 / "energy_uj").write_text("27000000\n")  # +25 J
    (p1 / "energy_uj").write_text("671150\n")  # wrapped: +328850 - 0 + 671150 uj... = 1.0 J
    clock.now += 2.5
    meter.phase("done")
    joules, why = meter.joules()
    assert why is None
    assert joules == pytest.approx(25.0 + 1.0)
    figures = energy_figures(EnergyInputs(images=130, device="cpu", rapl=meter))
    assert figures["method"] == "rapl" and figures["domains"] == ["package-0", "package-1"]
    assert figures["joules"] == pytest.approx(26.0)
    assert figures["duration_s"] == pytest.approx(2.5)
    assert figures["joules_per_image"] == pytest.approx(26.0 / 130)
    assert figures["images_per_joule"] == pytest.approx(130 / 26.0)
    assert figures["mean_power_w"] == pytest.approx(26.0 / 2.5)
    assert "every process" in figures["scope"]


def test_rapl_reads_amd_energy_sockets(tmp_path: Path) -> None:
    hw = tmp_path / "sys" / "class" / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    (hw / "name").write_text("amd_energy\n")
    (hw / "energy1_label").write_text("Ecore000\n")
    (hw / "energy1_input").write_text("10\n")
    (hw / "energy17_label").write_text("Esocket0\n")
    (hw / "energy17_input").write_text("5000000\n")
    zones = find_rapl_zones(tmp_path)
    assert [z.name for z in zones] == ["Esocket0"]  # per-core counters are inside the socket's


def test_unreadable_rapl_is_null_with_the_reason(tmp_path: Path) -> None:
    zone = tmp_path / "sys" / "class" / "powercap" / "intel-rapl:0"
    (zone / "energy_uj").mkdir(parents=True)  # cannot be read as a file, even by root
    with pytest.raises(RaplUnavailable, match="not readable"):
        find_rapl_zones(tmp_path)
    meter = RaplMeter(tmp_path)
    meter.phase("measure")
    meter.phase("done")
    figures = energy_figures(EnergyInputs(images=10, device="cpu", rapl=meter))
    assert figures.get("joules") is None and figures.get("joules_per_image") is None
    assert "not readable" in figures["reason"]


def test_no_rapl_at_all_says_so(tmp_path: Path) -> None:
    with pytest.raises(RaplUnavailable, match="no RAPL counter here"):
        find_rapl_zones(tmp_path)


def test_rapl_on_this_machine_is_a_figure_or_null_with_a_reason() -> None:
    """The real sysfs: this CPU machine most likely exposes no readable RAPL (a container)."""
    meter = RaplMeter()
    meter.phase("measure")
    sum(range(200_000))
    meter.phase("done")
    figures = energy_figures(EnergyInputs(images=10, device="cpu", rapl=meter))
    if figures.get("method") == "rapl":
        assert figures["joules"] > 0 and figures["joules_per_image"] > 0
    else:
        assert figures.get("joules") is None and figures["reason"]
        Resources.model_validate({"device_memory": {}, "host_memory": {}, "artifact": {}, "energy": figures})


# ----------------------------------------------------------------------------- NVML energy


def _drive(monitor: GpuMonitor, gpu: FakeGpu, clock: FakeClock, *, warmup: int = 3, measure: int = 50,
           step_s: float = 0.02, power_w: float = 300.0, mj_per_s: float | None = 300_000.0) -> None:
    """Warm-up then measurement samples, 20 ms apart, the counter advancing with the power."""
    monitor.phase("warmup")
    for _ in range(warmup):
        monitor.sample_now()
        clock.now += step_s
    monitor.phase("measure")
    for _ in range(measure):
        gpu.power_usage_mw = int(power_w * 1000)
        monitor.sample_now()
        clock.now += step_s
        if mj_per_s is not None:
            gpu.energy_mj += int(mj_per_s * step_s)
    monitor.phase("done")


def _monitor(fake: FakeNvml, clock: FakeClock, **kwargs: Any) -> GpuMonitor:
    monitor = GpuMonitor(0, 20.0, clock=clock, **kwargs)
    monitor._interval_s = 3600.0  # the thread takes one sample, then waits: the test drives the rest
    monitor.start()
    return monitor


def test_the_energy_counter_is_read_at_the_measurement_phase_edges(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    monitor = _monitor(fake_nvml, clock)
    _drive(monitor, gpu, clock)
    result = monitor.stop()
    Monitor.model_validate(result)
    counter = result["energy_counter"]
    assert counter["end"] - counter["start"] == pytest.approx(50 * 6000)  # 300 W x 20 ms = 6 J each
    assert counter["end_t_mono_s"] - counter["start_t_mono_s"] == pytest.approx(1.0)
    figures = energy_figures(EnergyInputs(images=200, device="cuda:0", monitor=result))
    assert figures["method"] == "nvml_energy_counter"
    assert figures["joules"] == pytest.approx(300.0) and figures["counter_joules"] == pytest.approx(300.0)
    assert figures["joules_per_image"] == pytest.approx(1.5) and figures["images_per_joule"] == pytest.approx(1 / 1.5)
    assert figures["mean_power_w"] == pytest.approx(300.0) and figures["peak_power_w"] == pytest.approx(300.0)
    # The cross-check: the power samples integrated over the same window agree.
    assert figures["integrated_joules"] == pytest.approx(300.0, rel=0.03)
    assert not [c for c in fake_nvml.calls if "Set" in c or "Reset" in c]
    assert fake_nvml.initialised == 0


def test_without_a_counter_the_power_samples_are_integrated_and_it_says_so(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    gpu.unsupported = {"nvmlDeviceGetTotalEnergyConsumption"}
    monitor = _monitor(fake_nvml, clock)
    _drive(monitor, gpu, clock, power_w=250.0, mj_per_s=None)
    result = monitor.stop()
    Monitor.model_validate(result)
    assert "Not Supported" in result["energy_counter"]["reason"]
    figures = energy_figures(EnergyInputs(images=100, device="cuda:0", monitor=result, measure_s=1.0))
    assert figures["method"] == "nvml_power_integration"
    assert figures["joules"] == pytest.approx(250.0, rel=0.03)
    assert "integrated from 50 power samples" in figures["reason"] and "Not Supported" in figures["reason"]
    assert figures.get("counter_joules") is None


def test_a_counter_that_did_not_advance_falls_back_to_the_samples(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    monitor = _monitor(fake_nvml, clock)
    _drive(monitor, gpu, clock, mj_per_s=0.0)
    figures = energy_figures(EnergyInputs(images=100, device="cuda:0", monitor=monitor.stop()))
    assert figures["method"] == "nvml_power_integration" and "did not advance" in figures["reason"]


def test_no_counter_and_no_power_is_null_never_zero(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    gpu.unsupported = {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage"}
    monitor = _monitor(fake_nvml, clock)
    _drive(monitor, gpu, clock, mj_per_s=None)
    figures = energy_figures(EnergyInputs(images=100, device="cuda:0", monitor=monitor.stop()))
    for key in ("joules", "joules_per_image", "images_per_joule", "mean_power_w", "peak_power_w"):
        assert figures.get(key) is None, key
    assert "Not Supported" in figures["reason"] and "power" in figures["reason"]


def test_integrating_a_constant_power_gives_power_times_time() -> None:
    rows = [{"t_mono_s": 10.0 + i * 0.02, "power_w": 100.0} for i in range(51)]
    joules, n = integrate_power(rows, 10.0, 11.0)
    assert n == 51 and joules == pytest.approx(100.0)
    # Edges beyond the first and last sample are held at their values.
    joules, _ = integrate_power(rows[5:-5], 10.0, 11.0)
    assert joules == pytest.approx(100.0)
    assert integrate_power([], 0.0, 1.0) == (None, 0)


def test_with_sampling_off_the_boundaries_are_still_read(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    gpu.compute_processes = [(os.getpid(), 900_000_000)]
    monitor = GpuMonitor(0, 20.0, clock=clock, sample=False)
    monitor.start()
    assert monitor._thread is None  # no thread runs beside the timed loop
    monitor.phase("warmup")
    monitor.phase("measure")
    clock.now += 3.0
    gpu.energy_mj += 600_000
    monitor.phase("done")
    result = monitor.stop()
    Monitor.model_validate(result)
    assert result["sampling"] is False and "gpu.monitor: false" in result["reason"]
    assert [row["phase"] for row in result["trace"]] == ["measure", "measure"]
    figures = energy_figures(EnergyInputs(images=300, device="cuda:0", monitor=result))
    assert figures["method"] == "nvml_energy_counter" and figures["joules"] == pytest.approx(600.0)
    assert figures["duration_s"] == pytest.approx(3.0)
    memory = device_memory("cuda:0", {"process_baseline_bytes": 0}, None, result)
    assert memory["peak_bytes"] == 900_000_000 and memory["process_samples"] == 2


# ----------------------------------------------------------------------------- device memory


def test_nvml_process_memory_above_the_baseline(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    gpu.compute_processes = [(12345, 4_000_000_000)]  # another process: never counted as ours
    gpu.memory_used_bytes = 4_500_000_000
    baseline = device_memory_baseline(0)  # before the session: this process is not listed yet
    assert baseline == {"device_used_baseline_bytes": 4_500_000_000, "process_baseline_bytes": 0}
    gpu.compute_processes.append((os.getpid(), 700_000_000))
    gpu.memory_used_bytes = 5_200_000_000
    monitor = _monitor(fake_nvml, clock)
    monitor.phase("measure")
    for used in (700_000_000, 1_100_000_000, 1_000_000_000):
        gpu.compute_processes[-1] = (os.getpid(), used)
        monitor.sample_now()
        clock.now += 0.02
    monitor.phase("done")
    result = monitor.stop()
    Monitor.model_validate(result)
    summary = result["summary"]
    assert summary["process_memory_bytes"]["max"] == 1_100_000_000
    assert summary["memory_cost_us"]["p50"] >= 0
    memory = device_memory("cuda:0", baseline, None, result)
    assert memory["method"] == "nvml_process"
    assert memory["peak_bytes"] == 1_100_000_000 and memory["process_peak_bytes"] == 1_100_000_000
    assert memory["device_used_peak_bytes"] == 5_200_000_000
    assert "reason" not in memory


def test_a_process_nvml_never_lists_falls_back_to_the_device_with_the_reason(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    gpu.compute_processes = [(999_999, 2_000_000_000)]  # a container: NVML lists the host's pid
    gpu.memory_used_bytes = 1_000_000_000
    baseline = device_memory_baseline(0)
    gpu.memory_used_bytes = 3_000_000_000
    monitor = _monitor(fake_nvml, clock)
    monitor.phase("measure")
    monitor.sample_now()
    monitor.phase("done")
    result = monitor.stop()
    assert "never appeared among NVML's compute processes" in result["memory_reason"]
    memory = device_memory("cuda:0", baseline, None, result)
    assert memory["method"] == "nvml_device_used" and memory["peak_bytes"] == 2_000_000_000
    assert "other processes" in memory["reason"] and memory.get("process_peak_bytes") is None


def _torch_peak(allocated: int, reserved: int) -> tuple[TorchPeak, list[str]]:
    calls: list[str] = []

    class Runtime:
        def reset_device_memory_peak(self) -> None:
            calls.append("reset")

        def device_memory_peak(self) -> dict[str, int]:
            calls.append("read")
            return {"allocated_bytes": allocated, "reserved_bytes": reserved}

    peak = TorchPeak(Runtime())  # type: ignore[arg-type]
    for name in ("warmup", "measure", "done", "accuracy"):
        peak.phase(name)
    return peak, calls


def test_torch_paths_headline_nvmls_process_figure_like_every_runtime() -> None:
    """The same quantity for torch as for ONNX Runtime and TensorRT (NVML's process figure,
    context and cache included), the allocator's peaks beside it as detail."""
    peak, calls = _torch_peak(1_234_000_000, 1_500_000_000)
    assert calls == ["reset", "read"]  # at the measurement phase's edges only
    monitor = {"trace": [{"phase": "measure", "process_memory_bytes": 1_900_000_000}], "reason": None}
    memory = device_memory("cuda:0", {"process_baseline_bytes": 0}, peak, monitor)
    assert memory["method"] == "nvml_process" and memory["peak_bytes"] == 1_900_000_000
    assert memory["torch_allocated_peak_bytes"] == 1_234_000_000
    assert memory["torch_reserved_peak_bytes"] == 1_500_000_000
    assert "reason" not in memory
    ort = device_memory("cuda:0", {"process_baseline_bytes": 0}, None, monitor)
    assert (ort["method"], ort["peak_bytes"]) == (memory["method"], memory["peak_bytes"])


def test_the_allocator_is_the_headline_only_without_nvmls_process_reading() -> None:
    peak, _ = _torch_peak(1_234_000_000, 1_500_000_000)
    monitor = {"trace": [{"phase": "measure", "device_memory_used_bytes": 9_000_000_000}],
               "memory_reason": "this process never appeared among NVML's compute processes"}
    memory = device_memory("cuda:0", {"device_used_baseline_bytes": 1_000_000_000}, peak, monitor)
    assert memory["method"] == "torch_allocator" and memory["peak_bytes"] == 1_234_000_000
    assert "never appeared" in memory["reason"] and "no CUDA context" in memory["reason"]
    assert memory.get("process_peak_bytes") is None


def test_processes_read_different_ways_give_no_cell_figure() -> None:
    group = [record("c", repeat=0, resources=_resources(1_000, 5_000, 0.2)),
             record("c", repeat=1, resources={**_resources(3_000, 5_000, 0.2),
                                              "device_memory": {"peak_bytes": 3_000, "method": "torch_allocator"}})]
    cell = resources_over_processes(group)
    assert cell is not None and cell.device_memory_peak_bytes is None
    assert cell.device_memory_method == "nvml_process | torch_allocator"
    assert "different ways" in (cell.reasons or {})["device_memory"]


def test_a_cpu_cell_has_no_device_memory_and_says_why() -> None:
    memory = device_memory("cpu", {}, None, None)
    assert memory == {"reason": "the cell runs on the CPU: its memory is the host's (host_memory)"}


def test_without_nvml_the_baseline_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="LIBRARY_NOT_FOUND"))
    baseline = device_memory_baseline(0)
    assert "NVML" in baseline["reason"]
    memory = device_memory("cuda:0", baseline, None, {"trace": [], "reason": "NVML could not start"})
    assert memory.get("peak_bytes") is None and memory["reason"]


# ----------------------------------------------------------------------------- host, artifact


def test_host_memory_is_the_high_water_mark() -> None:
    """In a fresh process: the test runner's own high-water mark may already lie far above
    anything a 64 MB block adds."""
    code = (
        "import json\n"
        "from harness.run.resources import host_memory_now\n"
        "before = host_memory_now()\n"
        "block = bytearray(64 * 1024 * 1024)\n"
        "block[::4096] = b'x' * len(block[::4096])  # touch every page\n"
        "after = host_memory_now()\n"
        "print(json.dumps([before, after]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, after = json.loads(done.stdout)
    assert after["method"] == "/proc/self/status VmHWM"
    assert after["peak_rss_bytes"] >= before["peak_rss_bytes"] + 60 * 1024 * 1024
    assert after["ru_maxrss_bytes"] > 0


def test_the_timed_phases_peak_excludes_what_prepare_allocated() -> None:
    """In a fresh process: 200 MB allocated and freed before the measurement phase (prepare's
    quantization, say) is in the whole-process peak, not in the timed phase's, which holds the
    64 MB the phase itself touches."""
    code = (
        "import json\n"
        "from harness.run.resources import HostPeak, host_memory_at_end, host_memory_now\n"
        "block = bytearray(200 * 1024 * 1024)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"
        "del block  # prepare's memory, returned before the timed phase\n"
        "peak = HostPeak()\n"
        "peak.phase('warmup')\n"
        "peak.phase('measure')  # the reset, in the phase callback\n"
        "timed = bytearray(64 * 1024 * 1024)\n"
        "timed[::4096] = b'x' * len(timed[::4096])\n"
        "after = host_memory_now(peak)\n"
        "print(json.dumps([after, host_memory_at_end(after), peak.before_reset_bytes]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    after, end, before_reset = json.loads(done.stdout)
    MiB = 1024 * 1024
    assert after["peak_rss_scope"] == "measure_phase" and "reset" in after["method"] and "reset_reason" not in after
    assert before_reset >= 200 * MiB
    assert after["process_peak_rss_bytes"] >= 200 * MiB and end["process_peak_rss_bytes"] >= 200 * MiB
    assert 64 * MiB <= after["peak_rss_bytes"] < before_reset - 100 * MiB  # the 200 MB block is not in it
    assert after["peak_rss_bytes"] <= after["rss_after_measure_bytes"] + 8 * MiB


def test_a_high_water_mark_that_cannot_be_reset_says_so(tmp_path: Path) -> None:
    peak = HostPeak(clear_refs=tmp_path / "missing" / "clear_refs")
    peak.phase("measure")
    host = host_memory_now(peak)
    assert not peak.reset and host["peak_rss_scope"] == "process"
    assert "could not be reset" in host["reset_reason"] and "Linux >= 4.0" in host["reset_reason"]
    assert host["peak_rss_bytes"] == host["process_peak_rss_bytes"]


def test_artifact_sizes_are_the_files_on_disk(tmp_path: Path) -> None:
    onnx_file = Path(__file__).resolve().parents[1] / "examples" / "onnx" / "anchor-grid-320.onnx"
    found = artifact_size({"artifact": {"path": str(onnx_file)}})
    assert found == {"kind": "onnx", "path": str(onnx_file), "bytes": os.stat(onnx_file).st_size}
    fp16 = tmp_path / "model-fp16.onnx"
    fp16.write_bytes(b"0" * 1234)  # the converted copy ONNX Runtime loaded is the one that ran
    found = artifact_size({"artifact": {"path": str(onnx_file)}, "model_file": str(fp16)})
    assert found["bytes"] == 1234 and found["path"] == str(fp16.resolve())
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"e" * 5000)
    assert artifact_size({"artifact": {"path": str(engine), "bytes": 1}}) == {
        "kind": "engine", "path": str(engine), "bytes": 5000}
    checkpoint = tmp_path / "rf-detr-nano.pth"
    checkpoint.write_bytes(b"w" * 777)
    found = artifact_size({"model": {"weights": str(checkpoint)}})
    assert found == {"kind": "checkpoint", "path": str(checkpoint), "bytes": 777}
    assert "random weights" in artifact_size({"model": {"weights": "random", "random_weights": True}})["reason"]
    missing = artifact_size({"artifact": {"path": str(tmp_path / "gone.onnx")}})
    assert missing.get("bytes") is None and "cannot stat" in missing["reason"]


def test_an_onnx_file_with_external_data_counts_every_file(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((256, 256), dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256])], [weight])
    model = helper.make_model(graph)
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    found = artifact_size({"artifact": {"path": str(path)}})
    data = tmp_path / "weights.bin"
    assert found["bytes"] == os.stat(path).st_size + os.stat(data).st_size
    assert found["files"] == [str(path), str(data)]


# ----------------------------------------------------------------------------- over processes


def _resources(peak: int | None, rss: int, j_per_image: float | None, reason: str | None = None) -> dict[str, Any]:
    return {
        "device_memory": {"peak_bytes": peak, "method": "nvml_process" if peak else None, "reason": reason},
        "host_memory": {"peak_rss_bytes": rss},
        "artifact": {"kind": "onnx", "path": "/x.onnx", "bytes": 1000},
        "energy": {"method": "nvml_energy_counter" if j_per_image else None, "joules_per_image": j_per_image,
                   "images_per_joule": 1 / j_per_image if j_per_image else None, "reason": None if j_per_image else "no counter"},
    }


def test_a_cell_takes_the_worst_peak_and_the_median_energy() -> None:
    group = [record("c", repeat=k, resources=_resources(p, r, j)) for k, (p, r, j) in
             enumerate([(1_000, 5_000, 0.2), (3_000, 4_000, 0.4), (2_000, 9_000, 0.3)])]
    cell = resources_over_processes(group)
    assert cell is not None and cell.processes == 3
    assert cell.device_memory_peak_bytes == 3_000 and cell.host_peak_rss_bytes == 9_000
    assert cell.joules_per_image == pytest.approx(0.3) and cell.images_per_joule == pytest.approx(1 / 0.3)
    assert cell.artifact_bytes == 1000 and cell.device_memory_method == "nvml_process"


def test_a_figure_no_process_had_keeps_its_reason() -> None:
    group = [record("c", repeat=k, resources=_resources(None, 5_000, None, reason="the cell runs on the CPU"))
             for k in range(2)]
    cell = resources_over_processes(group)
    assert cell is not None and cell.device_memory_peak_bytes is None and cell.joules_per_image is None
    assert cell.reasons == {"device_memory": "the cell runs on the CPU", "energy": "no counter"}


def test_the_block_validates_as_the_record_writes_it(fake_nvml: FakeNvml) -> None:
    gpu, clock = fake_nvml.gpus[0], FakeClock()
    baseline = device_memory_baseline(0)
    gpu.compute_processes = [(os.getpid(), 800_000_000)]
    monitor = _monitor(fake_nvml, clock)
    _drive(monitor, gpu, clock)
    block = resources_block(device="cuda:0", images=50, prepare={"artifact": {"path": __file__}}, baseline=baseline,
                            torch_peak=None, monitor=monitor.stop(), rapl=None,
                            host_after_measure=host_memory_now(), measure_s=1.0)
    typed = Resources.model_validate(block)
    assert typed.energy.method == "nvml_energy_counter" and typed.device_memory.peak_bytes == 800_000_000
    assert typed.host_memory.end_peak_rss_bytes is not None and typed.artifact.bytes == os.stat(__file__).st_size


def test_every_reading_happens_between_the_timed_loops() -> None:
    """The counter, the allocator's reset and read, and RAPL are read in the phase callbacks:
    after the last warm-up call and before the first timed one, and after the last timed one."""
    from harness.measure.protocol import measure
    from harness.measure.timers import PerfCounterTimer
    from harness.plan.schema import LatencyProtocol

    calls: list[int] = []
    seen: dict[str, int] = {}

    class Runtime:
        def reset_device_memory_peak(self) -> None:
            seen["reset"] = len(calls)

        def device_memory_peak(self) -> dict[str, int]:
            seen["read"] = len(calls)
            return {"allocated_bytes": 1, "reserved_bytes": 1}

    def energy() -> float:
        seen.setdefault("counter_start", len(calls))
        seen["counter_end"] = len(calls)
        return float(len(calls))

    monitor = GpuMonitor(0, 20.0, sampler=lambda: (1980, 2619, 50.0, 100.0, 99, 40, 0), energy_reader=energy, sample=False)
    peak = TorchPeak(Runtime())  # type: ignore[arg-type]

    def on_phase(name: str) -> None:
        monitor.phase(name)
        peak.phase(name)

    protocol = LatencyProtocol(warmup_iterations=7, warmup_seconds=0, min_iterations=25, min_seconds=0, max_iterations=25)
    result = measure(lambda: calls.append(1), protocol, PerfCounterTimer(), on_phase=on_phase)
    assert result.warmup_iterations == 7 and len(result.samples_ms) == 25
    assert seen == {"reset": 7, "counter_start": 7, "read": 32, "counter_end": 32}
    counter = monitor.stop()["energy_counter"]
    assert counter["start"] == 7.0 and counter["end"] == 32.0
