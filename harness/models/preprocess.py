"""Images to a model's input tensor, with the metas that undo it.

RF-DETR's own `predict()` (rfdetr 1.11.2, detr.py) does, per image: uint8 HWC -> float CHW in
[0, 1], `torchvision.transforms.functional.resize(t, [res, res], antialias=False)` (bilinear,
half-pixel centres, no antialias: the cv2.INTER_LINEAR resize Albumentations used in training),
then `normalize(mean, std)` with ImageNet statistics. So the image is STRETCHED to a square.

We reproduce that resize in numpy rather than with PIL: PIL's BILINEAR filter always
antialiases when it shrinks (its support widens with the scale), which would feed the model
blurrier pixels than rfdetr does. A separable gather + lerp with PyTorch's source-index rule
(src = (dst + 0.5) * in/out - 0.5, clamped at 0) gives the same sample points as
`F.interpolate(mode="bilinear", align_corners=False, antialias=False)`; the remaining difference
is float rounding order (tests bound it against rfdetr's own preprocessing).

numpy is the only dependency here, so this runs the same on every install; it is not the
fastest possible preprocessing but it is honest about what end-to-end timing includes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.errors import UserError
from harness.models.base import ImageMeta
from harness.plan.schema import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What rfdetr's predict() does: stretch to a square, RGB, /255, ImageNet mean/std.
RFDETR_PREPROCESS = Preprocess(
    resize="stretch",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    channel_order="rgb",
    value_scale=255.0,
)


def _source_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight for each output pixel along one axis
    (PyTorch's align_corners=False rule, upsampling and downsampling alike)."""
    # float32 arithmetic on purpose: PyTorch computes the source index in float32 for float32
    # images, and float64 here would move the far-edge weights by up to 1e-4 (0.01 grey levels).
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    weight = src - lo.astype(np.float32)
    return lo, hi, weight


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """HxWxC image (any dtype) -> out_h x out_w x C float32, bilinear without antialias."""
    in_h, in_w = image.shape[:2]
    img = image.astype(np.float32, copy=False)
    if (in_h, in_w) == (out_h, out_w):
        return img.copy() if img is image else img
    y0, y1, wy = _source_taps(out_h, in_h)
    x0, x1, wx = _source_taps(out_w, in_w)
    # Rows first (fewer output rows than input rows when shrinking: less work for the columns).
    top = img[y0]
    rows = top + (img[y1] - top) * wy[:, None, None]
    left = rows[:, x0]
    return left + (rows[:, x1] - left) * wx[None, :, None]


def letterbox_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Resized height/width and top-left padding for fitting h x w into size x size."""
    scale = min(size / h, size / w)
    new_h = max(1, min(size, round(h * scale)))
    new_w = max(1, min(size, round(w * scale)))
    pad_y = (size - new_h) // 2
    pad_x = (size - new_w) // 2
    return new_h, new_w, pad_y, pad_x


def _check_image(image: np.ndarray, index: int) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"image {index} has shape {image.shape}; expected H x W x 3 (RGB)")
    if image.dtype != np.uint8:
        raise UserError(f"image {index} has dtype {image.dtype}; expected uint8")


def preprocess_images(
    images: Sequence[np.ndarray], size: int, spec: Preprocess
) -> tuple[np.ndarray, list[ImageMeta]]:
    """HxWx3 uint8 RGB images -> float32 NCHW (N, 3, size, size) and one ImageMeta each.

    stretch: each axis scaled independently (scale_x != scale_y), no padding.
    letterbox: one scale keeping the aspect ratio, centred, borders filled with
    `spec.letterbox_fill` (a uint8 value, before value_scale and mean/std); pad recorded.
    """
    n = len(images)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    metas: list[ImageMeta] = []
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    # mean/std are per channel in the order the MODEL receives them (after an RGB->BGR swap).
    inv_scale = np.float32(1.0 / spec.value_scale)
    for i, image in enumerate(images):
        _check_image(image, i)
        h, w = image.shape[:2]
        if spec.resize == "stretch":
            canvas = resize_bilinear(image, size, size)
            metas.append(ImageMeta(orig_h=h, orig_w=w, scale_x=size / w, scale_y=size / h))
        else:
            new_h, new_w, pad_y, pad_x = letterbox_geometry(h, w, size)
            canvas = np.full((size, size, 3), float(spec.letterbox_fill), np.float32)
            canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resize_bilinear(image, new_h, new_w)
            # The scale actually applied per axis (rounding of the resized size), so boxes map
            # back exactly to where the pixels went.
            metas.append(
                ImageMeta(
                    orig_h=h, orig_w=w, scale_x=new_w / w, scale_y=new_h / h,
                    pad_x=float(pad_x), pad_y=float(pad_y),
                )
            )
        if spec.channel_order == "bgr":
            canvas = canvas[:, :, ::-1]
        # HWC -> CHW, then (x / value_scale - mean) / std, written straight into the batch.
        chw = canvas.transpose(2, 0, 1)
        np.multiply(chw, inv_scale, out=out[i])
        out[i] -= mean[:, None, None]
        out[i] /= std[:, None, None]
    return out, metas


def model_to_original(
    boxes_xyxy: np.ndarray, meta: ImageMeta, *, clip: bool = True
) -> np.ndarray:
    """Boxes in model-input pixels -> original-image pixels (undo stretch or letterbox)."""
    boxes = boxes_xyxy.astype(np.float32, copy=True)
    boxes[:, 0::2] = (boxes[:, 0::2] - meta.pad_x) / meta.scale_x
    boxes[:, 1::2] = (boxes[:, 1::2] - meta.pad_y) / meta.scale_y
    if clip:
        np.clip(boxes[:, 0::2], 0.0, float(meta.orig_w), out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0.0, float(meta.orig_h), out=boxes[:, 1::2])
    return boxes
