"""Preprocessing: rfdetr-matching resize, letterbox geometry, channel order, value scale."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import UserError
from harness.models.base import ImageMeta
from harness.models.preprocess import (
    RFDETR_PREPROCESS,
    _source_taps,
    model_to_original,
    preprocess_images,
    resize_bilinear,
)
from harness.plan.schema import Preprocess


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w,size", [(480, 640, 384), (150, 200, 384), (97, 301, 64), (384, 384, 384), (1080, 1920, 560)])
def test_resize_matches_torch_bilinear_without_antialias(h: int, w: int, size: int) -> None:
    torch = pytest.importorskip("torch")
    img = _image(h, w)
    ours = resize_bilinear(img, size, size)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(
        t, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )[0].permute(1, 2, 0).numpy()
    # Same sample points; float32 rounding of far-edge weights differs slightly: bounded at
    # 0.02 grey levels (values are 0..255 here), i.e. ~3e-4 after ImageNet normalisation.
    assert np.abs(ours - ref).max() < 0.02


def test_rfdetr_preprocess_is_stretch_imagenet_rgb() -> None:
    img = _image(60, 80)
    batch, metas = preprocess_images([img, img[:30]], 32, RFDETR_PREPROCESS)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    assert metas[0] == ImageMeta(orig_h=60, orig_w=80, scale_x=32 / 80, scale_y=32 / 60)
    assert metas[1].orig_h == 30
    # A flat image maps to exactly (v/255 - mean) / std per channel.
    flat = np.full((10, 20, 3), (255, 0, 128), np.uint8)
    batch, _ = preprocess_images([flat], 16, RFDETR_PREPROCESS)
    expected = (np.array([255, 0, 128]) / 255 - np.array(RFDETR_PREPROCESS.mean)) / np.array(
        RFDETR_PREPROCESS.std
    )
    np.testing.assert_allclose(batch[0, :, 5, 5], expected, rtol=1e-5)


def test_bgr_and_value_scale() -> None:
    flat = np.full((8, 8, 3), (10, 20, 30), np.uint8)
    spec = Preprocess(channel_order="bgr", mean=(0, 0, 0), std=(1, 1, 1), value_scale=1.0)
    batch, _ = preprocess_images([flat], 4, spec)
    np.testing.assert_array_equal(batch[0, :, 0, 0], [30, 20, 10])


def test_letterbox_geometry_fill_and_round_trip() -> None:
    spec = Preprocess(resize="letterbox", mean=(0, 0, 0), std=(1, 1, 1), value_scale=1.0)
    img = np.full((100, 200, 3), 7, np.uint8)  # wide: padded top and bottom
    batch, (meta,) = preprocess_images([img], 64, spec)
    assert meta.scale_x == pytest.approx(64 / 200) and meta.scale_y == pytest.approx(32 / 100)
    assert (meta.pad_x, meta.pad_y) == (0.0, 16.0)
    assert np.all(batch[0, :, :16] == 114) and np.all(batch[0, :, 48:] == 114)
    assert np.all(batch[0, :, 16:48] == 7)
    # A box in original pixels -> model pixels -> back again.
    box = np.array([[20.0, 10.0, 150.0, 90.0]], np.float32)
    model_px = box.copy()
    model_px[:, 0::2] = box[:, 0::2] * meta.scale_x + meta.pad_x
    model_px[:, 1::2] = box[:, 1::2] * meta.scale_y + meta.pad_y
    np.testing.assert_allclose(model_to_original(model_px, meta), box, atol=1e-4)


def test_bad_images_are_user_errors() -> None:
    with pytest.raises(UserError, match="uint8"):
        preprocess_images([np.zeros((4, 4, 3), np.float32)], 8, RFDETR_PREPROCESS)
    with pytest.raises(UserError, match="H x W x 3"):
        preprocess_images([np.zeros((4, 4), np.uint8)], 8, RFDETR_PREPROCESS)


def _reference(image: np.ndarray, out_h: int, out_w: int, spec: Preprocess) -> np.ndarray:
    """The plain pipeline in float64 (taps by the same float32 index rule as PyTorch):
    resize, then channel order, then (v / value_scale - mean) / std. (3, out_h, out_w)."""
    y0, y1, wy = _source_taps(out_h, image.shape[0])
    x0, x1, wx = _source_taps(out_w, image.shape[1])
    img = image.astype(np.float64)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    resized = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    if spec.channel_order == "bgr":
        resized = resized[:, :, ::-1]
    chw = resized.transpose(2, 0, 1) / spec.value_scale
    return (chw - np.array(spec.mean)[:, None, None]) / np.array(spec.std)[:, None, None]


@pytest.mark.parametrize(
    "h,w,size",
    [(480, 640, 576), (1080, 1920, 560), (97, 301, 640), (384, 384, 384), (1, 1, 8), (1, 7, 16),
     (7, 1, 16), (2, 3, 5), (600, 512, 32)],
)
def test_preprocess_matches_plain_resize_then_normalise(h: int, w: int, size: int) -> None:
    img = _image(h, w, seed=h + w)
    batch, _ = preprocess_images([img], size, RFDETR_PREPROCESS)
    # float32 rounding only: ~1e-6 in normalised units (1 grey level is ~0.017).
    assert np.abs(batch[0] - _reference(img, size, size, RFDETR_PREPROCESS)).max() < 5e-6


def test_letterbox_and_bgr_match_the_plain_pipeline() -> None:
    spec = Preprocess(
        resize="letterbox", channel_order="bgr", mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.2),
        value_scale=255.0, letterbox_fill=114,
    )
    img = _image(90, 160, seed=3)
    batch, (meta,) = preprocess_images([img], 64, spec)
    new_h, new_w, top, left = 36, 64, 14, 0
    assert (meta.pad_x, meta.pad_y) == (left, top)
    region = batch[0, :, top : top + new_h, left : left + new_w]
    assert np.abs(region - _reference(img, new_h, new_w, spec)).max() < 5e-6
    fill = (114 / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(batch[0, :, 0, 0], fill, rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, -1, -1], fill, rtol=1e-6)


def test_results_do_not_share_scratch_memory_and_out_is_honoured() -> None:
    """The resize reuses per-thread scratch buffers: nothing returned may alias them."""
    first = _image(48, 64, seed=1)
    a, _ = preprocess_images([first], 32, RFDETR_PREPROCESS)
    resized = resize_bilinear(first, 20, 30)
    kept_a, kept_resized = a.copy(), resized.copy()
    preprocess_images([_image(48, 64, seed=2)], 32, RFDETR_PREPROCESS)
    resize_bilinear(_image(48, 64, seed=2), 20, 30)
    np.testing.assert_array_equal(a, kept_a)
    np.testing.assert_array_equal(resized, kept_resized)
    buffer = np.zeros((2, 3, 32, 32), np.float32)
    batch, _ = preprocess_images([first, first], 32, RFDETR_PREPROCESS, out=buffer)
    assert batch is buffer
    np.testing.assert_array_equal(buffer[1], kept_a[0])
    with pytest.raises(ValueError, match="expected float32"):
        preprocess_images([first], 32, RFDETR_PREPROCESS, out=buffer)


def test_non_contiguous_images() -> None:
    img = _image(60, 90, seed=4)
    views = [img[5:50, 7:80], img[:, ::-1], img[::2, ::3]]
    batch, _ = preprocess_images(views, 24, RFDETR_PREPROCESS)
    for got, view in zip(batch, views, strict=True):
        expected, _ = preprocess_images([np.ascontiguousarray(view)], 24, RFDETR_PREPROCESS)
        np.testing.assert_array_equal(got, expected[0])
