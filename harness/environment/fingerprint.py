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
  - Runtime, precision and the runtime's settings as read back from the library.

Left out on purpose, because they vary from one moment to the next without changing the
setup: temperatures, current clocks, clock-event reasons, free memory, hostname, capture
time, whether clocks *looked* locked at one instant (the app-clock settings are in).
"""

from __future__ import annotations

import hashlib
import json
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


_VOLATILE_KEYS = {"timing", "built_at", "cache_hit", "engine_cache_hit", "cached", "model_file", "path"}
_VOLATILE_SUFFIXES = ("_s", "_at", "_path", "_dir", "_file")


def comparable_settings(value: Any) -> Any:
    """Settings without what changes from run to run of the same configuration (timings,
    timestamps, cache hits, file locations), so identical setups get identical fingerprints."""
    if isinstance(value, dict):
        return {
            k: comparable_settings(v)
            for k, v in value.items()
            if k not in _VOLATILE_KEYS and not str(k).endswith(_VOLATILE_SUFFIXES)
        }
    if isinstance(value, list):
        return [comparable_settings(v) for v in value]
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
