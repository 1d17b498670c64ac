"""The HTTP endpoint: Starlette on uvicorn.

    POST /v1/detect     an image (JPEG/PNG/WebP/BMP body, or multipart/form-data with one file)
                        -> {"detections": [{"label", "class_id", "score", "bbox": [x1, y1, x2, y2]}],
                            "latency_ms", "queue_ms", "inference_ms", "batch_size", "image",
                            "model", "runtime", "cell_id"}
                        bbox in the uploaded image's pixels; `?min_score=0.5` filters further
                        than the plan's decoder.score_threshold
    GET  /healthz       {"status": "ok", ...}
    GET  /metrics       Prometheus text format (harness.serve.metrics)
    GET  /v1/info       the model, runtime, settings read back, preparation, batching and limits
    GET  /v1/stats      the per-request log summarised (?tag=T, ?prefix=P): what the harness reads
    POST /v1/noop       reads the body like /v1/detect and answers {} (the load generator's
                        capacity is measured against it)

Every refusal is JSON, {"error": {"status", "code", "message"}}: 400 empty body / not an image /
truncated image / bad multipart, 408 body not received in time, 413 body or image too large,
415 wrong content type, 503 queue full (with Retry-After) or timed out waiting for the model,
500 the model raised. None of them stops the server.

Why Starlette and not FastAPI on top of it: the endpoint takes raw image bytes and builds its
answers itself, so FastAPI's layer (request validation, dependency injection, OpenAPI) would do
nothing here but cost time on every request; FastAPI 0.165 also imports the OpenTelemetry API
(about a second at start-up, one more dependency). Starlette is the maintained ASGI toolkit
FastAPI routes through; uvicorn serves a socket handed to it, so the harness opens the port.

Nothing here imports the server stack at module level: `bench --help` and `bench validate`
never load it.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.plan.server import Limits
from harness.serve import images
from harness.serve.batcher import Batcher, Expired, Job, QueueFull
from harness.serve.metrics import Metrics, RequestLog

_TAG = re.compile(r"^[A-Za-z0-9:._-]{1,64}$")
TAG_HEADER = "x-bench-tag"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Service:
    """What the handlers share: the batcher, the class names, the limits, the log."""

    batcher: Batcher
    class_names: list[str | None]
    limits: Limits
    model: str
    runtime: str
    cell_id: str
    info: dict[str, Any]
    log: RequestLog = field(default_factory=RequestLog)
    metrics: Metrics | None = None
    in_flight: int = 0
    decode_pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self.metrics = self.metrics or Metrics(self.model, self.runtime)
        self.decode_pool = self.decode_pool or ThreadPoolExecutor(self.limits.decode_threads, thread_name_prefix="decode")
        self.batcher.on_batch = self._on_batch

    def _on_batch(self, batch_id: int, size: int, stages_ms: dict[str, float]) -> None:
        assert self.metrics is not None
        self.metrics.observe_batch(size)
        self.log.add_batch(batch_id, stages_ms)

    def label(self, class_id: int) -> str:
        name = self.class_names[class_id] if 0 <= class_id < len(self.class_names) else None
        return name if name is not None else str(class_id)


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


async def read_body(request: Any, limits: Limits) -> bytes:
    """The whole body, at most `max_body_bytes`, within `request_timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limits.max_body_bytes:
            raise Refused(413, "body_too_large", f"the body is {int(declared):,} bytes; the server takes at most {limits.max_body_bytes:,}")
    chunks: list[bytes] = []
    size = 0
    request.state.body_started = True  # drain_unread_body leaves a body alone from here on
    try:
        async with asyncio.timeout(limits.request_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise Refused(413, "body_too_large", f"the body is over {limits.max_body_bytes:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, "body_timeout", f"the body was not received within {limits.request_timeout_s:g} s") from None
    return b"".join(chunks)


async def drain_unread_body(request: Any, limits: Limits) -> None:
    """Read and drop a body the answer did not need (a 503 at admission, a 415, a bad
    `min_score`). Closing a connection with unread bytes in its receive buffer makes the kernel
    send RST instead of FIN, and a client still sending its body (Connection: close, or an
    HTTP/1.1 client that sends the whole body before reading) then gets ConnectionResetError
    instead of the JSON refusal. A body already started, or declared over `max_body_bytes`, is
    left alone, and draining stops at `max_body_bytes` or `request_timeout_s`, so a refusal never
    costs more than the largest request the server accepts."""
    from starlette.requests import ClientDisconnect

    if getattr(request.state, "body_started", False):
        return
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        return
    request.state.body_started = True
    size = 0
    try:
        async with asyncio.timeout(limits.request_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    return
    except (TimeoutError, ClientDisconnect):
        return


async def image_bytes(request: Any, limits: Limits) -> bytes:
    """The image in the request: the body itself (an image content type), or the one file of a
    multipart form."""
    content_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type in images.CONTENT_TYPES:
        return await read_body(request, limits)
    if content_type == "multipart/form-data":
        body = await read_body(request, limits)
        return await _multipart_file(request.headers, body, limits)
    accepted = ", ".join([*images.CONTENT_TYPES, "multipart/form-data"])
    shown = content_type or "none"
    raise Refused(415, "unsupported_media_type", f"content type {shown}; send an image ({accepted}), "
                                                 "e.g. curl -H 'Content-Type: image/jpeg' --data-binary @img.jpg")


async def _multipart_file(headers: Any, body: bytes, limits: Limits) -> bytes:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body
        yield b""

    parser = MultiPartParser(headers, stream(), max_files=1, max_fields=16, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Refused(400, "bad_multipart", f"the multipart body cannot be read: {exc.message}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise Refused(400, "empty_body", "the multipart form has no file; send the image as a file field (-F image=@img.jpg)")
        return await files[0].read()
    finally:
        await form.close()


def _detections_json(service: Service, answer: Any, min_score: float) -> list[dict[str, Any]]:
    dets = answer.detections
    out = []
    keep = np.nonzero(dets.scores >= min_score)[0]
    for i in keep:
        box = dets.boxes_xyxy[i]
        out.append({
            "label": service.label(int(dets.class_ids[i])),
            "class_id": int(dets.class_ids[i]),
            "score": round(float(dets.scores[i]), 4),
            "bbox": [round(float(v), 1) for v in box],
        })
    return out


def _min_score(request: Any) -> float:
    raw = request.query_params.get("min_score")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise Refused(400, "bad_request", f"min_score {raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise Refused(400, "bad_request", f"min_score {raw!r} is outside 0..1")
    return value


async def detect(service: Service, request: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One request: admitted, read, decoded, queued, answered. (status, JSON body, headers)."""
    started = time.perf_counter()
    tag_value = request.headers.get(TAG_HEADER)
    tag = service.log.tag_id(tag_value if tag_value and _TAG.match(tag_value) else None)
    limits = service.limits
    row: dict[str, float] = {"tag": tag}
    if service.in_flight >= limits.max_queue:
        status, body, headers = 503, error_body(503, "overloaded", f"{service.in_flight} requests in flight, the queue limit "
                                                                   f"(limits.max_queue {limits.max_queue}); retry later"), {"Retry-After": "1"}
        # Admission is decided on arrival; the body is read only so that the 503 reaches the client.
        await drain_unread_body(request, limits)
        _finish(service, row, status, started)
        return status, body, headers
    service.in_flight += 1
    try:
        min_score = _min_score(request)
        body_bytes = await image_bytes(request, limits)
        loop = asyncio.get_running_loop()
        t_body = time.perf_counter()
        pixels = await loop.run_in_executor(service.decode_pool, images.decode, body_bytes, limits.max_pixels)
        t_decoded = time.perf_counter()
        row.update(decode_ms=(t_decoded - t_body) * 1000.0, height=pixels.shape[0], width=pixels.shape[1])
        deadline = started + limits.request_timeout_s
        job = Job(pixels, enqueued=t_decoded, deadline=deadline)
        future = service.batcher.submit(job)
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(deadline - time.perf_counter(), 0.001))
        except TimeoutError:
            raise Refused(503, "timeout", f"no answer from the model within {limits.request_timeout_s:g} s") from None
        detections = _detections_json(service, answer, min_score)
        n = len(answer.detections)
        max_score = float(answer.detections.scores.max()) if n else math.nan
        row.update(queue_ms=answer.queue_ms, inference_ms=answer.inference_ms, batch_id=answer.batch_id,
                   batch_size=answer.batch_size, detections=n, max_score=max_score)
        assert service.metrics is not None
        service.metrics.observe_answer(answer.queue_ms / 1000.0, answer.inference_ms / 1000.0, n, max_score,
                                       pixels.shape[1], pixels.shape[0])
        latency_ms = (time.perf_counter() - started) * 1000.0
        result = {
            "detections": detections,
            "latency_ms": round(latency_ms, 3),
            "queue_ms": round(answer.queue_ms, 3),
            "inference_ms": round(answer.inference_ms, 3),
            "batch_size": answer.batch_size,
            "image": {"width": int(pixels.shape[1]), "height": int(pixels.shape[0])},
            "model": service.model,
            "runtime": service.runtime,
            "cell_id": service.cell_id,
        }
        _finish(service, row, 200, started)
        return 200, result, {}
    except Refused as exc:
        await drain_unread_body(request, limits)
        _finish(service, row, exc.status, started)
        return exc.status, error_body(exc.status, exc.code, exc.message), exc.headers
    except images.BadImage as exc:
        _finish(service, row, exc.status, started)
        return exc.status, error_body(exc.status, exc.code, exc.message), {}
    except (QueueFull, Expired) as exc:
        _finish(service, row, 503, started)
        return 503, error_body(503, "overloaded", str(exc)), {"Retry-After": "1"}
    except Exception as exc:  # the model or the decoder raised: this request fails, the server lives
        _finish(service, row, 500, started)
        return 500, error_body(500, "inference_failed", f"{type(exc).__name__}: {exc}"), {}
    finally:
        service.in_flight -= 1


def _finish(service: Service, row: dict[str, float], status: int, started: float) -> None:
    server_s = time.perf_counter() - started
    row.update(status=status, server_ms=server_s * 1000.0)
    service.log.add(**row)
    assert service.metrics is not None
    service.metrics.observe_request(status, server_s)


async def noop(service: Service, request: Any) -> tuple[int, dict[str, Any]]:
    try:
        await image_bytes(request, service.limits)
    except Refused as exc:
        await drain_unread_body(request, service.limits)
        return exc.status, error_body(exc.status, exc.code, exc.message)
    return 200, {}


def stats(service: Service, tags: list[str] | None, prefix: str | None) -> dict[str, Any]:
    """The log's rows for `tags`/`prefix` summarised: server-side timings, batch sizes, the
    monitoring figures (the same functions the scenario's record uses)."""
    from harness.results.serve import ServerSide
    from harness.serve.stats import monitoring, quantiles

    rows = service.log.select(tags, prefix)
    ok = rows["status"] == 200
    batch_ids, first = np.unique(rows["batch_id"][ok], return_index=True)
    sizes = rows["batch_size"][ok][first]
    counts: dict[str, int] = {}
    for size in sizes:
        counts[str(int(size))] = counts.get(str(int(size)), 0) + 1
    stage_rows = [service.log.batch_stages.get(int(b)) for b in batch_ids]
    stage_names = sorted({k for r in stage_rows if r for k in r})
    stages_ms = {name: float(np.median([r[name] for r in stage_rows if r and name in r])) for name in stage_names}
    server = ServerSide(
        requests=int(rows["status"].size),
        queue_ms=quantiles(rows["queue_ms"][ok]),
        inference_ms=quantiles(rows["inference_ms"][ok]),
        decode_ms=quantiles(rows["decode_ms"][ok]),
        server_ms=quantiles(rows["server_ms"][ok]),
        batches=int(batch_ids.size),
        batch_sizes=dict(sorted(counts.items(), key=lambda kv: int(kv[0]))),
        mean_batch=float(sizes.mean()) if sizes.size else None,
        stages_ms=stages_ms,
    )
    mon = monitoring(
        [int(s) for s in rows["status"]], [int(d) for d in rows["detections"][ok]], list(rows["max_score"][ok]),
        [int(w) for w in rows["width"][ok]], [int(h) for h in rows["height"][ok]],
    )
    return {"server": server.model_dump(mode="json"), "monitoring": mon.model_dump(mode="json"),
            "log_rows": int(rows["status"].size), "log_dropped": service.log.dropped}


def build_app(service: Service) -> Any:
    """The ASGI application: Starlette's routing on uvicorn (see the module doc for why not
    FastAPI's layer on top of it)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else f"{type(exc).__name__}: {exc}"
        headers = getattr(exc, "headers", None)
        # 404, 405 and errors outside the handlers: counted, as every answer of the endpoint is,
        # so a client calling the wrong path shows in detbench_requests_total.
        assert service.metrics is not None
        service.metrics.count_request(status)
        return JSONResponse(error_body(status, "http_error" if status < 500 else "internal_error", str(detail)),
                            status_code=status, headers=headers)

    async def detect_route(request: Request) -> Response:
        status, body, headers = await detect(service, request)
        return JSONResponse(body, status_code=status, headers=headers)

    async def noop_route(request: Request) -> Response:
        status, body = await noop(service, request)
        return JSONResponse(body, status_code=status)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": service.model, "runtime": service.runtime, "cell_id": service.cell_id,
                             "queue_depth": service.batcher.depth, "in_flight": service.in_flight})

    async def metrics(request: Request) -> Response:
        assert service.metrics is not None
        return PlainTextResponse(service.metrics.render(service.batcher.depth, service.in_flight),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def info(request: Request) -> Response:
        return JSONResponse(service.info)

    async def stats_route(request: Request) -> Response:
        tags = request.query_params.getlist("tag") or None
        prefix = request.query_params.get("prefix")
        loop = asyncio.get_running_loop()
        return JSONResponse(await loop.run_in_executor(None, stats, service, tags, prefix))

    routes = [
        Route("/v1/detect", detect_route, methods=["POST"]),
        Route("/v1/noop", noop_route, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/info", info, methods=["GET"]),
        Route("/v1/stats", stats_route, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: http_error})
