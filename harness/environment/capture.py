"""The environment behind a number: software versions, host, GPU settings, container stamps.

`capture_environment()` returns one JSON-serialisable dict in which every field is present.
A field that can't be known is null, and `env["reasons"]` (dotted path -> words) says why;
each GPU entry carries its own `reasons`. It never raises: a failing probe becomes a reason.

What it costs, and when torch is imported
-----------------------------------------
Everything except torch is cheap (package metadata, /proc, one `git` call, NVML: well under a
second). Importing torch takes seconds, and it is only the source of two facts: the CUDA
runtime torch was built with (`torch.version.cuda`) and cuDNN (`torch.backends.cudnn.version()`).
So torch is imported when
  - `with_torch=True`, or
  - `with_torch=None` (the default) and `devices` names a GPU (`cuda`, `cuda:N`, or `auto`
    on a machine with a GPU) -- a worker about to use the GPU pays it anyway;
and a torch that is already imported is always used (free). With torch absent the fields
are null with the reason. The same cell therefore always captures the same fields, which
keeps fingerprints stable. `torch.cuda.is_available()` is called only for a GPU device:
it initialises the CUDA driver, which a parent process that forks workers must not do.

No GPU setting is ever changed here: NVML is only read.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.environment import nvml

ENVIRONMENT_SCHEMA = 1

# Logical package -> the distributions that provide it, in the order we report them.
# onnxruntime and onnxruntime-gpu both install the `onnxruntime` module; TensorRT's wheels
# come as a `tensorrt` meta package or per-CUDA `tensorrt-cuXX` packages.
TRACKED_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "tensorrt": (
        "tensorrt",
        "tensorrt-cu13",
        "tensorrt-cu12",
        "tensorrt-cu13-bindings",
        "tensorrt-cu12-bindings",
    ),
    "rfdetr": ("rfdetr",),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
    # LiteRT's interpreter (the `ai_edge_litert` module).
    "ai-edge-litert": ("ai-edge-litert",),
    "pycocotools": ("pycocotools",),
    "faster-coco-eval": ("faster-coco-eval",),
    "numpy": ("numpy",),
    "pillow": ("pillow",),
    "pydantic": ("pydantic",),
    "nvidia-ml-py": ("nvidia-ml-py",),
}

# Stamped by the Dockerfile at build time. Outside the image they are unset.
CONTAINER_STAMPS: dict[str, str] = {
    "image_name": "BENCH_IMAGE_NAME",
    "image_tag": "BENCH_IMAGE_TAG",
    "image_flavour": "BENCH_IMAGE_FLAVOUR",
    "base_image_digest": "BENCH_BASE_IMAGE_DIGEST",
    "lockfile_sha256": "BENCH_LOCKFILE_SHA256",
}

# Environment variables that change what is measured (recorded; unset ones as null).
RECORDED_ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_LAUNCH_BLOCKING",  # makes every launch synchronous
    "CUDA_MODULE_LOADING",
    "NVIDIA_TF32_OVERRIDE",  # overrides TF32 in cuBLAS / cuDNN
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)

CLOCKS_LOCKED_HOW = (
    "applications clocks compared with their defaults, and the clock-event reason "
    "'applications_clocks_setting' (user-defined or locked clocks) read once; NVML has no "
    "getter for clocks locked with `nvidia-smi -lgc`, so a lock that is not limiting the "
    "clock at that moment can go unseen"
)


def capture_environment(
    devices: Sequence[str] = (),
    *,
    plan_sha256: str | None = None,
    with_torch: bool | None = None,
) -> dict[str, Any]:
    """Capture the environment; see the module docstring for what triggers importing torch.

    devices: the devices the measurement uses ("cpu", "cuda", "cuda:N", "auto"). GPU details
    are captured for the GPUs named; with no devices at all (`bench env`), for every GPU CUDA
    can see here.
    """
    reasons: dict[str, str] = {}
    warnings: list[str] = []
    env: dict[str, Any] = {
        "schema_version": ENVIRONMENT_SCHEMA,
        "captured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": None,
        "devices": list(devices),
        "os": {},
        "cpu": {},
        "memory": {},
        "python": {},
        "harness": {},
        "packages": {},
        "distributions": {},
        "cuda": {},
        "nvidia": {},
        "gpus": [],
        "container": {},
        "env_vars": {},
        "plan_sha256": plan_sha256,
        "warnings": warnings,
        "reasons": reasons,
    }
    if plan_sha256 is None:
        reasons["plan_sha256"] = "no plan given"

    _guarded(env, "hostname", reasons, socket.gethostname, None)
    _guarded(env, "os", reasons, _os_info, _empty(_OS_FIELDS))
    _guarded(env, "cpu", reasons, lambda: _cpu_info(reasons), _empty(_CPU_FIELDS))
    _guarded(env, "memory", reasons, lambda: _memory_info(reasons), _empty(_MEMORY_FIELDS))
    _guarded(env, "python", reasons, _python_info, _empty(_PYTHON_FIELDS))
    _guarded(env, "harness", reasons, lambda: _harness_info(reasons), _empty(_HARNESS_FIELDS))
    _guarded(
        env,
        "packages",
        reasons,
        lambda: _packages(reasons, env["distributions"], warnings),
        dict.fromkeys(TRACKED_PACKAGES),
    )
    _guarded(env, "container", reasons, lambda: _container(reasons), _empty(_CONTAINER_FIELDS))
    env["env_vars"] = {name: os.environ.get(name) for name in RECORDED_ENV_VARS}

    # NVML first: it tells whether `auto` means a GPU, which decides whether torch loads.
    env["nvidia"] = _empty(_NVIDIA_FIELDS)
    try:
        env["nvidia"], env["gpus"], uses_gpu = _nvidia(devices, reasons)
    except Exception as exc:  # noqa: BLE001 -- never raise: an unexpected failure becomes a reason
        reasons["nvidia"] = f"capture failed: {exc!r}"
        uses_gpu = any(nvml.parse_cuda_index(d) is not None for d in devices)

    import_torch = with_torch if with_torch is not None else uses_gpu
    _guarded(
        env,
        "cuda",
        reasons,
        lambda: _cuda_from_torch(import_torch, uses_gpu, reasons),
        _empty(_CUDA_FIELDS),
    )
    return env


# -- helpers ---------------------------------------------------------------------------------

_OS_FIELDS = ("system", "kernel", "version", "distribution", "machine", "libc")
_CPU_FIELDS = (
    "model",
    "architecture",
    "logical_cores",
    "physical_cores",
    "available_cores",
    "cgroup_cpu_limit",
    "scaling_governor",
)
_MEMORY_FIELDS = ("total_bytes", "available_bytes", "cgroup_limit_bytes")
_PYTHON_FIELDS = ("version", "implementation", "executable")
_HARNESS_FIELDS = ("version", "path", "git_commit", "git_dirty", "git_source")
_CONTAINER_FIELDS = ("in_container", *CONTAINER_STAMPS)
_NVIDIA_FIELDS = ("driver_version", "cuda_driver_version", "nvml_version", "gpu_count")
_CUDA_FIELDS = ("source", "runtime", "cudnn", "cudnn_raw", "torch_cuda_available")


def _empty(fields: Sequence[str]) -> dict[str, Any]:
    return dict.fromkeys(fields)


def _guarded(
    env: dict[str, Any],
    key: str,
    reasons: dict[str, str],
    probe: Callable[[], Any],
    fallback: Any,
) -> None:
    """env[key] = probe(), or the all-null fallback and a reason: capture never raises."""
    try:
        env[key] = probe()
    except Exception as exc:  # noqa: BLE001 -- capture never raises; the reason says what broke
        env[key] = fallback
        reasons[key] = f"capture failed: {exc!r}"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _os_info() -> dict[str, Any]:
    try:
        distribution = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        distribution = None
    libc = " ".join(part for part in platform.libc_ver() if part) or None
    return {
        "system": platform.system(),
        "kernel": platform.release(),
        "version": platform.version(),
        "distribution": distribution,
        "machine": platform.machine(),
        "libc": libc,
    }


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model Name", "cpu model") and value.strip():
            return value.strip()
    # ARM servers (Grace) have no "model name" in /proc/cpuinfo; lscpu decodes the part id.
    lscpu = shutil.which("lscpu")
    if lscpu:
        try:
            out = subprocess.run(
                [lscpu], check=False, capture_output=True, text=True, timeout=5, env={"LC_ALL": "C"}
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and value.strip() and value.strip() != "-":
                return value.strip()
    return platform.processor() or None


def _cpu_info(reasons: dict[str, str]) -> dict[str, Any]:
    info = _empty(_CPU_FIELDS)
    info["model"] = _cpu_model()
    if info["model"] is None:
        reasons["cpu.model"] = "not in /proc/cpuinfo, lscpu or platform.processor()"
    info["architecture"] = platform.machine()
    info["logical_cores"] = os.cpu_count()
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
    except ImportError:
        reasons["cpu.physical_cores"] = "psutil is not installed"
    if hasattr(os, "sched_getaffinity"):
        # What this process may actually run on (taskset, container cpusets).
        info["available_cores"] = len(os.sched_getaffinity(0))
    else:
        reasons["cpu.available_cores"] = "os.sched_getaffinity is not available here"
    quota = _read("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    if quota and not quota.startswith("max"):
        parts = quota.split()
        if len(parts) == 2:
            info["cgroup_cpu_limit"] = round(int(parts[0]) / int(parts[1]), 3)
    if info["cgroup_cpu_limit"] is None:
        reasons["cpu.cgroup_cpu_limit"] = "no cgroup v2 CPU quota (unlimited or not readable)"
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    info["scaling_governor"] = governor
    if governor is None:
        reasons["cpu.scaling_governor"] = "cpufreq not exposed (VM or container)"
    return info


def _memory_info(reasons: dict[str, str]) -> dict[str, Any]:
    info = _empty(_MEMORY_FIELDS)
    try:
        import psutil

        vm = psutil.virtual_memory()
        info["total_bytes"], info["available_bytes"] = int(vm.total), int(vm.available)
    except ImportError:
        for line in (_read("/proc/meminfo") or "").splitlines():
            key, _, value = line.partition(":")
            field = {"MemTotal": "total_bytes", "MemAvailable": "available_bytes"}.get(key)
            if field and value.split():
                info[field] = int(value.split()[0]) * 1024
        if info["total_bytes"] is None:
            reasons["memory.total_bytes"] = "psutil is not installed and /proc/meminfo unreadable"
    limit = _read("/sys/fs/cgroup/memory.max")
    if limit and limit.isdigit():
        info["cgroup_limit_bytes"] = int(limit)
    else:
        reasons["memory.cgroup_limit_bytes"] = "no cgroup v2 memory limit (unlimited or unreadable)"
    return info


def _python_info() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], check=False, capture_output=True, text=True, timeout=10
    )
    if done.returncode != 0:
        # git's first line says what went wrong ("fatal: not a git repository", "error:
        # pathspec ... did not match", "detected dubious ownership"); later lines are hints.
        raise RuntimeError(done.stderr.strip().splitlines()[0] if done.stderr.strip() else "")
    return done.stdout


def _harness_info(reasons: dict[str, str]) -> dict[str, Any]:
    """Version, and the commit of the harness source: from git when the package is a checkout,
    else from BENCH_GIT_COMMIT / BENCH_GIT_DIRTY stamped into the image at build time."""
    import harness

    root = Path(harness.__file__).resolve().parent
    info = _empty(_HARNESS_FIELDS)
    info["version"] = harness.__version__
    info["path"] = str(root)
    why_not_git = "git is not installed"
    if shutil.which("git"):
        try:
            # Is harness/ itself tracked? (An installed copy inside some other repo is not.)
            _git(root, "ls-files", "--error-unmatch", "__init__.py")
            info["git_commit"] = _git(root, "rev-parse", "HEAD").strip()
            # Dirty = the harness package differs from the commit (plans, reports, docs
            # elsewhere in the repo don't change what is measured). Untracked modules count.
            info["git_dirty"] = bool(_git(root, "status", "--porcelain", "--", ".").strip())
            info["git_source"] = "git checkout"
            return info
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            why_not_git = f"not a git checkout ({exc})" if str(exc) else "not a git checkout"
    stamped = os.environ.get("BENCH_GIT_COMMIT")
    # A plain `docker compose build` stamps "unknown": that is no commit, and no cleanliness.
    if stamped and stamped.strip().lower() == "unknown":
        reasons["harness.git_commit"] = "the image was built without its git commit (BENCH_GIT_COMMIT=unknown)"
        reasons["harness.git_dirty"] = reasons["harness.git_commit"]
        return info
    if stamped:
        info["git_commit"] = stamped
        info["git_source"] = "BENCH_GIT_COMMIT"
        dirty = os.environ.get("BENCH_GIT_DIRTY")
        if dirty is not None and dirty.strip().lower() != "unknown":
            info["git_dirty"] = dirty.strip().lower() in ("1", "true", "yes", "dirty")
        else:
            reasons["harness.git_dirty"] = "BENCH_GIT_DIRTY not set at image build"
    else:
        reasons["harness.git_commit"] = f"{why_not_git}, and BENCH_GIT_COMMIT is not set"
        reasons["harness.git_dirty"] = reasons["harness.git_commit"]
    return info


def _packages(
    reasons: dict[str, str], distributions: dict[str, str | None], warnings: list[str]
) -> dict[str, str | None]:
    """Installed versions from package metadata: no module is imported (importing torch or
    onnxruntime would cost seconds). A local build tag such as `+cu130` is kept."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name, candidates in TRACKED_PACKAGES.items():
        found: list[tuple[str, str]] = []
        for dist in candidates:
            try:
                found.append((dist, metadata.version(dist)))
            except metadata.PackageNotFoundError:
                continue
        if not found:
            versions[name] = None
            distributions[name] = None
            reasons[f"packages.{name}"] = "not installed"
            continue
        versions[name] = found[0][1]
        distributions[name] = found[0][0]
        if name == "onnxruntime" and len(found) > 1:
            warnings.append(
                "both onnxruntime and onnxruntime-gpu are installed; they share the "
                "`onnxruntime` module, so whichever was installed last is the one that runs"
            )
    return versions


