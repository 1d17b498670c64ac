#!/usr/bin/env python3
"""Write examples/tflite/anchor-grid-320*.tflite: examples/onnx/anchor-grid-320.onnx's detector
(same seeded weights, scripts/make_example_onnx.py) built in TensorFlow and converted by
TFLiteConverter, for the LiteRT runtime's tests and plans:

    anchor-grid-320.tflite          FP32, input NHWC float32 (1, 320, 320, 3)
    anchor-grid-320-int8.tflite     full-integer INT8, input int8 (scale/zero point in the file),
                                    output float32 (the converter's dequantize at the end)
    anchor-grid-320-int8io.tflite   full-integer INT8, input and output int8

Output `output0` is (1, 84, 1600) as the ONNX file's. The INT8 files are calibrated on seeded
synthetic images (a representative dataset the converter requires), not on a plan's split: they
stand for a quantized .tflite a user brings.

Needs TensorFlow, which is no dependency of the harness (docs/edge-runtimes.md says why): run
it where TensorFlow installs (`pip install tensorflow-cpu`):

    python scripts/make_example_tflite.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

RES = 320
STRIDE = 8
CLASSES = 80
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "examples" / "tflite"


def weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ONNX example's parameters, drawn in the same order from the same seed."""
    rng = np.random.default_rng(20261201)
    grid = RES // STRIDE
    weight = rng.normal(0.0, 0.02, (2 + CLASSES, 3, STRIDE, STRIDE)).astype(np.float32)
    bias = np.concatenate([np.zeros(2), np.full(CLASSES, -4.0)]).astype(np.float32)
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centres = (np.stack([xs.ravel(), ys.ravel()]) * STRIDE + STRIDE / 2).astype(np.float32)[None]
    return weight, bias, centres


def build(out: Path) -> list[Path]:
    import tensorflow as tf

    weight, bias, centres = weights()
    kernel = tf.constant(weight.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    anchors = (RES // STRIDE) ** 2

    @tf.function(input_signature=[tf.TensorSpec([1, RES, RES, 3], tf.float32, name="images")])
    def detect(images: tf.Tensor) -> dict[str, tf.Tensor]:
        head = tf.nn.conv2d(images, kernel, strides=STRIDE, padding="VALID") + bias  # (1, 40, 40, 82)
        flat = tf.transpose(tf.reshape(head, [1, anchors, 2 + CLASSES]), [0, 2, 1])  # (1, 82, 1600), row-major grid
        sizes = tf.sigmoid(flat[:, :2]) * 48.0 + 16.0
        scores = tf.sigmoid(flat[:, 2:])
        return {"output0": tf.concat([tf.constant(centres), sizes, scores], axis=1)}

    def representative() -> object:
        rng = np.random.default_rng(7)
        for _ in range(8):
            yield [rng.random((1, RES, RES, 3), dtype=np.float32)]

    written = []
    for name, kind in (("anchor-grid-320.tflite", "fp32"), ("anchor-grid-320-int8.tflite", "int8"),
                       ("anchor-grid-320-int8io.tflite", "int8io")):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([detect.get_concrete_function()], detect)
        if kind != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8 if kind == "int8io" else tf.float32
        path = out / name
        path.write_bytes(converter.convert())
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    for path in build(out):
        print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
