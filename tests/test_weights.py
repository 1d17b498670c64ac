"""Weights come from a checkpoint path, rfdetr's cache, or `random` said out loud; when asked-for
weights are missing, the cell fails with that reason and never falls back to random weights."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.models.rfdetr.source import RfdetrSource, WeightsUnavailable, resolve_weights
from harness.plan.load import load_plan

PLAN = """
name: w
device: cpu
models: [{{name: nano, variant: nano, weights: "{weights}", resolutions: [128]}}]
protocol: {{warmup_iterations: 1, warmup_seconds: 0, min_iterations: 2, min_seconds: 0}}
"""


def cell_for(tmp_path: Path, weights: str):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(weights=weights))
    return load_plan(plan).cells[0]


def test_missing_weights_are_a_reason_not_a_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailable, match="rf-detr-nano.pth, which is not in rfdetr's cache"):
        resolve_weights("cache", "nano", tmp_path)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights("nope.pth", "nano", tmp_path)
    assert resolve_weights("random", "nano", tmp_path) is None


def test_a_run_asking_for_absent_weights_fails_that_cell_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(PLAN.format(weights="cache"))
    env = {**os.environ, "RF_HOME": str(tmp_path / "empty-cache")}
    done = subprocess.run(
        [sys.executable, "-m", "harness", "plan.yaml"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    (run,) = list((tmp_path / "reports" / "w").iterdir())
    (record,) = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
    assert record["status"] == "failed"
    assert "not in rfdetr's cache" in record["reason"] and "does not fall back to random" in record["reason"]
    assert record["latency"] is None


@pytest.mark.slow
def test_checkpoint_path_and_cache_load_the_saved_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from rfdetr import RFDETRNano

    torch.manual_seed(123)  # weights unlike the harness's own random seed
    saved = RFDETRNano(pretrain_weights=None, device="cpu", resolution=128).model.model.state_dict()
    checkpoint = tmp_path / "my-nano.pth"
    torch.save({"model": saved}, checkpoint)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "rf-detr-nano.pth").write_bytes(checkpoint.read_bytes())
    monkeypatch.setenv("RF_HOME", str(cache))
    probe = "transformer.decoder.layers.0.linear1.weight"
    for weights in (str(checkpoint), "cache"):
        source = RfdetrSource(cell_for(tmp_path, weights), io.StringIO())
        assert not source.random_weights
        loaded = source.torch_model("cpu").state_dict()
        assert torch.equal(loaded[probe], saved[probe]), weights
        assert source.describe()["weights_sha256"]
    random = RfdetrSource(cell_for(tmp_path, "random"), io.StringIO())
    assert random.random_weights
    assert not torch.equal(random.torch_model("cpu").state_dict()[probe], saved[probe])
