"""The inference side of the server: one thread that owns the runtime, fed by a queue with
Triton's dynamic-batching rule.

A batch closes when it holds `max_batch` requests or when its oldest request has waited
`max_queue_delay_ms`, whichever comes first (with 0: whatever is queued when the model is free).
Each batch runs the harness's end-to-end stages (`Runtime.stages()`: preprocess, h2d, infer,
d2h, postprocess), the very functions the end-to-end scope times, with the same
synchronisation after asynchronous stages. One thread, because a runtime is one model on one
device stream (and not every runtime is thread-safe); the event loop stays free for HTTP.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.models.detections import Detections
from harness.runtimes.base import Stage


class QueueFull(Exception):
    pass


@dataclass
class Job:
    image: np.ndarray
    enqueued: float  # perf_counter seconds
    deadline: float  # perf_counter seconds: past it, the job is not started
    future: concurrent.futures.Future[Answer] = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True)
class Answer:
    detections: Detections
    queue_ms: float
    inference_ms: float
    batch_id: int
    batch_size: int  # requests in the batch (before any padding)
    stages_ms: dict[str, float]


class Expired(Exception):
    """The job waited past its deadline in the queue and was never run."""


class Batcher:
    """`stages` are the runtime's end-to-end stages; `synchronize` its wait for the device."""

    def __init__(
        self,
        stages: Sequence[Stage],
        synchronize: Callable[[], None],
        *,
        max_batch: int,
        max_queue_delay_ms: float,
        pad_to_max_batch: bool = False,
        on_batch: Callable[[int, int, dict[str, float]], None] | None = None,
    ):
        self.stages = list(stages)
        self.synchronize = synchronize
        self.max_batch = max_batch
        self.delay_s = max_queue_delay_ms / 1000.0
        self.pad = pad_to_max_batch
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._batches = 0
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> concurrent.futures.Future[Answer]:
        with self._cond:
            if self._stopped:
                raise QueueFull("the server is shutting down")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def run_batch(self, images: list[np.ndarray]) -> tuple[list[Detections], dict[str, float]]:
        """The end-to-end stages on one batch, timed stage by stage (ms)."""
        n = len(images)
        if self.pad and n < self.max_batch:
            images = images + [images[-1]] * (self.max_batch - n)
        value: Any = images
        times: dict[str, float] = {}
        for stage in self.stages:
            started = time.perf_counter()
            value = stage.fn(value)
            if stage.asynchronous:
                self.synchronize()
            times[stage.name] = (time.perf_counter() - started) * 1000.0
        return list(value)[:n], times

    # -- the inference thread ------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            close_at = self._queue[0].enqueued + self.delay_s
            while len(self._queue) < self.max_batch and not self._stopped:
                remaining = close_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._stopped:
                return None
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                break
            now = time.perf_counter()
            live = []
            for job in jobs:
                # After this a job can no longer be cancelled (a client gone away: skipped here).
                if not job.future.set_running_or_notify_cancel():
                    continue
                if now > job.deadline:
                    job.future.set_exception(Expired("waited past the request timeout in the queue"))
                    continue
                live.append(job)
            if not live:
                continue
            self._batches += 1
            batch_id = self._batches
            started = time.perf_counter()
            try:
                detections, times = self.run_batch([j.image for j in live])
            except BaseException as exc:  # the model's error goes to its requests, the thread lives on
                for job in live:
                    job.future.set_exception(exc)
                continue
            inference_ms = (time.perf_counter() - started) * 1000.0
            if self.on_batch is not None:
                self.on_batch(batch_id, len(live), times)
            for job, dets in zip(live, detections, strict=True):
                job.future.set_result(Answer(dets, (started - job.enqueued) * 1000.0, inference_ms, batch_id, len(live), times))
        with self._cond:  # what is left when stopping is told so
            while self._queue:
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(QueueFull("the server is shutting down"))
