#!/usr/bin/env python3
"""Write examples/onnx/anchor-grid-320.onnx: a small detector in the raw YOLO head layout, the
worked example of plans/onnx-detector.yaml (a user's own ONNX model, described in the plan).

    python scripts/make_example_onnx.py [OUT]

The graph is a real computation on the image, not a constant: one 8x8 stride-8 convolution over
the 320x320 input gives, per cell of a 40x40 anchor grid, a box size and 80 class scores; the
anchor centres are the grid's. Output `output0` is (N, 4 + 80, 1600): cx, cy, w, h in input
pixels, then sigmoid class scores, exactly what Ultralytics' raw export (no NMS) emits, so the
harness's `yolo_raw` decoder and its NMS apply. Weights are seeded random: the latency is real,
the mAP is meaningless (the plan says so). The file is deterministic, and a test checks that the
committed one is what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

RES = 320
STRIDE = 8
CLASSES = 80
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "examples" / "onnx" / "anchor-grid-320.onnx"


def build() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20261201)
    grid = RES // STRIDE
    anchors = grid * grid
    weight = rng.normal(0.0, 0.02, (2 + CLASSES, 3, STRIDE, STRIDE)).astype(np.float32)
    bias = np.concatenate([np.zeros(2), np.full(CLASSES, -4.0)]).astype(np.float32)  # few confident anchors
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centres = (np.stack([xs.ravel(), ys.ravel()]) * STRIDE + STRIDE / 2).astype(np.float32)[None]  # (1, 2, A)
    inits = [
        numpy_helper.from_array(weight, "head.weight"),
        numpy_helper.from_array(bias, "head.bias"),
        numpy_helper.from_array(np.array([0, 2 + CLASSES, anchors], np.int64), "flat_shape"),  # 0: keep the batch
        numpy_helper.from_array(np.array([2, CLASSES], np.int64), "split_sizes"),
        numpy_helper.from_array(centres, "anchor_centres"),
        numpy_helper.from_array(np.array(48.0, np.float32), "size_span"),
        numpy_helper.from_array(np.array(16.0, np.float32), "size_min"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "head.weight", "head.bias"], ["head"],
                         kernel_shape=[STRIDE, STRIDE], strides=[STRIDE, STRIDE]),
        helper.make_node("Reshape", ["head", "flat_shape"], ["flat"]),
        helper.make_node("Split", ["flat", "split_sizes"], ["size_logits", "class_logits"], axis=1),
        # box sizes 16..64 px from the first two channels, centres from the anchor grid
        helper.make_node("Sigmoid", ["size_logits"], ["size_unit"]),
        helper.make_node("Mul", ["size_unit", "size_span"], ["size_scaled"]),
        helper.make_node("Add", ["size_scaled", "size_min"], ["sizes"]),
        helper.make_node("Shape", ["size_unit"], ["size_shape"]),
        helper.make_node("Expand", ["anchor_centres", "size_shape"], ["centres"]),
        helper.make_node("Sigmoid", ["class_logits"], ["class_scores"]),
        helper.make_node("Concat", ["centres", "sizes", "class_scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "anchor-grid-320",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, RES, RES])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 4 + CLASSES, anchors])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="detbench-example")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build())
    print(f"{out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
