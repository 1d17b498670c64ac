"""Images decoded ahead of the model by background threads, in batches.

JPEG decoding of COCO images costs ~5-10 ms each on one core, more than a TensorRT RF-DETR
Nano forward pass; decoding on the caller's thread would make the accuracy pass measure PIL.
Worker threads decode ahead (PIL releases the GIL while decoding) into a bounded window, so
memory stays at about `prefetch` batches however large the dataset.

Pad policy: the last batch may be short (fewer than `batch_size` images). The caller pads it
to the runtime's fixed batch by repeating its last image and drops the extra outputs
(`run_accuracy_pass` does), so the padded copies never reach the evaluation.

Orientation: pixels are used as stored. EXIF orientation is NOT applied, because COCO
annotations refer to the stored pixel grid (pycocotools ignores EXIF as well).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from harness.accuracy.datasets import Dataset


def decode_image(path: Path | IO[bytes]) -> np.ndarray:
    """An image file (or file object: the server's request bodies) as an HxWx3 uint8 RGB array
    (grey and RGBA/CMYK converted to RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def iter_batches(
    dataset: Dataset, batch_size: int, workers: int = 2, prefetch: int = 4
) -> Generator[tuple[list[int], list[np.ndarray]], None, None]:
    """(image_ids, images) in the dataset's order, `batch_size` at a time (the last batch may
    be short). `workers` threads decode up to `prefetch` batches ahead; workers=0 decodes on
    the calling thread (for debugging)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ids = list(dataset.image_ids)
    batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    if workers <= 0:
        for batch in batches:
            yield batch, [decode_image(dataset.image_path(i)) for i in batch]
        return

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="accuracy-decode")
    window: deque[tuple[list[int], list[Future[np.ndarray]]]] = deque()
    pending = iter(batches)

    def submit_next() -> None:
        batch = next(pending, None)
        if batch is not None:
            window.append((batch, [pool.submit(decode_image, dataset.image_path(i)) for i in batch]))

    try:
        for _ in range(max(1, prefetch)):
            submit_next()
        while window:
            batch, futures = window.popleft()
            submit_next()  # keep the window full while the model works on this batch
            yield batch, [f.result() for f in futures]
    finally:
        # Also reached when the consumer stops early: drop queued work, don't wait for it.
        for _, futures in window:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
