"""`--gpus` for real, on a host with two or more NVIDIA GPUs: RF-DETR Nano cells in parallel, one
worker per GPU, each pinned through CUDA_VISIBLE_DEVICES, the record's GPU facts belonging to
the GPU that ran it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PLAN = """
name: lanes
device: cuda
models:
  - name: nano
    variant: nano
    weights: random
    resolutions: [320, 384, 448, 512]
runtimes: [torch]
precisions: [fp32, fp16]
scopes: [model]
protocol: {warmup_iterations: 10, warmup_seconds: 0.5, min_iterations: 50, min_seconds: 1, max_seconds: 30}
cell_timeout_s: 600
"""


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_cells_spread_over_the_gpus_each_pinned_to_one(tmp_path: Path) -> None:
    from harness.plan.load import parse_plan
    from harness.run.parallel import parse_gpus, run_cells_on_gpus, visible_gpu_names
    from harness.run.store import RunStore

    names = visible_gpu_names()
    if len(names) < 2:
        pytest.skip(f"needs two or more NVIDIA GPUs ({len(names)} visible)")
    import pynvml

    gpus = parse_gpus("0,1")
    loaded = parse_plan(PLAN, "plan.yaml", tmp_path)
    store = RunStore.create(tmp_path / "reports", "lanes", PLAN, {"cell_ids": [c.cell_id for c in loaded.cells]})
    done: list[dict[str, Any]] = []
    run_cells_on_gpus(loaded.cells, store, gpus, done.append)

    assert len(done) == len(loaded.cells) == 8
    pynvml.nvmlInit()
    try:
        uuids = {}
        for gpu in gpus:  # --gpus numbers like nvidia-smi when CUDA_VISIBLE_DEVICES is unset
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuids[gpu] = uuid.decode() if isinstance(uuid, bytes) else uuid
    finally:
        pynvml.nvmlShutdown()
    for record in done:
        assert record["status"] in ("ok", "unstable"), (record["cell_id"], record["reason"], record.get("log_tail"))
        placement = record["placement"]
        assert placement["backend"] == "local-gpus" and placement["gpu"] in gpus
        assert record["cell"]["device"] == "cuda:0"
        seen = record["environment"]["gpus"]
        assert len(seen) == 1 and seen[0]["uuid"] == uuids[placement["gpu"]]  # NVML followed the pin
        assert placement["gpu_uuid"] == uuids[placement["gpu"]]
    assert {r["placement"]["gpu"] for r in done} == set(gpus)
    spans = [(r["placement"]["gpu"], _when(r["started_at"]), _when(r["finished_at"])) for r in done]
    for i, (gpu_a, start_a, end_a) in enumerate(spans):
        for gpu_b, start_b, end_b in spans[i + 1:]:
            if gpu_a == gpu_b:
                assert end_a <= start_b or end_b <= start_a, "two measurements on one GPU at once"
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans), "never in parallel"
