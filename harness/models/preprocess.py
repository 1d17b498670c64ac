"""Images to a model's input tensor, with the metas that undo it.

RF-DETR's own `predict()` (rfdetr 1.11.2, detr.py) does, per image: uint8 HWC -> float CHW in
[0, 1], `torchvision.transforms.functional.resize(t, [res, res], antialias=False)` (bilinear,
half-pixel centres, no antialias: the cv2.INTER_LINEAR resize Albumentations used in training),
then `normalize(mean, std)` with ImageNet statistics. So the image is STRETCHED to a square.

We reproduce that resize in numpy rather than with PIL: PIL's BILINEAR filter always
antialiases when it shrinks (its support widens with the scale), which would feed the model
blurrier pixels than rfdetr does. PyTorch's source-index rule (src = (dst + 0.5) * in/out - 0.5,
clamped at 0) gives the same sample points as
`F.interpolate(mode="bilinear", align_corners=False, antialias=False)`; the remaining difference
is float rounding order (tests bound it against torch and rfdetr's own preprocessing).

Speed matters here because the end-to-end scope times this code: it must not be the bottleneck
it reports. numpy stays the only dependency (the same on every install), and the resize is
arranged so that numpy does few, cheap passes (see `_resize_normalise_into`):

* the taps (source indices and weights) of each (in, out) size pair are computed once and cached;
* the column pass gathers both horizontal taps of all three channels as ONE 8-byte element
  (bytes 3x .. 3x+7 of a row hold pixels x and x+1), so numpy's gather, whose cost is per
  element, runs once instead of six times;
* the normalisation ((v / value_scale - mean) / std, and the RGB/BGR swap) is folded into the
  column weights plus one offset add at input height, instead of three passes at output size;
* the row pass gathers whole rows (memory copies) and writes straight into the NCHW batch;
* temporaries live in per-thread scratch memory (`scratch_array`), reused from call to call.

640x480 -> 576x576 went from 17 ms to 3.4 ms on one core of the development machine
(docs/performance.md, "Host-side cost of the harness's own pre/post-processing").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

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

# Bytes read past a row by the 8-byte pixel-pair gather (see `_pair_taps`).
_PAIR_BYTES = 8

# Per-thread scratch memory, reused from call to call. Fresh temporaries of a few MB can cost
# more than the arithmetic: glibc hands them back to the kernel on free (heap trimming), and
# touching them again page-faults every 4 KiB (measured: ~4,000 faults, ~8 ms, per 640x480
# image). It holds ~15 MB per thread for 640x480 -> 576x576, growing with the largest image.
_scratch = threading.local()


def scratch_array(name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """An uninitialised array from this thread's reusable scratch memory (grown as needed).

    Only for temporaries that never leave the function that asked: the next call with the
    same `name` on the same thread overwrites it."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buffers: dict[str, np.ndarray] | None = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = buffers[name] = np.empty(max(nbytes, 1), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


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