def _container(reasons: dict[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "in_container": Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
    }
    for field, var in CONTAINER_STAMPS.items():
        info[field] = os.environ.get(var) or None
        if info[field] is None:
            reasons[f"container.{field}"] = f"{var} is not set (not running in the bench image)"
    return info


def _cuda_version_text(value: int | None) -> str | None:
    """NVML's CUDA driver version 13000 -> "13.0"."""
    if not value:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def cudnn_version_text(value: int | None) -> str | None:
    """cuDNN's integer version as text: 9.x encodes major*10000 + minor*100 + patch
    (91000 -> 9.10.0); 8.x and older major*1000 + minor*100 + patch (8907 -> 8.9.7)."""
    if not value:
        return None
    if value >= 10000:
        return f"{value // 10000}.{(value % 10000) // 100}.{value % 100}"
    return f"{value // 1000}.{(value % 1000) // 100}.{value % 100}"


def _wanted_cuda_indices(devices: Sequence[str], nv: ModuleType) -> list[int]:
    visible = nvml.cuda_visible_count(nv)
    if not devices:
        return list(range(visible))
    wanted: list[int] = []
    for device in devices:
        index = nvml.parse_cuda_index(device)
        if index is None and device.strip().lower() == "auto" and visible > 0:
            index = 0  # the worker resolves auto to cuda:0 when a GPU is present
        if index is not None and index not in wanted:
            wanted.append(index)
    return wanted


def _nvidia(
    devices: Sequence[str], reasons: dict[str, str]
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Driver facts and one entry per GPU used. Returns (nvidia, gpus, uses_gpu)."""
    info = _empty(_NVIDIA_FIELDS)
    asked_gpu = any(nvml.parse_cuda_index(d) is not None for d in devices)
    try:
        nv = nvml.open_nvml()
    except nvml.NvmlUnavailable as exc:
        reasons["nvidia"] = str(exc)
        reasons["gpus"] = str(exc)
        return info, [], asked_gpu
    try:
        info["driver_version"] = nvml.call(
            reasons, "nvidia.driver_version", lambda: nvml.as_text(nv.nvmlSystemGetDriverVersion())
        )
        info["cuda_driver_version"] = _cuda_version_text(
            nvml.call(reasons, "nvidia.cuda_driver_version", nv.nvmlSystemGetCudaDriverVersion)
        )
        info["nvml_version"] = nvml.call(
            reasons, "nvidia.nvml_version", lambda: nvml.as_text(nv.nvmlSystemGetNVMLVersion())
        )
        info["gpu_count"] = nvml.call(reasons, "nvidia.gpu_count", nv.nvmlDeviceGetCount)
        gpus: list[dict[str, Any]] = []
        for cuda_index in _wanted_cuda_indices(devices, nv):
            try:
                handle, how = nvml.handle_for_cuda_index(nv, cuda_index)
            except nvml.NvmlUnavailable as exc:
                gpus.append({"cuda_index": cuda_index, "reasons": {"gpu": str(exc)}})
                continue
            gpus.append({**how, **describe_gpu(nv, handle)})
        if not gpus:
            reasons["gpus"] = "no GPU used" if devices else "NVML sees no GPU"
        return info, gpus, bool(gpus) or asked_gpu
    finally:
        nvml.close_nvml(nv)


def _current_pending(value: Any) -> dict[str, bool | None]:
    """NVML's (current, pending) pair (ECC, MIG mode) as booleans; both None when unread."""
    if value is None:
        return {"current": None, "pending": None}
    current, pending = value
    return {"current": bool(current), "pending": bool(pending)}


def describe_gpu(nv: ModuleType, handle: Any) -> dict[str, Any]:
    """Everything about one GPU that decides or explains its speed, read (never set) via NVML."""
    why: dict[str, str] = {}

    def get(field: str, fn: Callable[..., Any], *args: Any) -> Any:
        return nvml.call(why, field, fn, handle, *args)

    def mhz(field: str, fn: Callable[..., Any], clock: int) -> int | None:
        value = get(field, fn, clock)
        return int(value) if value is not None else None

    def watts(field: str, fn: Callable[..., Any]) -> float | None:
        milliwatts = get(field, fn)
        return round(milliwatts / 1000.0, 1) if milliwatts is not None else None

    gpu: dict[str, Any] = {}
    name = get("name", nv.nvmlDeviceGetName)
    gpu["name"] = nvml.as_text(name) if name is not None else None
    uuid = get("uuid", nv.nvmlDeviceGetUUID)
    gpu["uuid"] = nvml.as_text(uuid) if uuid is not None else None
    pci = get("pci_bus_id", nv.nvmlDeviceGetPciInfo)
    gpu["pci_bus_id"] = nvml.as_text(pci.busId) if pci is not None else None
    memory = get("memory_total_bytes", nv.nvmlDeviceGetMemoryInfo)
    gpu["memory_total_bytes"] = int(memory.total) if memory is not None else None
    capability = get("compute_capability", nv.nvmlDeviceGetCudaComputeCapability)
    gpu["compute_capability"] = f"{capability[0]}.{capability[1]}" if capability else None
    vbios = get("vbios_version", nv.nvmlDeviceGetVbiosVersion)
    gpu["vbios_version"] = nvml.as_text(vbios) if vbios is not None else None

    constraints = get("power_limit_w.min", nv.nvmlDeviceGetPowerManagementLimitConstraints)
    gpu["power_limit_w"] = {
        "current": watts("power_limit_w.current", nv.nvmlDeviceGetPowerManagementLimit),
        "default": watts("power_limit_w.default", nv.nvmlDeviceGetPowerManagementDefaultLimit),
        "enforced": watts("power_limit_w.enforced", nv.nvmlDeviceGetEnforcedPowerLimit),
        "min": round(constraints[0] / 1000.0, 1) if constraints else None,
        "max": round(constraints[1] / 1000.0, 1) if constraints else None,
    }
    persistence = get("persistence_mode", nv.nvmlDeviceGetPersistenceMode)
    gpu["persistence_mode"] = bool(persistence) if persistence is not None else None
    gpu["ecc_mode"] = _current_pending(get("ecc_mode", nv.nvmlDeviceGetEccMode))
    gpu["mig_mode"] = _current_pending(get("mig_mode", nv.nvmlDeviceGetMigMode))
    pstate = get("performance_state", nv.nvmlDeviceGetPerformanceState)
    gpu["performance_state"] = f"P{pstate}" if pstate is not None else None
    temperature = get("temperature_c", nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
    gpu["temperature_c"] = temperature

    SM, MEM, GRAPHICS = nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_CLOCK_GRAPHICS
    gpu["clocks_mhz"] = {
        "sm": mhz("clocks_mhz.sm", nv.nvmlDeviceGetClockInfo, SM),
        "mem": mhz("clocks_mhz.mem", nv.nvmlDeviceGetClockInfo, MEM),
    }
    gpu["max_clocks_mhz"] = {
        "sm": mhz("max_clocks_mhz.sm", nv.nvmlDeviceGetMaxClockInfo, SM),
        "mem": mhz("max_clocks_mhz.mem", nv.nvmlDeviceGetMaxClockInfo, MEM),
    }
    # Applications clocks are set per graphics and memory domain (nvidia-smi -ac).
    gpu["applications_clocks_mhz"] = {
        "graphics": mhz(
            "applications_clocks_mhz.graphics", nv.nvmlDeviceGetApplicationsClock, GRAPHICS
        ),
        "mem": mhz("applications_clocks_mhz.mem", nv.nvmlDeviceGetApplicationsClock, MEM),
    }
    gpu["default_applications_clocks_mhz"] = {
        "graphics": mhz(
            "default_applications_clocks_mhz.graphics",
            nv.nvmlDeviceGetDefaultApplicationsClock,
            GRAPHICS,
        ),
        "mem": mhz(
            "default_applications_clocks_mhz.mem", nv.nvmlDeviceGetDefaultApplicationsClock, MEM
        ),
    }
    gpu["max_customer_boost_clock_mhz"] = mhz(
        "max_customer_boost_clock_mhz", nv.nvmlDeviceGetMaxCustomerBoostClock, GRAPHICS
    )

    bits = read_clock_event_reasons(nv, handle, why)
    gpu["clock_event_reasons"] = bits
    gpu["clock_event_reason_names"] = nvml.reason_names(bits) if bits is not None else None
    gpu["clocks_locked"], gpu["clocks_locked_evidence"] = _clocks_locked(gpu, bits, why)
    gpu["clocks_locked_how"] = CLOCKS_LOCKED_HOW
    gpu["reasons"] = why
    return gpu


def read_clock_event_reasons(nv: ModuleType, handle: Any, why: dict[str, str]) -> int | None:
    """The current clock-event bitmask (the r535 name, else the older one: see
    nvml.clock_event_reasons_reader), or None with `why["clock_event_reasons"]` set."""
    read = nvml.clock_event_reasons_reader(nv, handle, why)
    return nvml.call(why, "clock_event_reasons", read) if read is not None else None


def _clocks_locked(
    gpu: dict[str, Any], bits: int | None, why: dict[str, str]
) -> tuple[bool | None, list[str]]:
    evidence: list[str] = []
    checked = False
    for domain in ("graphics", "mem"):
        now = gpu["applications_clocks_mhz"][domain]
        default = gpu["default_applications_clocks_mhz"][domain]
        if now is not None and default is not None:
            checked = True
            if now != default:
                evidence.append(
                    f"{domain} applications clock set to {now} MHz (default {default} MHz)"
                )
    if bits is not None:
        checked = True
        if bits & nvml.APPLICATIONS_CLOCKS_SETTING:
            evidence.append(
                "clock-event reason applications_clocks_setting (user-defined clocks) active"
            )
    if not checked:
        why["clocks_locked"] = "neither applications clocks nor clock-event reasons readable"
        return None, evidence
    return bool(evidence), evidence


def _cuda_from_torch(import_torch: bool, uses_gpu: bool, reasons: dict[str, str]) -> dict[str, Any]:
    info = _empty(_CUDA_FIELDS)
    torch: Any = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "version"):
        if not import_torch:
            why = (
                "torch not imported (no GPU device asked for; importing it costs seconds -- "
                "capture_environment(with_torch=True) reads it)"
            )
            reasons["cuda.runtime"] = reasons["cuda.cudnn"] = why
            reasons["cuda.torch_cuda_available"] = why
            return info
        from importlib.util import find_spec

        if find_spec("torch") is None:
            for field in ("runtime", "cudnn", "torch_cuda_available"):
                reasons[f"cuda.{field}"] = "torch is not installed"
            return info
        import torch as imported

        torch = imported
    info["source"] = f"torch {torch.__version__}"
    info["runtime"] = torch.version.cuda
    if info["runtime"] is None:
        reasons["cuda.runtime"] = "this torch build has no CUDA (CPU-only build)"
    try:
        raw = torch.backends.cudnn.version()
    except Exception as exc:  # noqa: BLE001 -- a broken cuDNN install raises anything here
        raw = None
        reasons["cuda.cudnn"] = f"torch.backends.cudnn.version() failed: {exc!r}"
    info["cudnn_raw"] = raw
    info["cudnn"] = cudnn_version_text(raw)
    if raw is None:
        reasons.setdefault("cuda.cudnn", "torch reports no cuDNN")
    if uses_gpu:
        # Initialises the CUDA driver in this process: only where the GPU is used anyway.
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
    else:
        reasons["cuda.torch_cuda_available"] = "not checked (no GPU device asked for)"
    return info


# -- text for `bench env` --------------------------------------------------------------------


def _value(value: Any, reason: str | None) -> str:
    if value is None or value == {} or value == []:
        return f"- ({reason})" if reason else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v, None)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _gib(value: Any) -> str | None:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int | float) else None


