"""Preprocessing: rfdetr-matching resize, letterbox geometry, channel order, value scale."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import UserError
from harness.models.base import ImageMeta
from harness.models.preprocess import (
    RFDETR_PREPROCESS,
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