@lru_cache(maxsize=64)
def _row_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_source_taps` as read-only cached arrays, the weight shaped to broadcast over rows."""
    lo, hi, weight = _source_taps(out_size, in_size)
    weight = weight[:, None]
    for a in (lo, hi, weight):
        a.setflags(write=False)
    return lo, hi, weight


@lru_cache(maxsize=64)
def _pair_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Left pixel x of the pair (x, x+1) each output column reads, and the weight of x+1.

    Where `_source_taps` clamps at the far edge (hi == lo == in_size - 1) the weight of x+1 is
    set to exactly 0: the pair then reaches one pixel past the row (the next row, or the
    zero padding after the last one), a finite value that contributes exactly nothing. With
    hi == lo the interpolated value is that pixel whatever the weight, so nothing changes."""
    lo, hi, weight = _source_taps(out_size, in_size)
    weight = np.where(hi == lo, np.float32(0.0), weight).astype(np.float32)
    lo = lo.astype(np.intp)
    lo.setflags(write=False)
    weight.setflags(write=False)
    return lo, weight


def _channel_affine(spec: Preprocess) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Per model channel: v_model = v_uint8 * scale + offset, and which image channel feeds it.

    (v / value_scale - mean) / std == v * (1 / (value_scale * std)) - mean / std. mean/std are
    in the order the MODEL receives the channels (after an RGB->BGR swap)."""
    mean = np.asarray(spec.mean, np.float64)
    std = np.asarray(spec.std, np.float64)
    scale = (1.0 / (spec.value_scale * std)).astype(np.float32)
    offset = (-mean / std).astype(np.float32)
    source = (2, 1, 0) if spec.channel_order == "bgr" else (0, 1, 2)
    return scale, offset, source


def _resize_normalise_into(
    image: np.ndarray,
    dst: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    source: tuple[int, int, int],
) -> None:
    """Bilinear resize (no antialias) of an HxWx3 uint8 image into dst (3, out_h, out_w)
    float32 (any strides), with dst[c] = resized[..., source[c]] * scale[c] + offset[c].

    Columns first, at the input height: one 8-byte gather per (row, output column) fetches
    both horizontal taps of all three channels; weights carry the normalisation. Then rows:
    whole-row gathers and one lerp written into dst."""
    in_h, in_w = image.shape[:2]
    _, out_h, out_w = dst.shape
    x_left, x_weight = _pair_taps(out_w, in_w)
    y_lo, y_hi, y_weight = _row_taps(out_h, in_h)

    # The image bytes, padded so the last pair read of the last row stays inside the buffer.
    row_bytes = in_w * 3
    padded = scratch_array("pre.padded", (in_h * row_bytes + _PAIR_BYTES,), np.uint8)
    padded[in_h * row_bytes :] = 0
    padded[: in_h * row_bytes].reshape(in_h, in_w, 3)[...] = image
    # Element (y, x) of this overlapping, unaligned view is bytes 3x .. 3x+7 of row y: pixel x
    # (bytes 0-2), pixel x+1 (bytes 3-5) and two bytes that are never used.
    pairs_view = np.ndarray((in_h, in_w), dtype=np.uint64, buffer=padded, strides=(row_bytes, 3))
    # np.take copies a non-contiguous source first; copying into scratch ourselves keeps that
    # copy out of freshly faulted memory.
    pairs = scratch_array("pre.pairs", (in_h, in_w), np.uint64)
    np.copyto(pairs, pairs_view)
    gathered = scratch_array("pre.gathered", (in_h, out_w), np.uint64)
    # mode="clip" (the indices are in range anyway): with the default "raise", take writes
    # into a temporary and copies it to `out` afterwards.
    pairs.take(x_left, axis=1, out=gathered, mode="clip")
    taps = gathered.view(np.uint8).reshape(in_h, out_w, _PAIR_BYTES)

    right_weight = x_weight * scale[:, None]  # (3, out_w)
    left_weight = (np.float32(1.0) - x_weight) * scale[:, None]
    columns = scratch_array("pre.columns", (3, in_h, out_w), np.float32)
    right = scratch_array("pre.right", (in_h, out_w), np.float32)
    for c, s in enumerate(source):
        np.multiply(taps[:, :, s], left_weight[c], out=columns[c])
        np.multiply(taps[:, :, 3 + s], right_weight[c], out=right)
        columns[c] += right
        columns[c] += offset[c]

    top = scratch_array("pre.top", (3, out_h, out_w), np.float32)
    bottom = scratch_array("pre.bottom", (3, out_h, out_w), np.float32)
    columns.take(y_lo, axis=1, out=top, mode="clip")
    columns.take(y_hi, axis=1, out=bottom, mode="clip")
    np.subtract(bottom, top, out=dst)
    dst *= y_weight
    dst += top


def _resize_bilinear_generic(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Any dtype, any channel count: the straightforward gather + lerp, rows then columns."""
    in_h, in_w = image.shape[:2]
    img = image.astype(np.float32, copy=False)
    if (in_h, in_w) == (out_h, out_w):
        return img.copy() if img is image else img
    y0, y1, wy = _source_taps(out_h, in_h)
    x0, x1, wx = _source_taps(out_w, in_w)
    top = img[y0]
    rows = top + (img[y1] - top) * wy[:, None, None]
    left = rows[:, x0]
    return left + (rows[:, x1] - left) * wx[None, :, None]


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """HxWxC image (any dtype) -> out_h x out_w x C float32, bilinear without antialias."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        planar = np.empty((3, out_h, out_w), np.float32)
        ones = np.ones(3, np.float32)
        _resize_normalise_into(image, planar, ones, np.zeros(3, np.float32), (0, 1, 2))
        return np.ascontiguousarray(planar.transpose(1, 2, 0))
    return _resize_bilinear_generic(image, out_h, out_w)


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
    images: Sequence[np.ndarray],
    size: int,
    spec: Preprocess,
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[ImageMeta]]:
    """HxWx3 uint8 RGB images -> float32 NCHW (N, 3, size, size) and one ImageMeta each.

    stretch: each axis scaled independently (scale_x != scale_y), no padding.
    letterbox: one scale keeping the aspect ratio, centred, borders filled with
    `spec.letterbox_fill` (a uint8 value, before value_scale and mean/std); pad recorded.
    `out`: an optional (N, 3, size, size) float32 array to write into (a runtime's own staging
    buffer, e.g. pinned host memory), returned as the batch; a new array otherwise.
    """
    for i, image in enumerate(images):
        _check_image(image, i)
    shape = (len(images), 3, size, size)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out is {out.dtype} {out.shape}; expected float32 {shape}")
    metas: list[ImageMeta] = []
    scale, offset, source = _channel_affine(spec)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        if spec.resize == "stretch":
            _resize_normalise_into(image, out[i], scale, offset, source)
            metas.append(ImageMeta(orig_h=h, orig_w=w, scale_x=size / w, scale_y=size / h))
            continue
        new_h, new_w, pad_y, pad_x = letterbox_geometry(h, w, size)
        # The border is the fill value normalised like any pixel of its channel.
        fill = np.float32(spec.letterbox_fill) * scale + offset
        out[i] = fill[:, None, None]
        region = out[i, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w]
        _resize_normalise_into(image, region, scale, offset, source)
        # The scale actually applied per axis (rounding of the resized size), so boxes map
        # back exactly to where the pixels went.
        metas.append(
            ImageMeta(
                orig_h=h, orig_w=w, scale_x=new_w / w, scale_y=new_h / h,
                pad_x=float(pad_x), pad_y=float(pad_y),
            )
        )
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