def format_environment(env: dict[str, Any]) -> str:
    """Plain text for `bench env`: one `key: value` line per fact, null facts with their reason."""
    reasons: dict[str, str] = env.get("reasons") or {}
    lines: list[str] = []

    def section(title: str) -> None:
        if lines:
            lines.append("")
        lines.append(title)

    def row(label: str, value: Any, reason_key: str | None = None) -> None:
        reason = reasons.get(reason_key) if reason_key else None
        if reason is None and reason_key and "." in reason_key:
            reason = reasons.get(reason_key.split(".", 1)[0])
        lines.append(f"  {label:<28} {_value(value, reason)}")

    def part(name: str) -> dict[str, Any]:
        value = env.get(name)
        return value if isinstance(value, dict) else {}

    harness_info = part("harness")
    section("Harness")
    row("version", harness_info.get("version"), "harness.version")
    row("git commit", harness_info.get("git_commit"), "harness.git_commit")
    row("tree dirty", harness_info.get("git_dirty"), "harness.git_dirty")
    row("commit from", harness_info.get("git_source"), "harness.git_commit")
    row("plan sha256", env.get("plan_sha256"), "plan_sha256")

    os_info, cpu, memory, python = part("os"), part("cpu"), part("memory"), part("python")
    section("Host")
    row("hostname", env.get("hostname"), "hostname")
    row("os", os_info.get("distribution") or os_info.get("system"), "os")
    row("kernel", os_info.get("kernel"), "os")
    row("cpu", cpu.get("model"), "cpu.model")
    row("cores (logical/physical)", f"{cpu.get('logical_cores')} / {cpu.get('physical_cores')}")
    row("cores available", cpu.get("available_cores"), "cpu.available_cores")
    row("cgroup cpu limit", cpu.get("cgroup_cpu_limit"), "cpu.cgroup_cpu_limit")
    row("cpu governor", cpu.get("scaling_governor"), "cpu.scaling_governor")
    row("memory", _gib(memory.get("total_bytes")), "memory.total_bytes")
    row("python", python.get("version"), "python")

    container = part("container")
    section("Container")
    row("in a container", container.get("in_container"), "container")
    for field in CONTAINER_STAMPS:
        row(field.replace("_", " "), container.get(field), f"container.{field}")

    section("Packages")
    distributions = part("distributions")
    for name, version in part("packages").items():
        dist = distributions.get(name)
        label = f"{name} ({dist})" if dist and dist != name else name
        row(label, version, f"packages.{name}")

    cuda, nvidia = part("cuda"), part("nvidia")
    section("CUDA")
    row("NVIDIA driver", nvidia.get("driver_version"), "nvidia.driver_version")
    row("driver's CUDA version", nvidia.get("cuda_driver_version"), "nvidia.cuda_driver_version")
    row("CUDA runtime (torch)", cuda.get("runtime"), "cuda.runtime")
    row("cuDNN (torch)", cuda.get("cudnn"), "cuda.cudnn")
    row("torch.cuda.is_available", cuda.get("torch_cuda_available"), "cuda.torch_cuda_available")
    row("GPUs visible to NVML", nvidia.get("gpu_count"), "nvidia.gpu_count")

    gpus = env.get("gpus") or []
    if not gpus:
        section("GPUs")
        row("gpus", None, "gpus")
    for gpu in gpus:
        section(f"GPU cuda:{gpu.get('cuda_index')}")

        def gpu_row(label: str, field: str, value: Any = None, gpu: dict[str, Any] = gpu) -> None:
            why = gpu.get("reasons") or {}
            value = gpu.get(field) if value is None else value
            reason = why.get(field) or why.get("gpu")
            lines.append(f"  {label:<28} {_value(value, reason)}")

        gpu_row("name", "name")
        gpu_row("uuid", "uuid")
        gpu_row("memory", "memory_total_bytes", _gib(gpu.get("memory_total_bytes")))
        gpu_row("compute capability", "compute_capability")
        gpu_row("power limit W", "power_limit_w")
        gpu_row("persistence mode", "persistence_mode")
        gpu_row("ECC", "ecc_mode")
        gpu_row("MIG", "mig_mode")
        gpu_row("clocks MHz now", "clocks_mhz")
        gpu_row("max clocks MHz", "max_clocks_mhz")
        gpu_row("applications clocks MHz", "applications_clocks_mhz")
        gpu_row("default app clocks MHz", "default_applications_clocks_mhz")
        gpu_row("clock-event reasons", "clock_event_reason_names")
        gpu_row("clocks locked", "clocks_locked")
        for item in gpu.get("clocks_locked_evidence") or []:
            lines.append(f"  {'':<28}   {item}")
        gpu_row("temperature C", "temperature_c")

    warnings = env.get("warnings") or []
    if warnings:
        section("Warnings")
        lines.extend(f"  {w}" for w in warnings)
    return "\n".join(lines) + "\n"
