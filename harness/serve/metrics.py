"""The server's per-request log and its Prometheus exposition (`GET /metrics`).

Every answered request is one row of `RequestLog` (columns in compact arrays, bounded), which
`/v1/stats` summarises for the harness, and updates the Prometheus families: counters by status,
histograms of latency, queue and inference time, batch size, detections per answer, max score
and input megapixels, a summary of the latest requests' p50/p95, and the gauges of the queue.
The text format is Prometheus' 0.0.4 exposition format, written here (a few families, no
client library needed).
"""

from __future__ import annotations

import array
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Bucket upper bounds (le), Prometheus style; +Inf is added.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DETECTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 300)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MEGAPIXEL_BUCKETS = (0.1, 0.3, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 50.0)
SUMMARY_WINDOW = 1024  # the summary's quantiles are over the latest this many requests
MAX_RESOLUTION_LABELS = 20  # distinct "WxH" label values; more are counted as "other"
MAX_LOG_ROWS = 2_000_000
MAX_TAGS = 1000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


@dataclass
class PromHistogram:
    name: str
    help: str
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.count += 1

    def render(self, labels: dict[str, str]) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, c in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += c
            lines.append(f"{self.name}_bucket{_labels({**labels, 'le': _num(bound)})} {running}")
        lines.append(f"{self.name}_sum{_labels(labels)} {_num(self.total)}")
        lines.append(f"{self.name}_count{_labels(labels)} {self.count}")
        return lines


class RequestLog:
    """One row per answered request, in arrays (a few tens of bytes a row), at most
    MAX_LOG_ROWS rows (past that, rows are counted but not kept, and `/v1/stats` says so)."""

    COLUMNS = ("status", "server_ms", "decode_ms", "queue_ms", "inference_ms", "batch_id", "batch_size",
               "detections", "max_score", "width", "height", "tag")
    _TYPES = {"status": "i", "batch_id": "q", "batch_size": "i", "detections": "i", "width": "i", "height": "i", "tag": "i"}

    def __init__(self, max_rows: int = MAX_LOG_ROWS):
        self.max_rows = max_rows
        self.columns: dict[str, array.array] = {c: array.array(self._TYPES.get(c, "d")) for c in self.COLUMNS}
        self.tags: dict[str, int] = {}
        self.dropped = 0
        self.batch_stages: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()

    def tag_id(self, tag: str | None) -> int:
        if not tag:
            return -1
        found = self.tags.get(tag)
        if found is None:
            if len(self.tags) >= MAX_TAGS:
                return -2
            found = self.tags[tag] = len(self.tags)
        return found

    def add(self, **row: float) -> None:
        with self._lock:
            if len(self.columns["status"]) >= self.max_rows:
                self.dropped += 1
                return
            for name in self.COLUMNS:
                self.columns[name].append(row.get(name, math.nan if self._TYPES.get(name, "d") == "d" else -1))  # type: ignore[arg-type]

    def add_batch(self, batch_id: int, stages_ms: dict[str, float]) -> None:
        with self._lock:
            if len(self.batch_stages) < self.max_rows:
                self.batch_stages[batch_id] = stages_ms

    def select(self, tags: Sequence[str] | None = None, prefix: str | None = None) -> dict[str, np.ndarray]:
        """The rows whose tag is one of `tags` or starts with `prefix` (all rows when neither)."""
        with self._lock:
            cols = {name: np.frombuffer(col, dtype=col.typecode).copy() for name, col in self.columns.items()}
        if tags is None and prefix is None:
            return cols
        wanted = {self.tags[t] for t in (tags or ()) if t in self.tags}
        if prefix is not None:
            wanted |= {i for t, i in self.tags.items() if t.startswith(prefix)}
        mask = np.isin(cols["tag"], np.fromiter(wanted, dtype=np.int64, count=len(wanted)))
        return {name: col[mask] for name, col in cols.items()}


