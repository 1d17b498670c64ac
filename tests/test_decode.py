"""Decoders: RF-DETR against rfdetr's own PostProcess; YOLO layouts and NMS on hand-made tensors."""

from __future__ import annotations

import numpy as np
import pytest

from harness.models.base import ImageMeta
from harness.models.decode import (
    batched_nms,
    decode_rfdetr,
    decode_yolo_end2end,
    decode_yolo_raw,
    make_decoder,
    nms,
    topk_desc,
)
from harness.plan.schema import DecoderSpec, NmsSpec


def _stretch_meta(h: int, w: int, size: int) -> ImageMeta:
    return ImageMeta(orig_h=h, orig_w=w, scale_x=size / w, scale_y=size / h)


@pytest.fixture(scope="module")
def postprocess_cls():  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    module = pytest.importorskip("rfdetr.models.postprocess")
    return module.PostProcess


def _random_outputs(seed: int, b: int = 2, q: int = 300, c: int = 91) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dets = rng.random((b, q, 4), dtype=np.float32)
    dets[..., 2:] *= 0.6  # some boxes spill over the border: clamping is exercised
    dets[0, 0, 2] = -0.1  # a negative width: rfdetr clamps it to 0
    return {
        "dets": dets,
        "labels": (rng.standard_normal((b, q, c), dtype=np.float32) * 3).astype(np.float32),
    }


@pytest.mark.slow
def test_decode_rfdetr_matches_rfdetr_postprocess(postprocess_cls) -> None:  # type: ignore[no-untyped-def]
    import torch

    out = _random_outputs(0)
    rng = np.random.default_rng(1)
    out["masks"] = rng.standard_normal((2, 300, 24, 24), dtype=np.float32)
    sizes = [(480, 640), (301, 199)]
    metas = [_stretch_meta(h, w, 384) for h, w in sizes]
    ref = postprocess_cls(num_select=300)(
        {
            "pred_logits": torch.from_numpy(out["labels"]),
            "pred_boxes": torch.from_numpy(out["dets"]),
            "pred_masks": torch.from_numpy(out["masks"]),
        },
        torch.tensor(sizes),
    )
    ours = decode_rfdetr(out, metas, top_k=300)
    for r, o in zip(ref, ours, strict=True):
        np.testing.assert_array_equal(o.class_ids, r["labels"].numpy())
        np.testing.assert_allclose(o.scores, r["scores"].numpy(), atol=1e-6)
        np.testing.assert_allclose(o.boxes_xyxy, r["boxes"].numpy(), atol=1e-3)
        assert o.masks is not None and o.masks.shape == r["masks"][:, 0].shape
        # Same bilinear resize; only pixels whose logit is within rounding of 0 may differ.
        assert (o.masks != r["masks"][:, 0].numpy()).mean() < 1e-4
    # the image with the negative-width box: clamped to a zero-width box like rfdetr
    assert ours[0].boxes_xyxy[:, 0].min() >= 0


@pytest.mark.slow
def test_decode_rfdetr_keypoints_match_rfdetr(postprocess_cls) -> None:  # type: ignore[no-untyped-def]
    import torch

    out = _random_outputs(2, c=2)
    kp = np.random.default_rng(3).standard_normal((2, 300, 17, 7), dtype=np.float32)
    sizes = [(480, 640), (200, 100)]
    ref = postprocess_cls(num_select=300, num_keypoints_per_class=[17], trace_alpha=0.2)(
        {
            "pred_logits": torch.from_numpy(out["labels"]),
            "pred_boxes": torch.from_numpy(out["dets"]),
            "pred_keypoints": torch.from_numpy(kp),
        },
        torch.tensor(sizes),
    )
    ours = decode_rfdetr({**out, "keypoints": kp}, [_stretch_meta(h, w, 576) for h, w in sizes])
    for r, o in zip(ref, ours, strict=True):
        np.testing.assert_array_equal(o.class_ids, r["labels"].numpy())
        np.testing.assert_allclose(o.scores, r["scores"].numpy(), atol=1e-5)  # fused scores
        assert o.keypoints is not None
        np.testing.assert_allclose(o.keypoints, r["keypoints"].numpy(), atol=1e-3)


