"""A server cell: the endpoint in its own process, driven level by level on loopback.

    1. open a listening socket on 127.0.0.1 (port chosen by the kernel) and start
       `python -m harness.serve.server` with it; the server builds and prepares the cell's
       runtime, warms it up and says "ready" (or why it cannot run: skipped / failed)
    2. the load generator's capacity: a closed loop against the server's no-op endpoint
    3. the closed-loop levels (concurrency), then the open-loop levels (Poisson rates, absolute or
       as fractions of the closed loop's peak), each with its warm-up, each bounded in time
    4. per level, the server's own figures for exactly that level's requests (the requests carry
       a tag the server logs), and the monitoring figures over every measured request
    5. the SLO, the distribution-shift check against the plan's baseline run, and the server is
       stopped (SIGTERM, then SIGKILL); it also dies with this process (PR_SET_PDEATHSIG)

Load goes only to the socket opened in step 1 (`loadgen.Target` refuses any other address).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness import files
from harness.plan.cells import Cell
from harness.plan.server import ServerSpec, Slo
from harness.results.serve import (
    NO_OPEN_RATE_NOTE,
    NOTE_SEPARATOR,
    ClientCapacity,
    Level,
    Monitoring,
    ServeResult,
    ServerSide,
    ShiftCheck,
    SloResult,
)
from harness.serve import stack_versions
from harness.serve.loadgen import Body, LoadGenerator, Outcome, Target
from harness.serve.stats import quantiles, shift_items, subsample

SYNTHETIC_SIZE = (480, 640)  # height, width of the image sent when the plan names no dataset
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}
MAX_BODIES = 64
STOP_GRACE_S = 10.0


class ScenarioEnded(Exception):
    """The cell ends unmeasured: skipped or failed, with the reason."""

    def __init__(self, status: str, reason: str, log_tail: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.log_tail = log_tail


@dataclass
class ScenarioOutcome:
    serve: ServeResult
    prepare: dict[str, Any]
    settings: dict[str, Any]
    random_weights: bool
    monitor: dict[str, Any] | None
    flags: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    failed: str | None = None  # why the cell failed although the server ran


# ----------------------------------------------------------------------------- bodies


def request_bodies(cell: Cell) -> tuple[list[Body], str]:
    """The images the load sends, as files exactly as stored (the dataset's JPEGs), at most
    MAX_BODIES of them; a synthetic JPEG when the plan has no dataset."""
    if cell.dataset is not None:
        from harness.accuracy.datasets import load_dataset

        dataset = load_dataset(cell.dataset, Path(cell.plan_dir), cell.resolve_path(cell.artifacts_dir) / "datasets")
        bodies = []
        for image_id in list(dataset.image_ids)[:MAX_BODIES]:
            path = dataset.image_path(image_id)
            kind = CONTENT_TYPES.get(path.suffix.lower())
            if kind is not None:
                bodies.append(Body(path.read_bytes(), kind))
        if bodies:
            what = "the generated sample dataset" if cell.dataset.sample else f"dataset {cell.dataset.images}"
            return bodies, f"{len(bodies)} images of {what}, sent as stored"
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (*SYNTHETIC_SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return [Body(buffer.getvalue(), "image/jpeg")], f"one synthetic {SYNTHETIC_SIZE[1]}x{SYNTHETIC_SIZE[0]} JPEG (the plan names no dataset)"


# ----------------------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    target: Target
    info: dict[str, Any]
    log_path: Path | None  # where its output went when the caller's log has no file descriptor

    def stop(self) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after STOP_GRACE_S."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _log_fd(log: TextIO) -> int | None:
    try:
        log.flush()
        return log.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _child_env() -> dict[str, str]:
    """This process's environment, with the folder this harness is imported from first on the
    path: the server must run the same harness as the cell that starts it."""
    import harness

    root = str(Path(harness.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": root + (os.pathsep + path if path else "")}


def start_server(cell: Cell, run_dir: Path, log: TextIO, timeout_s: float) -> ServerProcess:
    """The cell's server in a child process, listening on a loopback socket opened here; returns
    when it is ready, or raises ScenarioEnded with its reason."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    read_fd, write_fd = os.pipe()
    cell_file = files.write_replace(run_dir / "logs" / f".{cell.cell_id}.server-cell.json", cell.model_dump_json(),
                                    root=run_dir, durable=False)
    out_fd = _log_fd(log)
    # A log without a file descriptor (the in-process launcher's): the server writes beside it.
    log_path = None if out_fd is not None else run_dir / "logs" / f".{cell.cell_id}.server.log"
    out: Any = out_fd if log_path is None else files.open_append(log_path, root=run_dir)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.serve.server", str(cell_file), str(sock.fileno()), str(write_fd), str(run_dir)],
            pass_fds=(sock.fileno(), write_fd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
    finally:
        os.close(write_fd)
        sock.close()  # the server holds the socket now; when it dies, the port is free
        if log_path is not None:
            out.close()
    handle = ServerProcess(proc, Target("127.0.0.1", port), {}, log_path)
    try:
        message = _read_ready(read_fd, proc, timeout_s)
        status = message.get("status")
        if status != "ready":
            raise ScenarioEnded("skipped" if status == "skipped" else "failed", str(message.get("reason") or message))
    except BaseException:
        handle.stop()
        cleanup(handle, cell, run_dir, log)
        raise
    finally:
        os.close(read_fd)
    handle.info = message.get("info") or {}
    return handle


def cleanup(server: ServerProcess, cell: Cell, run_dir: Path, log: TextIO) -> None:
    """The scratch files of a stopped server: its cell file, and its output where it could not
    write into the cell's log directly (copied there)."""
    with contextlib.suppress(OSError):
        (run_dir / "logs" / f".{cell.cell_id}.server-cell.json").unlink()
    if server.log_path is not None:
        with contextlib.suppress(OSError):
            log.write(server.log_path.read_text("utf-8", "replace"))
            server.log_path.unlink()


def _read_ready(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ScenarioEnded("failed", f"the server was not ready within {timeout_s:g} s (server.startup_timeout_s)")
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not ready:
            if proc.poll() is not None:
                raise ScenarioEnded("failed", f"the server process exited with status {proc.returncode} before it was ready")
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            proc.wait(5)
            raise ScenarioEnded("failed", f"the server process exited with status {proc.returncode} before it was ready")
        data += chunk
    return dict(json.loads(data.split(b"\n", 1)[0]))


# ----------------------------------------------------------------------------- levels


def _slo_check(level: Level, slo: Slo | None) -> tuple[bool | None, str | None]:
    if slo is None:
        return None, None
    q = level.latency_ms
    if q is None:
        return False, "no request succeeded"
    why = []
    for name, bound in (("p50", slo.p50_ms), ("p95", slo.p95_ms), ("p99", slo.p99_ms)):
        if bound is not None and getattr(q, name) > bound:
            why.append(f"{name} {getattr(q, name):.3g} ms > {bound:g} ms")
    if level.error_share > slo.max_error_share:
        why.append(f"errors {level.error_share:.1%} > {slo.max_error_share:.1%}")
    return (not why), ("; ".join(why) or None)


def _client_limit(outcome: Outcome, mode: str, throughput: float, capacity: ClientCapacity | None,
                  latency_p50: float | None) -> str | None:
    """Why this level's figures may describe the load generator rather than the server."""
    why = []
    share = outcome.cpu_share
    if share is not None and share > 0.9:
        why.append(f"the generator used {share:.0%} of a core (it runs on one)")
    if mode == "closed" and capacity is not None and capacity.throughput_rps > 0 and throughput > 0.8 * capacity.throughput_rps:
        why.append(f"{throughput:.0f} req/s is over 80% of the generator's capacity ({capacity.throughput_rps:.0f} req/s)")
    if outcome.dropped:
        why.append(f"{outcome.dropped} arrivals not sent: max_outstanding requests were in flight")
    if mode == "open" and outcome.send_lag_ms and latency_p50:
        lag = quantiles(outcome.send_lag_ms)
        if lag is not None and lag.p99 > max(5.0, 0.25 * latency_p50):
            why.append(f"sends left up to {lag.p99:.3g} ms late (p99) against a median latency of {latency_p50:.3g} ms")
    return "; ".join(why) or None


def make_level(mode: str, outcome: Outcome, *, warmup_s: float, duration_s: float, concurrency: int | None = None,
               target_rps: float | None = None, rate_of_peak: float | None = None, server: ServerSide | None = None,
               capacity: ClientCapacity | None = None, slo: Slo | None = None, max_samples: int = 20_000) -> Level:
    errors = sum(outcome.errors.values())
    answered = outcome.ok + errors
    throughput = outcome.ok / outcome.window_s if outcome.window_s > 0 else 0.0
    latency = quantiles(outcome.latencies_ms)
    why = _client_limit(outcome, mode, throughput, capacity, latency.p50 if latency else None)
    level = Level(
        mode="closed" if mode == "closed" else "open", concurrency=concurrency, target_rps=target_rps,
        rate_of_peak=rate_of_peak, warmup_s=warmup_s, duration_s=duration_s, sent=outcome.sent,
        completed=outcome.ok + sum(v for k, v in outcome.errors.items() if k.isdigit()), ok=outcome.ok, errors=errors,
        errors_by_kind=dict(sorted(outcome.errors.items())), error_share=errors / answered if answered else 0.0,
        dropped_by_client=outcome.dropped, throughput_rps=throughput,
        offered_rps=outcome.sent / duration_s if mode == "open" and duration_s > 0 else None,
        latency_ms=latency, samples_ms=subsample(outcome.latencies_ms, max_samples), samples_total=len(outcome.latencies_ms),
        send_lag_ms=quantiles(outcome.send_lag_ms) if mode == "open" else None, server=server,
        client_cpu_share=outcome.cpu_share, client_limited=why is not None, client_limited_why=why,
    )
    met, slo_why = _slo_check(level, slo)
    return level.model_copy(update={"meets_slo": met, "slo_why": slo_why})


def slo_result(levels: list[Level], slo: Slo) -> SloResult:
    open_levels = sorted((lv for lv in levels if lv.mode == "open" and lv.target_rps is not None), key=lambda lv: lv.target_rps or 0)
    max_rate = max((lv.target_rps for lv in open_levels if lv.meets_slo and lv.target_rps is not None), default=None)
    first_failing = next((lv.target_rps for lv in open_levels if not lv.meets_slo and (max_rate is None or (lv.target_rps or 0) > max_rate)), None)
    closed_ok = [lv for lv in levels if lv.mode == "closed" and lv.meets_slo]
    best_closed = max(closed_ok, key=lambda lv: lv.throughput_rps, default=None)
    notes = []
    if open_levels and max_rate is None:
        notes.append(NO_OPEN_RATE_NOTE)
    if any(lv.client_limited for lv in levels if lv.meets_slo):
        notes.append("a level that met the SLO was limited by the load generator: the server may do more")
    return SloResult(
        p50_ms=slo.p50_ms, p95_ms=slo.p95_ms, p99_ms=slo.p99_ms, max_error_share=slo.max_error_share,
        max_rate_rps=max_rate, first_failing_rate_rps=first_failing,
        max_closed_throughput_rps=best_closed.throughput_rps if best_closed else None,
        max_closed_concurrency=best_closed.concurrency if best_closed else None,
        note=NOTE_SEPARATOR.join(notes) or None,
    )


async def _drive(gen: LoadGenerator, spec: ServerSpec, phase: Callable[[str], None], log: TextIO) -> tuple[
        ClientCapacity | None, list[tuple[str, dict[str, Any], Outcome]]]:
    """Every level in order: (tag, what the level is, its raw outcome)."""
    client = spec.client
    capacity = None
    if client.capacity_s > 0:
        phase("capacity")
        out = await gen.closed_level(client.capacity_concurrency, min(0.3, client.capacity_s / 3), client.capacity_s,
                                     path="/v1/noop", tag="capacity", warmup_tag="capacity-w")
        capacity = ClientCapacity(endpoint="POST /v1/noop", concurrency=client.capacity_concurrency, duration_s=client.capacity_s,
                                  requests=out.ok, throughput_rps=out.ok / out.window_s if out.window_s else 0.0,
                                  latency_ms=quantiles(out.latencies_ms), cpu_share=out.cpu_share)
        log.write(f"[serve] generator capacity against the no-op endpoint: {capacity.throughput_rps:.0f} req/s "
                  f"at concurrency {client.capacity_concurrency} (client CPU {out.cpu_share or 0:.0%} of a core)\n")
    done: list[tuple[str, dict[str, Any], Outcome]] = []
    index = 0
    if spec.closed_loop is not None:
        cl = spec.closed_loop
        for c in cl.concurrency:
            phase(f"closed c{c}")
            out = await gen.closed_level(c, cl.warmup_s, cl.duration_s, tag=f"m:{index}", warmup_tag=f"w:{index}")
            done.append((f"m:{index}", {"mode": "closed", "concurrency": c, "warmup_s": cl.warmup_s, "duration_s": cl.duration_s}, out))
            log.write(f"[serve] closed loop c={c}: {out.ok} ok, {sum(out.errors.values())} errors, "
                      f"{out.ok / out.window_s:.1f} req/s\n")
            index += 1
    if spec.open_loop is not None:
        ol = spec.open_loop
        peak = max((o.ok / o.window_s for _, _, o in done if o.window_s > 0), default=0.0)
        rates: list[tuple[float, float | None]] = [(r, None) for r in ol.rates]
        if ol.rates_of_peak:
            if peak <= 0:
                log.write("[serve] no closed-loop peak to take rates_of_peak from; those levels are left out\n")
            rates += [(f * peak, f) for f in ol.rates_of_peak if peak > 0]
        for n, (rate, fraction) in enumerate(rates):
            phase(f"open {rate:.3g}/s")
            out = await gen.open_level(rate, ol.warmup_s, ol.duration_s, ol.seed + n, ol.max_outstanding, ol.drain_s,
                                       tag=f"m:{index}", warmup_tag=f"w:{index}")
            done.append((f"m:{index}", {"mode": "open", "target_rps": rate, "rate_of_peak": fraction,
                                        "warmup_s": ol.warmup_s, "duration_s": ol.duration_s}, out))
            log.write(f"[serve] open loop {rate:.3g}/s: {out.ok} ok, {sum(out.errors.values())} errors, "
                      f"{out.dropped} dropped by the client\n")
            index += 1
    return capacity, done


# ----------------------------------------------------------------------------- the cell


def run_server_scenario(cell: Cell, run_dir: Path, log: TextIO, phase: Callable[[str], None],
                        gpu_index: int | None = None) -> ScenarioOutcome:
    """The cell's server started, driven and stopped; its figures. ScenarioEnded when the
    server could not start (the reason says why)."""
    from harness.serve import serve_extra_problem

    if problem := serve_extra_problem():
        raise ScenarioEnded("skipped", problem)
    spec = cell.server or ServerSpec()
    bodies, image_source = request_bodies(cell)
    phase("prepare")
    server = start_server(cell, run_dir, log, spec.startup_timeout_s)
    monitor_data = None
    try:
        from harness.environment.monitor import GpuMonitor

        monitor = GpuMonitor(gpu_index if cell.gpu.monitor else None, cell.gpu.monitor_interval_ms)
        monitor.start()
        try:
            monitor.phase("measure")
            capacity, done, stats, overall = asyncio.run(_load(server.target, bodies, spec, phase, log))
        finally:
            monitor_data = monitor.stop()
    finally:
        code = server.stop()
        cleanup(server, cell, run_dir, log)
    died = code not in (0, None, -signal.SIGTERM)
    info = server.info
    levels = []
    for (tag, what, outcome) in done:
        side = stats.get(tag, {}).get("server")
        levels.append(make_level(
            what["mode"], outcome, warmup_s=what["warmup_s"], duration_s=what["duration_s"],
            concurrency=what.get("concurrency"), target_rps=what.get("target_rps"), rate_of_peak=what.get("rate_of_peak"),
            server=ServerSide.model_validate(side) if side else None, capacity=capacity, slo=spec.slo,
            max_samples=spec.client.max_samples_per_level,
        ))
    monitoring = Monitoring.model_validate(overall["monitoring"]) if overall else None
    closed = [lv.throughput_rps for lv in levels if lv.mode == "closed"]
    notes = []
    if overall and overall.get("log_dropped"):
        notes.append(f"the server's request log was full: {overall['log_dropped']} requests are not in the server figures")
    serve = ServeResult(
        server=info.get("server") or stack_versions(), endpoint="POST /v1/detect", address=server.target.authority,
        load_generator="harness.serve.loadgen: asyncio streams, HTTP/1.1 keep-alive, one thread, in the cell's worker process",
        max_batch=int(info.get("max_batch", cell.batch)), max_queue_delay_ms=info.get("max_queue_delay_ms"),
        pad_to_max_batch=bool(info.get("pad_to_max_batch")),
        limits={k: float(v) for k, v in spec.limits.model_dump().items()},
        images=len(bodies), image_source=image_source, capacity=capacity, levels=levels,
        peak_throughput_rps=max(closed) if closed else None,
        slo=slo_result(levels, spec.slo) if spec.slo else None, monitoring=monitoring,
        shift=shift_check(cell, spec, monitoring) if spec.monitoring.baseline else None,
        client_limited=any(lv.client_limited for lv in levels), notes=notes,
    )
    flags, reasons = [], []
    if serve.client_limited:
        flags.append("client_limited")
        reasons.append("some levels were limited by the load generator, not the server")
    if serve.shift is not None and serve.shift.flagged:
        flags.append("distribution_shift")
        shifted = ", ".join(i.name for i in serve.shift.items if i.flagged)
        reasons.append(f"distribution shift against the baseline run: {shifted}")
    summary = (monitor_data or {}).get("summary") or {}
    if summary.get("throttled"):
        flags.append("throttled")
        reasons.append(f"throttled: {summary.get('throttled_why')}")
    failed = None
    if died:
        failed = f"the server process ended with status {code} during the load"
    elif levels and not any(lv.ok for lv in levels):
        failed = "no request was answered 200 at any level"
    return ScenarioOutcome(serve=serve, prepare=info.get("prepare") or {}, settings=info.get("settings") or {},
                           random_weights=bool(info.get("random_weights")), monitor=monitor_data,
                           flags=flags, reasons=reasons, failed=failed)


async def _load(target: Target, bodies: list[Body], spec: ServerSpec, phase: Callable[[str], None], log: TextIO) -> tuple[
        ClientCapacity | None, list[tuple[str, dict[str, Any], Outcome]], dict[str, Any], dict[str, Any] | None]:
    gen = LoadGenerator(target, bodies, spec.client.timeout_s, spec.client.max_requests_per_level)
    try:
        capacity, done = await _drive(gen, spec, phase, log)
        phase("stats")
        stats = {}
        for tag, _, _ in done:
            with contextlib.suppress(Exception):
                stats[tag] = await gen.get_json(f"/v1/stats?tag={tag}")
        overall = None
        with contextlib.suppress(Exception):
            overall = await gen.get_json("/v1/stats?prefix=m:")
    finally:
        gen.close()
    return capacity, done, stats, overall


def shift_check(cell: Cell, spec: ServerSpec, monitoring: Monitoring | None) -> ShiftCheck:
    """This cell's monitoring figures against the cell of the same id in the baseline run."""
    from harness.results import ResultsError, read_run

    baseline = spec.monitoring.baseline or ""
    if monitoring is None:
        return ShiftCheck(baseline=baseline, reason="no monitoring figures in this run")
    path = cell.resolve_path(baseline)
    try:
        read = read_run(path)
    except ResultsError as exc:
        return ShiftCheck(baseline=baseline, reason=f"the baseline run cannot be read: {exc}")
    match = next((r for r in read.results.cells if r.cell_id == cell.cell_id), None)
    if match is None:
        same_model = [r for r in read.results.cells if r.serve is not None and r.identity.model == cell.model.name]
        match = same_model[0] if same_model else None
    if match is None or match.serve is None or match.serve.monitoring is None:
        return ShiftCheck(baseline=baseline, baseline_run_id=read.results.run.run_id,
                          reason=f"the baseline run has no server cell {cell.cell_id} (nor of model {cell.model.name}) with monitoring figures")
    items = shift_items(match.serve.monitoring, monitoring, spec.monitoring.zero_detection_share_change, spec.monitoring.psi_threshold)
    return ShiftCheck(baseline=baseline, baseline_run_id=read.results.run.run_id, baseline_cell_id=match.cell_id,
                      items=items, flagged=any(i.flagged for i in items))