class Metrics:
    """The Prometheus families, updated as requests are answered."""

    def __init__(self, model: str, runtime: str):
        self.info = {"model": model, "runtime": runtime}
        self.requests: dict[str, int] = {}
        self.latency = PromHistogram("detbench_request_duration_seconds", "Server time per request: body received to answer ready.", SECONDS_BUCKETS)
        self.queue = PromHistogram("detbench_queue_seconds", "Time a decoded request waited for its batch to start.", SECONDS_BUCKETS)
        self.inference = PromHistogram("detbench_inference_seconds", "Time of the batch a request ran in: preprocess to postprocess.", SECONDS_BUCKETS)
        self.batch = PromHistogram("detbench_batch_size", "Requests per model call (one observation per batch).", BATCH_BUCKETS)
        self.detections = PromHistogram("detbench_detections_per_response", "Detections returned per answer.", DETECTION_BUCKETS)
        self.max_score = PromHistogram("detbench_max_score", "Highest detection score per answer with a detection.", SCORE_BUCKETS)
        self.megapixels = PromHistogram("detbench_input_megapixels", "Input image size, megapixels.", MEGAPIXEL_BUCKETS)
        self.resolutions: dict[str, int] = {}
        self.zero_detections = 0
        self.recent: deque[float] = deque(maxlen=SUMMARY_WINDOW)
        self._lock = threading.Lock()

    def observe_request(self, status: int, server_s: float) -> None:
        with self._lock:
            key = str(status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.observe(server_s)
            if status == 200:
                self.recent.append(server_s)

    def count_request(self, status: int) -> None:
        """A request answered outside /v1/detect's handler (404, 405, an unexpected error):
        counted by status, not timed (the latency families are the endpoint's)."""
        with self._lock:
            key = str(status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def observe_answer(self, queue_s: float, inference_s: float, detections: int, max_score: float, width: int, height: int) -> None:
        with self._lock:
            self.queue.observe(queue_s)
            self.inference.observe(inference_s)
            self.detections.observe(detections)
            if detections == 0:
                self.zero_detections += 1
            else:
                self.max_score.observe(max_score)
            self.megapixels.observe(width * height / 1e6)
            key = f"{width}x{height}"
            if key not in self.resolutions and len(self.resolutions) >= MAX_RESOLUTION_LABELS:
                key = "other"
            self.resolutions[key] = self.resolutions.get(key, 0) + 1

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch.observe(size)

    def render(self, queue_depth: int, in_flight: int) -> str:
        with self._lock:
            labels = dict(self.info)
            lines = ["# HELP detbench_model_info The model and runtime this server runs.",
                     "# TYPE detbench_model_info gauge", f"detbench_model_info{_labels(labels)} 1",
                     "# HELP detbench_requests_total Requests answered by /v1/detect, and by routing (404, 405), by HTTP status.",
                     "# TYPE detbench_requests_total counter"]
            for code, n in sorted(self.requests.items()):
                lines.append(f"detbench_requests_total{_labels({**labels, 'code': code})} {n}")
            lines += ["# HELP detbench_zero_detection_responses_total Answers with no detection.",
                      "# TYPE detbench_zero_detection_responses_total counter",
                      f"detbench_zero_detection_responses_total{_labels(labels)} {self.zero_detections}"]
            lines += ["# HELP detbench_request_latency_seconds Server time of the latest answered requests.",
                      "# TYPE detbench_request_latency_seconds summary"]
            recent = np.asarray(self.recent, dtype=np.float64)
            for q in (0.5, 0.95, 0.99):
                value = float(np.percentile(recent, q * 100)) if recent.size else math.nan
                lines.append(f"detbench_request_latency_seconds{_labels({**labels, 'quantile': _num(q)})} {_num(value)}")
            lines.append(f"detbench_request_latency_seconds_sum{_labels(labels)} {_num(float(recent.sum()))}")
            lines.append(f"detbench_request_latency_seconds_count{_labels(labels)} {recent.size}")
            for hist in (self.latency, self.queue, self.inference, self.batch, self.detections, self.max_score, self.megapixels):
                lines += hist.render(labels)
            lines += ["# HELP detbench_input_resolution_total Answers per input resolution (the first 20 seen; then other).",
                      "# TYPE detbench_input_resolution_total counter"]
            for key, n in sorted(self.resolutions.items()):
                lines.append(f"detbench_input_resolution_total{_labels({**labels, 'resolution': key})} {n}")
            lines += ["# HELP detbench_queue_depth Requests waiting for the model.", "# TYPE detbench_queue_depth gauge",
                      f"detbench_queue_depth{_labels(labels)} {queue_depth}",
                      "# HELP detbench_in_flight Requests admitted and not yet answered.", "# TYPE detbench_in_flight gauge",
                      f"detbench_in_flight{_labels(labels)} {in_flight}"]
        return "\n".join(lines) + "\n"