def test_topk_ties_follow_stable_descending_order() -> None:
    values = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5], np.float32)
    assert topk_desc(values, 4).tolist() == [1, 4, 0, 2]
    assert topk_desc(values, 10).tolist() == [1, 4, 0, 2, 5, 3]


def test_rfdetr_score_threshold_and_letterbox() -> None:
    # One query, one class: a confident box in the middle of a 64x64 letterboxed input.
    dets = np.array([[[0.5, 0.5, 0.5, 0.25], [0.1, 0.1, 0.1, 0.1]]], np.float32)
    logits = np.array([[[5.0], [-5.0]]], np.float32)
    # 200x100 (w x h) image letterboxed into 64: scale 0.32, pad_y 16
    meta = ImageMeta(orig_h=100, orig_w=200, scale_x=0.32, scale_y=0.32, pad_x=0.0, pad_y=16.0)
    (det,) = decode_rfdetr(
        {"dets": dets, "labels": logits}, [meta], score_threshold=0.5, input_size=(64, 64)
    )
    assert len(det) == 1
    # model box: x 16..48, y 24..40 -> original: x 50..150, y (24-16)/0.32=25 .. 75
    np.testing.assert_allclose(det.boxes_xyxy[0], [50, 25, 150, 75], atol=1e-3)
    with pytest.raises(ValueError, match="input_size"):
        decode_rfdetr({"dets": dets, "labels": logits}, [meta])


def test_yolo_end2end_single_output_layout() -> None:
    pred = np.zeros((1, 4, 6), np.float32)
    pred[0, 0] = [10, 20, 30, 40, 0.9, 3]
    pred[0, 1] = [0, 0, 64, 64, 0.2, 0]
    pred[0, 2] = [5, 5, 6, 6, 0.05, 1]  # below threshold
    # row 3: padding (score 0)
    meta = _stretch_meta(128, 256, 64)  # x scale 4, y scale 2
    spec = DecoderSpec(kind="yolo_end2end", score_threshold=0.1)
    (det,) = decode_yolo_end2end({"output0": pred}, [meta], spec)
    assert det.class_ids.tolist() == [3, 0]
    np.testing.assert_allclose(det.scores, [0.9, 0.2], rtol=1e-6)
    np.testing.assert_allclose(det.boxes_xyxy[0], [40, 40, 120, 80])
    np.testing.assert_allclose(det.boxes_xyxy[1], [0, 0, 256, 128])


def test_yolo_end2end_named_outputs_with_num_dets() -> None:
    outputs: dict[str, np.ndarray] = {
        "num": np.array([[1]], np.int64),
        "b": np.array([[[1, 2, 3, 4], [5, 6, 7, 8]]], np.float32),
        "s": np.array([[0.8, 0.7]], np.float32),
        "c": np.array([[2, 5]], np.int64),
    }
    spec = DecoderSpec(
        kind="yolo_end2end",
        outputs={"boxes": "b", "scores": "s", "classes": "c", "num_dets": "num"},
    )
    (det,) = make_decoder(spec)(outputs, [_stretch_meta(64, 64, 64)])
    assert len(det) == 1 and det.class_ids.tolist() == [2]


def test_yolo_raw_thresholds_nms_and_topk() -> None:
    # (1, 4 + 2 classes, 5 anchors), cxcywh in input pixels
    boxes = np.array(
        [
            [20, 20, 10, 10],  # a: class 0, 0.9
            [21, 20, 10, 10],  # b: overlaps a (IoU ~0.82), class 0, 0.8 -> suppressed
            [21, 21, 10, 10],  # c: overlaps a but class 1, 0.7 -> kept when class-aware
            [50, 50, 8, 8],  # d: class 1, 0.6
            [40, 10, 4, 4],  # e: below threshold
        ],
        np.float32,
    )
    scores = np.array(
        [[0.9, 0.1], [0.8, 0.1], [0.1, 0.7], [0.0, 0.6], [0.01, 0.02]], np.float32
    )
    pred = np.concatenate([boxes, scores], axis=1).T[None]
    pred = np.concatenate([pred, np.zeros((1, 6, 3), np.float32)], axis=2)  # N=8 > 4+C: unambiguous
    meta = _stretch_meta(64, 64, 64)
    aware = DecoderSpec(kind="yolo_raw", score_threshold=0.25, nms=NmsSpec(iou_threshold=0.5))
    (det,) = decode_yolo_raw({"p": pred}, [meta], aware)
    np.testing.assert_allclose(det.scores, [0.9, 0.7, 0.6])
    assert det.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(det.boxes_xyxy[0], [15, 15, 25, 25])
    agnostic = aware.model_copy(update={"nms": NmsSpec(iou_threshold=0.5, class_agnostic=True)})
    (det,) = decode_yolo_raw({"p": pred}, [meta], agnostic)
    np.testing.assert_allclose(det.scores, [0.9, 0.6])
    top1 = aware.model_copy(update={"top_k": 1})
    (det,) = decode_yolo_raw({"p": pred.transpose(0, 2, 1)}, [meta], top1)  # anchors-first layout
    assert len(det) == 1 and det.scores[0] == pytest.approx(0.9)


