"""NMS placement: the host NMS is exact greedy NMS (torchvision's own results on the same
boxes) and fast; the candidates stage is the same in numpy and torch; the plan axis expands
into cells whose ids tell placements apart, checked against what the model and runtime can do."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from harness.models.nms import candidates_numpy, nms_numpy
from harness.plan.cells import PlanProblem
from harness.plan.expand import expand
from harness.plan.schema import Plan


def _boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (n, 2)).astype(np.float32)
    wh = rng.uniform(5, 150, (n, 2)).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n + 0.001  # distinct: no ties to break
    return np.concatenate([xy, xy + wh], 1), scores, rng.integers(0, 80, n)


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1025, 2600])
@pytest.mark.parametrize("agnostic", [True, False])
def test_host_nms_keeps_exactly_what_torchvision_keeps(n: int, agnostic: bool) -> None:
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    boxes, scores, classes = _boxes(n, seed=n)
    for iou in (0.3, 0.5, 0.7):
        ours = nms_numpy(boxes, scores, iou, None if agnostic else classes)
        b, s, c = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
        theirs = ops.nms(b, s, iou) if agnostic else ops.batched_nms(b, s, c, iou)
        assert ours.tolist() == theirs.tolist()


def test_host_nms_orders_ties_by_index_and_keeps_identical_degenerate_boxes_apart() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 50, 50], [50, 50, 50, 50]], np.float32)
    scores = np.array([0.5, 0.5, 0.9, 0.9], np.float32)
    # Equal boxes: the lower index wins the tie. Zero-area boxes have no IoU (0/0): both kept.
    assert nms_numpy(boxes, scores, 0.5).tolist() == [2, 3, 0]


def test_host_nms_is_fast_for_the_candidate_counts_of_a_yolo_head() -> None:
    boxes, scores, classes = _boxes(1600, seed=3)
    nms_numpy(boxes, scores, 0.7, classes)  # warm
    started = time.perf_counter()
    for _ in range(3):
        nms_numpy(boxes, scores, 0.7, classes)
    per_call_ms = (time.perf_counter() - started) / 3 * 1000
    # The Python loop it replaces took 167 ms here; this one takes ~10 ms (2 busy cores).
    assert per_call_ms < 80, per_call_ms


def test_candidates_are_the_same_in_numpy_and_torch() -> None:
    torch = pytest.importorskip("torch")
    from harness.models.nms import candidates_torch

    rng = np.random.default_rng(0)
    pred = np.concatenate([rng.uniform(0, 320, (2, 4, 500)), rng.random((2, 80, 500)) ** 8], axis=1).astype(np.float32)
    ours = candidates_numpy(pred, 0.2)
    theirs = candidates_torch(torch.from_numpy(pred), 0.2)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.boxes, b.boxes.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(a.scores, b.scores.numpy())
        np.testing.assert_array_equal(a.classes, b.classes.numpy())


def _plan(models: list[dict], **extra: object) -> Plan:
    return Plan.model_validate({"name": "p", "device": "cpu", "models": models, **extra})


YOLO = {"name": "y", "source": "yolo", "variant": "yolov8n", "weights": "random"}
SSD = {"name": "s", "source": "torchvision", "variant": "ssdlite320_mobilenet_v3_large", "weights": "random"}
RFDETR = {"name": "r", "variant": "nano", "weights": "random"}


def test_the_nms_axis_expands_into_cells_named_by_placement(tmp_path: Path) -> None:
    plan = _plan([YOLO, SSD, RFDETR], runtimes=["torch", "onnxruntime-cpu"], nms=["host", "device", "in_graph"],
                 scopes=["end_to_end"])
    cells = expand(plan, tmp_path)
    yolo = [c for c in cells if c.model.name == "y"]
    assert [c.cell_id for c in yolo] == [
        f"y__{rt}__fp32__b1__r640__nms-{p}__end_to_end"
        for rt in ("torch", "onnxruntime-cpu") for p in ("host", "device", "in-graph")
    ]
    # The reference is one placement of the reference runtime; every other cell is compared with it.
    assert [c.cell_id for c in yolo if c.is_reference] == ["y__torch__fp32__b1__r640__nms-host__end_to_end"]
    assert all(c.run_accuracy is False for c in yolo)  # no dataset in this plan
    # torchvision's NMS is its own postprocess: only in_graph; RF-DETR has none, so no axis.
    assert [(c.nms, c.cell_id) for c in cells if c.model.name == "s"] == [
        ("in_graph", "s__torch__fp32__b1__r320__nms-in-graph__end_to_end"),
        ("in_graph", "s__onnxruntime-cpu__fp32__b1__r320__nms-in-graph__end_to_end"),
    ]
    assert {(c.nms, c.cell_id.count("nms-")) for c in cells if c.model.name == "r"} == {(None, 0)}


def test_without_the_axis_a_model_gets_its_own_placement_and_unchanged_ids(tmp_path: Path) -> None:
    cells = expand(_plan([YOLO, SSD]), tmp_path)
    assert [(c.cell_id, c.nms) for c in cells] == [
        ("y__torch__fp32__b1__r640__model", "host"), ("s__torch__fp32__b1__r320__model", "in_graph"),
    ]


@pytest.mark.parametrize(
    ("model", "runtimes", "field", "words"),
    [
        ({**RFDETR, "nms": ["host"]}, ["torch"], "models[0].nms", "has no NMS the harness can place"),
        ({**SSD, "nms": ["host"]}, ["torch"], "models[0].nms", "cannot run its NMS host (it supports in_graph)"),
        ({**YOLO, "nms": ["device"]}, [{"name": "tensorrt"}], "runtimes[0]", "cannot hand its outputs to torch"),
    ],
)
def test_placements_a_model_or_runtime_cannot_run_are_plan_errors(
    tmp_path: Path, model: dict, runtimes: list, field: str, words: str
) -> None:
    plan = _plan([model], runtimes=runtimes, device="cuda:0" if runtimes == [{"name": "tensorrt"}] else "cpu")
    with pytest.raises(PlanProblem) as err:
        expand(plan, tmp_path)
    assert any(where == field and words in what for where, what in err.value.problems), err.value.problems


def test_bench_validate_names_an_unknown_placement(tmp_path: Path) -> None:
    import subprocess
    import sys

    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\ndevice: cpu\nmodels: [{name: y, source: yolo, variant: yolov8n, weights: random}]\n"
                    "nms: [host, gpu]\n")
    done = subprocess.run([sys.executable, "-m", "harness", "validate", str(plan)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "nms" in done.stderr + done.stdout and "gpu" in done.stderr + done.stdout
