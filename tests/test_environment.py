"""Environment capture and fingerprints, on this CPU machine and against a fake NVML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakeGpu, FakeNvml

from harness.environment import capture as capture_module
from harness.environment.capture import (
    capture_environment,
    cudnn_version_text,
    format_environment,
)
from harness.environment.fingerprint import (
    comparability_fields,
    fingerprint,
    fingerprint_differences,
)

REPO = Path(__file__).resolve().parents[1]
STAMPS = (
    "BENCH_IMAGE_NAME",
    "BENCH_IMAGE_TAG",
    "BENCH_IMAGE_FLAVOUR",
    "BENCH_BASE_IMAGE_DIGEST",
    "BENCH_LOCKFILE_SHA256",
)


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """NVML failing exactly as it does on a machine without a driver."""
    fake = FakeNvml(init_error="LIBRARY_NOT_FOUND")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml([FakeGpu(), FakeGpu(uuid="GPU-second", pci_bus_id="00000000:2A:00.0")])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- capture on a machine without a GPU ----------------------------------------------------------


def test_capture_without_nvml_has_null_gpu_fields_with_reasons(no_nvml: FakeNvml) -> None:
    env = capture_environment(["cpu"], plan_sha256="ab" * 32, with_torch=False)

    json.dumps(env)  # JSON-serialisable as it is
    assert env["plan_sha256"] == "ab" * 32
    assert env["gpus"] == []
    assert set(env["nvidia"]) == {
        "driver_version",
        "cuda_driver_version",
        "nvml_version",
        "gpu_count",
    }
    assert all(value is None for value in env["nvidia"].values())
    assert "NVML Shared Library Not Found" in env["reasons"]["nvidia"]
    assert "NVML" in env["reasons"]["gpus"]
    # torch was not asked for: CUDA fields null, and the reason says how to get them --
    # unless this process imported torch already (free to read, so it is read).
    torch = sys.modules.get("torch")
    if torch is None:
        assert env["cuda"]["runtime"] is None and env["cuda"]["cudnn"] is None
        assert "with_torch=True" in env["reasons"]["cuda.cudnn"]
    else:
        assert env["cuda"]["runtime"] == torch.version.cuda
    assert no_nvml.calls == ["nvmlInit"]


def test_capture_with_the_real_pynvml_on_a_machine_without_gpu() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here; this test is for machines without an NVIDIA driver")
    env = capture_environment(with_torch=False)
    assert env["gpus"] == [] and env["nvidia"]["driver_version"] is None
    assert env["reasons"]["nvidia"].startswith("NVML could not start")


def test_capture_records_versions_host_and_harness(no_nvml: FakeNvml) -> None:
    env = capture_environment(with_torch=False)

    for name, dist in [("numpy", "numpy"), ("pydantic", "pydantic"), ("onnx", "onnx")]:
        assert env["packages"][name] == _installed(dist)
    assert env["packages"]["numpy"] is not None  # installed everywhere the harness is
    ort = _installed("onnxruntime-gpu") or _installed("onnxruntime")
    assert env["packages"]["onnxruntime"] == ort
    if ort:
        assert env["distributions"]["onnxruntime"] in ("onnxruntime", "onnxruntime-gpu")
    if _installed("tensorrt") is None and _installed("tensorrt-cu13") is None:
        assert env["packages"]["tensorrt"] is None
        assert env["reasons"]["packages.tensorrt"] == "not installed"

    import harness

    assert env["harness"]["version"] == harness.__version__
    assert env["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert env["cpu"]["logical_cores"] == os.cpu_count()
    assert env["memory"]["total_bytes"] > 2**28
    assert env["os"]["kernel"] == os.uname().release


def test_harness_commit_from_git_when_a_checkout(no_nvml: FakeNvml) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed here (the images carry none)")
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip("the harness is not a git checkout here")
    env = capture_environment(with_torch=False)
    assert env["harness"]["git_commit"] == done.stdout.strip()
    assert env["harness"]["git_source"] == "git checkout"
    assert isinstance(env["harness"]["git_dirty"], bool)


def test_harness_commit_from_image_stamp_without_git(
    no_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture_module.shutil, "which", lambda name: None)
    monkeypatch.setenv("BENCH_GIT_COMMIT", "0123456789abcdef")
    monkeypatch.setenv("BENCH_GIT_DIRTY", "0")
    env = capture_environment(with_torch=False)
    assert env["harness"]["git_commit"] == "0123456789abcdef"
    assert env["harness"]["git_dirty"] is False
    assert env["harness"]["git_source"] == "BENCH_GIT_COMMIT"

    monkeypatch.delenv("BENCH_GIT_COMMIT")
    env = capture_environment(with_torch=False)
    assert env["harness"]["git_commit"] is None
    assert "BENCH_GIT_COMMIT is not set" in env["reasons"]["harness.git_commit"]


def test_container_stamps_come_from_the_image_env_vars(
    no_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in STAMPS:
        monkeypatch.delenv(var, raising=False)
    env = capture_environment(with_torch=False)
    assert [env["container"][k] for k in capture_module.CONTAINER_STAMPS] == [None] * 5
    assert "BENCH_IMAGE_NAME is not set" in env["reasons"]["container.image_name"]

    values = ["detbench", "0.1.0-cu13", "gpu", "sha256:" + "1" * 64, "2" * 64]
    for var, value in zip(STAMPS, values, strict=True):
        monkeypatch.setenv(var, value)
    env = capture_environment(with_torch=False)
    assert [env["container"][k] for k in capture_module.CONTAINER_STAMPS] == values
    assert not any(key.startswith("container.") for key in env["reasons"])


def test_a_failing_probe_becomes_a_reason_not_an_exception(
    no_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(reasons: dict[str, str]) -> dict[str, object]:
        raise RuntimeError("cpuinfo exploded")

    monkeypatch.setattr(capture_module, "_cpu_info", broken)
    env = capture_environment(with_torch=False)
    assert "cpuinfo exploded" in env["reasons"]["cpu"]
    assert env["cpu"]["model"] is None and "available_cores" in env["cpu"]
    assert env["memory"]["total_bytes"] is not None  # the other sections still captured


def test_torch_is_not_imported_for_a_cpu_capture() -> None:
    # A fresh interpreter: in this one another test may already have imported torch.
    code = (
        "import sys; from harness.environment.capture import capture_environment; "
        "env = capture_environment(['cpu']); "
        "print('torch' in sys.modules, env['cuda']['runtime'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "None"]


def test_with_torch_reads_cuda_runtime_and_cudnn(no_nvml: FakeNvml) -> None:
    torch = pytest.importorskip("torch")
    env = capture_environment(["cpu"], with_torch=True)
    assert env["cuda"]["runtime"] == torch.version.cuda
    assert env["cuda"]["cudnn_raw"] == torch.backends.cudnn.version()
    assert env["cuda"]["cudnn"] == cudnn_version_text(torch.backends.cudnn.version())
    assert env["cuda"]["source"] == f"torch {torch.__version__}"
    # A CPU device: the CUDA driver is not touched.
    assert env["cuda"]["torch_cuda_available"] is None


@pytest.mark.parametrize(
    ("raw", "text"), [(8907, "8.9.7"), (90100, "9.1.0"), (91000, "9.10.0"), (None, None)]
)
def test_cudnn_version_text(raw: int | None, text: str | None) -> None:
    assert cudnn_version_text(raw) == text


def test_format_environment_shows_values_and_reasons(no_nvml: FakeNvml) -> None:
    env = capture_environment(with_torch=False, plan_sha256="f" * 64)
    text = format_environment(env)
    numpy_line = next(line for line in text.splitlines() if line.strip().startswith("numpy"))
    assert numpy_line.split()[-1] == env["packages"]["numpy"]
    assert "f" * 64 in text
    assert "NVML Shared Library Not Found" in text  # null GPU facts say why
    assert format_environment({}).startswith("Harness")  # even an empty dict renders


# -- capture with a (fake) GPU -----------------------------------------------------------------------


def test_gpu_fields_from_nvml(h100: FakeNvml) -> None:
    h100.gpus[0].unsupported = {"nvmlDeviceGetEccMode"}
    env = capture_environment(["cuda:0"], with_torch=False)
    json.dumps(env)

    assert env["nvidia"] == {
        "driver_version": "580.95.05",
        "cuda_driver_version": "13.0",
        "nvml_version": "13.580.95.05",
        "gpu_count": 2,
    }
    (gpu,) = env["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["uuid"] == "GPU-00000000-1111-2222-3333-444444444444"
    assert gpu["nvml_index"] == 0 and gpu["cuda_index"] == 0
    assert gpu["compute_capability"] == "9.0"
    assert gpu["power_limit_w"] == {
        "current": 700.0,
        "default": 700.0,
        "enforced": 700.0,
        "min": 200.0,
        "max": 700.0,
    }
    assert gpu["persistence_mode"] is True
    assert gpu["mig_mode"] == {"current": False, "pending": False}
    assert gpu["ecc_mode"] == {"current": None, "pending": None}
    assert "Not Supported" in gpu["reasons"]["ecc_mode"]
    assert gpu["applications_clocks_mhz"] == {"graphics": 1755, "mem": 2619}
    assert gpu["max_clocks_mhz"] == {"sm": 1980, "mem": 2619}
    assert gpu["clocks_locked"] is False and gpu["clocks_locked_evidence"] == []
    # Only read: no setter or reset was ever called.
    assert not [c for c in h100.calls if "Set" in c or "Reset" in c]
    assert h100.initialised == 0  # every nvmlInit paired with nvmlShutdown
    assert "NVIDIA H100 80GB HBM3" in format_environment(env)


def test_locked_clocks_are_recorded(h100: FakeNvml) -> None:
    h100.gpus[0].app_graphics_mhz = 1410
    env = capture_environment(["cuda:0"], with_torch=False)
    gpu = env["gpus"][0]
    assert gpu["clocks_locked"] is True
    assert "1410 MHz (default 1755 MHz)" in gpu["clocks_locked_evidence"][0]

    h100.gpus[0].app_graphics_mhz = 1755
    h100.gpus[0].clock_event_reasons = 0x2  # user-defined clocks (nvidia-smi -lgc)
    gpu = capture_environment(["cuda:0"], with_torch=False)["gpus"][0]
    assert gpu["clocks_locked"] is True
    assert gpu["clock_event_reason_names"] == ["applications_clocks_setting"]


def test_cuda_visible_devices_maps_cuda_index_to_the_right_gpu(
    h100: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    (gpu,) = capture_environment(["cuda:0"], with_torch=False)["gpus"]
    assert gpu["uuid"] == "GPU-second" and gpu["nvml_index"] == 1

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-second")
    (gpu,) = capture_environment(["cuda"], with_torch=False)["gpus"]
    assert gpu["uuid"] == "GPU-second"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    env = capture_environment(["cuda:1"], with_torch=False)
    assert "not visible" in env["gpus"][0]["reasons"]["gpu"]


def test_devices_decide_which_gpus_are_described(h100: FakeNvml) -> None:
    assert len(capture_environment(with_torch=False)["gpus"]) == 2  # `bench env`: all
    assert capture_environment(["cpu"], with_torch=False)["gpus"] == []
    assert len(capture_environment(["auto"], with_torch=False)["gpus"]) == 1


def test_bench_env_describes_every_visible_gpu(
    h100: FakeNvml, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness import cli

    def described() -> list[tuple[int, int]]:
        assert cli.main(["env", "--json"]) == 0
        return [(g["cuda_index"], g["nvml_index"]) for g in json.loads(capsys.readouterr().out)["gpus"]]

    assert described() == [(0, 0), (1, 1)]  # a two-GPU host: both, not cuda:0 alone
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert described() == [(0, 1)]  # what CUDA would number, as the run sees it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert described() == []


# -- fingerprint -------------------------------------------------------------------------------------


@pytest.fixture
def gpu_env(h100: FakeNvml) -> dict[str, object]:
    env = capture_environment(["cuda:0"], with_torch=False)
    env["cuda"].update(runtime="13.0", cudnn="9.10.0")
    env["packages"].update(torch="2.9.0+cu130", onnxruntime="1.23.0", tensorrt="10.13.3.9")
    env["distributions"].update(onnxruntime="onnxruntime-gpu", tensorrt="tensorrt")
    return env


def _copy(env: dict[str, object]) -> dict:
    return json.loads(json.dumps(env))


def test_fingerprint_is_stable(gpu_env: dict) -> None:
    settings = {"providers": ["TensorrtExecutionProvider"], "fp16": True}
    fp = fingerprint(gpu_env, runtime="onnxruntime-tensorrt", precision="fp16", settings=settings)
    assert len(fp) == 16 and int(fp, 16) >= 0
    reordered = dict(reversed(list(_copy(gpu_env).items())))
    assert (
        fingerprint(
            reordered,
            runtime="onnxruntime-tensorrt",
            precision="fp16",
            settings=dict(reversed(list(settings.items()))),
        )
        == fp
    )


def test_fingerprint_ignores_noise(gpu_env: dict) -> None:
    kwargs: dict[str, Any] = {"runtime": "tensorrt", "precision": "fp16", "settings": {}}
    before = fingerprint(gpu_env, **kwargs)
    noisy = _copy(gpu_env)
    noisy["gpus"][0].update(
        temperature_c=81,
        clocks_mhz={"sm": 1410, "mem": 2619},
        clock_event_reasons=0x4,
        clocks_locked=True,
    )
    noisy["memory"]["available_bytes"] = 1
    noisy.update(hostname="elsewhere", captured_at="2030-01-01T00:00:00+00:00")
    noisy["gpus"][0]["uuid"] = "GPU-another-card-of-the-same-model"
    assert fingerprint(noisy, **kwargs) == before


def test_fingerprint_changes_with_what_decides_speed(gpu_env: dict) -> None:
    kwargs: dict[str, Any] = {"runtime": "onnxruntime-cuda", "precision": "fp16", "settings": {}}
    before = fingerprint(gpu_env, **kwargs)

    other_driver = _copy(gpu_env)
    other_driver["nvidia"]["driver_version"] = "575.57.08"
    assert fingerprint(other_driver, **kwargs) != before

    other_gpu = _copy(gpu_env)
    other_gpu["gpus"][0]["name"] = "NVIDIA A100-SXM4-80GB"
    assert fingerprint(other_gpu, **kwargs) != before

    power_capped = _copy(gpu_env)
    power_capped["gpus"][0]["power_limit_w"]["enforced"] = 400.0
    assert fingerprint(power_capped, **kwargs) != before

    assert fingerprint(gpu_env, **{**kwargs, "precision": "fp32"}) != before
    assert (
        fingerprint(gpu_env, **{**kwargs, "settings": {"cudnn_conv_algo_search": "HEURISTIC"}})
        != before
    )

    # A library the runtime doesn't use doesn't matter; one it uses does.
    other_torch = _copy(gpu_env)
    other_torch["packages"]["torch"] = "2.10.0+cu130"
    assert fingerprint(other_torch, **kwargs) == before
    assert fingerprint(other_torch, runtime="torch", precision="fp16", settings={}) != fingerprint(
        gpu_env, runtime="torch", precision="fp16", settings={}
    )
    cpu_ort = _copy(gpu_env)
    cpu_ort["distributions"]["onnxruntime"] = "onnxruntime"
    assert fingerprint(cpu_ort, **kwargs) != before


def test_fingerprint_differences_name_the_fields(gpu_env: dict) -> None:
    kwargs: dict[str, Any] = {
        "runtime": "tensorrt",
        "precision": "fp16",
        "settings": {"builder_optimization_level": 3},
    }
    a = comparability_fields(gpu_env, **kwargs)
    assert fingerprint_differences(a, comparability_fields(_copy(gpu_env), **kwargs)) == {}

    other = _copy(gpu_env)
    other["nvidia"]["driver_version"] = "575.57.08"
    other["packages"]["tensorrt"] = "10.9.0.34"
    b = comparability_fields(other, **{**kwargs, "settings": {"builder_optimization_level": 5}})
    assert fingerprint_differences(a, b) == {
        "driver": ("580.95.05", "575.57.08"),
        "libraries.tensorrt": ("10.13.3.9", "10.9.0.34"),
        "settings.builder_optimization_level": (3, 5),
    }


def test_cpu_fingerprint_has_no_gpu_fields(no_nvml: FakeNvml) -> None:
    env = capture_environment(["cpu"], with_torch=False)
    fields = comparability_fields(env, runtime="onnxruntime-cpu", precision="fp32", settings={})
    assert "gpus" not in fields and "driver" not in fields
    assert fields["cpu_model"] == env["cpu"]["model"]
    assert fields["libraries"] == {"onnxruntime": env["packages"]["onnxruntime"]}


def test_fingerprint_ignores_what_changes_between_reruns_of_one_setup() -> None:
    from harness.environment.fingerprint import fingerprint

    env: dict = {"packages": {"onnxruntime": "1.31.1"}, "cpu": {"model": "x"}}
    first = {"providers": ["CUDAExecutionProvider"], "timing": {"load_s": 1.2}, "model_file": "/a/model.onnx",
             "engine": {"build_s": 30.0, "cache_hit": False, "built_at": "t1", "flags": ["fp16"]}}
    rerun = {"providers": ["CUDAExecutionProvider"], "timing": {"load_s": 0.4}, "model_file": "/b/model.onnx",
             "engine": {"build_s": None, "cache_hit": True, "built_at": "t2", "flags": ["fp16"]}}
    kwargs = {"runtime": "onnxruntime-cuda", "precision": "fp16"}
    assert fingerprint(env, settings=first, **kwargs) == fingerprint(env, settings=rerun, **kwargs)
    other = {**rerun, "engine": {**rerun["engine"], "flags": ["fp16", "int8"]}}
    assert fingerprint(env, settings=other, **kwargs) != fingerprint(env, settings=rerun, **kwargs)
