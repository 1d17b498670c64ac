"""Random weights that behave like a network's: BatchNorm statistics estimated on noise.

A detector built with random weights keeps its BatchNorm layers' initial running statistics
(mean 0, variance 1). In eval mode they then do not normalise at all, and through a deep random
backbone the activations shrink layer after layer: in torchvision's SSDlite the last feature
map is ~1e-25, every class scores exactly 1/91, and every box is the same anchor-sized guess.
Such a model cannot show a difference between two runtimes or two NMS placements, because all
its candidates tie.

`calibrate_batchnorm` re-estimates those statistics, data-free: one forward pass over a seeded
batch of uniform-noise images with every BatchNorm layer in training mode and a cumulative
average (momentum None), then eval mode again. No weight changes; the running means and
variances become those of the noise batch. Seeded and on the CPU, so every process that
builds the model (the torch cell, the export for ONNX cells) gets the same network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CALIBRATION_SEED = 1
CALIBRATION_IMAGES = 4


def calibrate_batchnorm(model: Any, forward: Callable[[Any], Any], size: int) -> dict[str, Any]:
    """Re-estimate `model`'s BatchNorm running statistics on seeded noise; `forward(batch)`
    runs the model on a (N, 3, size, size) float batch in [0, 1]. Returns what was done, for
    the record's model facts."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return {"batchnorm_calibration": None}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration pass
        norm.train()
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    batch = torch.rand(CALIBRATION_IMAGES, 3, size, size, generator=generator)
    with torch.no_grad():
        forward(batch)
    for norm in norms:
        norm.eval()
    return {
        "batchnorm_calibration": (
            f"running statistics of {len(norms)} BatchNorm layers estimated on {CALIBRATION_IMAGES} uniform-noise "
            f"images {size}x{size} (seed {CALIBRATION_SEED}): random weights otherwise give every candidate the "
            "same score"
        )
    }
