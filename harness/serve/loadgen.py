"""The load generator: HTTP/1.1 over raw asyncio streams, to one loopback address only.

Why not httpx: every request here is one of a few fixed bodies to one host, over keep-alive
connections, and the generator shares a small machine with the server it measures; a few
lines of asyncio streams (the request bytes built once, the status line and Content-Length
parsed, the body skipped) cost several times less CPU per request than a general client, and
what the generator costs is measured anyway (`capacity`, and its CPU share per level).

Closed loop (`closed_level`): `concurrency` clients, each sends its next request when its last
answer arrived; latency from send to the answer's last byte.
Open loop (`open_level`): Poisson arrivals at a target rate (seeded exponential gaps, MLPerf
LoadGen's Server scenario), each sent when due on a free keep-alive connection (a new one when
none is free), at most `max_outstanding` in flight; latency counts from the SCHEDULED arrival,
so a late send (the generator falling behind) or a queue at the server shows up in it, never
hidden (coordinated omission). How late each send left is kept apart (`send_lag_ms`).

Every level is bounded in time and in requests and ends by itself; a request is bounded by
the client timeout. `Target` refuses any address that is not loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class NotLoopback(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise NotLoopback(f"the load generator sends only to a loopback address, not {self.host!r}")
        if not 0 < self.port < 65536:
            raise NotLoopback(f"port {self.port} is not a port")

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str


def request_bytes(target: Target, method: str, path: str, body: Body | None, tag: str | None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {target.authority}", "Connection: keep-alive"]
    if tag:
        head.append(f"X-Bench-Tag: {tag}")
    if body is not None:
        head += [f"Content-Type: {body.content_type}", f"Content-Length: {len(body.data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body.data if body is not None else b"")


class Connection:
    """One keep-alive connection; `send` returns (status, body). Any failure closes it (the
    next `send` opens a new one)."""

    def __init__(self, target: Target):
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.target.host, self.target.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes, keep_body: bool = False) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(raw)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length, chunked, close = None, False, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if chunked:
                body = await self._chunked()
            elif length is not None:
                body = await self.reader.readexactly(length)
            else:
                body = await self.reader.read()
                close = True
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, body if keep_body else b""

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        out = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self.reader.readexactly(size)
            await self.reader.readexactly(2)


@dataclass
class Outcome:
    """The requests of one level, raw (the scenario turns them into figures)."""

    latencies_ms: list[float] = field(default_factory=list)  # ok answers, in completion order
    errors: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    sent: int = 0
    dropped: int = 0
    send_lag_ms: list[float] = field(default_factory=list)
    window_s: float = 0.0  # the measured window: its start to the last measured answer
    cpu_s: float = 0.0  # this process's CPU seconds over the level
    wall_s: float = 0.0
    answered_after_window: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def cpu_share(self) -> float | None:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else None


async def _one(conn: Connection, raw: bytes, timeout_s: float, outcome: Outcome | None) -> int | None:
    """Send one request; its status, or None after recording why it failed."""
    try:
        async with asyncio.timeout(timeout_s):
            status, _ = await conn.send(raw)
    except TimeoutError:
        conn.close()
        if outcome is not None:
            outcome.error("timeout")
        return None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        if outcome is not None:
            outcome.error("connection")
        return None
    return status


class LoadGenerator:
    """Requests to one loopback target, cycling through `bodies`; keeps its connections
    between levels."""

    def __init__(self, target: Target, bodies: Sequence[Body], timeout_s: float, max_requests: int):
        if not bodies:
            raise ValueError("no request bodies")
        self.target = target
        self.bodies = list(bodies)
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.idle: list[Connection] = []

    def _raw(self, path: str, tag: str | None) -> list[bytes]:
        return [request_bytes(self.target, "POST", path, b, tag) for b in self.bodies]

    def _conn(self) -> Connection:
        return self.idle.pop() if self.idle else Connection(self.target)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()

    async def get_json(self, path: str) -> Any:
        conn = self._conn()
        raw = request_bytes(self.target, "GET", path, None, None)
        async with asyncio.timeout(max(self.timeout_s, 60.0)):
            status, body = await conn.send(raw, keep_body=True)
        self.idle.append(conn)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    async def closed_level(self, concurrency: int, warmup_s: float, duration_s: float, path: str = "/v1/detect",
                           tag: str | None = None, warmup_tag: str | None = None) -> Outcome:
        measured_raw, warm_raw = self._raw(path, tag), self._raw(path, warmup_tag)
        outcome = Outcome()
        start = time.perf_counter()
        measure_from, end = start + warmup_s, start + warmup_s + duration_s
        last_done = measure_from
        cpu0 = time.process_time()
        count = 0

        async def client(index: int) -> None:
            nonlocal last_done, count
            conn = self._conn()
            k = index
            while count < self.max_requests:
                now = time.perf_counter()
                if now >= end:
                    break
                measured = now >= measure_from
                raw = (measured_raw if measured else warm_raw)[k % len(self.bodies)]
                k += concurrency
                if measured:
                    count += 1
                    outcome.sent += 1
                t0 = time.perf_counter()
                status = await _one(conn, raw, self.timeout_s, outcome if measured else None)
                t1 = time.perf_counter()
                if not measured or status is None:
                    continue
                last_done = max(last_done, t1)
                if status == 200:
                    outcome.ok += 1
                    outcome.latencies_ms.append((t1 - t0) * 1000.0)
                else:
                    outcome.error(str(status))
            self.idle.append(conn)

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        outcome.window_s = max(last_done - measure_from, 1e-9)
        outcome.wall_s = time.perf_counter() - start
        outcome.cpu_s = time.process_time() - cpu0
        return outcome

    async def open_level(self, rate_rps: float, warmup_s: float, duration_s: float, seed: int, max_outstanding: int,
                         drain_s: float, path: str = "/v1/detect", tag: str | None = None,
                         warmup_tag: str | None = None) -> Outcome:
        measured_raw, warm_raw = self._raw(path, tag), self._raw(path, warmup_tag)
        outcome = Outcome()
        total_s = warmup_s + duration_s
        rng = np.random.default_rng(seed)
        # Seeded Poisson arrivals: exponential gaps, drawn in blocks until past the level's end.
        gaps: list[float] = []
        while sum(gaps) < total_s and len(gaps) < self.max_requests * 2:
            gaps += list(rng.exponential(1.0 / rate_rps, size=max(16, int(rate_rps * total_s * 0.2) + 16)))
        arrivals = np.cumsum(gaps)
        arrivals = arrivals[arrivals < total_s]
        while len(self.idle) < min(max_outstanding, 16):  # a few connections ready before the clock starts
            conn = Connection(self.target)
            try:
                await conn.open()
            except OSError:
                break
            self.idle.append(conn)
        outstanding: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        cpu0 = time.process_time()
        measure_from = start + warmup_s
        last_done = measure_from
        count = 0

        async def request(raw: bytes, due: float, measured: bool) -> None:
            nonlocal last_done
            conn = self._conn()
            sent_at = time.perf_counter()
            status = await _one(conn, raw, self.timeout_s, outcome if measured else None)
            done = time.perf_counter()
            self.idle.append(conn)
            if not measured or status is None:
                return
            outcome.send_lag_ms.append((sent_at - due) * 1000.0)
            last_done = max(last_done, done)
            if status == 200:
                outcome.ok += 1
                outcome.latencies_ms.append((done - due) * 1000.0)
            else:
                outcome.error(str(status))

        for i, offset in enumerate(arrivals):
            due = start + float(offset)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = due >= measure_from
            if measured:
                if count >= self.max_requests:
                    break
                count += 1
            if len(outstanding) >= max_outstanding:
                if measured:
                    outcome.dropped += 1
                continue
            if measured:
                outcome.sent += 1
            raw = (measured_raw if measured else warm_raw)[i % len(self.bodies)]
            task = asyncio.create_task(request(raw, due, measured))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            _, pending = await asyncio.wait(set(outstanding), timeout=drain_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                outcome.errors["timeout"] = outcome.errors.get("timeout", 0) + len(pending)
        outcome.window_s = max(last_done - measure_from, 1e-9)
        outcome.wall_s = time.perf_counter() - start
        outcome.cpu_s = time.process_time() - cpu0
        return outcome
