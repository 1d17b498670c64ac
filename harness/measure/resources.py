"""A cell's memory and energy over its processes, from each process's record (`resources`).

Each process of a cell measures its own memory and energy (harness.run.resources); the cell's
figures are: the WORST peak of any process for device memory (only when every process read it
the same way, `method`: the worst of two quantities is neither), the process's NVML reading and
host RSS (a deployment must fit its worst run), the artifact's size (one file for every
process), and the MEDIAN over processes of joules per image, images per joule and mean power
(like the latency headline, a typical process), with the highest peak power. A figure no
process could measure stays None, and `reasons` says why (the first process's words).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from harness.results import MEASURED_STATUSES, CellRecord, CellResources


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def resources_over_processes(group: Sequence[CellRecord]) -> CellResources | None:
    """The cell-level figures from its measured processes' records; None when none measured any."""
    records = [r for r in group if r.resources is not None and r.status in MEASURED_STATUSES]
    if not records:
        return None
    blocks = [r.resources for r in records if r.resources is not None]
    reasons: dict[str, str] = {}

    def worst(values: list[int | None], key: str, why: list[str | None]) -> int | None:
        found = [v for v in values if v is not None]
        if not found:
            first = next((w for w in why if w), None)
            if first:
                reasons[key] = first
            return None
        return max(found)

    device = [b.device_memory for b in blocks]
    energy = [b.energy for b in blocks]
    methods = sorted({d.method for d in device if d.peak_bytes is not None and d.method})
    energy_methods = sorted({e.method for e in energy if e.joules_per_image is not None and e.method})
    per_image = [e.joules_per_image for e in energy if e.joules_per_image is not None]
    if not per_image:
        first = next((e.reason for e in energy if e.reason), None)
        if first:
            reasons["energy"] = first
    artifact = blocks[0].artifact
    if artifact.bytes is None and artifact.reason:
        reasons["artifact"] = artifact.reason
    device_peak = worst([d.peak_bytes for d in device], "device_memory", [d.reason for d in device])
    if len(methods) > 1:
        # The worst of two quantities (NVML's process figure and the allocator's) is neither:
        # no cell figure rather than one a budget or a comparison would misread.
        device_peak = None
        reasons["device_memory"] = (f"the processes read device memory different ways ({', '.join(methods)}): "
                                    "no single figure over them")
    return CellResources(
        processes=len(records),
        device_memory_peak_bytes=device_peak,
        device_memory_method=" | ".join(methods) or None,
        process_memory_peak_bytes=worst([d.process_peak_bytes for d in device], "process_memory",
                                        [d.process_reason for d in device]),
        host_peak_rss_bytes=worst([b.host_memory.peak_rss_bytes for b in blocks], "host_memory",
                                  [b.host_memory.reason for b in blocks]),
        host_memory_method=" | ".join(sorted({b.host_memory.method for b in blocks
                                              if b.host_memory.peak_rss_bytes is not None and b.host_memory.method}))
        or None,
        artifact_bytes=artifact.bytes,
        artifact_kind=artifact.kind,
        joules_per_image=_median(per_image),
        images_per_joule=_median([e.images_per_joule for e in energy if e.images_per_joule is not None]),
        mean_power_w=_median([e.mean_power_w for e in energy if e.mean_power_w is not None]),
        peak_power_w=max((e.peak_power_w for e in energy if e.peak_power_w is not None), default=None),
        energy_method=" | ".join(energy_methods) or None,
        energy_scope=next((e.scope for e in energy if e.scope), None),
        reasons=reasons or None,
    )
