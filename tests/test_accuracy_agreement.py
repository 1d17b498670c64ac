"""Agreement with the reference, derived comparisons and gates, and the gallery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from record_factory import accuracy, record

from harness.accuracy.agreement import (
    box_iou,
    collect_raw_outputs,
    detection_agreement,
    detections_from_coco_results,
    load_outputs_npz,
    raw_output_agreement,
    save_outputs_npz,
)
from harness.accuracy.datasets import open_dataset
from harness.accuracy.derive import derive_accuracy
from harness.accuracy.gallery import draw_gallery, gallery_for_cell
from harness.accuracy.sample import make_sample_dataset
from harness.models.detections import Detections
from harness.results import CellRecord, effective_status


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int64))


# -- detection agreement ---------------------------------------------------------------------

def test_identical_detections_agree_fully() -> None:
    a = [_dets([[0, 0, 10, 10], [20, 20, 40, 50]], [0.9, 0.8], [1, 2]), Detections.empty()]
    result = detection_agreement(a, a)
    assert result["matched"] == 2 and result["unmatched_reference"] == 0 and result["unmatched_other"] == 0
    assert result["mean_iou"] == 1.0 and result["min_iou"] == 1.0 and result["max_abs_score_diff"] == 0.0
    assert result["match_rate"] == 1.0 and result["per_image"] == [0.0, 0.0]


def test_shifted_lost_and_reclassified_detections() -> None:
    ref = [_dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [70, 70, 80, 80]],
                 [0.9, 0.8, 0.7, 0.2], [1, 2, 3, 1])]
    other = [_dets([[1, 0, 11, 10], [20, 20, 40, 40], [50, 50, 60, 60], [90, 90, 99, 99]],
                   [0.85, 0.8, 0.7, 0.6], [1, 2, 4, 1])]
    r = detection_agreement(ref, other, iou_threshold=0.5, min_score=0.3)
    # Box 0 shifted by 1 px (IoU 90/110), box 1 identical, box 2 changed class (no match),
    # ref box 3 is below min_score, other box 3 is new.
    assert r["reference_detections"] == 3 and r["other_detections"] == 4
    assert r["matched"] == 2 and r["unmatched_reference"] == 1 and r["unmatched_other"] == 2
    assert r["min_iou"] == pytest.approx(90 / 110) and r["mean_iou"] == pytest.approx((1 + 90 / 110) / 2)
    assert r["max_abs_score_diff"] == pytest.approx(0.05, abs=1e-6)
    assert r["per_image"][0] == pytest.approx(3 + (1 - 90 / 110) + 0.05, abs=1e-6)
    # A shift beyond the IoU threshold is no match at all.
    far = [_dets([[6, 0, 16, 10]], [0.9], [1])]
    assert detection_agreement([_dets([[0, 0, 10, 10]], [0.9], [1])], far)["matched"] == 0
    with pytest.raises(ValueError, match="same images"):
        detection_agreement(ref, other + other)


def test_greedy_matching_takes_best_iou_first() -> None:
    ref = [_dets([[0, 0, 10, 10], [2, 0, 12, 10]], [0.9, 0.9], [1, 1])]
    other = [_dets([[2, 0, 12, 10]], [0.9], [1])]
    r = detection_agreement(ref, other)
    assert r["matched"] == 1 and r["mean_iou"] == 1.0  # paired with the identical box, not the first


def test_box_iou_values() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 20, 20]]))
    assert iou.tolist() == [[pytest.approx(50 / 150), 1.0, 0.0]]


# -- raw outputs -----------------------------------------------------------------------------

def test_raw_output_agreement_on_planted_differences() -> None:
    ref: dict[str, np.ndarray] = {"dets": np.zeros((2, 3, 4), np.float32), "labels": np.ones((2, 3, 5), np.float32),
           "extra": np.zeros(3), "masks": np.zeros((2, 3, 8, 8))}
    other: dict[str, np.ndarray] = {"dets": ref["dets"].copy(), "labels": ref["labels"].copy(), "masks": np.zeros((2, 3, 4, 4)),
             "new": np.zeros(1)}
    other["labels"][1, 2, 3] = 1.5  # abs 0.5, rel 0.5
    other["labels"][0, 0, 0] = 1.0 + 5e-6  # within atol: not a mismatch
    other["dets"][0, 1, 2] = 2e-3  # reference 0: rel diff huge but finite
    r = raw_output_agreement(ref, other)
    labels, dets = r["outputs"]["labels"], r["outputs"]["dets"]
    assert labels["max_abs_diff"] == pytest.approx(0.5) and labels["max_rel_diff"] == pytest.approx(0.5)
    assert labels["mean_abs_diff"] == pytest.approx((0.5 + 5e-6) / 30, rel=1e-4)
    assert labels["mismatches"] == 1 and labels["passed"] is False
    assert dets["max_abs_diff"] == pytest.approx(2e-3) and dets["max_rel_diff"] == pytest.approx(2e-3 / 1e-12)
    assert r["outputs"]["masks"] == {"shape_mismatch": [[2, 3, 8, 8], [2, 3, 4, 4]], "passed": False}
    assert r["only_in_reference"] == ["extra"] and r["only_in_other"] == ["new"] and r["passed"] is False
    same = raw_output_agreement({"x": ref["labels"]}, {"x": ref["labels"].astype(np.float16)})
    assert same["passed"] is True and same["outputs"]["x"]["max_abs_diff"] == 0.0
    nan = raw_output_agreement({"x": np.array([np.nan, 1.0])}, {"x": np.array([0.0, 1.0])})
    assert nan["outputs"]["x"]["nan_mismatches"] == 1 and nan["passed"] is False


def test_collect_raw_outputs_is_batch_independent(tmp_path: Path) -> None:
    inputs = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    seen = []

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(x.shape[0])
        return {"y": x * 2, "s": x.sum(axis=1)}

    one = collect_raw_outputs(run, inputs, 1)
    three = collect_raw_outputs(run, inputs, 3)
    assert seen == [1] * 5 + [3, 3]  # the last chunk padded to the fixed batch
    assert np.array_equal(one["y"], three["y"]) and three["y"].shape == (5, 2)
    save_outputs_npz(tmp_path / "o.npz", three, image_ids=[4, 5, 6, 7, 8])
    loaded, ids = load_outputs_npz(tmp_path / "o.npz")
    assert ids == [4, 5, 6, 7, 8] and np.array_equal(loaded["s"], three["s"])


# -- derive and gates ------------------------------------------------------------------------

def _record(cell_id: str, model: str, *, ref: bool = False, ap: float | None = None, status: str = "ok",
            max_drop: float | None = None, random: bool = False, resolution: int = 384,
            per_class: dict[str, float] | None = None) -> CellRecord:
    acc = None
    if ap is not None:
        acc = accuracy(ap, per_class=per_class or {"person": ap, "tv": ap / 2}, random_weights=random)
    return record(
        cell_id,
        identity_fields={"model": model, "is_reference": ref, "resolution": resolution, "batch": 1,
                         "runtime": cell_id.split("__")[1], "precision": "fp32", "max_map_drop": max_drop,
                         "weights_kind": "random" if random else "trained"},
        status=status, reason="boom" if status == "failed" else None, random_weights=random, accuracy=acc,
    )


def _write_detections(run_dir: Path, cell_id: str, results: list[dict[str, Any]]) -> None:
    (run_dir / "detections").mkdir(parents=True, exist_ok=True)
    (run_dir / "detections" / f"{cell_id}.json").write_text(json.dumps(results))


def test_derive_on_planted_records_and_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ref_id, ort_id, f16_id = "m__torch__b1", "m__onnxruntime-cpu__b1", "m__tensorrt__b1"
    records = [
        _record(ref_id, "m", ref=True, ap=0.50),
        _record(ref_id + "_e2e", "m", ref=True),  # the reference's other scope: no accuracy
        _record(ort_id, "m", ap=0.47, max_drop=1.0, per_class={"person": 0.45, "tv": 0.25}),
        _record(f16_id, "m", ap=0.495, max_drop=1.0),
        # The plan has one reference per resolution: a 512 cell compares with the 512 reference.
        _record("m__torch__b1_r512", "m", ref=True, ap=0.60, resolution=512),
        _record("m__onnxruntime-cpu__b1_r512", "m", ap=0.60, resolution=512, max_drop=1.0),
        _record("n__torch__b1", "n", ref=True, status="failed"),
        _record("n__onnxruntime-cpu__b1", "n", ap=0.3),
        _record("r__torch__b1", "r", ref=True, ap=0.001, random=True),
        _record("r__onnxruntime-cpu__b1", "r", ap=0.0, random=True, max_drop=0.01, resolution=512),
    ]
    ref_results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
                   {"image_id": 2, "category_id": 72, "bbox": [5, 5, 20, 20], "score": 0.8}]
    ort_results = [{"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.85},
                   {"image_id": 3, "category_id": 72, "bbox": [5, 5, 20, 20], "score": 0.8}]
    _write_detections(run, ref_id, ref_results)
    _write_detections(run, ort_id, ort_results)
    _write_detections(run, f16_id, ref_results)
    ref_out = {"dets": np.zeros((2, 300, 4), np.float32), "labels": np.zeros((2, 300, 91), np.float32)}
    ort_out = {k: v.copy() for k, v in ref_out.items()}
    ort_out["labels"][0, 5, 7] = 0.25
    save_outputs_npz(run / "outputs" / f"{ref_id}.npz", ref_out, [1, 2])
    save_outputs_npz(run / "outputs" / f"{ort_id}.npz", ort_out, [1, 2])

    entries = derive_accuracy(records, run)
    derived = {cid: entry.model_dump(mode="json") for cid, entry in entries.items()}  # as results.json holds it
    assert entries == derive_accuracy(list(reversed(records)), run)  # a pure function of the inputs
    assert ref_id + "_e2e" not in derived and derived[ref_id]["role"] == "reference"

    ort = derived[ort_id]
    assert ort["reference"] == ref_id
    assert ort["map_delta"]["AP"] == pytest.approx(-3.0) and ort["map_delta"]["AP50"] == pytest.approx(-3.0)
    assert ort["per_class_delta"] == {"person": pytest.approx(-5.0), "tv": pytest.approx(0.0)}
    assert ort["gate"] == {"max_map_drop": 1.0, "drop": pytest.approx(3.0), "regressed": True}
    agreement = ort["detection_agreement"]
    assert agreement["matched"] == 1 and agreement["unmatched_reference"] == 1 and agreement["unmatched_other"] == 1
    assert agreement["min_iou"] == pytest.approx(90 / 110)  # x shifted by 1 px, same width
    assert [w["image_id"] for w in agreement["worst_images"]] == [2, 3, 1]
    raw = ort["raw_agreement"]
    assert raw["outputs"]["labels"]["max_abs_diff"] == pytest.approx(0.25) and raw["passed"] is False
    assert raw["outputs"]["dets"]["passed"] is True

    f16 = derived[f16_id]
    assert f16["gate"]["regressed"] is False and f16["map_delta"]["AP"] == pytest.approx(-0.5)
    assert f16["detection_agreement"]["match_rate"] == 1.0
    assert "no raw outputs saved" in f16["raw_agreement"]["reason"]

    r512 = derived["m__onnxruntime-cpu__b1_r512"]
    assert r512["reference"] == "m__torch__b1_r512" and r512["map_delta"]["AP"] == pytest.approx(0.0)
    assert "resolution_note" not in r512 and derived["m__torch__b1_r512"]["role"] == "reference"

    assert "failed: boom" in derived["n__onnxruntime-cpu__b1"]["reason"]
    rand = derived["r__onnxruntime-cpu__b1"]
    assert "meaningless" in rand["note"] and rand["gate"]["regressed"] is False
    assert "different input resolution" in rand["raw_agreement"]["reason"] and "resolution_note" in rand
    assert "no detections file" in rand["detection_agreement"]["reason"]
    by_id = {r.cell_id: r for r in records}  # finalize's effective status: the gate trips only there
    assert [cid for cid, e in entries.items() if effective_status(by_id[cid], e) == "accuracy_regression"] == [ort_id]
    json.dumps(derived)


# -- gallery ---------------------------------------------------------------------------------

def test_gallery_picks_the_most_disagreeing_images(tmp_path: Path) -> None:
    from PIL import Image

    dataset = open_dataset(*make_sample_dataset(tmp_path / "s", n_images=4, seed=2))
    ids = dataset.image_ids
    ref = [_dets([[10, 10, 60, 60]], [0.9], [1]) for _ in ids]
    other = list(ref)
    other[2] = Detections.empty()  # a lost box: the biggest disagreement
    other[0] = _dets([[12, 10, 62, 60]], [0.9], [1])  # a small shift: second
    paths = draw_gallery(dataset, ids, ref, other, {1: "person"}, tmp_path / "g", "cell", 2)
    assert [p.name for p in paths] == ["cell-1.jpg", "cell-2.jpg"]
    with Image.open(paths[0]) as im:
        h, w = dataset.sizes[ids[2]]
        assert im.format == "JPEG" and im.size == (w, h + 18)
    # From the run folder's detection files.
    run = tmp_path / "run"
    as_results = [{"image_id": i, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9} for i in ids]
    _write_detections(run, "ref", as_results)
    _write_detections(run, "cell", as_results[1:])
    rel = gallery_for_cell(record("cell"), record("ref"), run, dataset, 1)
    assert rel == ["gallery/cell-1.jpg"] and (run / rel[0]).is_file()
    back = detections_from_coco_results(as_results, [ids[1], 999])
    assert back[0].boxes_xyxy.tolist() == [[10, 10, 60, 60]] and len(back[1]) == 0


def test_raw_agreement_matches_queries_regardless_of_order() -> None:
    """RF-DETR emits its queries in score order; two runtimes may swap near-ties. The same
    detections in another order must agree, and a real difference must still show."""
    import numpy as np

    from harness.accuracy.agreement import raw_output_agreement

    rng = np.random.default_rng(0)
    dets = rng.random((2, 300, 4))
    labels = rng.random((2, 300, 91))
    perm = rng.permutation(300)
    shuffled = {"dets": dets[:, perm], "labels": labels[:, perm]}
    same = raw_output_agreement({"dets": dets, "labels": labels}, shuffled)
    assert same["passed"] and same["queries_reordered"] > 0
    assert same["outputs"]["labels"]["max_abs_diff"] == 0.0
    shuffled["labels"] = shuffled["labels"].copy()
    shuffled["labels"][1, 7, 3] += 0.5
    different = raw_output_agreement({"dets": dets, "labels": labels}, shuffled)
    assert not different["passed"]
    assert abs(different["outputs"]["labels"]["max_abs_diff"] - 0.5) < 1e-9
