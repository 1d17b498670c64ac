"""Where a cell ran: the `placement` block of a record, and the hardware a result belongs to.

Shared by the three ways of spreading a plan out: several local GPUs (`harness.run.parallel`),
a Ray cluster (`harness.run.ray_backend`) and joining separate runs (`harness.run.merge`).

    record["placement"] = {
        "backend": "local" | "local-gpus" | "ray" | ...,
        "host": "gpu-node-3",
        "gpu": 2,                 # the GPU index the cell was pinned to (--gpus numbering)
        "gpu_name": "NVIDIA L4",  # what the worker's environment capture saw (None on a CPU)
        "gpu_slug": "l4",         # set when cell ids are qualified per GPU: `<cell_id>@l4`
        ...backend-specific facts (Ray node id, accelerator type asked for, source run)
    }

A result is identified by (cell id, hardware): the same cell measured on an L4 and on an H100
are two results, kept apart by qualifying the cell id with the hardware's slug
(`nano__torch__fp32__b1__r640__model@l4`). Everything before the `@` is the cell id the plan
expands to, so grouping by `base_cell_id` finds the same configuration on every GPU.
"""

from __future__ import annotations

import re
import socket
from typing import Any

QUALIFIER = "@"

# Words that say who made the part, not which part it is: "NVIDIA Tesla T4" and "Tesla T4"
# are the same GPU, and a cell id suffix should read `@t4`.
_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro", "corporation", "cpu", "r", "tm"}
_SLUG_MAX = 40


def base_cell_id(cell_id: str) -> str:
    """The plan's cell id, without the `@<hardware>` qualifier a multi-GPU result carries."""
    return cell_id.split(QUALIFIER, 1)[0]


def qualify(cell_id: str, slug: str) -> str:
    return f"{base_cell_id(cell_id)}{QUALIFIER}{slug}"


def hardware_slug(name: str) -> str:
    """A short, file-name-safe label for a GPU (or CPU) model: "NVIDIA H100 80GB HBM3" ->
    "h100-80gb-hbm3", "Tesla T4" -> "t4", "T4" -> "t4"."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    kept = [w for w in words if w and w not in _VENDOR_WORDS]
    slug = "-".join(kept)[:_SLUG_MAX].strip("-")
    return slug or "unknown"


def _first_gpu(environment: dict[str, Any]) -> dict[str, Any] | None:
    for gpu in environment.get("gpus") or []:
        if isinstance(gpu, dict) and gpu.get("name"):
            return gpu
    return None


def hardware_name(record: dict[str, Any]) -> str:
    """The hardware a result was measured on, as one name: the GPU model when the cell used a
    GPU, else "CPU <model>". A record that never reached a worker (lost on a Ray node) falls
    back on what its placement knows."""
    environment = record.get("environment") or {}
    gpu = _first_gpu(environment)
    if gpu is not None:
        return str(gpu["name"])
    placement = record.get("placement") or {}
    if placement.get("gpu_name"):
        return str(placement["gpu_name"])
    device = str((record.get("cell") or {}).get("device", ""))
    if device.startswith("cuda") and placement.get("accelerator_type"):
        return str(placement["accelerator_type"])
    cpu = (environment.get("cpu") or {}).get("model")
    if cpu:
        return f"CPU {cpu}"
    if placement.get("cpu_model"):
        return f"CPU {placement['cpu_model']}"
    return "unknown hardware"


def host_name() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return "unknown"


def with_placement(record: dict[str, Any], placement: dict[str, Any]) -> dict[str, Any]:
    """`record` with `placement` merged into record["placement"], completed with the GPU's
    name from the worker's own environment capture (the worker saw the GPU; the scheduler
    only chose it)."""
    merged = {**(record.get("placement") or {}), **placement}
    gpu = _first_gpu(record.get("environment") or {})
    if gpu is not None:
        merged.setdefault("gpu_name", gpu["name"])
        if gpu.get("uuid"):
            merged.setdefault("gpu_uuid", gpu["uuid"])
    return {**record, "placement": merged}
