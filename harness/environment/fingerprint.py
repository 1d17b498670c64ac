"""Which results may be compared: a fingerprint of the facts that decide a latency.

Two cells with the same fingerprint ran the same software on the same kind of hardware with
the same settings, so their numbers compare; different fingerprints are refused or shown with
`fingerprint_differences`. What goes in, and why:

  - GPU model and the GPU settings that change speed: enforced power limit, applications
    clocks, ECC and MIG mode (MIG slices are smaller GPUs). Not the UUID: two H100s of one
    model compare.
  - NVIDIA driver, CUDA runtime, cuDNN (GPU runs only).
  - The versions of the libraries the runtime runs on (its plug-in's `libraries`): a torch upgrade
    does not make an ONNX Runtime number incomparable.
  - CPU model and the cores this process may use (they bound CPU runtimes and every
    end-to-end pre/post-processing step), and env vars that change execution
    (CUDA_LAUNCH_BLOCKING, NVIDIA_TF32_OVERRIDE, thread counts) when set.
  - Runtime, precision and the runtime's settings as read back from the library, without
    anything that belongs to one process rather than to the configuration (`process_specific`:
    memory addresses such as the CUDA stream ONNX Runtime reports, pids, file locations,
    timestamps, durations, cache hits): two runs of one plan get one fingerprint.

Left out on purpose, because they vary from one moment to the next without changing the
setup: temperatures, current clocks, clock-event reasons, free memory, hostname, capture
time, whether clocks *looked* locked at one instant (the app-clock settings are in).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# Every library a runtime plug-in may name: a runtime this harness does not know (a record from
# a newer harness) is compared on all of them.
ALL_RUNTIME_LIBRARIES = ("torch", "torchvision", "rfdetr", "onnxruntime", "tensorrt")

# Env vars that change execution; included only when set, so older records stay comparable.
EXECUTION_ENV_VARS = (
    "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_TF32_OVERRIDE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _gpu_fields(gpu: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": gpu.get("name"),
        "memory_total_bytes": gpu.get("memory_total_bytes"),
        "power_limit_enforced_w": _dict(gpu.get("power_limit_w")).get("enforced"),
        "applications_clocks_mhz": gpu.get("applications_clocks_mhz"),
        "ecc": _dict(gpu.get("ecc_mode")).get("current"),
        "mig": _dict(gpu.get("mig_mode")).get("current"),
    }


# What differs between two processes that run the same configuration, and so must never enter
# a fingerprint: which memory (the address of a CUDA stream, a pointer, a handle), which process
# (pids, thread ids), where (file and folder locations, temporary files), when (timestamps,
# durations) and what happened to be cached. Settings are read back verbatim from libraries
# (ONNX Runtime reports the address of the stream it was given), so the rule looks at every
# key and value, at any depth, rather than at a list of known keys.
_ADDRESS_WORDS = frozenset({"stream", "ptr", "pointer", "address", "addr", "handle"})
_PROCESS_WORDS = frozenset({"pid", "ppid", "tid"})
_LOCATION_WORDS = frozenset({"path", "paths", "dir", "dirs", "directory", "file", "files", "filepath",
                             "filename", "folder", "tmp", "tmpdir", "temp"})
_TIME_WORDS = frozenset({"time", "times", "timestamp", "timing", "timings", "date", "datetime"})
_CACHE_WORDS = frozenset({"cached", "hit", "hits"})
_FLAG_VALUES = frozenset({"", "0", "1", "true", "false", "yes", "no", "on", "off"})
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{6,}$")
_ABSOLUTE_PATH = re.compile(r"^(/|~|[A-Za-z]:[\\/])")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^0-9a-z]+", spaced.lower()) if w]


def _is_flag(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in (0, 1)
    return isinstance(value, str) and value.strip().lower() in _FLAG_VALUES


def process_specific(key: str, value: Any) -> str | None:
    """Why `key: value` is a fact of one process rather than of the configuration (an
    "address", "process", "location", "time" or "cache" fact), or None when it is configuration.

    A key naming a stream, pointer or handle holds an address unless its value is a flag
    (ONNX Runtime's `has_user_compute_stream: "1"` is configuration, `user_compute_stream`
    is the stream's address)."""
    words = _words(str(key))
    last = words[-1] if words else ""
    if last in _ADDRESS_WORDS and not _is_flag(value):
        return "address"
    if _PROCESS_WORDS & set(words):
        return "process"
    if _LOCATION_WORDS & set(words):
        return "location"
    if _TIME_WORDS & set(words) or last == "at" or str(key).endswith("_s"):
        return "time"
    if last in _CACHE_WORDS:
        return "cache"
    if isinstance(value, str):
        if _HEX_ADDRESS.match(value):
            return "address"
        if _TIMESTAMP.match(value):
            return "time"
        if _ABSOLUTE_PATH.match(value):
            return "location"
    return None


def comparable_settings(value: Any) -> Any:
    """Settings without what changes from one process to the next of the same configuration
    (see `process_specific`), so identical setups get identical fingerprints."""
    if isinstance(value, dict):
        return {
            k: comparable_settings(v)
            for k, v in value.items()
            if process_specific(str(k), v) is None
        }
    if isinstance(value, list):
        return [comparable_settings(v) for v in value if not (isinstance(v, str) and process_specific("", v))]
    return value


def comparability_fields(
    env: dict[str, Any], *, runtime: str, precision: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """The facts that decide whether two results compare (see the module docstring)."""
    packages = _dict(env.get("packages"))
    distributions = _dict(env.get("distributions"))
    from harness.runtimes.registry import libraries as runtime_libraries

    libraries = runtime_libraries(runtime) or ALL_RUNTIME_LIBRARIES
    cpu = _dict(env.get("cpu"))
    fields: dict[str, Any] = {
        "runtime": runtime,
        "precision": precision,
        "settings": comparable_settings(settings),
        "libraries": {
            # onnxruntime vs onnxruntime-gpu of one version are different builds.
            name: (
                f"{distributions[name]}=={packages.get(name)}"
                if distributions.get(name) not in (None, name)
                else packages.get(name)
            )
            for name in libraries
        },
        "cpu_model": cpu.get("model"),
        "cpu_cores_available": cpu.get("available_cores"),
    }
    env_vars = {
        name: value
        for name, value in _dict(env.get("env_vars")).items()
        if name in EXECUTION_ENV_VARS and value is not None
    }
    if env_vars:
        fields["env_vars"] = env_vars
    gpus = [g for g in env.get("gpus") or [] if isinstance(g, dict)]
    if gpus:
        cuda = _dict(env.get("cuda"))
        fields["gpus"] = [_gpu_fields(g) for g in gpus]
        fields["driver"] = _dict(env.get("nvidia")).get("driver_version")
        fields["cuda_runtime"] = cuda.get("runtime")
        fields["cudnn"] = cuda.get("cudnn")
    return fields


def canonical_json(value: Any) -> str:
    """Key order, spacing and non-JSON types (tuples, paths) can't change the hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def short_hash(value: Any) -> str:
    """The first 16 hex digits of the sha256 of `canonical_json(value)`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def fingerprint(
    env: dict[str, Any], *, runtime: str, precision: str, settings: dict[str, Any]
) -> str:
    """sha256 of the canonical JSON of comparability_fields, first 16 hex digits."""
    fields = comparability_fields(env, runtime=runtime, precision=precision, settings=settings)
    return short_hash(fields)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list | tuple) and value and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (a value, b value) for every field that differs; a field missing on
    one side shows as None there. Pass two `comparability_fields` results (full environments
    work too, but then temperatures and times show up as differences)."""
    flat_a: dict[str, Any] = {}
    flat_b: dict[str, Any] = {}
    _flatten(a, "", flat_a)
    _flatten(b, "", flat_b)
    differences: dict[str, tuple[Any, Any]] = {}
    for key in sorted(flat_a.keys() | flat_b.keys()):
        left, right = flat_a.get(key), flat_b.get(key)
        if canonical_json(left) != canonical_json(right):
            differences[key] = (left, right)
    return differences
