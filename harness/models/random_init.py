"""Random weights that behave like a network's: BatchNorm statistics estimated on noise.

A detector built with random weights keeps its BatchNorm layers' initial running statistics
(mean 0, variance 1). In eval mode they then do not normalise at all, and through a deep random
backbone the activations shrink layer after layer: in torchvision's SSDlite the last feature
map is ~1e-25, every class scores exactly 1/91, and every box is the same anchor-sized guess.
Such a model cannot show a difference between two runtimes or two NMS placements, because all
its candidates tie.

`calibrate_batchnorm` re-estimates those statistics, data-free: one forward pass over a seeded
batch of synthetic images (pixel noise, smooth noise, flat rectangles: `_noise_batch`) with every BatchNorm layer in training mode and a cumulative
average (momentum None), then eval mode again. No weight changes; the running means and
variances become those of the noise batch. Seeded and on the CPU, so every process that
builds the model (the torch cell, the export for ONNX cells) gets the same network.

Statistics taken on one kind of image alone (pixel noise, say) are not enough: on a real image
the activations then run away and many candidates saturate at score 1.0. Exact ties make greedy
NMS depend on each implementation's sort order rather than on the boxes, and two correct NMS
placements would disagree. The calibration batch mixes pixel noise, smooth noise and flat
rectangles; scores then spread below 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CALIBRATION_SEED = 1
CALIBRATION_IMAGES = 6


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
    with torch.no_grad():
        forward(_noise_batch(size))
    for norm in norms:
        norm.eval()
    return {
        "batchnorm_calibration": (
            f"running statistics of {len(norms)} BatchNorm layers estimated on {CALIBRATION_IMAGES} seeded synthetic "
            f"images {size}x{size} (noise, smooth noise, flat rectangles) (seed {CALIBRATION_SEED}): random weights otherwise give every candidate the "
            "same score"
        )
    }


def _noise_batch(size: int) -> Any:
    """Seeded images of three kinds, so the statistics cover what real images hold: pixel
    noise, smooth noise (coarse noise upsampled) and flat regions (a few rectangles of plain
    colour on a plain background). Statistics of one kind alone leave the network unprepared
    for the others: its activations (and class logits) then run away on a real image."""
    import torch

    generator = torch.Generator().manual_seed(CALIBRATION_SEED)

    def rand(*shape: int) -> Any:
        return torch.rand(*shape, generator=generator)

    images = [rand(1, 3, size, size)]
    for side in (8, 32):
        coarse = rand(1, 3, side, side)
        images.append(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))
    for _ in range(CALIBRATION_IMAGES - len(images)):
        image = rand(3, 1, 1).expand(3, size, size).clone()
        for _ in range(6):
            x0, y0 = (int(v) for v in (rand(2) * size * 0.8))
            w, h = (max(2, int(v)) for v in (rand(2) * size * 0.5))
            image[:, y0 : y0 + h, x0 : x0 + w] = rand(3, 1, 1)
        images.append(image[None])
    return torch.cat(images)
