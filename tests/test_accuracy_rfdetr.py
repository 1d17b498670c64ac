"""The accuracy pass end to end with a real RF-DETR Nano (random weights) on the CPU."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from harness.accuracy.datasets import dataset_for_cell
from harness.accuracy.evaluate import run_accuracy_pass
from harness.plan.expand import expand
from harness.plan.schema import Plan


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_rfdetr_nano_random_weights_through_the_accuracy_pass(tmp_path: Path) -> None:
    pytest.importorskip("rfdetr")
    from harness.models.registry import source_class
    from harness.runtimes.registry import runtime_class

    plan = Plan.model_validate({
        "name": "acc", "device": "cpu", "artifacts": str(tmp_path / "artifacts"),
        "models": [{"name": "nano", "variant": "nano", "weights": "random"}],
        "runtimes": ["torch"], "batch_sizes": [3], "resolutions": [192],
        "dataset": {"sample": True, "sample_images": 4},
    })
    cell = expand(plan, tmp_path)[0]
    assert cell.run_accuracy and cell.is_reference
    log = io.StringIO()
    source = source_class(cell.source)(cell, log)
    runtime = runtime_class(cell.runtime.name)(cell, source, log)
    runtime.prepare()
    dataset = dataset_for_cell(cell)
    assert len(dataset.image_ids) == 4

    out = tmp_path / "detections" / f"{cell.cell_id}.json"
    metrics = run_accuracy_pass(runtime.predict, cell.batch, dataset, source.class_names, source.family, out,
                                workers=2, log=log, random_weights=source.random_weights)
    runtime.close()

    assert metrics["padded_images"] == 2  # 4 images in batches of 3
    assert metrics["predict_images_per_s"] > 0 and metrics["images"] == 4
    assert 0.0 <= metrics["bbox"]["AP"] < 0.1  # random weights: about 0, but computed
    assert metrics["random_weights"] is True and "meaningless" in metrics["note"]
    results = json.loads(out.read_text())
    # COCO-id model outputs mapped onto the sample's COCO categories; other classes dropped.
    assert results and {r["category_id"] for r in results} <= {1, 13, 37, 38, 72}
    assert {r["image_id"] for r in results} <= set(dataset.image_ids)