def test_nms_matches_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    import torch

    rng = np.random.default_rng(0)
    xy = rng.random((300, 2), dtype=np.float32) * 100
    wh = rng.random((300, 2), dtype=np.float32) * 30 + 1
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.random(300, dtype=np.float32)
    classes = rng.integers(0, 3, 300)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), ref)
    ref_b = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5
    ).numpy()
    np.testing.assert_array_equal(batched_nms(boxes, scores, classes, 0.5), ref_b)


# -- masks: the fast upsampler against a plain float64 bilinear --------------------------------


def _bilinear_reference(
    logits: np.ndarray, out_h: int, out_w: int, src_per_dst: tuple[float, float],
    offset: tuple[float, float],
) -> np.ndarray:
    """Float64 separable bilinear (half-pixel centres, PyTorch clamping) of (K, h, w) logits:
    the interpolated VALUES, so a test can tell rounding-level disagreements from real ones."""

    def taps(n_out: int, n_in: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * a + b - 0.5, 0.0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    x = logits.astype(np.float64)
    y0, y1, wy = taps(out_h, x.shape[1], src_per_dst[0], offset[0])
    x0, x1, wx = taps(out_w, x.shape[2], src_per_dst[1], offset[1])
    rows = x[:, y0] * (1 - wy)[None, :, None] + x[:, y1] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def _assert_masks_agree(ours: np.ndarray, values: np.ndarray) -> None:
    """Pixels may differ only where the interpolated logit is within float32 rounding of 0."""
    assert ours.dtype == np.bool_ and ours.shape == values.shape
    differ = ours != (values > 0)
    assert np.all(np.abs(values[differ]) < 1e-5), np.abs(values[differ]).max()
    assert differ.mean() < 1e-5


@pytest.mark.parametrize(
    "k,mh,mw,out_h,out_w",
    [
        (7, 24, 24, 480, 640),  # upsampling, the usual case
        (3, 96, 96, 50, 41),  # downsampling (no antialias, like rfdetr)
        (2, 1, 1, 5, 7),  # a single logit
        (2, 1, 9, 6, 20),  # one row: every row is clamped
        (2, 9, 1, 20, 6),  # one column
        (40, 16, 12, 33, 29),  # odd sizes, non-integer scales on both axes
    ],
)
def test_masks_match_float64_bilinear_threshold(k: int, mh: int, mw: int, out_h: int, out_w: int) -> None:
    from harness.models.decode import _masks_to_original

    logits = np.random.default_rng(k * mh + out_w).standard_normal((k, mh, mw)).astype(np.float32) * 4
    meta = ImageMeta(orig_h=out_h, orig_w=out_w, scale_x=64 / out_w, scale_y=64 / out_h)
    ours = _masks_to_original(logits, meta, None)
    values = _bilinear_reference(logits, out_h, out_w, (mh / out_h, mw / out_w), (0.0, 0.0))
    _assert_masks_agree(ours, values)


def test_masks_chunking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.models import decode

    logits = np.random.default_rng(8).standard_normal((7, 10, 12)).astype(np.float32)
    meta = _stretch_meta(31, 45, 64)
    whole = decode._masks_to_original(logits, meta, None)
    # 9 bytes x 10 rows x 45 columns per mask: chunks of 2 masks, the last one short.
    monkeypatch.setattr(decode, "_MASK_SCRATCH_BYTES", 2 * 9 * 10 * 45)
    np.testing.assert_array_equal(decode._masks_to_original(logits, meta, None), whole)


def test_masks_letterboxed_and_selected_by_index_and_float16() -> None:
    from harness.models.decode import _masks_to_original

    # 200x100 (w x h) image letterboxed into 64x64: scale 0.32, pad_y 16; 16x16 masks.
    meta = ImageMeta(orig_h=100, orig_w=200, scale_x=0.32, scale_y=0.32, pad_x=0.0, pad_y=16.0)
    logits = np.random.default_rng(5).standard_normal((9, 16, 16)).astype(np.float16)
    picked = np.array([8, 0, 3])
    ours = _masks_to_original(logits, meta, (64, 64), picked)
    a = 16 / 64 / 0.32
    values = _bilinear_reference(
        logits[picked].astype(np.float32), 100, 200, (a, a), (16.0 * 16 / 64, 0.0)
    )
    _assert_masks_agree(ours, values)
    with pytest.raises(ValueError, match="input size"):
        _masks_to_original(logits, meta, None)


def test_masks_exact_cases() -> None:
    """Flat logits and equal neighbouring rows make the crossing weight infinite or NaN: the
    result must still be logit > 0 (0 and -0 are not above 0)."""
    from harness.models.decode import _masks_to_original

    flat = np.stack([np.full((6, 5), v, np.float32) for v in (1.0, -1.0, 0.0, -0.0, 1e-30)])
    meta = _stretch_meta(13, 11, 64)
    ours = _masks_to_original(flat, meta, None)
    assert ours[0].all() and ours[4].all()
    assert not ours[1].any() and not ours[2].any() and not ours[3].any()
    # A step between rows 2 and 3 only: rows above it stay False, rows far below stay True.
    step = np.full((1, 6, 5), -1.0, np.float32)
    step[0, 3:] = 2.0
    out = _masks_to_original(step, meta, None)
    values = _bilinear_reference(step, 13, 11, (6 / 13, 5 / 11), (0.0, 0.0))
    _assert_masks_agree(out, values)
    assert not out[0, 0].any() and out[0, -1].all()
    # Infinite logits (fp16 overflow) behave like very large finite ones.
    wild = np.random.default_rng(9).standard_normal((1, 6, 5)).astype(np.float32)
    wild[0, 2, 2], wild[0, 4, 1] = np.inf, -np.inf
    finite = wild.copy()
    finite[0, 2, 2], finite[0, 4, 1] = 1e30, -1e30
    np.testing.assert_array_equal(
        _masks_to_original(wild, meta, None), _masks_to_original(finite, meta, None)
    )
    empty = _masks_to_original(flat, meta, None, np.zeros((0,), np.int64))
    assert empty.shape == (0, 13, 11)


def test_max_masks_keeps_the_highest_scoring_detections() -> None:
    out = _random_outputs(4, q=50, c=5)
    out["masks"] = np.random.default_rng(6).standard_normal((2, 50, 12, 12), dtype=np.float32)
    metas = [_stretch_meta(40, 30, 64), _stretch_meta(20, 50, 64)]
    full = decode_rfdetr(out, metas, top_k=60)
    capped = decode_rfdetr(out, metas, top_k=60, max_masks=7)
    for f, c in zip(full, capped, strict=True):
        assert len(f) == 60 and len(c) == 7
        assert f.masks is not None and c.masks is not None
        np.testing.assert_array_equal(c.scores, f.scores[:7])
        np.testing.assert_array_equal(c.class_ids, f.class_ids[:7])
        np.testing.assert_array_equal(c.boxes_xyxy, f.boxes_xyxy[:7])
        np.testing.assert_array_equal(c.masks, f.masks[:7])
    (none,) = decode_rfdetr({k: v[:1] for k, v in out.items()}, metas[:1], max_masks=0)
    assert len(none) == 0 and none.masks is not None and none.masks.shape == (0, 40, 30)
    # Without masks the cap does nothing: boxes-only models keep every detection.
    no_masks = {k: v for k, v in out.items() if k != "masks"}
    assert len(decode_rfdetr(no_masks, metas, top_k=60, max_masks=7)[0]) == 60
    with pytest.raises(ValueError, match="max_masks"):
        decode_rfdetr(out, metas, max_masks=-1)
